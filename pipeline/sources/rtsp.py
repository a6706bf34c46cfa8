"""Live RTSP cameras through PyAV, with timeouts and reconnection.

What FFmpeg 8 (PyAV 18) does, measured against gst-rtsp-server:

* the RTSP demuxer's socket I/O timeout is the option ``timeout`` in
  microseconds (``stimeout`` and ``rw_timeout`` are ignored: a paused server
  then blocks the reader forever). PyAV's own ``timeout=(open, read)`` is set
  as well, as a second guard.
* a killed or paused server ends the stream with an exception or, sometimes,
  with a plain end of iteration. A live stream never ends on purpose, so
  either is a disconnect.

After a disconnect the source reconnects with capped exponential backoff; the
first frame of the new connection carries ``data["stream_reset"] =
"reconnect"`` (see :mod:`pipeline.sources.base`) and ``events`` records the
``disconnect`` / ``connect_failed`` / ``reconnect`` steps (URL masked).
``Frame.index`` keeps counting across reconnects; ``Frame.pts`` is seconds
since the source started, monotonic across reconnects.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import av

from pipeline.errors import SourceError
from pipeline.frame import Frame
from pipeline.sources.base import RESET_RECONNECT, Source, mask_credentials, safe_stream_name
from pipeline.sources.file import av_cause

TRANSPORTS = ("tcp", "udp", "udp_multicast", "http")


class RtspSource(Source):
    """Read a live RTSP stream; reconnects until ``max_attempts`` consecutive failures.

    ``timeout``: seconds without data (or to connect) before a read fails.
    ``backoff_initial`` / ``backoff_max``: first and largest wait between attempts,
    doubled after each failed attempt and reset once a frame arrives.
    ``max_attempts``: consecutive failed attempts before giving up with SourceError
    (None: never give up). An attempt fails when connecting fails or when the
    connection ends before the first frame.
    """

    is_live = True

    def __init__(self, uri: str, name: str | None = None, *, transport: str = "tcp", timeout: float = 5.0,
                 backoff_initial: float = 0.5, backoff_max: float = 10.0, max_attempts: int | None = None,
                 threads: int = 0):
        super().__init__(uri, name)
        if transport not in TRANSPORTS:
            raise SourceError(self.uri_masked, f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        if not timeout > 0 or not 0 < backoff_initial <= backoff_max:
            raise SourceError(self.uri_masked, "need timeout > 0 and 0 < backoff_initial <= backoff_max")
        if max_attempts is not None and max_attempts < 1:
            raise SourceError(self.uri_masked, f"max_attempts must be >= 1 or None, got {max_attempts}")
        self.transport = transport
        self.timeout = float(timeout)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.max_attempts = max_attempts
        self.threads = int(threads)
        self.reconnects = 0
        self.connected = False
        self._reconnect_reason: str | None = None

    def default_name(self) -> str:
        # rtsp://user:pw@cam1.local:554/stream1 -> cam1.local_554_stream1 (no credentials in names)
        rest = self.uri.split("://", 1)[-1]
        hostpath = rest.rsplit("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
        return safe_stream_name(hostpath.split("?", 1)[0].replace(":", "_").replace("/", "_"))

    def _ffmpeg_options(self) -> dict[str, str]:
        return {
            "rtsp_transport": self.transport,
            "timeout": str(int(self.timeout * 1e6)),  # socket I/O timeout, microseconds (FFmpeg >= 5)
        }

    def _open(self):
        container = av.open(self.uri, mode="r", options=self._ffmpeg_options(), timeout=(self.timeout, self.timeout))
        if not container.streams.video:
            container.close()
            raise SourceError(self.uri_masked, "no video stream offered by the server")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threads would add frames of latency
        stream.thread_count = self.threads
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else self.fps
        return container, stream

    def _decode(self, container, stream):
        """Decoded pictures, with a chance to stop after every packet (even one with no picture)."""
        for packet in container.demux(stream):
            if self._reconnect_reason is not None or self.closed:
                yield None
                return
            yield from packet.decode()

    def _cause(self, e: Exception) -> str:
        cause = av_cause(e)
        if "Immediate exit requested" in cause:  # PyAV's read timeout interrupts FFmpeg with this
            cause = f"no data for {self.timeout:g} s (read timed out)"
        elif "Invalid data" in cause or "timed out" in cause.lower():
            cause = f"{cause} (no valid data within {self.timeout:g} s?)"
        return mask_credentials(cause)

    def _generate(self) -> Iterator[Frame]:
        started = time.monotonic()
        index = 0
        failures = 0
        delay = self.backoff_initial
        ever_connected = False
        while not self.closed:
            try:
                container, stream = self._open()
            except SourceError:
                raise
            except Exception as e:  # FFmpeg/OS errors: refused, unreachable, 401, 404, timeout
                failures += 1
                cause = self._cause(e)
                self.record_event("connect_failed", f"{self.uri_masked}: attempt {failures}: {cause}", logging.WARNING)
                self._give_up_or_wait(failures, delay, cause)
                delay = min(delay * 2, self.backoff_max)
                continue
            if ever_connected:
                self.reconnects += 1
                self.request_reset(RESET_RECONNECT)
                self.record_event("reconnect", f"{self.uri_masked}: connected again (reconnect {self.reconnects})")
            ever_connected = self.connected = True
            got = 0
            offset = None
            cause = "stream ended"
            self._reconnect_reason = None
            try:
                for decoded in self._decode(container, stream):
                    if self.closed:
                        return
                    if self._reconnect_reason is not None:
                        cause = f"reconnect requested ({self._reconnect_reason})"
                        break
                    now = time.monotonic() - started
                    # pts: wall clock at the first frame of a connection, then the stream's own clock
                    if decoded.time is None or offset is None:
                        pts = now
                        if decoded.time is not None:
                            offset = now - decoded.time
                    else:
                        pts = decoded.time + offset
                    if got == 0:
                        failures, delay = 0, self.backoff_initial
                    got += 1
                    index += 1
                    yield Frame(self.name, index, pts, decoded.to_ndarray(format="bgr24"))
            except (av.error.FFmpegError, OSError, ValueError) as e:
                cause = self._cause(e)
            finally:
                self.connected = False
                container.close()
            if self.closed:
                return
            self.record_event("disconnect", f"{self.uri_masked}: {cause} after {got} frames", logging.WARNING)
            if got == 0:
                failures += 1
                self._give_up_or_wait(failures, delay, cause)
                delay = min(delay * 2, self.backoff_max)

    def request_reconnect(self, reason: str) -> None:
        """Drop the connection at the next packet and connect again (the graph's stall watchdog
        calls this from another thread). A socket with no data at all is cut sooner by
        FFmpeg's own ``timeout``."""
        self._reconnect_reason = reason

    def _give_up_or_wait(self, failures: int, delay: float, cause: str) -> None:
        if self.max_attempts is not None and failures >= self.max_attempts:
            self.record_event("give_up", f"{self.uri_masked}: {failures} attempts failed", logging.ERROR)
            raise SourceError(self.uri_masked, f"unreachable after {failures} attempts ({cause})")
        self._stop.wait(delay)  # close() interrupts the wait
