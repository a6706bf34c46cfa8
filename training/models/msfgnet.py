"""MSFgNet: compact end-to-end moving-object detection (Patil & Murala, IEEE T-ITS 2018).

The paper's network has two parts trained end to end:

* **MSNet** (motion saliency) = **BENet**, which estimates the background
  from a short stream of T frames, followed by **SMNet**, which computes a
  temporal saliency map from the current frame and that background;
* **FgNet**, a compact encoder-decoder that turns the saliency into a
  foreground probability map.

This implementation keeps that structure and is sized for real time on two CPU
cores (see docs/models.md for the layer table and every deviation).
The main ones, all made so the model generalises beyond the scenes it was
trained on and runs at 60 frames/s at 160x120:

* input is grey and every frame is standardised on its own (zero mean, unit
  contrast), so a global illumination change or a veil of haze between two
  frames is not motion;
* BENet sees the stream as per-pixel *order statistics* (the T values of each
  pixel sorted over time): whatever order the frames came in, a moving object
  only visits a pixel for a few of them, so the middle of the sorted values is
  the background (the temporal median is the classic estimate) and the 1x1
  layers learn a robust weighting of them;
* SMNet outputs a few saliency channels rather than one map.

Input ``frames``: (N, T, H, W) float32 grey in [0, 1], oldest first, the
current frame last; H and W multiples of :data:`STRIDE`.
Output ``fg_prob``: (N, 1, H, W) float32 foreground probability.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: H and W of the input must be multiples of this (two stride-2 encoder stages)
STRIDE = 4
INPUT_NAME = "frames"
OUTPUT_NAME = "fg_prob"


@dataclass(frozen=True)
class MsfgnetSpec:
    """Hyper-parameters that change the weights' shapes (kept with the checkpoint)."""

    frames: int = 8          # T: frames in the short stream, current one last
    be_channels: int = 8     # BENet hidden width
    sm_channels: int = 8     # SMNet saliency channels handed to FgNet
    enc1: int = 16           # FgNet encoder widths (stride 2, stride 4)
    enc2: int = 32
    wide_context: bool = True   # FgNet: add a 1/8-resolution context branch (larger receptive field)

    def to_dict(self) -> dict:
        return asdict(self)


def sorting_network(n: int) -> list[tuple[int, int]]:
    """Compare-exchange pairs that sort n values (Batcher's odd-even merge sort for powers of 2,
    odd-even transposition otherwise).

    Sorting with elementwise min/max instead of ``torch.sort`` matters for speed: ONNX Runtime's
    TopK over the time axis costs more than all the convolutions together, while the 19
    min/max pairs for T=8 are a few cheap elementwise ops.
    """
    if n & (n - 1) == 0:
        pairs: list[tuple[int, int]] = []

        def merge(lo, hi, r):
            step = 2 * r
            if step < hi - lo:
                merge(lo, hi, step)
                merge(lo + r, hi, step)
                pairs.extend((i, i + r) for i in range(lo + r, hi - r, step))
            else:
                pairs.append((lo, lo + r))

        def sort(lo, hi):
            if hi - lo >= 1:
                mid = lo + (hi - lo) // 2
                sort(lo, mid)
                sort(mid + 1, hi)
                merge(lo, hi, 1)

        sort(0, n - 1)
        return pairs
    return [(i, i + 1) for rnd in range(n) for i in range(rnd % 2, n - 1, 2)]


def sort_over_time(x: torch.Tensor) -> torch.Tensor:
    """Sort (N, T, H, W) ascending along T with a sorting network of min/max ops."""
    values = list(x.split(1, dim=1))
    for i, j in sorting_network(len(values)):
        lo = torch.minimum(values[i], values[j])
        values[j] = torch.maximum(values[i], values[j])
        values[i] = lo
    return torch.cat(values, dim=1)


def standardise(frames: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Per-frame zero mean and per-window unit contrast.

    Removing each frame's own mean cancels global illumination changes inside
    the window; dividing by the window's contrast makes dim, hazy and bright
    scenes look alike to the layers that follow.
    """
    centred = frames - frames.mean(dim=(2, 3), keepdim=True)
    contrast = centred.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
    return centred / (contrast + eps)


class BENet(nn.Module):
    """Background estimation from the T frames of the stream.

    Works on the per-pixel order statistics of the window; the output is the
    temporal median plus a learned correction (1x1 layers, so the estimate of
    a pixel depends only on its own history, as in a background model).
    """

    def __init__(self, frames: int, hidden: int):
        super().__init__()
        self.frames = frames
        self.mix = nn.Sequential(
            nn.Conv2d(frames, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, ordered: torch.Tensor) -> torch.Tensor:
        mid = self.frames // 2
        if self.frames % 2:
            median = ordered[:, mid:mid + 1]
        else:
            median = 0.5 * (ordered[:, mid - 1:mid] + ordered[:, mid:mid + 1])
        return median + self.mix(ordered)


class SMNet(nn.Module):
    """Temporal saliency from the current frame and the estimated background.

    Inputs per pixel: current frame, background, their signed and absolute
    difference and the temporal spread of the window (max - min of the sorted
    values), which is large where the background itself moves (trees, water),
    so the network can learn to discount differences there.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(5, channels, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, current, background, spread):
        diff = current - background
        return self.conv(torch.cat([current, background, diff, diff.abs(), spread], dim=1))


class FgNet(nn.Module):
    """Compact encoder-decoder: saliency -> foreground probability (logits here)."""

    def __init__(self, channels: int, enc1: int, enc2: int, wide_context: bool = False):
        super().__init__()
        # optional 1/8-resolution branch: large, slowly moving objects are only recognised as a
        # whole (not just at their moving edges) with context wider than the 1/4 layers give
        self.wide = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(enc2, enc2, 3, padding=2, dilation=2),
                                  nn.ReLU(inplace=True)) if wide_context else None
        self.down1 = nn.Sequential(nn.Conv2d(channels, enc1, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(nn.Conv2d(enc1, enc2, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        # dilation widens the context at 1/4 resolution for the price of a 3x3 layer
        self.context = nn.Sequential(nn.Conv2d(enc2, enc2, 3, padding=2, dilation=2), nn.ReLU(inplace=True))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(enc2, enc1, 2, stride=2), nn.ReLU(inplace=True))
        self.fuse1 = nn.Sequential(nn.Conv2d(enc1, enc1, 3, padding=1), nn.ReLU(inplace=True))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(enc1, channels, 2, stride=2), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, saliency):
        d1 = self.down1(saliency)
        d2 = self.down2(d1)
        if self.wide is not None:  # interpolate to d2's size: odd sizes at 1/4 stay valid
            d2 = d2 + F.interpolate(self.wide(d2), size=d2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.context(d2)
        u1 = self.fuse1(self.up2(d2) + d1)      # additive skips: no extra channels to convolve
        return self.head(self.up1(u1) + saliency)


class MSFgNet(nn.Module):
    """BENet -> SMNet -> FgNet, one module trained end to end."""

    input_names = (INPUT_NAME,)
    output_names = (OUTPUT_NAME,)

    def __init__(self, spec: MsfgnetSpec | None = None):
        super().__init__()
        self.spec = spec or MsfgnetSpec()
        s = self.spec
        if s.frames < 2:
            raise ValueError("MSFgNet needs at least 2 frames in the stream")
        self.benet = BENet(s.frames, s.be_channels)
        self.smnet = SMNet(s.sm_channels)
        self.fgnet = FgNet(s.sm_channels, s.enc1, s.enc2, s.wide_context)

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        z = standardise(frames)
        ordered = sort_over_time(z)
        background = self.benet(ordered)
        spread = ordered[:, -1:] - ordered[:, :1]
        saliency = self.smnet(z[:, -1:], background, spread)
        return self.fgnet(saliency)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(frames))


def build(**spec) -> MSFgNet:
    """Factory used by the runtime's torch backend (``training.models.msfgnet:build``)."""
    return MSFgNet(MsfgnetSpec(**spec))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: MSFgNet, height: int, width: int) -> int:
    """Multiply-accumulates of the conv layers for one HxW frame (FLOPs ~ 2x this)."""
    macs = 0
    hooks = []

    def conv_hook(module, inputs, output):
        nonlocal macs
        k = module.kernel_size[0] * module.kernel_size[1]
        per_output = module.in_channels // module.groups * k
        if isinstance(module, nn.ConvTranspose2d):
            macs += inputs[0].numel() * module.out_channels * k // module.groups
        else:
            macs += output.numel() * per_output

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(conv_hook))
    with torch.no_grad():
        model(torch.zeros(1, model.spec.frames, height, width))
    for h in hooks:
        h.remove()
    return macs


def check_input_size(height: int, width: int) -> None:
    if height % STRIDE or width % STRIDE:
        raise ValueError(f"input {width}x{height} is not a multiple of the network stride {STRIDE}")
