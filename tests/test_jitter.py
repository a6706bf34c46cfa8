"""training.data.jitter: seeded shake trajectories applied to real frames and their CDnet labels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import HIGHWAY, need
from training.data.jitter import OUTSIDE_ROI, Shake, jitter_image, jitter_labels, jitter_pair, shake_trajectory


def test_trajectory_is_seeded_and_bounded():
    a = shake_trajectory(2000, seed=3)
    assert a.shape == (2000, 3)
    np.testing.assert_array_equal(a, shake_trajectory(2000, seed=3))
    assert not np.allclose(a, shake_trajectory(2000, seed=4))
    assert np.abs(a[:, :2]).max() <= 15.0 and np.abs(a[:, 2]).max() <= 1.0
    # it really shakes: several pixels on average, and it moves from frame to frame
    assert np.abs(a[:, :2]).mean() > 2.0
    assert np.abs(np.diff(a[:, :2], axis=0)).mean() > 0.5


def test_tighter_bounds_are_kept():
    a = shake_trajectory(500, seed=1, shake=Shake(max_shift=4.0, max_rotation=0.0))
    assert np.abs(a[:, :2]).max() <= 4.0
    assert not a[:, 2].any()
    with pytest.raises(ValueError):
        Shake(walk_pull=2.0)


def test_integer_shift_moves_pixels_and_marks_the_border():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    labels = np.zeros((240, 320), np.uint8)
    labels[100:120, 50:90] = 255
    moved, moved_labels = jitter_pair(image, labels, (5, -3, 0))
    np.testing.assert_array_equal(moved[10:200, 15:300], image[13:203, 10:295])  # moved[y, x] = image[y + 3, x - 5]
    assert (moved_labels[:, :5] == OUTSIDE_ROI).all() and (moved_labels[-3:, :] == OUTSIDE_ROI).all()
    assert (moved_labels[97:117, 55:95] == 255).all()
    assert set(np.unique(moved_labels)) == {0, OUTSIDE_ROI, 255}  # nearest: no blended labels


def test_shift_scales_with_width():
    image = np.zeros((360, 640), np.uint8)
    image[:, 320:] = 255
    moved = jitter_image(image, (10, 0, 0), border=cv2.BORDER_CONSTANT)
    assert moved[0, 339] == 0 and moved[0, 340] == 255  # 10 px at 320 wide = 20 px at 640


def test_real_frame_and_roi():
    need(HIGHWAY)
    image = cv2.imread(str(HIGHWAY / "input" / "in001000.jpg"))
    labels = cv2.imread(str(HIGHWAY / "groundtruth" / "gt001000.png"), cv2.IMREAD_GRAYSCALE)
    roi = cv2.imread(str(HIGHWAY / "ROI.bmp"), cv2.IMREAD_GRAYSCALE) > 0
    offset = shake_trajectory(50, seed=11)[-1]
    moved, moved_labels = jitter_pair(image, labels, offset, roi=roi)
    assert moved.shape == image.shape and moved_labels.shape == labels.shape
    # outside the ROI stays ignored after the move, and about as many pixels are foreground
    back = jitter_labels(np.where(roi, 0, 255).astype(np.uint8), offset)
    assert (moved_labels[back == 255] == OUTSIDE_ROI).all()
    fg, fg_moved = (labels == 255).sum(), (moved_labels == 255).sum()
    assert fg > 0 and abs(int(fg_moved) - int(fg)) < 0.2 * fg
