"""Real frames for calibration and parity, split so the two never share a frame.

``engines`` never imports ``pipeline``: frames are read here with OpenCV (image
folders) or PyAV (video files). The default source is the shipped demo clip
(``assets/demo.mp4``: a real road-traffic video with synthetic haze), so a fresh
clone without ../shared/data can still gate an engine on real pictures.

Split rule (``split_frames``): of the frames read, the first two thirds may
calibrate an int8 graph and the last quarter is kept for parity; the frames in
between are a gap, because neighbouring video frames are near copies of each
other. Every caller (``quantize``, ``build-engine``, the load path's gate) uses
this one rule, so the frames a graph is scored on were never used to make it.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEMO_CLIP = ROOT / "assets" / "demo.mp4"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class FramesError(ValueError):
    def __init__(self, input, cause: str):
        super().__init__(f"{input}: {cause}")
        self.input = str(input)
        self.cause = cause


def read_frames(uri: str | Path, count: int = 32, stride: int = 5) -> list[np.ndarray]:
    """Up to ``count`` BGR uint8 frames, every ``stride``-th, from a video file or an image folder."""
    import cv2

    path = Path(uri)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::stride][:count]
        frames = [f for f in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files) if f is not None]
    elif path.is_file():
        import av

        frames = []
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride == 0:
                    frames.append(frame.to_ndarray(format="bgr24"))
                if len(frames) >= count:
                    break
    else:
        raise FramesError(uri, "calibration/parity frames not found (give a video file or an image folder)")
    if not frames:
        raise FramesError(uri, "no readable frames")
    return frames


def split_frames(frames: list) -> tuple[list, list]:
    """(calibration, held out): the first two thirds and the last quarter, a gap between them."""
    n = len(frames)
    if n < 4:
        raise FramesError("frames", f"{n} frames cannot be split into calibration and held-out parity frames (need 4)")
    calibration = frames[: max(1, (2 * n) // 3)]
    held_out = frames[n - max(1, n // 4):]
    return calibration, held_out


def parity_frames(uri: str | Path | None = None, count: int = 48, stride: int = 3) -> list[np.ndarray]:
    """The held-out part of ``uri`` (default: the shipped demo clip) for a parity check."""
    if uri is None:
        return list(_demo_held_out(count, stride))
    return split_frames(read_frames(uri, count=count, stride=stride))[1]


@functools.lru_cache(maxsize=2)
def _demo_held_out(count: int, stride: int) -> tuple:
    return tuple(split_frames(read_frames(DEMO_CLIP, count=count, stride=stride))[1])
