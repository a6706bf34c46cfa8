"""``dehazed.mp4`` (and the encoder under ``preview.mp4``) via PyAV.

H.264 (libx264) when PyAV was built with it, else MPEG-4 part 2. Each frame's
presentation time is kept (90 kHz time base), so dropped frames of a live
stream show as gaps instead of speeding the video up.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.frame import Frame
from pipeline.sinks.atomic import commit, partial_path

TIME_BASE = Fraction(1, 90000)


def pick_codec(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # PyAV wheel without x264
        return "mpeg4"


class VideoWriter:
    """Encode BGR images to an mp4 under a partial name; ``close`` renames it.

    The first image fixes the size (cropped to even numbers for yuv420p);
    later images of another size are resized to it, since an mp4 video track
    has one resolution.
    """

    def __init__(self, path: Path, codec: str = "auto", crf: int = 23, fps: float = 25.0):
        self.path = Path(path)
        self.codec = pick_codec(codec)
        self.crf = crf
        self.fps = fps
        self._partial = partial_path(self.path)
        self._container = None
        self._stream = None
        self._size = None  # (w, h)
        self._last_pts = None
        self.frames = 0

    def _open(self, w: int, h: int) -> None:
        self._size = (max(2, w & ~1), max(2, h & ~1))
        self._container = av.open(str(self._partial), mode="w", format="mp4")
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        if self.codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": str(self.crf)}
        else:
            # mpeg4 has no CRF; a bit rate that scales with the picture keeps quality comparable
            stream.bit_rate = max(500_000, self._size[0] * self._size[1] * 8)
        self._stream = stream

    def write(self, image: np.ndarray, pts: float | None) -> None:
        h, w = image.shape[:2]
        if self._container is None:
            self._open(w, h)
        tw, th = self._size
        if (w, h) != (tw, th):
            image = image[:th, :tw] if (w - tw <= 1 and h - th <= 1 and w >= tw and h >= th) \
                else cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        vf.pts = self._next_pts(pts)
        vf.time_base = TIME_BASE
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def _next_pts(self, pts: float | None) -> int:
        step = round(90000 / self.fps)
        ticks = round(pts * 90000) if pts is not None else None
        if ticks is None or (self._last_pts is not None and ticks <= self._last_pts):
            ticks = 0 if self._last_pts is None else self._last_pts + step
        self._last_pts = ticks
        return ticks

    def close(self) -> None:
        """Flush the encoder, close the file and give it its final name."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
        commit(self._partial, self.path)


class DehazedVideoSink:
    """``dehazed.mp4``: ``frame.data["dehazed"]``, or the input when no stage dehazed it."""

    filename = "dehazed.mp4"

    def __init__(self, folder: Path, codec: str = "auto", crf: int = 23, fps: float = 25.0):
        self.writer = VideoWriter(folder / self.filename, codec, crf, fps)

    @property
    def paths(self):
        return [self.writer.path] if self.writer.frames else []

    def write(self, frame: Frame) -> None:
        image = frame.data.get("dehazed")
        self.writer.write(frame.image if image is None else image, frame.pts)

    def close(self) -> None:
        self.writer.close()
