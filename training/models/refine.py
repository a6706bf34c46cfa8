"""A learned full-resolution edge for MSFgNet's mask (``msfgnet: {refine: learned}``).

MSFgNet works at half the input size; its probability, upsampled, is soft where a vehicle's
outline is, and the guided filter (pipeline.stages.msfgnet.refine_guided) puts it back on the
picture's edges only linearly. This small head sees, at the input's full size, the upsampled
probability, its guided version, the colour frame and how much the frame changed against two
past frames of the window (pipeline.refine.refine_inputs), and adds a correction to the
guided probability's logit:

    logit = log(g / (1 - g)) + head(x),   g = clamp(guided, 1e-3, 1 - 1e-3)

The last layer starts at zero, so an untrained head gives the guided mask back.
Three 3x3 convolutions (the middle one dilated by 2) and a 1x1: a 9x9 reach, about 1.7 k
multiply-accumulates a pixel at 8 channels. On the host the stage runs it (ONNX Runtime) only on
the rectangle around the probability, as the guided filter; the device path runs it (PyTorch) on
the whole frame.

Input ``features``: (N, C, H, W) float32 (pipeline.refine.FEATURES); output ``fg_logit``:
(N, 1, H, W) float32.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

INPUT_NAME = "features"
OUTPUT_NAME = "fg_logit"
CLAMP = 1e-3


@dataclass(frozen=True)
class RefineSpec:
    """Hyper-parameters that change the weights' shapes (kept with the checkpoint)."""

    inputs: int = 7        # len(pipeline.refine.FEATURES)
    channels: int = 8
    dilation: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class MsfgnetRefine(nn.Module):
    def __init__(self, spec: RefineSpec | None = None):
        super().__init__()
        self.spec = s = spec or RefineSpec()
        c = s.channels
        self.head = nn.Sequential(
            nn.Conv2d(s.inputs, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=s.dilation, dilation=s.dilation), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 1, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        g = features[:, 1:2].clamp(CLAMP, 1 - CLAMP)
        return torch.log(g / (1 - g)) + self.head(features)


def build(**spec) -> MsfgnetRefine:
    """Factory used by the runtime's torch backend (``training.models.refine:build``)."""
    return MsfgnetRefine(RefineSpec(**spec))
