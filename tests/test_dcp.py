"""Dark-channel-prior dehazing and the haze score on images hazed with a known transmission."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.stages import stage_class
from pipeline.stages.dcp import DcpStage, channel_min, dehaze_dcp, haze_score

try:  # the project's haze model (SOURCES helper); the same formula inline otherwise
    from pipeline.haze import apply_haze
except ImportError:  # pragma: no cover - only before pipeline/haze.py exists
    def apply_haze(image, t, airlight=0.9):
        a = np.float32(airlight * 255.0)
        return np.clip(image * t[..., None] + a * (1 - t[..., None]) + 0.5, 0, 255).astype(np.uint8)


def clear_scene(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """Colourful blocks with texture: every patch has a dark channel near zero, as the prior assumes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(40, 230, size=(h // 16 + 1, w // 16 + 1, 3))
    dark = rng.integers(0, 3, size=blocks.shape[:2])  # one channel per block is nearly black
    blocks[np.arange(blocks.shape[0])[:, None], np.arange(blocks.shape[1])[None, :], dark] = 5
    image = np.kron(blocks, np.ones((16, 16, 1)))[:h, :w]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def depth_transmission(h: int = 240, w: int = 320) -> np.ndarray:
    """t falls from 0.8 at the bottom to 0.3 at the top, smoothly, like a road seen from a mast."""
    rows = np.linspace(0.3, 0.8, h, dtype=np.float32)[:, None]
    return np.repeat(rows, w, axis=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * math.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def pair():
    clear = clear_scene()
    return clear, apply_haze(clear, depth_transmission(), airlight=0.9)


def test_dcp_restores_a_synthetic_hazy_image(pair):
    clear, hazy = pair
    out = dehaze_dcp(hazy)
    assert out.dtype == np.uint8 and out.shape == hazy.shape
    before, after = psnr(hazy, clear), psnr(out, clear)
    assert after > before + 3.0, (before, after)


def test_haze_score_is_higher_for_hazy_frames(pair):
    clear, hazy = pair
    s_clear, s_hazy = haze_score(clear), haze_score(hazy)
    assert 0.0 <= s_clear < 0.1
    assert s_hazy > s_clear + 0.2
    assert 0.0 <= s_hazy <= 1.0


def test_haze_score_barely_depends_on_resolution(pair):
    import cv2

    _, hazy = pair
    big = cv2.resize(hazy, (640, 480), interpolation=cv2.INTER_LINEAR)
    assert abs(haze_score(big) - haze_score(hazy)) < 0.05


def test_channel_min_matches_numpy(pair):
    clear, _ = pair
    np.testing.assert_array_equal(channel_min(clear), clear.min(axis=2))


def test_stage_writes_its_ports_per_stream_and_keeps_outputs_apart(pair):
    clear, hazy = pair
    stage = stage_class("dcp")(DcpStage.Config())
    frames = [Frame("a", 1, None, hazy), Frame("b", 1, None, clear), Frame("a", 2, None, hazy[:120, :160].copy())]
    with stage:
        stage.process(frames[:2])
        first = frames[0].data["dehazed"].copy()
        stage.process(frames[2:])  # size change in stream "a": buffers are reallocated
    assert frames[2].data["dehazed"].shape == (120, 160, 3)
    np.testing.assert_array_equal(frames[0].data["dehazed"], first)  # not overwritten by the next frame
    assert frames[0].data["haze_score"] > frames[1].data["haze_score"]
    assert set(stage._dehazers) == {"a", "b"}
    stage.reset_stream("a")
    assert set(stage._dehazers) == {"b"}


def test_airlight_is_smoothed_across_frames_of_a_stream(pair):
    _, hazy = pair
    stage = DcpStage(DcpStage.Config(airlight_momentum=0.9))
    stage.process([Frame("s", 1, None, hazy)])
    a0 = stage._dehazers["s"].airlight.copy()
    stage.process([Frame("s", 2, None, (hazy * 0.5).astype(np.uint8))])  # the scene suddenly darkens
    a1 = stage._dehazers["s"].airlight
    assert np.all(a1 < a0) and np.all(a1 > 0.9 * a0)  # moved ~10% of the way to the new airlight, not all of it


@pytest.mark.parametrize("field,value", [("omega", 0.0), ("t0", 1.5), ("scale", 0.0), ("airlight_momentum", 1.0)])
def test_invalid_config_is_refused(field, value):
    with pytest.raises(ConfigError, match=f"stages.dcp.{field}"):
        DcpStage(DcpStage.Config(**{field: value}))
