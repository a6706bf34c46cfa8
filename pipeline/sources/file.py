"""Video files through PyAV (anything FFmpeg reads).

Truncation and corruption: FFmpeg often ends decoding quietly when a file is
cut short (Matroska, AVI) and, with frame threading, a corrupt packet may be
dropped without an exception. So besides decode errors, the end of decoding is
checked against what the container declares (stream duration, frame count);
falling short raises SourceError after the frames that did decode were yielded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av

from pipeline.errors import SourceError, SourceNotFoundError
from pipeline.frame import Frame
from pipeline.sources.base import Source, safe_stream_name

#: frame intervals the decoded end may fall short of the declared duration
END_TOLERANCE_FRAMES = 3


def av_cause(e: Exception) -> str:
    """One line describing a PyAV/FFmpeg error, without the file name PyAV appends."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


class FileSource(Source):
    """Decode a video file; ``Frame.index`` is 1-based, ``Frame.pts`` in seconds.

    ``threads``: decoder thread count (0 = FFmpeg's choice). Decoding uses
    ``thread_type="AUTO"`` (frame and slice threads).
    """

    def __init__(self, uri: str | Path, name: str | None = None, threads: int = 0):
        self.path = Path(uri)
        if not self.path.exists():
            raise SourceNotFoundError(str(uri), "no such file")
        if self.path.is_dir():
            raise SourceError(str(uri), "is a directory (use it as an image folder source)")
        super().__init__(str(uri), name)
        self._container = None
        try:
            self._container = av.open(str(self.path), mode="r")
        except Exception as e:  # PyAV raises a zoo of FFmpeg errors; all mean "cannot open"
            raise SourceError(str(uri), f"cannot open as video ({av_cause(e)})") from None
        if not self._container.streams.video:
            self.close()
            raise SourceError(str(uri), "no video stream in the file")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = int(threads)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None

    def default_name(self) -> str:
        return safe_stream_name(Path(self.uri).stem)

    @property
    def width(self) -> int:
        return self._stream.codec_context.width

    @property
    def height(self) -> int:
        return self._stream.codec_context.height

    @property
    def declared_frames(self) -> int:
        """Frame count the container declares (0 when it does not say)."""
        return int(self._stream.frames or 0)

    def _generate(self) -> Iterator[Frame]:
        index = 0
        last_pts = None
        try:
            for decoded in self._container.decode(self._stream):
                if self.closed:  # close() from another thread while we decoded
                    return
                index += 1
                pts = decoded.time
                if pts is None and self.fps:
                    pts = (index - 1) / self.fps
                last_pts = pts if pts is not None else last_pts
                yield Frame(self.name, index, pts, decoded.to_ndarray(format="bgr24"))
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise SourceError(self.uri, f"decoding failed after frame {index} ({av_cause(e)})") from None
        finally:
            if self.closed:
                self._close_impl()
        self._check_complete(index, last_pts)

    def _declared_end(self) -> float | None:
        """End time in seconds that the container promises for the video, if it says."""
        s = self._stream
        start = float(s.start_time * s.time_base) if s.start_time is not None and s.time_base else 0.0
        if s.duration and s.time_base:
            return start + float(s.duration * s.time_base)
        if self._container.duration and len(self._container.streams) == 1:
            return self._container.duration / 1e6  # container duration covers all streams: only trust it alone
        return None

    def _check_complete(self, decoded: int, last_pts: float | None) -> None:
        if decoded == 0:
            raise SourceError(self.uri, "no frame could be decoded (corrupt or empty video)")
        declared = self.declared_frames
        if declared and decoded < declared - max(2, declared // 100):
            raise SourceError(self.uri, f"truncated or corrupt: decoded {decoded} of the {declared} frames the container declares")
        end = self._declared_end()
        interval = 1.0 / self.fps if self.fps else 0.04
        if end is not None and last_pts is not None and last_pts + interval < end - END_TOLERANCE_FRAMES * interval:
            raise SourceError(
                self.uri,
                f"truncated or corrupt: decoding stopped at {last_pts:.3f} s (frame {decoded}) "
                f"but the container declares {end:.3f} s",
            )

    def _close_impl(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()
