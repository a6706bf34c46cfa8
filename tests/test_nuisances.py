"""Training nuisances of unseen cameras (training.data.scenes) and the protocol's validation families."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs PyTorch (the [train] extra)")

from training.data.cdnet import CdnetSequence  # noqa: E402
from training.data.scenes import Augment, WindowSampler, _streaks  # noqa: E402

NO_PHOTOMETRY = dict(scale=(1.0, 1.0), hflip=0, vflip=0, gain=(1, 1), bias=0, gamma=(1, 1), illumination=0,
                     jitter=0, haze=0, noise=(0, 0), blur=0)


def static_sequence(frames: int = 40, size: int = 64) -> CdnetSequence:
    """A textured scene with a bright square labelled foreground in every frame (no motion at all)."""
    rng = np.random.default_rng(0)
    grey = np.kron(rng.integers(20, 90, (size // 8, size // 8), dtype=np.uint8), np.ones((8, 8), np.uint8))
    grey[24:40, 24:40] = 250
    labels = np.zeros((size, size), np.uint8)
    labels[24:40, 24:40] = 255
    return CdnetSequence("still", Path("still"), 1, np.repeat(grey[None], frames, 0),
                         np.repeat(labels[None], frames, 0), None, (1, frames))


def test_shake_moves_the_frames_and_the_labels_together():
    seq = static_sequence()
    sampler = WindowSampler(8, Augment(crop=64, shake=1.0, shake_px=15, **NO_PHOTOMETRY), cdnet=[(seq, (30, 40))],
                            mix={"cdnet": 1.0})
    moved = 0
    for k in range(6):
        w = sampler.sample(np.random.default_rng(k))
        current = w.frames[-1]
        fg, bg = (w.target > 0.5) & (w.weight > 0), (w.target < 0.5) & (w.weight > 0)
        assert fg.any() and current[fg].mean() > 0.9 > 0.4 > current[bg].mean()  # truth follows the picture
        moved += int(np.abs(w.frames[0] - current).mean() > 0.01)
    assert moved >= 4   # the camera moved inside most windows


def test_shake_off_leaves_the_window_still():
    seq = static_sequence()
    sampler = WindowSampler(8, Augment(crop=64, **NO_PHOTOMETRY), cdnet=[(seq, (30, 40))], mix={"cdnet": 1.0})
    w = sampler.sample(np.random.default_rng(1))
    assert np.abs(w.frames[0] - w.frames[-1]).max() == 0


def test_rain_streaks_are_new_in_every_frame():
    streaks = _streaks(np.random.default_rng(3), (8, 96, 96))
    assert streaks.shape == (8, 96, 96) and streaks.max() > 0.1
    assert all(np.abs(streaks[i] - streaks[i + 1]).mean() > 0 for i in range(7))


def test_validation_families_are_summed_over_seeds():
    from training.models.msfgnet import MSFgNet
    from training.train_msfgnet import validate

    rng = np.random.default_rng(2)

    def seq(name):
        truth = np.where(rng.random((30, 32, 32)) < 0.1, 255, 0).astype(np.uint8)
        return CdnetSequence(name, Path(name), 1, rng.integers(0, 255, (30, 32, 32), dtype=np.uint8), truth,
                             None, (1, 30)), (20, 30)

    sequences = [seq("family:rain#201"), seq("family:rain#202"), seq("family:snow#201")]
    scores = validate(MSFgNet(), sequences, {"scale": 0.5, "stride": 2, "threshold": 0.5}, torch.device("cpu"))
    assert set(scores) == {"family:rain", "family:snow", "mean"}
    assert all(0 <= v <= 1 for v in scores.values())


def test_unknown_validation_family_is_named():
    from pipeline.errors import ConfigError
    from training.train_msfgnet import family_sequences

    with pytest.raises(ConfigError, match="unknown; valid: clean"):
        family_sequences({"families": ["rainbow"], "seeds": [201]})
