"""Foreground metrics for validation during training (CDnet rules).

Counting reuses :class:`pipeline.cdnet.Confusion`, the same code the
``hazeflow eval foreground`` command scores with, so the F-measure logged per
epoch is the one the benchmark reports.
"""
from __future__ import annotations

import numpy as np

from pipeline.cdnet import Confusion


def confusion_of(masks, labels, roi: np.ndarray | None = None) -> Confusion:
    """Sum TP/FP/FN/TN over frames; ``masks`` 0/255 (or bool), ``labels`` CDnet labels or exact 0/255 truth."""
    total = Confusion()
    for mask, label in zip(masks, labels):
        if mask.dtype == bool:
            mask = mask.view(np.uint8) * np.uint8(255)
        total.add(mask, label, roi)
    return total


def f_measure(conf: Confusion) -> float:
    return conf.metrics()["F-measure"]
