"""Vehicles the mask joins into one blob, and the ignore mask for on-screen captions (issue 14).

The masks are drawn here frame by frame (two cars in adjacent lanes, a shadow that bridges them
while they pass the line; a caption box), so which vehicles exist is known exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.stages.analytics import AnalyticsStage
from pipeline.stages.blobs import BlobStage

H, W = 300, 320


def _two_cars_joined_by_a_shadow(frame: int, downwards: bool) -> np.ndarray:
    """Two 40x30 cars side by side, 4 px per frame; frames 15-38 a shadow joins their blobs."""
    mask = np.zeros((H, W), np.uint8)
    top = 40 + 4 * frame if downwards else 230 - 4 * frame
    for x in (100, 150):
        mask[max(top, 0):max(top + 30, 0), x:x + 40] = 255
    if 15 <= frame <= 38:
        mask[max(top + 10, 0):max(top + 25, 0), 140:150] = 255
    return mask


def _count(max_occluded: int, downwards: bool) -> tuple[dict, int]:
    blobs = BlobStage(BlobStage.Config(min_area=100, max_occluded=max_occluded))
    stage = AnalyticsStage(AnalyticsStage.Config(lines={"road": [[0, 150], [319, 150]]}))
    image = np.zeros((H, W, 3), np.uint8)
    merged_frames = 0
    for i in range(56):
        frame = Frame("s", i + 1, i / 25.0, image, data={"mask": _two_cars_joined_by_a_shadow(i, downwards)})
        stage.process(blobs.process([frame]))
        visible = [o for o in frame.data["objects"] if not o.get("occluded")]
        merged_frames += len(visible) == 1
    return frame.data["analytics"]["totals"]["road"], merged_frames


@pytest.mark.parametrize("downwards, direction", [(True, "in"), (False, "out")])
def test_two_vehicles_merged_while_crossing_are_both_counted(downwards, direction):
    totals, merged_frames = _count(25, downwards)
    assert merged_frames >= 20  # the two cars really were one blob while they crossed
    other = "out" if direction == "in" else "in"
    assert totals[direction] == 2 and totals[other] == 0, totals
    without, _ = _count(0, downwards)  # the same scene without the rule loses the hidden car
    assert without[direction] == 1, without


def test_occluded_track_takes_its_own_box_back_when_the_blobs_part():
    blobs = BlobStage(BlobStage.Config(min_area=100))
    image = np.zeros((H, W, 3), np.uint8)
    ids_before = ids_after = None
    for i in range(56):
        frame = Frame("s", i + 1, i / 25.0, image, data={"mask": _two_cars_joined_by_a_shadow(i, True)})
        blobs.process([frame])
        ids = sorted(o["track"] for o in frame.data["objects"])
        if i == 10:
            ids_before = ids
        if i == 55:
            ids_after = ids
        if 16 <= i <= 38:
            assert len(ids) == 2 and sum(bool(o.get("occluded")) for o in frame.data["objects"]) == 1
    assert ids_before == ids_after and len(ids_after) == 2


def test_ignore_mask_removes_a_caption_blob():
    mask = np.zeros((240, 320), np.uint8)
    mask[82:90, 2:75] = 255      # a caption like video02's "PEDESTRIAN ALARM"
    mask[150:180, 200:240] = 255  # a car
    image = np.zeros((240, 320, 3), np.uint8)
    plain = BlobStage(BlobStage.Config(min_area=40))
    masked = BlobStage(BlobStage.Config(min_area=40, ignore={"caption": [[0, 80], [77, 80], [77, 91], [0, 91]]}))
    fractions = BlobStage(BlobStage.Config(min_area=40, ignore={"caption": [[0, 0.33], [0.25, 0.33], [0.25, 0.38],
                                                                            [0, 0.38]]}))
    boxes = {}
    for name, stage in (("plain", plain), ("pixels", masked), ("fractions", fractions)):
        frame = Frame("s", 1, 0.0, image, data={"mask": mask.copy()})
        stage.process([frame])
        boxes[name] = [o["box"] for o in frame.data["objects"]]
    assert len(boxes["plain"]) == 2
    assert boxes["pixels"] == boxes["fractions"] == [[200, 150, 40, 30]]


@pytest.mark.parametrize("ignore, key, fragment", [
    ({"caption": [[0, 80], [77, 80]]}, "stages.blobs.ignore.caption", "at least 3 points"),
    ({"caption": "top left"}, "stages.blobs.ignore.caption", "list of [x, y] points"),
    ({"caption": [[0, 80], [-5, 80], [77, 91]]}, "stages.blobs.ignore.caption", ">= 0"),
    ({"caption": [[0, 80], [40, 80], [77, 80]]}, "stages.blobs.ignore.caption", "no area"),
    ([[0, 80], [77, 80], [77, 91]], "stages.blobs.ignore", "expected dict"),
])
def test_bad_ignore_polygons_are_one_line_config_errors(ignore, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stages": [{"blobs": {"ignore": ignore}}]})
    assert err.value.input == key and fragment in err.value.cause and "\n" not in str(err.value)
