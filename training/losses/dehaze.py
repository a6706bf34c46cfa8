"""RI-GAN losses (Dudhane et al. 2019, sec. 3.3): cGAN + λ_ssim·(1 − SSIM) + λ_edge·edge + λ_l1·L1.

SSIM is the Gaussian-window index of Wang et al. (IEEE TIP 2004, eq. 13):
11-tap window, σ = 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged over the
valid region. It is written here (30 lines) instead of adding kornia or
torchmetrics to the dependencies; tests/test_rigan_model.py checks it against
``skimage.metrics.structural_similarity`` with the same settings.

The edge loss is the L1 distance between Sobel gradient maps of the dehazed and
clear images (both directions, every channel), which keeps edges sharp where a
plain L1 loss would accept a blurred compromise.

The adversarial term is the non-saturating cGAN loss of Goodfellow et al.
(2014) / pix2pix (Isola et al. 2017) on patch logits, written with softplus:
−log σ(x) = softplus(−x), −log(1 − σ(x)) = softplus(x).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SSIM_C1 = 0.01 ** 2
_SSIM_C2 = 0.03 ** 2


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).float()


def ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two N x C x H x W batches in [0, 1] (valid region, no padding)."""
    c = x.shape[1]
    g = gaussian_window(size, sigma).to(x)
    gx = g.view(1, 1, 1, size).expand(c, 1, 1, size)
    gy = g.view(1, 1, size, 1).expand(c, 1, size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, one filter per channel
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    s = ((2 * mx * my + _SSIM_C1) * (2 * cov + _SSIM_C2)) / ((mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2))
    return s.mean()


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel responses of every channel: N x 2C x H-2 x W-2."""
    c = x.shape[1]
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    kernels = torch.stack([k, k.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    return F.conv2d(x, kernels, groups=c)


def edge_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (sobel(x) - sobel(y)).abs().mean()


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator: −log D(hazy, clear) − log(1 − D(hazy, G(hazy)))."""
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def g_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator, non-saturating: −log D(hazy, G(hazy))."""
    return F.softplus(-fake_logits).mean()


@dataclass(frozen=True)
class LossWeights:
    adversarial: float = 1.0
    l1: float = 100.0
    ssim: float = 10.0
    edge: float = 10.0


def generator_loss(fake_logits: torch.Tensor | None, dehazed: torch.Tensor, clear: torch.Tensor,
                   w: LossWeights = LossWeights()) -> tuple[torch.Tensor, dict[str, float]]:
    """Total generator loss and its parts (as floats, for the curves)."""
    parts = {
        "l1": (dehazed - clear).abs().mean(),
        "ssim": 1.0 - ssim(dehazed, clear),
        "edge": edge_loss(dehazed, clear),
    }
    total = w.l1 * parts["l1"] + w.ssim * parts["ssim"] + w.edge * parts["edge"]
    if fake_logits is not None and w.adversarial > 0:
        parts["adv"] = g_adv_loss(fake_logits)
        total = total + w.adversarial * parts["adv"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
