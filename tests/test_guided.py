"""The box-filter guided filter (used where OpenCV has no contrib module) against cv2.ximgproc."""
import cv2
import numpy as np
import pytest

from pipeline.guided import HAVE_XIMGPROC, guided_filter


def _scene(h=120, w=160):
    rng = np.random.default_rng(3)
    guide = np.zeros((h, w), np.float32)
    guide[:, w // 2:] = 0.8                      # a hard vertical edge
    guide += rng.normal(0, 0.02, (h, w)).astype(np.float32)
    src = (guide > 0.4).astype(np.float32) * 0.6 + rng.normal(0, 0.1, (h, w)).astype(np.float32)
    return guide, src


def test_fallback_keeps_edges_and_removes_noise():
    guide, src = _scene()
    out = guided_filter(guide, src, 6, 1e-3, contrib=False)
    assert out.shape == src.shape and out.dtype == np.float32
    left, right = out[:, 10:60], out[:, 100:150]
    assert abs(float(left.mean())) < 0.05 and abs(float(right.mean()) - 0.6) < 0.05
    assert left.std() < 0.5 * src[:, 10:60].std()      # noise smoothed
    assert out[:, 82].mean() - out[:, 77].mean() > 0.5  # the step stays sharp across the guide's edge


@pytest.mark.skipif(not HAVE_XIMGPROC, reason="this OpenCV has no contrib module (cv2.ximgproc) to compare with")
def test_fallback_matches_ximgproc():
    guide, src = _scene()
    ours = guided_filter(guide, src, 6, 1e-3, contrib=False)
    ref = guided_filter(guide, src, 6, 1e-3, contrib=True)
    inner = (slice(8, -8), slice(8, -8))  # borders differ by the padding rule
    assert np.abs(ours[inner] - ref[inner]).max() < 2e-3
