"""Losses for foreground segmentation with ignored pixels (CDnet labels 85/170).

The paper trains MSFgNet with a pixel-wise cross-entropy. Foreground is a few
percent of the pixels, so we add a soft Dice term (Milletari et al. 2016), which
is a differentiable stand-in for the F-measure the benchmark reports; both
terms skip pixels whose weight is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(1.0)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice over the whole batch (one ratio, so empty windows do not dominate)."""
    prob = torch.sigmoid(logits) * weight
    target = target * weight
    inter = (prob * target).sum()
    return 1 - (2 * inter + eps) / (prob.sum() + target.sum() + eps)


def foreground_loss(logits, target, weight, dice_weight: float = 1.0) -> torch.Tensor:
    return masked_bce(logits, target, weight) + dice_weight * soft_dice(logits, target, weight)
