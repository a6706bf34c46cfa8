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

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import SourceError, SourceNotFoundError

MOTION, STATIC, SHADOW, OUTSIDE_ROI, UNKNOWN = 255, 0, 50, 85, 170
_NUMBER = re.compile(r"(\d+)$")


def read_temporal_roi(folder: Path) -> tuple[int, int]:
    path = folder / "temporalROI.txt"
    if not path.is_file():
        raise SourceError(str(path), "temporalROI.txt missing; a CDnet sequence needs it to know which frames count")
    parts = path.read_text().split()
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]) or int(parts[0]) > int(parts[1]):
        raise SourceError(str(path), f"expected two frame numbers 'first last', got {path.read_text()[:40]!r}")
    return int(parts[0]), int(parts[1])


def _numbered(folder: Path, prefix: str, suffixes: tuple[str, ...]) -> dict[int, Path]:
    files = {}
    for p in folder.iterdir():
        m = _NUMBER.search(p.stem)
        if p.suffix.lower() in suffixes and p.stem.startswith(prefix) and m:
            files[int(m.group(1))] = p
    return files


def _read(path: Path, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flags)
    if image is None:
        raise SourceError(str(path), "cannot decode image")
    return image


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
    """Read a CDnet sequence folder; clear errors for missing ground truth or temporal ROI."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceNotFoundError(str(folder), "no such CDnet sequence folder")
    for sub in ("input", "groundtruth"):
        if not (folder / sub).is_dir():
            raise SourceError(str(folder / sub), f"missing; a CDnet sequence needs {sub}/ to train or validate")
    temporal_roi = read_temporal_roi(folder)
    inputs = _numbered(folder / "input", "in", (".jpg", ".jpeg", ".png"))
    truths = _numbered(folder / "groundtruth", "gt", (".png", ".bmp"))
    if not inputs:
        raise SourceError(str(folder / "input"), "no inNNNNNN images")
    numbers = sorted(inputs)
    first, last = numbers[0], numbers[-1]
    if numbers != list(range(first, last + 1)):
        raise SourceError(str(folder / "input"), "frame numbers are not contiguous")
    lo, hi = temporal_roi
    missing = [n for n in range(max(lo, first), min(hi, last) + 1) if n not in truths]
    if missing:
        raise SourceError(str(folder / "groundtruth"),
                          f"{len(missing)} frames of the temporal ROI have no ground truth (first: gt{missing[0]:06d}.png)")
    grey = np.stack([_read(inputs[n], cv2.IMREAD_GRAYSCALE) for n in numbers])
    h, w = grey.shape[1:]
    labels = np.full((len(numbers), h, w), OUTSIDE_ROI, np.uint8)
    for n in range(max(lo, first), min(hi, last) + 1):
        gt = _read(truths[n], cv2.IMREAD_GRAYSCALE)
        if gt.shape != (h, w):
            raise SourceError(str(truths[n]), f"ground truth is {gt.shape[1]}x{gt.shape[0]}, frames are {w}x{h}")
        labels[n - first] = gt
    roi = None
    if (folder / "ROI.bmp").is_file():
        roi = _read(folder / "ROI.bmp", cv2.IMREAD_GRAYSCALE) > 0
    return CdnetSequence(folder.name, folder, first, grey, labels, roi, temporal_roi)


def window_numbers(current: int, frames: int, stride: int) -> list[int]:
    """Frame numbers of the stream ending at ``current``, oldest first (may go below 1: see ``frame``)."""
    return [current - (frames - 1 - i) * stride for i in range(frames)]
