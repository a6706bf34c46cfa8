"""The nuisance families and the seed/frame roles of the unseen-camera protocol (docs/models.md).

One definition shared by the training loop (epoch choice on the validation
families) and ``tools/eval_families.py`` (validation and test tables), so the two
can never score different scenes under the same name. numpy/OpenCV only.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.sources.synthetic import NUISANCE_PRESETS, Nuisances, SceneGenerator

SEEDS = {"validation": (201, 202), "test": (301, 302)}
HIGHWAY_FRAMES = {"validation": (1200, 1449), "test": (1450, 1700)}
JITTER_SEED = {"validation": 211, "test": 311}   # shake trajectory of highway-jitter
HIGHWAY_WARMUP = 300  # highway frames fed before a split's first scored one (background models learn)
SIZE, FRAMES, FIRST_SCORED = (320, 240), 200, 72  # 72 = (T - 1) * stride + 2: the stage's window is full

# family -> SceneGenerator keywords besides size, seed and frames
SYNTHETIC = {
    "clean": {},
    "shadows": {"nuisances": Nuisances(shadows=0.85)},
    "foliage": {"nuisances": Nuisances(sway=6.0)},
    "jitter": {"nuisances": Nuisances(jitter=4)},
    "flicker": {"nuisances": Nuisances(illumination=0.3)},
    "noise": {"nuisances": Nuisances(noise=6.0)},
    "haze": {"haze": 0.6, "nuisances": NUISANCE_PRESETS["mild"]},
    "hard": {"nuisances": NUISANCE_PRESETS["hard"]},
}
FAMILIES = tuple(SYNTHETIC) + ("highway", "highway-jitter")


def synthetic_frames(family: str, seed: int, frames: int = FRAMES):
    """(image BGR, truth 0/255, scored) per frame of one family sequence."""
    gen = SceneGenerator(SIZE[0], SIZE[1], seed=seed, frames=frames, **SYNTHETIC[family])
    for i, (image, truth) in enumerate(gen.frames(), start=1):
        yield image, truth, i >= FIRST_SCORED


def synthetic_grey(family: str, seed: int, frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """(N, h, w) grey frames and (N, h, w) truth of one family sequence, for in-memory validation."""
    grey, truth = [], []
    for image, t, _ in synthetic_frames(family, seed, frames):
        grey.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        truth.append(t)
    return np.stack(grey), np.stack(truth)


def highway_frames(folder: Path, first: int, last: int, every: int, shake_seed: int | None, warmup: int = 100):
    """(image, labels, scored, roi) of CDnet highway frames first-warmup..last; every ``every``-th from
    ``first`` is scored; with ``shake_seed`` frames and labels are shaken together (training.data.jitter)."""
    from pipeline.cdnet import open_sequence, read_image

    seq = open_sequence(folder)
    path = None
    if shake_seed is not None:
        from training.data.jitter import jitter_image, jitter_pair, shake_trajectory

        path = shake_trajectory(last, seed=shake_seed)
    for n, p in seq.frames:
        if n > last:
            break
        if n < first - warmup:
            continue
        scored = n >= first and (n - first) % every == 0
        image = read_image(p)
        labels = seq.groundtruth(n) if scored else None
        if path is None:
            yield image, labels, scored, seq.roi
        elif scored:
            yield (*jitter_pair(image, labels, path[n - 1], seq.roi), True, None)
        else:
            yield jitter_image(image, path[n - 1]), None, False, None
