"""Torch versions of the learned stages' image maths, for the device path (``device: cuda``, ``backend: torch``).

Pure functions on tensors of any device, so the same code is checked on CPU
tensors against the host path it mirrors: ``pipeline.guided.guided_coefficients``
(He, Sun & Tang 2013, eq. 7-8; box filter with cv2.BORDER_REFLECT),
``DehazeStage``'s ``TransmissionUpsampler`` / ``GuidedUpsampler`` (fast guided
upsampling, He & Sun 2015; J = (I − A)/t + A) and OpenCV's INTER_AREA /
INTER_LINEAR resizes and BGR2GRAY. Image tensors are HxWx3 uint8 BGR (the
frame's layout) or NxCxHxW float. Importing this module imports torch: only the
device path does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["reflect_index", "box_filter", "guided_coefficients", "resize_linear", "resize_area", "area_weights",
           "grey_u8", "grey_float", "network_input", "transmission_upsample", "guided_upsample", "dehazed_full"]

_INDEX_CACHE: dict = {}
_WEIGHT_CACHE: dict = {}


# --- borders and filters ---------------------------------------------------------------
def reflect_index(n: int, radius: int) -> np.ndarray:
    """Source index of each position -radius .. n+radius-1 under cv2.BORDER_REFLECT (fedcba|abcdef|fedcba),
    as cv2.borderInterpolate computes it (repeated reflection when radius > n)."""
    out = np.empty(n + 2 * radius, np.int64)
    for i, p in enumerate(range(-radius, n + radius)):
        if n == 1:
            p = 0
        while not 0 <= p < n:
            p = -p - 1 if p < 0 else 2 * n - 1 - p
        out[i] = p
    return out


def _cached_index(n: int, radius: int, device) -> torch.Tensor:
    key = (n, radius, str(device))
    index = _INDEX_CACHE.get(key)
    if index is None:  # built once per size; the host->device copy happens only then
        index = _INDEX_CACHE[key] = torch.from_numpy(reflect_index(n, radius)).to(device)
    return index


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over (2r+1)^2 windows of NxCxHxW float ``x``, borders as cv2.boxFilter(..., BORDER_REFLECT)."""
    h, w = x.shape[-2:]
    padded = x.index_select(-2, _cached_index(h, radius, x.device)).index_select(-1, _cached_index(w, radius, x.device))
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)


def guided_coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float):
    """pipeline.guided.guided_coefficients on NxCxHxW tensors (channel c of ``src`` guided by channel c
    of ``guide``): mean-filtered (a, b) with src ≈ a·guide + b in each window (eq. 7-8)."""
    c = src.shape[1]
    guide = guide.expand_as(src)
    stats = box_filter(torch.cat([guide, src, guide * guide, guide * src], 1), radius)
    mg, ms, mgg, mgs = stats.split(c, 1)
    var = mgg - mg * mg
    cov = mgs - mg * ms
    a = cov / (var + eps)
    b = ms - a * mg
    return box_filter(torch.cat([a, b], 1), radius).split(c, 1)


# --- resizes --------------------------------------------------------------------------
def resize_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """NxCxhxw float -> NxCxHxW, ``size`` = (H, W); cv2.INTER_LINEAR's half-pixel mapping and edge clamp."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def area_weights(src: int, dst: int, shrink: bool) -> np.ndarray:
    """dst x src float64 matrix of cv2.resize INTER_AREA along one axis.

    ``shrink`` (both axes shrink or keep their size): the pixel-area average of
    computeResizeAreaTab; otherwise OpenCV's INTER_AREA enlargement (a linear
    kernel whose weights come from the covered fraction of the source pixel).
    """
    m = np.zeros((dst, src), np.float64)
    scale = src / dst
    if shrink:
        for d in range(dst):
            f1 = d * scale
            f2 = f1 + scale
            cell = min(scale, src - f1)
            s1, s2 = int(np.ceil(f1)), int(np.floor(f2))
            s2 = min(s2, src - 1)
            s1 = min(s1, s2)
            if s1 - f1 > 1e-3:
                m[d, s1 - 1] += (s1 - f1) / cell
            m[d, s1:s2] += 1.0 / cell
            if f2 - s2 > 1e-3:
                m[d, s2] += min(min(f2 - s2, 1.0), cell) / cell
        return m
    inv = dst / src
    scale = 1.0 / inv  # as OpenCV computes it: floor(d * scale) lands on the same side of whole numbers
    for d in range(dst):
        s = int(np.floor(d * scale))
        f = float(np.float32((d + 1) - (s + 1) * inv))
        f = 0.0 if f <= 0 else f - np.floor(f)
        if s < 0:
            s, f = 0, 0.0
        if s >= src - 1:
            s, f = src - 1, 0.0
        m[d, s] += 1.0 - f
        if f:
            m[d, s + 1] += f
    return m


def _weights(src: int, dst: int, shrink: bool, device, dtype) -> torch.Tensor:
    key = (src, dst, shrink, str(device), dtype)
    w = _WEIGHT_CACHE.get(key)
    if w is None:
        w = _WEIGHT_CACHE[key] = torch.from_numpy(area_weights(src, dst, shrink)).to(device=device, dtype=dtype)
    return w


def resize_area(x: torch.Tensor, size: tuple[int, int], quantise: bool = False) -> torch.Tensor:
    """NxCxHxW float -> NxCxhxw, ``size`` = (h, w), as cv2.resize(..., INTER_AREA).

    Integer factors are plain average pooling (OpenCV's fast path); other sizes use
    the separable area weights. ``quantise`` rounds to whole grey levels the way a
    uint8 cv2.resize does: half up in its 2x2 fast path ((sum + 2) >> 2), half to
    even elsewhere (cvRound); a non-integer factor's float sums may still land a
    tie on the other side, one level off.
    """
    (H, W), (h, w) = x.shape[-2:], size
    if (H, W) == (h, w):
        return x
    shrink = H >= h and W >= w
    if shrink and H % h == 0 and W % w == 0:
        y = F.avg_pool2d(x, (H // h, W // w))
        if quantise and (H // h, W // w) == (2, 2):
            return y.add_(0.5).floor_()
    else:
        wy = _weights(H, h, shrink, x.device, x.dtype)
        wx = _weights(W, w, shrink, x.device, x.dtype)
        y = torch.matmul(wy, torch.matmul(x, wx.t()))
    return y.round_() if quantise else y


# --- colour ----------------------------------------------------------------------------
def grey_u8(image: torch.Tensor) -> torch.Tensor:
    """HxWx3 uint8 BGR -> HxW uint8, bit-exact with cv2.cvtColor(COLOR_BGR2GRAY) (its 14-bit fixed point)."""
    if image.dim() == 2:
        return image
    bgr = image.to(torch.int32)
    y = bgr[..., 0] * 1868 + bgr[..., 1] * 9617 + bgr[..., 2] * 4899 + (1 << 13)
    return (y >> 14).to(torch.uint8)


def grey_float(x: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW float BGR -> Nx1xHxW, cv2.cvtColor(COLOR_BGR2GRAY) on float32 (0.114 B + 0.587 G + 0.299 R)."""
    return x[:, 0:1] * 0.114 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.299


# --- dehaze ----------------------------------------------------------------------------
def network_input(image: torch.Tensor, size: tuple[int, int], stride: int, resize: bool) -> torch.Tensor:
    """HxWx3 uint8 BGR -> 1x3xhxw float in [0, 1] (still BGR), as DehazeStage._network_input.

    ``size`` = (w, h) from DehazeStage._network_size. ``resize`` (internal_scale < 1):
    INTER_AREA to ``size``, rounded to uint8 levels like the host. Otherwise the frame
    padded to the stride, BORDER_REFLECT_101 (``reflect``) or replicate for tiny frames.
    """
    H, W = image.shape[:2]
    x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    w, h = size
    if resize:
        x = resize_area(x, (h, w), quantise=True)
    else:
        ph, pw = (-H) % stride, (-W) % stride
        if ph or pw:
            mode = "reflect" if min(H, W) > max(ph, pw) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x.mul_(1.0 / 255.0)


def transmission_upsample(t_low: torch.Tensor, airlight: torch.Tensor, grey_low: torch.Tensor, image: torch.Tensor,
                          radius: int, eps: float, t_min: float = 0.05) -> torch.Tensor:
    """TransmissionUpsampler on tensors: t carried to full size by the guided coefficients of the low-res
    grey frame, then J = (I − A)/t + A. ``t_low``, ``grey_low``: 1x1xhxw float; ``airlight``: 3 values in
    [0, 1]; ``image``: HxWx3 uint8 BGR. Returns HxWx3 uint8."""
    alpha, beta = guided_coefficients(grey_low, t_low, radius, eps)
    H, W = image.shape[:2]
    grey = grey_u8(image).to(torch.float32).mul_(1.0 / 255.0)
    t = resize_linear(alpha, (H, W))[0, 0] * grey
    t.add_(resize_linear(beta, (H, W))[0, 0]).clamp_(min=t_min)
    r = torch.reciprocal(t).unsqueeze(-1)
    a = airlight.reshape(3).to(torch.float32) * 255.0
    f = (image.to(torch.float32) - a).mul_(r).add_(a)
    return f.clamp_(0.0, 255.0).round_().to(torch.uint8)


def guided_upsample(low: torch.Tensor, out_low: torch.Tensor, image: torch.Tensor, radius: int, eps: float):
    """GuidedUpsampler on tensors: per-channel dehazed ≈ a·hazy + b fitted at low resolution, applied at
    full size. ``low``, ``out_low``: 1x3xhxw float in [0, 1]; ``image``: HxWx3 uint8. Returns HxWx3 uint8."""
    a, b = guided_coefficients(low, out_low, radius, eps)
    H, W = image.shape[:2]
    a = resize_linear(a, (H, W))[0].permute(1, 2, 0)
    b = resize_linear(b, (H, W))[0].permute(1, 2, 0)
    f = image.to(torch.float32).mul_(1.0 / 255.0).mul_(a).add_(b).clamp_(0.0, 1.0)
    return f.mul_(255.0).round_().to(torch.uint8)


def dehazed_full(out: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """1x3xhxw network output at full size (internal_scale 1) -> HxWx3 uint8, the stride padding cropped."""
    f = out[0, :, :height, :width].permute(1, 2, 0).to(torch.float32)
    return f.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
