"""Blob extraction, track ids and zone counts on hand-drawn masks."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError, StageError
from pipeline.frame import Frame
from pipeline.stages import stage_class
from pipeline.stages.blobs import BlobStage, BoxTracker

H, W = 100, 200


def mask_with(*rects) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    for x, y, w, h in rects:
        mask[y:y + h, x:x + w] = 255
    return mask


def run(stage, mask, index=1, stream="s"):
    return stage.process([Frame(stream, index, None, np.zeros((H, W, 3), np.uint8), data={"mask": mask})])[0]


def test_boxes_and_areas_are_exact_and_small_blobs_dropped():
    stage = stage_class("blobs")(BlobStage.Config(min_area=20, neck=0))  # neck rounds a box's corners
    frame = run(stage, mask_with((10, 20, 30, 10), (100, 50, 8, 12), (180, 5, 4, 4)))  # last one: 16 px
    objects = sorted(frame.data["objects"], key=lambda o: o["box"][0])
    assert [o["box"] for o in objects] == [[10, 20, 30, 10], [100, 50, 8, 12]]
    assert [o["area"] for o in objects] == [300, 96]
    assert len({o["track"] for o in objects}) == 2
    assert frame.data["counts"] == {"all": 2}


def test_a_thin_bridge_between_two_blobs_is_cut_and_a_blob_narrower_than_the_neck_stays_whole():
    # two 40x30 cars joined by a 20x3 smear, a 6x6 distant car, a 40x30 car with a 4 px shadow tongue
    mask = mask_with((20, 20, 40, 30), (60, 33, 20, 3), (80, 20, 40, 30), (150, 70, 6, 6),
                     (100, 60, 40, 30), (140, 85, 25, 4))

    def objects(neck: int) -> list:
        frame = run(BlobStage(BlobStage.Config(min_area=20, neck=neck)), mask)
        return sorted(frame.data["objects"], key=lambda o: o["box"][0])

    assert [o["box"] for o in objects(0)] == [[20, 20, 100, 30], [100, 60, 65, 30], [150, 70, 6, 6]]
    cut = objects(9)
    # each car keeps its box, give or take the pixel of bridge where the disc still fits
    assert [o["box"] for o in cut] == [[20, 20, 41, 30], [79, 20, 41, 30], [100, 60, 40, 30], [150, 70, 6, 6]]
    assert cut[-1]["area"] == 36                      # kept exactly: the opening would have removed it
    assert 1150 < cut[2]["area"] < 1200               # the car without its tongue loses its corners only


@pytest.mark.parametrize("neck", [3, 5, 9, 15])
def test_neck_equals_its_plain_definition_on_random_masks(neck):
    """The stage samples the opened mask on a grid (and the picture's edges) to find the blobs
    that kept a pixel; the plain definition looks at every pixel. Random blobs, bridges and specks,
    some cut by the picture's border."""
    import cv2
    rng = np.random.default_rng(neck)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (neck, neck))
    stage = BlobStage(BlobStage.Config(neck=neck))
    for _ in range(60):
        mask = np.zeros((H, W), np.uint8)
        for _ in range(rng.integers(1, 16)):
            x, y = (int(v) for v in rng.integers(-3, (W + 3, H + 3)))
            a, b = (int(v) for v in rng.integers(max(neck // 2 - 2, 1), neck // 2 + 3, 2))  # about the disc
            cv2.ellipse(mask, (x, y), (a, b), float(rng.uniform(0, 180)), 0, 360, 255, -1)
            x2, y2 = (int(v) for v in rng.integers(0, (W, H)))
            cv2.line(mask, (x, y), (x2, y2), 255, int(rng.integers(1, neck + 3)))
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REPLICATE)
        count, labels = cv2.connectedComponents(mask, connectivity=8)
        survived = np.zeros(count, bool)
        survived[labels[opened > 0]] = True
        survived[0] = True
        expected = np.where(survived[labels], opened, 255).astype(np.uint8)
        assert np.array_equal(stage._break_necks(mask), expected)


def test_bad_neck_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        BlobStage.Config(neck=-1)
    assert err.value.input == "stages.blobs.neck" and "\n" not in str(err.value)


def test_track_ids_follow_moving_objects():
    stage = BlobStage(BlobStage.Config(min_area=10))
    ids = []
    for i in range(10):  # car A moves right 4 px/frame, car B moves left 6 px/frame
        frame = run(stage, mask_with((10 + 4 * i, 10, 20, 10), (170 - 6 * i, 60, 16, 10)), index=i + 1)
        by_row = {o["box"][1]: o["track"] for o in frame.data["objects"]}
        ids.append((by_row[10], by_row[60]))
    assert len(set(ids)) == 1 and ids[0][0] != ids[0][1]


def test_a_track_is_continued_by_nearness_only_on_a_box_of_about_its_size():
    def second_id(second_box) -> tuple[int, int]:
        tracker = BoxTracker(match_iou=0.2, match_distance=0.75, max_missed=3)
        first = tracker.update(np.array([[10, 10, 40, 40]]))
        return first[0], tracker.update(np.array([second_box]))[0]

    same, near = second_id([52, 12, 36, 36])     # no overlap, centre 40 px on, about its size
    assert same == near
    first, fragment = second_id([45, 25, 10, 10])  # as near, but a sixteenth of its area: a fragment
    assert fragment != first


def test_a_piece_of_a_parted_blob_names_its_parent_but_a_sliver_does_not():
    tracker = BoxTracker(match_iou=0.2, match_distance=0.75, max_missed=3)
    joined = tracker.update(np.array([[100, 100, 130, 90]]))[0]           # two vehicles in one blob
    ids = tracker.update(np.array([[160, 100, 70, 90], [100, 110, 40, 30]]))
    assert ids[0] == joined and tracker.parents == {ids[1]: joined}      # the other vehicle's piece
    tracker = BoxTracker(match_iou=0.2, match_distance=0.75, max_missed=3)
    car = tracker.update(np.array([[100, 100, 100, 60]]))[0]
    ids = tracker.update(np.array([[100, 100, 80, 60], [185, 100, 15, 60]]))  # a strip of the same car
    assert ids[0] == car and tracker.parents == {}


def test_small_fast_object_keeps_its_id_by_centroid():
    stage = BlobStage(BlobStage.Config(min_area=4))
    first = run(stage, mask_with((10, 10, 6, 6)))
    second = run(stage, mask_with((16, 11, 6, 6)), index=2)  # touches, but does not overlap, the last box
    assert first.data["objects"][0]["track"] == second.data["objects"][0]["track"]


def test_track_survives_short_dropout_then_expires():
    stage = BlobStage(BlobStage.Config(min_area=10, max_missed=2))
    tid = run(stage, mask_with((50, 50, 20, 20))).data["objects"][0]["track"]
    run(stage, mask_with(), index=2)
    run(stage, mask_with(), index=3)
    assert run(stage, mask_with((52, 50, 20, 20)), index=4).data["objects"][0]["track"] == tid
    for i in range(5, 8):
        run(stage, mask_with(), index=i)
    assert run(stage, mask_with((52, 50, 20, 20)), index=8).data["objects"][0]["track"] != tid


def test_streams_have_their_own_tracks():
    stage = BlobStage()
    a = run(stage, mask_with((10, 10, 20, 20)), stream="a").data["objects"][0]["track"]
    b = run(stage, mask_with((10, 10, 20, 20)), stream="b").data["objects"][0]["track"]
    assert a == b == 1  # ids count per stream
    stage.reset_stream("a")
    assert set(stage._trackers) == {"b"}


def test_counts_per_zone_relative_and_pixels():
    zones = {"left": [0.0, 0.0, 0.5, 1.0], "right": [0.5, 0.0, 0.5, 1.0], "box": [90, 0, 30, 100]}
    stage = BlobStage(BlobStage.Config(min_area=10, zones=zones))
    frame = run(stage, mask_with((10, 10, 20, 20), (60, 60, 10, 10), (150, 40, 20, 20), (95, 5, 10, 10)))
    # centroid x: 20, 65, 160, 100; a zone holds [x, x + w), so x = 100 is in "right", not "left"
    assert frame.data["counts"] == {"left": 2, "right": 2, "box": 1}


def test_tracker_matches_greedily_by_overlap():
    tracker = BoxTracker(match_iou=0.2, match_distance=0.75, max_missed=3)
    first = tracker.update(np.array([[0, 0, 10, 10], [20, 0, 10, 10]]))
    second = tracker.update(np.array([[21, 0, 10, 10], [1, 0, 10, 10]]))  # order swapped
    assert second == first[::-1]


@pytest.mark.parametrize("zones", [{}, {"z": [0, 0, 0, 1]}, {"z": "everything"}, {"z": [0, 0, 1]}])
def test_bad_zones_are_refused(zones):
    with pytest.raises(ConfigError, match="stages.blobs.zones"):
        BlobStage(BlobStage.Config(zones=zones))


def test_missing_mask_is_a_stage_error():
    with pytest.raises(StageError, match="mask"):
        BlobStage().process([Frame("s", 1, None, np.zeros((H, W, 3), np.uint8))])


def test_yaml_section_builds_the_config():
    from pipeline.config import build_dataclass

    config = build_dataclass(BlobStage.Config, {"min_area": 30, "zones": {"lane1": [0, 0.5, 0.5, 0.5]}}, "stages.blobs")
    frame = run(BlobStage(config), mask_with((10, 60, 20, 20), (10, 10, 20, 20)))  # only the first is in lane1
    assert frame.data["counts"] == {"lane1": 1}
    with pytest.raises(ConfigError, match="stages.blobs.zones.lane1"):
        build_dataclass(BlobStage.Config, {"zones": {"lane1": [0, 0, -1, 1]}}, "stages.blobs")
