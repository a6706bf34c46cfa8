"""RI-GAN (Dudhane, Aulakh & Murala, CVPR Workshops 2019): generator and discriminator.

Generator (paper sec. 3.1): an encoder-decoder whose bottleneck is a chain of
residual inception (RI) modules. An RI module runs convolutions of several
receptive fields on the same features, densely connected (each branch also sees
the previous branch's output), fuses them with a 1x1 convolution and adds the
module input back (residual). Encoder features are added to the decoder at the
same scale (skip connections).

Discriminator (paper sec. 3.2): conditional patch discriminator built from
dense residual (DR) blocks: inside a block every convolution sees the
concatenation of all earlier feature maps of the block, and the block adds its
input back. It sees (hazy, candidate) stacked on channels and returns one logit
per patch.

Deviations from the paper (also in docs/models.md):
- ``width`` scales every layer; the paper's width is 64, the CPU default is 16.
- The multi-scale branches are 3x3 convolutions with dilation 1, 2, 3 instead of
  3x3/5x5/7x7 kernels: the same receptive fields at ~1/3 of the cost.
- No normalisation layers (the stage runs on single frames of any size, where
  instance/batch statistics are a liability and cost time on the CPU).
- Output head: the generator estimates a transmission map t (per pixel, from
  the decoder) and an airlight A (three values, from the image-level context)
  and returns J = (I − A) / max(t, 0.05) + A, the inverted scattering model;
  the paper maps straight to J. Still trained end to end on J only (no t or A
  targets); the structure makes learning much faster and generalise better.
- A global-context branch (image mean of the bottleneck input, 1x1 conv,
  added back everywhere) sees image-level haze and airlight. A is a grey level
  plus a tint bounded to +-0.08 per channel (airlight is nearly grey).
- The dark channel of the input (He et al. 2009; 7x7 window) is a fourth input
  channel: a cheap, strong haze cue the network may use or ignore.

Tensors: N x 3 x H x W float in [0, 1], channel order BGR (the pipeline's).
H and W must be multiples of ``STRIDE``; ``pad_to_stride`` / ``crop`` help.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: the generator downsamples twice by 2, so inputs must be multiples of this
STRIDE = 4
#: transmission floor: the inversion amplifies by at most 1 / T_MIN
T_MIN = 0.05


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class ResidualInception(nn.Module):
    """RI module: three densely connected multi-scale branches, 1x1 fusion, residual add."""

    def __init__(self, channels: int):
        super().__init__()
        branch = max(channels // 4, 4)
        self.branches = nn.ModuleList(
            nn.Conv2d(channels + i * branch, branch, 3, padding=d, dilation=d) for i, d in enumerate((1, 2, 3))
        )
        self.fuse = nn.Conv2d(3 * branch, channels, 1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        outs = []
        for conv in self.branches:
            y = self.act(conv(torch.cat(feats, 1) if len(feats) > 1 else x))
            feats.append(y)
            outs.append(y)
        return x + self.fuse(torch.cat(outs, 1))


class RIGenerator(nn.Module):
    """Encoder (c7s1-w, d2w, d4w) -> ``blocks`` RI modules -> decoder (u2w, uw, c7s1-3)."""

    #: port names used by the ONNX export and engines.torch.TorchRunner
    input_names = ("hazy",)
    output_names = ("dehazed",)

    def __init__(self, width: int = 16, blocks: int = 4):
        super().__init__()
        w = width
        self.width, self.blocks = width, blocks
        self.enc1 = nn.Sequential(nn.Conv2d(4, w, 7, padding=3), _act())
        self.enc2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), _act())
        self.enc3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), _act())
        self.body = nn.Sequential(*[ResidualInception(4 * w) for _ in range(blocks)])
        self.dec2 = nn.Sequential(nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), _act())
        self.dec1 = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), _act())
        self.context = nn.Sequential(nn.Conv2d(4 * w, 4 * w, 1), _act())
        # scattering-model head: transmission map t from the decoder, airlight A from the image context
        self.out = nn.Conv2d(w, 1, 7, padding=3)
        self.airlight = nn.Conv2d(4 * w, 3, 1)
        nn.init.zeros_(self.out.weight)
        # t = sigmoid(1.5) ~ 0.82 at the start: a mild dehaze, and the sigmoid is far from
        # saturation (a start at t ~ 0.98 left its gradient 50x smaller and t barely moved)
        nn.init.constant_(self.out.bias, 1.5)
        nn.init.zeros_(self.airlight.weight)
        nn.init.constant_(self.airlight.bias, 1.7)  # A = sigmoid(1.7) ~ 0.85, a typical airlight

    def scattering(self, hazy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(J, t, A): dehazed image, transmission N x 1 x H x W, airlight N x 3 x 1 x 1."""
        prior = dark_channel(hazy)
        e1 = self.enc1(torch.cat([hazy, prior], 1))
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        # image-level context (airlight, haze density) broadcast to every position
        context = self.context(e3.mean(dim=(2, 3), keepdim=True))
        x = self.body(e3 + context)
        x = self.dec2(x) + e2
        x = self.dec1(x) + e1
        t = torch.clamp(torch.sigmoid(self.out(x)), min=T_MIN)
        a = airlight_from_logits(self.airlight(context))
        return torch.clamp((hazy - a) / t + a, 0.0, 1.0), t, a  # J = (I - A) / t + A

    def forward(self, hazy: torch.Tensor) -> torch.Tensor:
        return self.scattering(hazy)[0]


class RIGeneratorPorts(RIGenerator):
    """Same weights; also returns t and A, so the stage can apply them at full resolution.

    This is the graph exported to ONNX (outputs ``dehazed``, ``transmission``, ``airlight``).
    """

    output_names = ("dehazed", "transmission", "airlight")

    def forward(self, hazy: torch.Tensor):
        return self.scattering(hazy)


#: largest departure of one airlight channel from the grey level
AIRLIGHT_TINT = 0.08


def airlight_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Airlight near grey: a grey level plus a bounded per-channel tint.

    Scattering by haze droplets is nearly wavelength-independent (Mie regime), so
    real airlight is close to grey; a free colour per channel let the network
    put colour casts on whole images when it misjudged A.
    """
    mean = logits.mean(dim=1, keepdim=True)
    return torch.sigmoid(mean) + AIRLIGHT_TINT * torch.tanh(logits - mean)


def dark_channel(image: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Dark channel (He et al. 2009, eq. 5): min over colours, then min over a size x size window."""
    m = torch.amin(image, dim=1, keepdim=True)
    return -F.max_pool2d(-m, size, stride=1, padding=size // 2)


class DenseResidual(nn.Module):
    """DR block: ``layers`` densely connected 3x3 convolutions, 1x1 fusion, residual add."""

    def __init__(self, channels: int, growth: int, layers: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(layers))
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, 1))))
        return x + self.fuse(torch.cat(feats, 1))


class RIDiscriminator(nn.Module):
    """Conditional patch discriminator: (hazy, image) -> N x 1 x H/8 x W/8 logits."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(6, w, 4, stride=2, padding=1), _act(),
            DenseResidual(w, w // 2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), _act(),
            DenseResidual(2 * w, w),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), _act(),
            DenseResidual(4 * w, w),
            nn.Conv2d(4 * w, 1, 3, padding=1),
        )

    def forward(self, hazy: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([hazy, image], 1))


def generator_light() -> RIGeneratorPorts:
    """The lighter variant (Jetson / slow CPUs): width 8, 3 RI modules."""
    return RIGeneratorPorts(width=8, blocks=3)


def generator_shape(state: dict) -> tuple[int, int]:
    """(width, blocks) of a generator state_dict, so a file loads without being told its size."""
    width = int(state["enc1.0.weight"].shape[0])
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    return width, blocks


def pad_to_stride(x: torch.Tensor, stride: int = STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to multiples of ``stride``; returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def dehaze_any_size(model: RIGenerator, hazy: torch.Tensor) -> torch.Tensor:
    """Run the generator on an image of any size (pad to the stride, crop back)."""
    padded, (h, w) = pad_to_stride(hazy)
    return model(padded)[..., :h, :w]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_macs(model: nn.Module, shape: tuple[int, int, int, int]) -> int:
    """Multiply-accumulates of all convolutions for one input of ``shape`` (FLOPs ~ 2x this)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.weight.shape
        if isinstance(mod, nn.ConvTranspose2d):
            # every input pixel scatters Cout*k*k products
            total += inp[0].numel() * k[1] * k[2] * k[3]
        else:
            total += out.numel() * k[1] * k[2] * k[3]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            if isinstance(model, RIDiscriminator):
                model(torch.zeros(shape), torch.zeros(shape))
            else:
                model(torch.zeros(shape))
    finally:
        for h in handles:
            h.remove()
    return total
