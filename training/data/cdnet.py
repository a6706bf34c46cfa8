"""CDnet-layout sequences for training and validating MSFgNet.

A sequence folder holds ``input/inNNNNNN.jpg``, ``groundtruth/gtNNNNNN.png``,
``temporalROI.txt`` ("first last") and optionally ``ROI.bmp``. Labels follow
the CDnet-2014 rules (Wang et al. 2014): 255 motion, 0 static, 50 shadow
(counts as background), 85 outside the ROI and 170 unknown (both ignored);
only frames inside the temporal ROI count.

Frames are kept in memory as full-resolution grey uint8 (the model sees grey),
so sampling a training window costs only a crop and a resize.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.cdnet import open_sequence, read_image
from pipeline.errors import SourceError

MOTION, STATIC, SHADOW, OUTSIDE_ROI, UNKNOWN = 255, 0, 50, 85, 170


def labels_to_targets(gt: np.ndarray, roi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CDnet labels -> (foreground bool, valid bool): 50 is background, 85/170 and outside ROI are ignored."""
    fg = gt == MOTION
    valid = (gt != OUTSIDE_ROI) & (gt != UNKNOWN)
    if roi is not None:
        valid &= roi
    return fg, valid


@dataclass
class CdnetSequence:
    """One CDnet sequence in memory: grey frames and raw labels indexed by frame number."""

    name: str
    folder: Path
    first: int                   # frame number of grey[0]
    grey: np.ndarray             # (N, H, W) uint8
    labels: np.ndarray           # (N, H, W) uint8 CDnet labels
    roi: np.ndarray | None       # (H, W) bool, True inside the spatial ROI
    temporal_roi: tuple[int, int]

    @property
    def last(self) -> int:
        return self.first + len(self.grey) - 1

    def frame(self, number: int) -> np.ndarray:
        """Grey frame by number; numbers before the first repeat the first (the stream's warm-up)."""
        return self.grey[min(max(number, self.first), self.last) - self.first]

    def targets(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        return labels_to_targets(self.labels[number - self.first], self.roi)

    def check_range(self, first: int, last: int) -> None:
        lo, hi = self.temporal_roi
        if first > last or first < max(lo, self.first) or last > min(hi, self.last):
            raise SourceError(str(self.folder), f"frames {first}:{last} are outside the labelled range "
                                                f"{max(lo, self.first)}:{min(hi, self.last)} (temporalROI.txt)")


def load_sequence(folder: str | Path) -> CdnetSequence:
    """Read a CDnet sequence folder into memory. The layout (input/, groundtruth/,
    temporalROI.txt, ROI.bmp) is checked by ``pipeline.cdnet.open_sequence``, the
    same code the evaluation uses; here frames must also be contiguous and every
    frame of the temporal ROI must have its ground truth."""
    seq = open_sequence(folder)
    numbers = [n for n, _ in seq.frames]
    first, last = numbers[0], numbers[-1]
    if numbers != list(range(first, last + 1)):
        raise SourceError(str(seq.root / "input"), "frame numbers are not contiguous")
    lo, hi = seq.temporal_roi
    scored = range(max(lo, first), min(hi, last) + 1)
    truths = {n: seq.root / "groundtruth" / f"gt{n:06d}.png" for n in scored}
    missing = [n for n, path in truths.items() if not path.is_file()]
    if missing:
        raise SourceError(str(seq.root / "groundtruth"),
                          f"{len(missing)} frames of the temporal ROI have no ground truth (first: gt{missing[0]:06d}.png)")
    grey = np.stack([read_image(path, cv2.IMREAD_GRAYSCALE) for _, path in seq.frames])
    h, w = grey.shape[1:]
    labels = np.full((len(numbers), h, w), OUTSIDE_ROI, np.uint8)
    for n, path in truths.items():
        gt = read_image(path, cv2.IMREAD_GRAYSCALE)
        if gt.shape != (h, w):
            raise SourceError(str(path), f"ground truth is {gt.shape[1]}x{gt.shape[0]}, frames are {w}x{h}")
        labels[n - first] = gt
    return CdnetSequence(seq.name, seq.root, first, grey, labels, seq.roi, seq.temporal_roi)


def window_numbers(current: int, frames: int, stride: int) -> list[int]:
    """Frame numbers of the stream ending at ``current``, oldest first (may go below 1: see ``frame``)."""
    return [current - (frames - 1 - i) * stride for i in range(frames)]
