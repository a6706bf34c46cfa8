"""Start, stop, kill, pause and restart the real RTSP server of tests/rtsp_server.py.

The server runs under /usr/bin/python3 (PyGObject + gst-rtsp-server from Debian);
tests using it are marked ``rtsp`` and skip where conftest's probe fails.
"""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode_h264_clip(path: Path, frames: int = 50, size: tuple[int, int] = (320, 240), fps: int = 25) -> Path:
    """A deterministic H.264 MP4 (moving bar, frame number in the green level) encoded with PyAV."""
    import av

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bframes": "0", "g": str(fps)}  # no B-frames: RTP order = decode order
        for i in range(frames):
            image = np.full((height, width, 3), 40, np.uint8)
            x = (i * 6) % (width - 24)
            image[:, x:x + 24] = (230, 230, 230)
            image[..., 1] = np.uint8(min(40 + 4 * i, 250))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class RtspServer:
    """One gst-rtsp-server process on 127.0.0.1; serves ``/test``.

    ``file``: an H.264 MP4/MKV to send, else a live test pattern of ``size`` at ``fps``.
    """

    def __init__(self, port: int | None = None, *, file: Path | None = None, size: str = "320x240", fps: int = 25,
                 loop: bool = False, user: str | None = None, password: str | None = None):
        self.port = port or free_port()
        self.file, self.size, self.fps, self.loop = file, size, fps, loop
        self.user, self.password = user, password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/test"

    def command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port)]
        cmd += ["--file", str(self.file)] + (["--loop"] if self.loop else []) if self.file else \
            ["--pattern", "--size", self.size, "--fps", str(self.fps)]
        if self.user:
            cmd += ["--user", self.user, "--password", self.password or ""]
        return cmd

    def start(self, timeout: float = 15.0) -> "RtspServer":
        """Start and wait for READY; retries briefly while the port is still held after a kill."""
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, start_new_session=True)
            line = self._read_line(deadline)
            if line.startswith("READY"):
                return self
            self.process.wait(timeout=5)
            error = self.process.stderr.read().strip()
            if "cannot listen" not in error or time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start: {line.strip()} {error[-500:]}")
            time.sleep(0.2)

    def _read_line(self, deadline: float) -> str:
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    return self.process.stdout.readline()
                if self.process.poll() is not None:
                    return ""
        self.kill()
        raise RuntimeError("RTSP server did not print READY in time")

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung camera)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the camera disappears without a goodbye."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_pipes()

    def stop(self) -> None:
        if self.process is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_pipes()

    def restart(self, **changes) -> "RtspServer":
        """Kill and start again on the same port, optionally with other settings (e.g. size)."""
        self.kill()
        for key, value in changes.items():
            setattr(self, key, value)
        return self.start()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe:
                pipe.close()

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
