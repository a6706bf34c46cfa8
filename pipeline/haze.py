"""Atmospheric scattering model used to synthesise haze.

Koschmieder's law (1924), in the form McCartney (1976) and He et al. (CVPR 2009,
eq. 1) use for dehazing:

    I(x) = J(x) * t(x) + A * (1 - t(x)),      t(x) = exp(-beta * d(x))

J is the clear scene radiance, A the global atmospheric light (airlight), t the
transmission, beta the scattering coefficient and d the scene depth. RI-GAN
(Dudhane et al. 2019) trains on pairs synthesised with this model.

Runtime code: numpy and OpenCV only, no torch.
"""
from __future__ import annotations

import numpy as np

__all__ = ["transmission", "apply_haze", "road_depth"]


def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """t = exp(-beta * d) as float32, same shape as ``depth`` (beta >= 0)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    t = np.asarray(depth, dtype=np.float32) * np.float32(-beta)
    np.exp(t, out=t)
    return t


def _airlight_vector(airlight, channels: int, scale: float) -> np.ndarray:
    a = np.asarray(airlight, dtype=np.float32)
    if a.ndim == 0:
        a = np.full(channels, a, dtype=np.float32)
    if a.shape != (channels,):
        raise ValueError(f"airlight must be a scalar or {channels} values, got shape {a.shape}")
    return a * np.float32(scale)


def apply_haze(image: np.ndarray, t: np.ndarray, airlight=0.9, out: np.ndarray | None = None) -> np.ndarray:
    """Haze a clear image: I = J*t + A*(1-t).

    ``image``: HxWxC (or HxW) uint8 in [0, 255] or float in [0, 1].
    ``t``: HxW (or broadcastable) transmission in [0, 1].
    ``airlight``: scalar or per-channel A on the [0, 1] scale (in the image's
    channel order).
    Returns the same dtype as the input: uint8 rounded and clipped to [0, 255],
    or float32 clipped to [0, 1]. ``out`` (float32, image shape) may be given to
    reuse a buffer; it is only used for float inputs.
    """
    image = np.asarray(image)
    is_uint8 = image.dtype == np.uint8
    scale = 255.0 if is_uint8 else 1.0
    channels = image.shape[2] if image.ndim == 3 else 1
    a = _airlight_vector(airlight, channels, scale)
    t = np.asarray(t, dtype=np.float32)
    if image.ndim == 3 and t.ndim == 2:
        t = t[:, :, None]
    if image.ndim == 2:
        a = a[0]
    # I = A + (J - A) * t: one subtraction, one multiply-add over the image.
    hazy = out if (out is not None and not is_uint8) else None
    hazy = np.subtract(image, a, out=hazy, dtype=np.float32)
    hazy *= t
    hazy += a
    np.clip(hazy, 0.0, scale, out=hazy)
    if is_uint8:
        return (hazy + 0.5).astype(np.uint8)
    return hazy


def road_depth(
    h: int,
    w: int,
    horizon: float = 0.35,
    near: float = 3.0,
    far: float = 120.0,
    sky: float = 250.0,
) -> np.ndarray:
    """Plausible depth in metres for a camera looking down a road.

    Rows below ``horizon`` (a fraction of the height) are a flat ground plane
    seen by a pinhole camera: depth is inversely proportional to the distance
    below the horizon row, ``near`` at the bottom row and capped at ``far``.
    Rows at and above the horizon are sky at ``sky`` metres. Returns HxW float32.
    """
    if not 0.0 <= horizon < 1.0:
        raise ValueError(f"horizon must be in [0, 1), got {horizon}")
    if not 0 < near <= far <= sky:
        raise ValueError("need 0 < near <= far <= sky")
    rows = np.arange(h, dtype=np.float32)
    horizon_row = horizon * h
    below = rows - horizon_row
    bottom = max(h - 1 - horizon_row, 1.0)
    with np.errstate(divide="ignore"):
        depth = np.where(below > 0, near * bottom / np.maximum(below, 1e-6), sky)
    depth = np.where(below > 0, np.minimum(depth, far), sky).astype(np.float32)
    return np.broadcast_to(depth[:, None], (h, w)).copy()
