"""The unit that flows through the graph."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Frame:
    """One decoded picture of one stream plus what the stages added to it.

    ``image`` is HxWx3 uint8 in BGR order (OpenCV's convention, PyAV ``bgr24``).
    ``index`` is the 1-based decode index for video, or the number in the file
    name for image folders (``in001460.jpg`` -> 1460); masks are named after it.
    ``truth`` is the exact 0/255 foreground mask when the source knows it
    (synthetic scenes), else None.
    ``data`` holds stage outputs by port name, e.g. ``dehazed`` (HxWx3 uint8),
    ``fg_prob`` (HxW float32 in [0, 1]), ``mask`` (HxW uint8 0/255),
    ``objects`` (list of dicts), ``haze_score`` (float).
    """

    stream: str
    index: int
    pts: float | None
    image: np.ndarray
    truth: np.ndarray | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        h, w = self.image.shape[:2]
        return w, h
