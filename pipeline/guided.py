"""Guided filter (He, Sun & Tang, ECCV 2010 / TPAMI 2013), grey guide.

``guided_filter`` uses OpenCV's contrib implementation (``cv2.ximgproc``) when the
installed OpenCV has it and the box-filter form of eq. 7-8 otherwise, so the DCP
stage and the haze synthesis also run with plain ``opencv-python-headless`` (the
GPU machines' image has no contrib module).
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["guided_coefficients", "guided_filter", "HAVE_XIMGPROC"]

HAVE_XIMGPROC = hasattr(cv2, "ximgproc") and hasattr(cv2.ximgproc, "guidedFilter")


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    k = 2 * radius + 1
    return cv2.boxFilter(x, -1, (k, k), borderType=cv2.BORDER_REFLECT)


def guided_coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float):
    """Mean-filtered linear coefficients (a, b) of eq. 7-8: ``src ≈ a * guide + b`` in each
    window. Upsampling a and b and applying them to a full-size guide carries a low-resolution
    result to full resolution (the dehaze stage does this)."""
    mg, ms = _box(guide, radius), _box(src, radius)
    var = _box(guide * guide, radius) - mg * mg
    cov = _box(guide * src, radius) - mg * ms
    a = cov / (var + eps)
    b = ms - a * mg
    return _box(a, radius), _box(b, radius)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, *, contrib: bool | None = None):
    """``src`` (HxW float32) filtered with the grey ``guide`` (HxW float32, same size): edge-preserving
    smoothing whose edges follow the guide. ``contrib`` forces (True) or avoids (False) cv2.ximgproc."""
    use = HAVE_XIMGPROC if contrib is None else contrib
    if use:
        return cv2.ximgproc.guidedFilter(guide, src, radius, eps)
    guide = guide.astype(np.float32, copy=False)
    src = src.astype(np.float32, copy=False)
    a, b = guided_coefficients(guide, src, radius, eps)
    return a * guide + b
