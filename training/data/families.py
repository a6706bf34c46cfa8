"""The nuisance families and the seed/frame roles of the unseen-camera protocol (docs/models.md).

One definition shared by the training loop (epoch choice on the validation
families) and ``tools/eval_families.py`` (validation and test tables), so the two
can never score different scenes under the same name. numpy/OpenCV only.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.sources.synthetic import NUISANCE_PRESETS, Nuisances, SceneGenerator

SEEDS = {"validation": (201, 202), "test": (301, 302)}
HIGHWAY_FRAMES = {"validation": (1200, 1449), "test": (1450, 1700)}
JITTER_SEED = {"validation": 211, "test": 311}   # shake trajectory of highway-jitter
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

