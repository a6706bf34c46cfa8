"""MOG2 and KNN stages on a generated sequence: a bright square moving over a static textured scene."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.stages import stage_class

H, W, SIDE = 96, 128, 16


def background(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tiles = rng.integers(60, 140, size=(H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(tiles, np.ones((8, 8, 1), np.uint8))


def square_at(i: int) -> tuple[int, int]:
    """Top-left corner of the square in frame i (moves 3 px right per frame)."""
    return 40, (3 * i) % (W - SIDE)


def sequence(n: int, seed: int = 2):
    """Frames with sensor noise; the square appears from frame 40 on. Yields (image, truth)."""
    rng = np.random.default_rng(seed)
    bg = background()
    for i in range(n):
        image = np.clip(bg + rng.normal(0, 2, bg.shape), 0, 255).astype(np.uint8)
        truth = np.zeros((H, W), bool)
        if i >= 40:
            y, x = square_at(i)
            image[y:y + SIDE, x:x + SIDE] = (240, 250, 255)
            truth[y:y + SIDE, x:x + SIDE] = True
        yield image, truth


@pytest.mark.parametrize("name", ["mog2", "knn"])
def test_detects_a_moving_square(name):
    stage = stage_class(name)()
    hits, false_alarms = [], []
    with stage:
        for i, (image, truth) in enumerate(sequence(60)):
            frame = stage.process([Frame("cam", i + 1, None, image)])[0]
            mask = frame.data["mask"]
            assert mask.dtype == np.uint8 and mask.shape == (H, W)
            assert set(np.unique(mask)) <= {0, 255}  # shadows (127) are folded into background
            if i >= 45:
                hits.append(np.mean(mask[truth] == 255))
                false_alarms.append(np.mean(mask[~truth] == 255))
    assert np.mean(hits) > 0.9, hits
    assert np.mean(false_alarms) < 0.01, false_alarms


@pytest.mark.parametrize("name", ["mog2", "knn"])
def test_reads_the_dehazed_image_when_there_is_one(name):
    stage = stage_class(name)()
    frames = list(sequence(50))
    static = frames[0][0]
    for i, (image, truth) in enumerate(frames):
        # the decoded picture never changes; only the "dehazed" port shows the square
        frame = Frame("cam", i + 1, None, static, data={"dehazed": image})
        stage.process([frame])
    assert np.mean(frame.data["mask"][truth] == 255) > 0.9


@pytest.mark.parametrize("name", ["mog2", "knn"])
def test_streams_have_separate_models_and_reset_forgets_one(name):
    stage = stage_class(name)()
    bg, other = background(), background(seed=9)
    for i in range(30):  # "a" and "c" learn bg, "b" learns another scene
        stage.process([Frame("a", i, None, bg), Frame("b", i, None, other), Frame("c", i, None, bg)])
    b = stage.process([Frame("b", 30, None, other)])[0]
    assert b.data["mask"].mean() < 1  # "b" was not disturbed by the other streams' scene
    stage.reset_stream("a")
    assert set(stage._models) == {"b", "c"}
    for i in range(5):  # both now see the other scene: the reset "a" learns it afresh, "c" still flags it
        a, c = stage.process([Frame("a", 31 + i, None, other), Frame("c", 31 + i, None, other)])
    assert a.data["mask"].mean() < 1
    assert c.data["mask"].mean() > 200


def test_invalid_config_is_refused():
    cls = stage_class("mog2")
    with pytest.raises(ConfigError, match="stages.mog2.history"):
        cls(cls.Config(history=0))
    knn = stage_class("knn")
    with pytest.raises(ConfigError, match="stages.knn.learning_rate"):
        knn(knn.Config(learning_rate=2.0))
