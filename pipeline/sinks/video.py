"""``dehazed.mp4`` (and the encoder under ``preview.mp4``) via PyAV.

H.264 (libx264) when PyAV was built with it, else MPEG-4 part 2. Each frame's
presentation time is kept (90 kHz time base, 45 kHz for MPEG-4 part 2), so dropped frames of a live
stream show as gaps instead of speeding the video up.

A segment (``fragment_s`` set) is written as fragmented MP4: an empty index up
front, then fragments (moof + mdat) of at most ``fragment_s`` seconds of media
time, each pushed to the file as soon as it is complete, and a keyframe every
``2 * fragment_s * fps`` frames. A process killed mid-segment
leaves a file that plays up to its last fragment (a fragment may start between
keyframes: played from the start, it decodes like the rest of the file).
Its timestamps start at 0 (the first frame's pts is subtracted).
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
#: MPEG-4 part 2 stores the time base denominator in 16 bits: 45 kHz keeps sub-millisecond pts
MPEG4_TIME_BASE = Fraction(1, 45000)
#: fragmented MP4 (ISO BMFF): index first, a fragment per keyframe, decode times in each fragment
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


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

    def __init__(self, path: Path, codec: str = "auto", crf: int = 23, fps: float = 25.0, *,
                 partial: Path | None = None, fragment_s: float | None = None):
        self.path = Path(path)
        self.codec = pick_codec(codec)
        self.crf = crf
        self.fps = fps
        self.fragment_s = fragment_s
        self._partial = Path(partial) if partial is not None else partial_path(self.path)
        self._origin = None  # pts subtracted from every frame of a fragmented segment
        self.time_base = MPEG4_TIME_BASE if self.codec == "mpeg4" else TIME_BASE
        self._container = None
        self._stream = None
        self._size = None  # (w, h)
        self._last_pts = None
        self.frames = 0

    def _open(self, w: int, h: int) -> None:
        self._size = (max(2, w & ~1), max(2, h & ~1))
        options = dict(FRAGMENTED_MP4, frag_duration=str(int(self.fragment_s * 1e6))) if self.fragment_s else {}
        self._container = av.open(str(self._partial), mode="w", format="mp4", options=dict(options))
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        if self.fragment_s:
            # fragments are cut every fragment_s (frag_duration), keyframes come every 2 fragments: 1 s
            # fragments bound what a kill loses, and 2 s keyframes cost half the bytes of 1 s ones
            stream.codec_context.gop_size = max(1, int(self.fps * 2 * self.fragment_s))
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = self.time_base
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
        vf.time_base = self.time_base
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def _next_pts(self, pts: float | None) -> int:
        hz = self.time_base.denominator
        step = round(hz / self.fps)
        if pts is not None and self.fragment_s:
            self._origin = pts if self._origin is None else self._origin
            pts -= self._origin
        ticks = round(pts * hz) if pts is not None else None
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
    kind = "dehazed"  # folder of its segments

    def __init__(self, folder: Path, codec: str = "auto", crf: int = 23, fps: float = 25.0, *, segment=None):
        self.writer = segment_writer(self.kind, segment, codec, crf, fps) if segment is not None \
            else VideoWriter(folder / self.filename, codec, crf, fps)

    @property
    def paths(self):
        return [self.writer.path] if self.writer.frames else []

    def write(self, frame: Frame) -> None:
        image = frame.data.get("dehazed")
        self.writer.write(frame.image if image is None else image, frame.pts)

    def close(self) -> None:
        self.writer.close()


def segment_writer(kind: str, segment, codec: str, crf: int, fps: float) -> VideoWriter:
    """A fragmented writer for ``kind`` of a ``pipeline.sinks.segments.Segment``: open name, then final."""
    from pipeline.sinks.segments import FRAGMENT_S

    final = segment.final(kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    return VideoWriter(final, codec, crf, fps, partial=segment.open(kind), fragment_s=FRAGMENT_S)
