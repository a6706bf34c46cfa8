"""Cutting blobs that hold more than one vehicle, for the blob stage.

Two vehicles that the mask joins from the first frame one of them is seen (side by side through
a shadow, or a vehicle entering the picture behind another it touches) get one track, and the
occlusion rule of the tracker cannot help: it only carries vehicles that were tracked apart
before. Two rules cut such blobs before tracking:

* **Grown past its tracks.** A track seen in the last two frames predicts its box (last box
  moved and resized by its recent motion and growth; cut by the picture's border, its free sides
  moved and its border sides held). When one or more predicted centres lie inside a blob and the
  blob's box is ``split_growth`` times their areas together or more, something joined them: the
  blob's pixels inside the predictions (each grown by ``CORE_MARGIN`` on each side, for the
  vehicle's own change of size) stay one piece and the connected parts outside them are pieces
  of their own.
* **Wider than one vehicle.** ``RowWidths`` learns the width of a single vehicle's blob per image
  row from tracks that kept a steady size (on a flat road it grows linearly with the bottom row,
  the perspective). A piece at least ``split_width`` times that wide at its bottom row is cut into
  ``round(width / expected)`` pieces side by side, each cut at the emptiest column near its
  nominal place.
* **Two vehicles at different distances side by side** (``split_staggered``). In neighbouring
  lanes the nearer vehicle is lower and wider, so the pair is less than ``split_width`` times the
  width expected at the blob's bottom row. A piece at least ``split_staggered`` times that wide is
  cut at the column where each side is as wide as one vehicle at its own lowest row
  (``cut_staggered``), when there is one.

Pieces are boolean masks over the blob's box; what ends up smaller than ``min_area`` is dropped.
A blob that neither rule fires on is passed on as it was. The thresholds were chosen on
validation scenes (docs/analytics.md).
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np

#: share of a predicted box's width and height added on each side for the track's own piece
CORE_MARGIN = 0.15
#: a piece is cut side by side into at most this many vehicles
MAX_SIDE_BY_SIDE = 4


class RowWidths:
    """Width of one vehicle's blob against its bottom row, learned from steady tracks.

    Samples (bottom row, width) go into a ring buffer; the fit is a least-squares line, weighted
    by the samples per band, through the median width of each of ``bands`` row bands (medians, so
    the few merged blobs that look steady do not pull it), refitted every ``refit_every`` new
    samples. No estimate until ``min_samples`` samples spread over ``min_bands`` bands.
    """

    def __init__(self, height: int, bands: int = 12, samples: int = 400, min_samples: int = 40,
                 min_bands: int = 3, refit_every: int = 20):
        self.height = height
        self.bands = bands
        self.samples: deque = deque(maxlen=samples)
        self.min_samples = min_samples
        self.min_bands = min_bands
        self.refit_every = refit_every
        self._new = 0
        self._line: tuple[float, float] | None = None

    def add(self, bottoms: np.ndarray, widths: np.ndarray) -> None:
        for y, w in zip(bottoms, widths):
            self.samples.append((float(y), float(w)))
        self._new += len(bottoms)

    def line(self) -> tuple[float, float] | None:
        """(slope, intercept) of width against bottom row, or None while it is not known."""
        if self._new >= self.refit_every or (self._line is None and self._new):
            self._new = 0
            self._line = self._fit()
        return self._line

    def expected(self, bottom: float) -> float | None:
        line = self.line()
        if line is None:
            return None
        width = line[0] * bottom + line[1]
        return width if width > 1.0 else None

    def _fit(self) -> tuple[float, float] | None:
        if len(self.samples) < self.min_samples:
            return None
        data = np.array(self.samples, np.float64)
        band = np.clip((data[:, 0] * self.bands / self.height).astype(int), 0, self.bands - 1)
        counts = np.bincount(band, minlength=self.bands)
        used = np.flatnonzero(counts >= 3)
        if len(used) < self.min_bands:
            return None
        rows = _band_medians(data[:, 0], band, counts, used)
        medians = _band_medians(data[:, 1], band, counts, used)
        # weighted least-squares line (weights: samples per band), in closed form: np.polyfit's
        # LAPACK call cost milliseconds on a busy machine
        weight = counts[used].astype(np.float64)
        mean_row, mean_width = (weight @ rows) / weight.sum(), (weight @ medians) / weight.sum()
        spread = weight @ (rows - mean_row) ** 2
        if spread <= 0:
            return None
        slope = float(weight @ ((rows - mean_row) * (medians - mean_width)) / spread)
        return (slope, float(mean_width - slope * mean_row)) if slope > 0 else None


def _band_medians(values: np.ndarray, band: np.ndarray, counts: np.ndarray, used: np.ndarray) -> np.ndarray:
    """The median of ``values`` in each band of ``used`` (as numpy's median: the middle value, or
    the mean of the two middle ones), from one sort instead of one median per band."""
    ordered = values[np.lexsort((values, band))]
    start = np.concatenate(([0], np.cumsum(counts)))[used]
    n = counts[used]
    lo, hi = ordered[start + (n - 1) // 2], ordered[start + n // 2]
    return np.where(n % 2 == 1, lo, (lo + hi) / 2)


def cut_grown(blob: np.ndarray, origin: tuple[int, int], predicted: np.ndarray) -> list[np.ndarray]:
    """``blob`` (bool, over its box at ``origin`` x, y) split into the part inside the predicted
    boxes (Nx4 or one x, y, w, h, each grown by CORE_MARGIN) and the connected parts outside
    them, the inside first; empty parts are left out. The inside stays one piece however many
    tracks it holds: the tracker carries the ones that find no box of their own."""
    core = np.zeros_like(blob)
    for x, y, w, h in np.asarray(predicted, np.float64).reshape(-1, 4):
        mx, my = CORE_MARGIN * w, CORE_MARGIN * h
        x0, y0 = int(round(x - mx)) - origin[0], int(round(y - my)) - origin[1]
        x1, y1 = int(round(x + w + mx)) - origin[0], int(round(y + h + my)) - origin[1]
        core[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    inside, outside = blob & core, blob & ~core
    count, labels = cv2.connectedComponents(outside.view(np.uint8), connectivity=8)
    return [p for p in [inside] + [labels == k for k in range(1, count)] if p.any()]


def cut_side_by_side(blob: np.ndarray, count: int) -> list[np.ndarray]:
    """``blob`` cut into ``count`` pieces by columns, each cut at the column with the fewest blob
    pixels within a quarter of a piece's width of where equal pieces would be cut."""
    columns = np.count_nonzero(blob, axis=0)
    width = blob.shape[1]
    step = width / count
    cuts = [0]
    for i in range(1, count):
        lo = max(int(round(i * step - 0.25 * step)), cuts[-1] + 1)
        hi = min(int(round(i * step + 0.25 * step)), width - 1)
        if hi <= lo:
            continue
        cuts.append(lo + int(np.argmin(columns[lo:hi + 1])))
    cuts.append(width)
    pieces = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        piece = np.zeros_like(blob)
        piece[:, a:b] = blob[:, a:b]
        if piece.any():
            pieces.append(piece)
    return pieces


#: staggered pair: each side's width within this share of one vehicle's width at its own bottom row
STAGGER_FIT = 0.3
#: staggered pair: the two sides' bottom rows differ by at least this share of the wider's expected width
STAGGER_STEP = 0.1
#: staggered pair: this share of each side's columns reach within STAGGER_STEP of its lowest row (a
#: vehicle's flat underside; a car with its shadow lower beside it is not two vehicles)
STAGGER_FLAT = 0.7


def cut_staggered(blob: np.ndarray, top: int, line: tuple[float, float]) -> list[np.ndarray] | None:
    """``blob`` (bool over its box, whose first row is frame row ``top``) cut by columns into two
    vehicles side by side at different distances, or None when no cut fits.

    Two vehicles in neighbouring lanes, one nearer the camera, stand at different rows: the nearer
    is lower in the picture and wider. A cut column fits when each side is as wide as one vehicle
    at that side's own lowest row (``line``: width = slope * row + intercept, within STAGGER_FIT),
    the sides' lowest rows differ by STAGGER_STEP of the wider one's width or more, and each side's
    underside is flat (STAGGER_FLAT of its columns reach near its lowest row). Of the fitting
    columns the one with the smallest worse-side misfit is taken."""
    h, w = blob.shape
    filled = blob.any(axis=0)
    if w < 4 or not filled.any():
        return None
    # lowest blob row of each column, in frame rows (-1 where the column is empty)
    bottom = np.where(filled, top + h - 1 - np.argmax(blob[::-1], axis=0), -1)
    first, last = int(np.argmax(filled)), int(w - 1 - np.argmax(filled[::-1]))
    x = np.arange(max(first + 1, 2), last + 1)              # cut columns: the right side starts at x
    if not len(x):
        return None
    lw, rw = x - first, last - x + 1
    lb = np.maximum.accumulate(bottom)[x - 1]
    rb = np.maximum.accumulate(bottom[::-1])[::-1][x]
    le, re = line[0] * lb + line[1], line[0] * rb + line[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        misfit = np.maximum(np.abs(lw / le - 1), np.abs(rw / re - 1))
    ok = (le > 1) & (re > 1) & (np.abs(lb - rb) >= STAGGER_STEP * np.maximum(le, re)) & (misfit <= STAGGER_FIT)
    cut = None
    for k in np.flatnonzero(ok)[np.argsort(misfit[ok], kind="stable")]:   # best fit first
        c = int(x[k])
        lcols, rcols = bottom[:c][filled[:c]], bottom[c:][filled[c:]]
        if (np.mean(lcols >= lb[k] - STAGGER_STEP * le[k]) >= STAGGER_FLAT
                and np.mean(rcols >= rb[k] - STAGGER_STEP * re[k]) >= STAGGER_FLAT):
            cut = c
            break
    if cut is None:
        return None
    left, right = np.zeros_like(blob), np.zeros_like(blob)
    left[:, :cut], right[:, cut:] = blob[:, :cut], blob[:, cut:]
    return [left, right]


def box_of(piece: np.ndarray, origin: tuple[int, int]) -> tuple[list[int], int]:
    """Bounding box (x, y, w, h in the frame) and pixel count of a piece."""
    rows = np.flatnonzero(piece.any(axis=1))
    cols = np.flatnonzero(piece.any(axis=0))
    box = [origin[0] + int(cols[0]), origin[1] + int(rows[0]),
           int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    return box, int(np.count_nonzero(piece))
