"""CDnet-2014 sequences and the benchmark's scoring rules.

Layout of one sequence (Goyette et al. 2012, Wang et al. 2014)::

    <name>/input/in000001.jpg ...       frames, numbered from 1
    <name>/groundtruth/gt000001.png ... labels per pixel
    <name>/temporalROI.txt              "first last": the frames that are scored
    <name>/ROI.bmp                      optional spatial region of interest (non-zero = inside)

Ground-truth labels: 0 static, 50 shadow (scored as background), 85 outside
the ROI (ignored), 170 unknown / motion boundary (ignored), 255 motion.
Metrics are computed from TP/FP/FN/TN summed over the scored frames of a
sequence; a category or a set of sequences is the mean of the per-sequence
metrics, as on changedetection.net.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import SourceError, SourceNotFoundError

METRICS = ("Recall", "Specificity", "FPR", "FNR", "PWC", "Precision", "F-measure")

_FRAME_NAME = re.compile(r"^in(\d+)\.(jpe?g|png|bmp)$", re.IGNORECASE)

# ground-truth label -> class: 0 ignored, 1 background, 2 foreground
_LABEL_CLASS = np.zeros(256, np.uint8)
_LABEL_CLASS[0] = _LABEL_CLASS[50] = 1
_LABEL_CLASS[255] = 2


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """cv2.imread that raises a SourceError naming the file instead of returning None."""
    image = cv2.imread(str(path), flags)
    if image is None:
        raise SourceError(str(path), "cannot read this image (missing, truncated or not an image)")
    return image


@dataclass(frozen=True)
class CdnetSequence:
    root: Path
    name: str
    frames: tuple[tuple[int, Path], ...]   # (frame number, input image), in order
    temporal_roi: tuple[int, int]          # first and last scored frame, inclusive
    roi: np.ndarray | None = field(default=None, repr=False)  # bool HxW, None = whole frame

    def is_scored(self, number: int) -> bool:
        return self.temporal_roi[0] <= number <= self.temporal_roi[1]

    def groundtruth(self, number: int) -> np.ndarray:
        """Label image of one frame (HxW uint8)."""
        return read_image(self.root / "groundtruth" / f"gt{number:06d}.png", cv2.IMREAD_GRAYSCALE)


def open_sequence(path: str | Path) -> CdnetSequence:
    """Check the CDnet layout of ``path`` and list its frames; errors say what is missing."""
    root = Path(path)
    if not root.is_dir():
        raise SourceNotFoundError(str(path), "no such folder")
    frames = _list_frames(root)
    if not (root / "groundtruth").is_dir():
        raise SourceError(str(path), "no groundtruth/ folder (CDnet layout: groundtruth/gtNNNNNN.png)")
    return CdnetSequence(root=root, name=root.resolve().name, frames=frames,
                         temporal_roi=_read_temporal_roi(root), roi=_read_roi(root, frames))


def _list_frames(root: Path) -> tuple[tuple[int, Path], ...]:
    folder = root / "input"
    if not folder.is_dir():
        raise SourceError(str(root), "no input/ folder (CDnet layout: input/inNNNNNN.jpg)")
    frames = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _FRAME_NAME.match(p.name)))
    if not frames:
        raise SourceError(str(folder), "no frames named inNNNNNN.jpg")
    return tuple(frames)


def _read_temporal_roi(root: Path) -> tuple[int, int]:
    path = root / "temporalROI.txt"
    if not path.is_file():
        raise SourceError(str(path), "temporalROI.txt missing; a CDnet sequence needs it ('first last' scored frame numbers)")
    words = path.read_text(errors="replace").split()
    try:
        first, last = int(words[0]), int(words[1])
    except (IndexError, ValueError):
        raise SourceError(str(path), f"expected two frame numbers, got {' '.join(words[:4])!r}") from None
    if first < 1 or last < first:
        raise SourceError(str(path), f"invalid frame range {first}..{last}")
    return first, last


def _read_roi(root: Path, frames) -> np.ndarray | None:
    path = root / "ROI.bmp"
    if not path.is_file():
        return None
    roi = read_image(path, cv2.IMREAD_GRAYSCALE) > 0
    h, w = read_image(frames[0][1]).shape[:2]
    if roi.shape != (h, w):
        raise SourceError(str(path), f"size {roi.shape[1]}x{roi.shape[0]} differs from the frames' {w}x{h}")
    return roi


@dataclass
class Confusion:
    """TP/FP/FN/TN pixel counts accumulated over frames, with the CDnet label rules."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, mask: np.ndarray, labels: np.ndarray, roi: np.ndarray | None = None) -> None:
        """Count one frame. ``mask``: foreground where > 127; ``labels``: CDnet ground truth."""
        if mask.shape != labels.shape:
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but ground truth is "
                             f"{labels.shape[1]}x{labels.shape[0]}")
        cls = cv2.LUT(labels, _LABEL_CLASS)
        if roi is not None:
            cls[~roi] = 0
        # one histogram of (truth class, prediction) gives all four counts at once
        code = cls * np.uint8(2) + (mask > 127).view(np.uint8)
        counts = np.bincount(code.reshape(-1), minlength=6)
        self.tn += int(counts[2])
        self.fp += int(counts[3])
        self.fn += int(counts[4])
        self.tp += int(counts[5])

    def __iadd__(self, other: "Confusion") -> "Confusion":
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    def metrics(self) -> dict[str, float]:
        """The seven CDnet metrics; NaN where a ratio is undefined (e.g. no foreground at all)."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        recall = _ratio(tp, tp + fn)
        precision = _ratio(tp, tp + fp)
        if math.isnan(recall + precision):
            f = math.nan
        else:  # no true positive at all scores 0, not "undefined"
            f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "Recall": recall,
            "Specificity": _ratio(tn, tn + fp),
            "FPR": _ratio(fp, fp + tn),
            "FNR": _ratio(fn, tp + fn),
            "PWC": 100.0 * _ratio(fn + fp, tp + fn + fp + tn),
            "Precision": precision,
            "F-measure": f,
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def mean_metrics(per_sequence: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over sequences, skipping sequences where it is undefined."""
    keys = per_sequence[0].keys() if per_sequence else METRICS
    out = {}
    for key in keys:
        values = [m[key] for m in per_sequence if not math.isnan(m[key])]
        out[key] = sum(values) / len(values) if values else math.nan
    return out
