"""CDnet scoring rules on hand-made masks, and the layout checks of open_sequence."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipeline.cdnet import Confusion, mean_metrics, open_sequence
from pipeline.errors import SourceError, SourceNotFoundError

# one row per label, four pixels each; the mask says foreground in the first two columns
LABELS = np.array([
    [0, 0, 0, 0],          # static
    [50, 50, 50, 50],      # shadow: background
    [85, 85, 85, 85],      # outside ROI: ignored
    [170, 170, 170, 170],  # unknown: ignored
    [255, 255, 255, 255],  # motion
], np.uint8)
MASK = np.array([[255, 255, 0, 0]] * 5, np.uint8)


def test_label_rules_give_exact_counts():
    c = Confusion()
    c.add(MASK, LABELS)
    # fg on static (2) and shadow (2) = 4 FP; bg there = 4 TN; motion: 2 TP, 2 FN; 85/170 rows ignored
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 4, 2, 4)


def test_roi_excludes_pixels_and_mask_threshold_is_127():
    roi = np.ones(LABELS.shape, bool)
    roi[:, 0] = False  # first column outside the ROI
    mask = MASK.copy()
    mask[:, 1] = 128  # still foreground
    c = Confusion()
    c.add(mask, LABELS, roi)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 2, 2, 4)


def test_metrics_have_the_cdnet_definitions():
    c = Confusion(tp=60, fp=20, fn=40, tn=880)
    m = c.metrics()
    assert m["Recall"] == pytest.approx(0.6)
    assert m["Precision"] == pytest.approx(0.75)
    assert m["Specificity"] == pytest.approx(880 / 900)
    assert m["FPR"] == pytest.approx(20 / 900)
    assert m["FNR"] == pytest.approx(0.4)
    assert m["PWC"] == pytest.approx(6.0)
    assert m["F-measure"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_frames_are_summed_before_the_ratios():
    total = Confusion()
    for tp, fp, fn, tn in [(10, 0, 0, 90), (0, 10, 30, 60)]:
        total += Confusion(tp, fp, fn, tn)
    assert total.metrics()["Recall"] == pytest.approx(10 / 40)  # not the mean of 1.0 and 0.0


def test_undefined_metrics_are_nan_and_skipped_in_the_mean():
    empty = Confusion(tp=0, fp=5, fn=0, tn=95).metrics()  # no foreground in the truth
    assert math.isnan(empty["Recall"]) and math.isnan(empty["F-measure"])
    assert empty["Precision"] == 0.0 and empty["PWC"] == pytest.approx(5.0)
    missed = Confusion(tp=0, fp=5, fn=5, tn=90).metrics()
    assert missed["F-measure"] == 0.0
    full = Confusion(tp=10, fp=0, fn=0, tn=90).metrics()
    mean = mean_metrics([empty, full])
    assert mean["Recall"] == 1.0 and mean["Precision"] == 0.5 and mean["PWC"] == pytest.approx(2.5)


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="4x5.*3x5"):
        Confusion().add(MASK, LABELS[:, :3])


def make_layout(root, frames=3, truth=True, roi_text="2 3"):
    (root / "input").mkdir(parents=True)
    for i in range(1, frames + 1):
        cv2.imwrite(str(root / "input" / f"in{i:06d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    if truth:
        (root / "groundtruth").mkdir()
    if roi_text is not None:
        (root / "temporalROI.txt").write_text(roi_text)
    return root


def test_open_sequence_lists_frames_in_order(tmp_path):
    seq = open_sequence(make_layout(tmp_path / "highway", frames=12))
    assert seq.name == "highway"
    assert [n for n, _ in seq.frames] == list(range(1, 13))
    assert seq.temporal_roi == (2, 3) and seq.is_scored(3) and not seq.is_scored(4)
    assert seq.roi is None


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such folder"):
        open_sequence(tmp_path / "nothing")
    with pytest.raises(SourceError, match="groundtruth"):
        open_sequence(make_layout(tmp_path / "a", truth=False))
    with pytest.raises(SourceError, match="temporalROI.txt"):
        open_sequence(make_layout(tmp_path / "b", roi_text=None))
    with pytest.raises(SourceError, match="two frame numbers"):
        open_sequence(make_layout(tmp_path / "c", roi_text="470"))
    with pytest.raises(SourceError, match="invalid frame range"):
        open_sequence(make_layout(tmp_path / "d", roi_text="9 3"))
    (tmp_path / "e").mkdir()
    with pytest.raises(SourceError, match="input/"):
        open_sequence(tmp_path / "e")


def test_roi_bitmap_is_read_and_checked(tmp_path):
    root = make_layout(tmp_path / "s")
    roi = np.zeros((8, 8), np.uint8)
    roi[2:6] = 255
    cv2.imwrite(str(root / "ROI.bmp"), roi)
    assert open_sequence(root).roi.sum() == 32
    cv2.imwrite(str(root / "ROI.bmp"), np.zeros((4, 4), np.uint8))
    with pytest.raises(SourceError, match="ROI.bmp"):
        open_sequence(root)


def test_missing_groundtruth_frame_is_named(tmp_path):
    seq = open_sequence(make_layout(tmp_path / "s"))
    with pytest.raises(SourceError, match="gt000002.png"):
        seq.groundtruth(2)
