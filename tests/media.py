"""Clips the tests encode themselves with PyAV (STYLE.md: tests make their own media)."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable

import av
import numpy as np


def write_clip(path: Path, images: Iterable[np.ndarray], *, fps: int = 25, codec: str = "mpeg4",
               fmt: str | None = None, options: dict | None = None) -> Path:
    """Encode BGR uint8 ``images`` (all of one size) to ``path``, frame i at pts i, and flush."""
    first, images = itertools.tee(iter(images))
    h, w = next(first).shape[:2]
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i, img in enumerate(images):
            f = av.VideoFrame.from_ndarray(img, format="bgr24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
