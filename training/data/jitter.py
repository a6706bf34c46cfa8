"""Camera shake applied to real frames and to their CDnet ground truth.

A pole-mounted camera in wind moves by a slow wander plus a sway: here each of
dx, dy (pixels) and the roll angle (degrees) is a mean-reverting random walk
(an Ornstein-Uhlenbeck process, so it stays near the centre) plus one sinusoid
of random amplitude, frequency and phase, squashed with ``max * tanh(x / max)``
so it never exceeds the bound and does not stick to it. Everything is drawn
from ``numpy.random.default_rng(seed)``: one seed, one trajectory.

Shifts are given in pixels of a 320-pixel-wide picture (CDnet's highway is
320x240) and scaled with the width of the frame they are applied to, so the
same trajectory shakes a 640x360 frame by twice as many pixels.

The image is warped with bilinear interpolation; the border it had no pixels
for is filled by reflection (a real camera would have seen *something* there;
a constant colour would be an edge that a background model learns in a frame).
The labels are warped with nearest-neighbour and those border pixels become
85 ("outside the ROI"), so the CDnet scoring (``pipeline.cdnet``) and training
(``training.data.cdnet.labels_to_targets``) ignore them.

numpy and OpenCV only (no torch): the runtime's tools and tests use it too.

>>> path = shake_trajectory(300, seed=7)            # (300, 3): dx, dy, degrees
>>> image2, labels2 = jitter_pair(image, labels, path[10])
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

REFERENCE_WIDTH = 320   # shifts of a Shake are in pixels at this frame width
OUTSIDE_ROI = 85        # CDnet label: ignored by the scoring


@dataclass(frozen=True)
class Shake:
    """Bounds and dynamics of a shake trajectory (pixels at 320 wide, degrees, frames)."""

    max_shift: float = 15.0          # |dx|, |dy| never exceed this
    max_rotation: float = 1.0        # |roll| never exceeds this (degrees)
    walk_step: float = 1.5           # std of the random walk's step per frame (pixels)
    walk_pull: float = 0.05          # fraction of the offset pulled back to 0 per frame
    sway: float = 8.0                # largest sway amplitude (pixels)
    sway_period: tuple[float, float] = (3.0, 30.0)   # sway period range (frames)

    def __post_init__(self):
        if self.max_shift < 0 or self.max_rotation < 0 or self.walk_step < 0 or self.sway < 0:
            raise ValueError(f"shake bounds must be >= 0: {self}")
        if not 0 <= self.walk_pull <= 1:
            raise ValueError(f"walk_pull must be in [0, 1], got {self.walk_pull}")
        lo, hi = self.sway_period
        if not 0 < lo <= hi:
            raise ValueError(f"sway_period must be 0 < low <= high, got {self.sway_period}")


def _axis(rng: np.random.Generator, frames: int, bound: float, step: float, pull: float,
          sway: float, period: tuple[float, float]) -> np.ndarray:
    walk = np.empty(frames)
    x = 0.0
    for t, e in enumerate(rng.normal(0.0, step, frames)):
        x = (1.0 - pull) * x + e
        walk[t] = x
    amplitude = rng.uniform(0.0, sway)
    phase = rng.uniform(0.0, 2 * np.pi)
    freq = 1.0 / rng.uniform(*period)
    raw = walk + amplitude * np.sin(2 * np.pi * freq * np.arange(frames) + phase)
    if bound == 0:
        return np.zeros(frames)
    return bound * np.tanh(raw / bound)


def shake_trajectory(frames: int, seed: int, shake: Shake = Shake()) -> np.ndarray:
    """(frames, 3) float64 offsets per frame: dx, dy (pixels at 320 wide) and roll (degrees)."""
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    rng = np.random.default_rng(seed)
    s = shake
    # the roll follows the same dynamics, scaled from pixels to its own bound
    k = s.max_rotation / s.max_shift if s.max_shift else 0.0
    dx = _axis(rng, frames, s.max_shift, s.walk_step, s.walk_pull, s.sway, s.sway_period)
    dy = _axis(rng, frames, s.max_shift, s.walk_step, s.walk_pull, s.sway, s.sway_period)
    roll = _axis(rng, frames, s.max_rotation, s.walk_step * k, s.walk_pull, s.sway * k, s.sway_period)
    return np.stack([dx, dy, roll], axis=1)


def shake_matrix(offset, size: tuple[int, int]) -> np.ndarray:
    """2x3 affine of one trajectory row for a frame of ``size`` (w, h): roll about the centre, then shift."""
    dx, dy, roll = (float(v) for v in offset)
    w, h = size
    k = w / REFERENCE_WIDTH
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), roll, 1.0)
    m[0, 2] += dx * k
    m[1, 2] += dy * k
    return m


def jitter_image(image: np.ndarray, offset, border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """``image`` (HxW or HxWxC) moved by one trajectory row; bilinear, border filled by ``border``."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, shake_matrix(offset, (w, h)), (w, h), flags=cv2.INTER_LINEAR, borderMode=border)


def jitter_labels(labels: np.ndarray, offset, roi: np.ndarray | None = None) -> np.ndarray:
    """CDnet labels (HxW uint8) moved like the image; nearest, and 85 where no label came from.

    ``roi`` (HxW bool, the sequence's ROI.bmp) is folded in first: pixels outside it
    become 85 too, so the moved labels carry the moved ROI and need no ROI.bmp.
    """
    h, w = labels.shape[:2]
    if roi is not None:
        labels = np.where(roi, labels, np.uint8(OUTSIDE_ROI)).astype(np.uint8)
    return cv2.warpAffine(labels, shake_matrix(offset, (w, h)), (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=OUTSIDE_ROI)


def jitter_pair(image: np.ndarray, labels: np.ndarray, offset, roi: np.ndarray | None = None,
                border: int = cv2.BORDER_REFLECT_101) -> tuple[np.ndarray, np.ndarray]:
    """A frame and its ground truth moved by the same trajectory row."""
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but labels are "
                         f"{labels.shape[1]}x{labels.shape[0]}")
    return jitter_image(image, offset, border), jitter_labels(labels, offset, roi)
