"""``preview.mp4``: input | dehazed | mask overlay with boxes and counts, side by side."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.analytics.draw import AnalyticsOverlay
from pipeline.frame import Frame
from pipeline.sinks.video import VideoWriter, segment_writer

_RED = (0, 0, 255)
_GREEN = (0, 255, 0)
_WHITE = (255, 255, 255)


def box_xywh(obj: dict):
    """``obj["box"]`` as ints (x, y, w, h); the blob stage writes [x, y, w, h]."""
    box = obj.get("box")
    if box is None or len(box) != 4:
        return None
    return tuple(int(v) for v in box)


class PreviewSink:
    filename = "preview.mp4"
    kind = "preview"  # folder of its segments

    def __init__(self, folder: Path, codec: str = "auto", crf: int = 23, fps: float = 25.0, scale: float = 1.0,
                 *, segment=None):
        self.writer = segment_writer(self.kind, segment, codec, crf, fps) if segment is not None \
            else VideoWriter(Path(folder) / self.filename, codec, crf, fps)
        self.scale = scale
        self._canvas = None
        self._tint = None
        self._analytics = AnalyticsOverlay()  # lines, zones, track ids with trails (when the stage ran)

    @property
    def paths(self):
        return [self.writer.path] if self.writer.frames else []

    def _panels(self, frame: Frame):
        h, w = frame.image.shape[:2]
        if self._canvas is None or self._canvas.shape[:2] != (h, 3 * w):
            self._canvas = np.empty((h, 3 * w, 3), np.uint8)
            self._tint = np.empty((h, w, 3), np.uint8)
        c = self._canvas
        return c[:, :w], c[:, w:2 * w], c[:, 2 * w:]

    def write(self, frame: Frame) -> None:
        left, middle, right = self._panels(frame)
        dehazed = frame.data.get("dehazed")
        dehazed = frame.image if dehazed is None else dehazed
        left[:] = frame.image
        middle[:] = dehazed
        right[:] = dehazed
        mask = frame.data.get("mask")
        if mask is not None and mask.shape == right.shape[:2]:
            # red tint where the mask is on: half the pixel plus half pure red
            self._tint[:] = right
            self._tint[..., 2] = 255
            cv2.addWeighted(right, 0.5, self._tint, 0.5, 0.0, dst=self._tint)
            cv2.copyTo(self._tint, mask, right)
        self._annotate(frame, left, right)
        self._analytics.draw(right, frame)
        image = self._canvas
        if self.scale != 1.0:
            image = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        self.writer.write(image, frame.pts)

    def _annotate(self, frame: Frame, left, right) -> None:
        objects = frame.data.get("objects") or []
        for obj in objects:
            box = box_xywh(obj)
            if box is None:
                continue
            x, y, w, h = box
            cv2.rectangle(right, (x, y), (x + w - 1, y + h - 1), _GREEN, 1)
            track = obj.get("track", obj.get("track_id"))
            if track is not None:
                cv2.putText(right, str(track), (x, max(10, y - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _GREEN, 1)
        text = f"#{frame.index}  objects {len(objects)}"
        counts = frame.data.get("counts") or {}
        if counts:
            text += "  " + "  ".join(f"{k}: {v}" for k, v in counts.items())
        cv2.putText(right, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _WHITE, 1, cv2.LINE_AA)
        score = frame.data.get("haze_score")
        if score is not None:
            applied = frame.data.get("dehaze_applied")
            label = f"haze {score:.2f}" + ("" if applied is None else (" dehazed" if applied else " passed"))
            cv2.putText(left, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _WHITE, 1, cv2.LINE_AA)

    def close(self) -> None:
        self.writer.close()
