"""Source: where frames come from.

A source is an iterator of :class:`pipeline.frame.Frame` and a context manager;
``close()`` releases native resources (PyAV containers) explicitly.

Stream-state resets travel in band: the first frame after a reconnect or a
change of resolution carries ``frame.data["stream_reset"] = <reason>`` (one of
``RESET_*``) so the graph can call ``Stage.reset_stream(frame.stream)`` and
empty that stream's FrameBuffer before the frame is processed. The same
happening is appended to ``source.events``.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Iterator

from pipeline.frame import Frame

log = logging.getLogger("hazeflow.sources")

#: reasons carried in ``frame.data["stream_reset"]``
RESET_RECONNECT = "reconnect"
RESET_RESOLUTION = "resolution_change"

_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^:@/\s'\"]*):([^/\s'\"]*)@")  # greedy: a raw '@' in the password
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def mask_credentials(text: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``, for every URL in ``text``."""
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", str(text))


def safe_stream_name(text: str, default: str = "stream") -> str:
    """A name usable as one folder: only [A-Za-z0-9._-], no leading dot, never '..'."""
    name = _UNSAFE.sub("_", str(text)).strip("._-")
    return name[:100] if name else default


class Source:
    """Base of all sources. Subclasses implement :meth:`_generate`.

    Attributes: ``uri`` (as given, may hold credentials: never log it),
    ``uri_masked`` (safe to log), ``name`` (stream name, safe as a folder
    name), ``is_live``, ``fps`` (nominal rate or None), ``frames_read``,
    ``events`` (list of dicts with keys ``time`` (unix seconds), ``kind`` and
    ``message``; kinds: ``resolution_change`` and, for live sources,
    ``connect_failed``, ``disconnect``, ``reconnect``, ``give_up``).
    """

    is_live: bool = False
    #: nominal frame rate when the input declares one (writers need it), else None
    fps: float | None = None

    def __init__(self, uri: str, name: str | None = None):
        self.uri = str(uri)
        self.uri_masked = mask_credentials(self.uri)
        self.name = safe_stream_name(name) if name else self.default_name()
        self.frames_read = 0
        self.events: list[dict] = []
        self._iterator: Iterator[Frame] | None = None
        self._last_size: tuple[int, int] | None = None
        self._pending_reset: str | None = None
        self._stop = threading.Event()  # set by close(); live sources wait on it between retries
        self.closed = False
        self._released = False

    # --- for subclasses -------------------------------------------------------
    def default_name(self) -> str:
        return safe_stream_name(self.uri)

    def _generate(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _close_impl(self) -> None:
        """Release native resources; must be idempotent."""

    def record_event(self, kind: str, message: str, level: int = logging.INFO) -> None:
        """Append to ``events`` and log; ``message`` must already be masked."""
        self.events.append({"time": time.time(), "kind": kind, "message": message})
        log.log(level, "%s: %s", self.name, message, extra={"stream": self.name, "event": kind})

    def request_reset(self, reason: str) -> None:
        """Mark the next frame with ``data['stream_reset'] = reason``."""
        self._pending_reset = reason

    # --- public ---------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self.closed:
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._generate()
        frame = next(self._iterator)
        self._mark_resets(frame)
        self.frames_read += 1
        return frame

    def _mark_resets(self, frame: Frame) -> None:
        size = frame.size
        if self._last_size is not None and size != self._last_size:
            self.record_event(RESET_RESOLUTION, f"{self._last_size[0]}x{self._last_size[1]} -> {size[0]}x{size[1]}")
            self._pending_reset = self._pending_reset or RESET_RESOLUTION
        self._last_size = size
        if self._pending_reset is not None:
            frame.data["stream_reset"] = self._pending_reset
            self._pending_reset = None

    def stop(self) -> None:
        """Ask a reader blocked in another thread to end, without touching its
        native resources: it sees the flag at its next frame or timeout, and the
        reader thread itself then calls ``close()``."""
        self.closed = True
        self._stop.set()

    def close(self) -> None:
        """Stop and release resources. Safe to call twice, and from another thread
        while a read blocks: the reader then stops at its next timeout."""
        if self._released:
            return
        self._released = True
        self.closed = True
        self._stop.set()
        if self._iterator is not None:
            try:
                self._iterator.close()
            except ValueError:  # generator running in another thread; it sees `closed` and ends
                return
        self._close_impl()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri_masked!r}, name={self.name!r})"
