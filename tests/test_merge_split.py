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


# ------------------------------------------------ vehicles that enter the picture already joined
def _true_crossings(truth: list[list[dict]], line_y: float, skip: int) -> dict[str, int]:
    """Vehicles whose base row passed ``line_y`` between two frames after ``skip``, per direction."""
    counts, previous = {"in": 0, "out": 0}, {}
    for k, objects in enumerate(truth):
        for o in objects:
            y, before = o["base"][1], previous.get(o["id"])
            if before is not None and k >= skip:
                counts["in"] += before < line_y <= y
                counts["out"] += y < line_y <= before
            previous[o["id"]] = y
    return counts


def _entered_joined(masks, truth, min_area: int, skip: int) -> set[int]:
    """Vehicles first visible (box of min_area) after frame ``skip`` whose first frame puts them in
    one mask component with another vehicle: nothing could have tracked them apart before."""
    import cv2

    seen, joined = set(), set()
    for k, (mask, objects) in enumerate(zip(masks, truth)):
        _, labels = cv2.connectedComponents(mask, connectivity=8)
        label_of = {}
        for o in objects:
            x, y, w, h = o["box"]
            if w * h >= min_area:
                row, col = min(int(y + h / 2), mask.shape[0] - 1), min(int(x + w / 2), mask.shape[1] - 1)
                label_of[o["id"]] = labels[row, col]
        for vid, label in label_of.items():
            if vid not in seen:
                seen.add(vid)
                if k >= skip and label and any(other != vid and lab == label for other, lab in label_of.items()):
                    joined.add(vid)
    return joined


def test_vehicles_that_enter_joined_are_cut_apart_and_counted():
    """``synthetic:traffic`` validation seed 2 (640x360, vehicles at constant ground speed, exact
    masks): receding vehicles enter at the bottom edge touching the one ahead or beside them. Without
    the split those pairs stay one blob and one track; with it every crossing is counted."""
    from pipeline.sources.synthetic import SceneGenerator

    gen = SceneGenerator(640, 360, seed=2, motion="ground")
    masks, truth = [], []
    for _, mask in gen.frames(340):
        masks.append(mask)
        truth.append(gen.objects())
    skip, line_y = 50, 0.8 * 360
    expected = _true_crossings(truth, line_y, skip)
    assert expected["out"] >= 20 and expected["in"] >= 8
    assert len(_entered_joined(masks, truth, 100, skip)) >= 3

    def counted(split: bool) -> dict[str, int]:
        values = {} if split else {"split_growth": 0, "split_width": 0, "split_staggered": 0}
        blobs = BlobStage(BlobStage.Config(min_area=100, **values))
        # without the split, the counter's own rule for parted blobs is off too: this is the split's test
        stage = AnalyticsStage(AnalyticsStage.Config(lines={"road": [[0.0, 0.8], [1.0, 0.8]]},
                                                     parted=0.3 if split else 0))
        image = np.zeros((360, 640, 3), np.uint8)
        totals = {"in": 0, "out": 0}
        for i, mask in enumerate(masks, start=1):
            frame = Frame("s", i, (i - 1) / 25.0, image, data={"mask": mask})
            stage.process(blobs.process([frame]))
            for c in frame.data["crossings"]:
                totals[c["direction"]] += i > skip
        return totals

    without = counted(False)
    assert without["out"] <= expected["out"] - 2, (without, expected)  # the joined pairs count once
    assert counted(True) == expected


@pytest.mark.parametrize("key, value", [("split_growth", 1.0), ("split_width", -2), ("split_width", float("nan")),
                                        ("split_staggered", 0.5)])
def test_bad_split_settings_are_one_line_config_errors(key, value):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stages": [{"blobs": {key: value}}]})
    assert err.value.input == f"stages.blobs.{key}" and "0 (off) or > 1" in err.value.cause
    assert "\n" not in str(err.value)


# ------------------------------------------------ a track does not turn round onto an oncoming vehicle
def _receding_then_oncoming(frame: int) -> np.ndarray:
    """A car drives away up the picture, shrinking and slowing down in the picture as the
    perspective does near the horizon, and vanishes there (frame 30), so where its track predicts it
    is where it was last seen; two frames later an oncoming car appears on that spot and drives
    down towards the camera."""
    mask = np.zeros((H, W), np.uint8)
    if frame < 30:
        bottom, w, h = 76 + 174 * ((30 - frame) / 30) ** 2, 40 - frame, 30 - 0.7 * frame
    elif frame >= 32:
        k = frame - 32
        bottom, w, h = 76 + 4 * k, 11 + 0.6 * k, 9 + 0.45 * k
    else:
        return mask
    x, top = int(160 - w / 2), int(bottom - h)
    mask[top:int(bottom), x:x + int(w)] = 255
    return mask


@pytest.mark.parametrize("max_reverse, expected", [(0.5, {"in": 1, "out": 1}), (0, {"in": 0, "out": 1})])
def test_a_track_that_would_turn_round_ends_and_the_oncoming_vehicle_is_counted(max_reverse, expected):
    """Near the horizon a receding vehicle's track (already counted ``out``) is the nearest track
    to an oncoming vehicle that appears there; without the heading rule it takes that vehicle over
    and the vehicle's ``in`` crossing is lost (a track is counted once per line)."""
    blobs = BlobStage(BlobStage.Config(min_area=20, max_reverse=max_reverse))
    stage = AnalyticsStage(AnalyticsStage.Config(lines={"road": [[0, 200], [319, 200]]}))
    image = np.zeros((H, W, 3), np.uint8)
    ids = {}
    for i in range(70):
        frame = Frame("s", i + 1, i / 25.0, image, data={"mask": _receding_then_oncoming(i)})
        stage.process(blobs.process([frame]))
        if i in (29, 69):  # the receding car's last frame, the oncoming car's last
            ids[i] = [o["track"] for o in frame.data["objects"]]
    assert frame.data["analytics"]["totals"]["road"] == expected
    # with the rule the oncoming car ends on a track of its own; without it, on the receding one's
    assert len(ids[29]) == len(ids[69]) == 1 and (ids[29] == ids[69]) == (max_reverse == 0), ids


def test_bad_max_reverse_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stages": [{"blobs": {"max_reverse": -1}}]})
    assert err.value.input == "stages.blobs.max_reverse" and "\n" not in str(err.value)


# ------------------------------------------------ matching where the vehicle should be, entering vehicles
def test_a_fast_track_is_matched_where_its_motion_puts_it():
    """A 20 px car moving 18 px a frame: its next box barely overlaps its last one. A stranger
    that appears almost on its last box must not take its id; the car's own box, where its motion
    puts it, keeps it."""
    from pipeline.stages.blobs import BoxTracker

    tracker = BoxTracker(match_iou=0.2, match_distance=0.75, max_missed=3)
    first = [tracker.update(np.array([[10 + 18 * k, 100, 20, 20]]), (400, 300))[0] for k in range(4)]
    assert len(set(first)) == 1
    car, stranger = tracker.update(np.array([[82, 100, 20, 20], [67, 100, 20, 20]]), (400, 300))
    assert car == first[0] and stranger != car


def test_a_vehicle_entering_at_the_border_moves_with_its_uncut_edge():
    """A receding car entering at the bottom edge grows upwards: its top moves 12 px a frame while
    its box's centre moves 6. Its motion is the top's, and its predicted box is cut by the border
    again; a box that spans the picture on an axis has no visible motion on it."""
    from pipeline.stages.blobs import BoxTracker, _edge_step

    size = (320, 300)
    assert _edge_step(np.array([100., 270, 40, 30]), np.array([100., 258, 40, 42]), size).tolist() == [0, -12]
    assert _edge_step(np.array([0., 100, 30, 20]), np.array([0., 100, 38, 20]), size).tolist() == [8, 0]
    assert _edge_step(np.array([100., 0, 40, 300]), np.array([104., 0, 40, 300]), size) is None
    # cut at the bottom, but 15 -> 61 px wide: the piece changed shape, its centre's step is no motion
    assert _edge_step(np.array([12., 234, 15, 6]), np.array([6., 226, 61, 14]), size) is None
    tracker = BoxTracker(match_iou=0.2, match_distance=0.75, max_missed=3)
    for k in range(3):
        tracker.update(np.array([[100, 270 - 12 * k, 40, 30 + 12 * k]]), size)
    (x, y, w, h), = tracker.predictions(*size)
    assert (x, y, w) == (100, 270 - 36, 40) and y + h == 300


def test_a_blob_holding_tracked_vehicles_and_a_newcomer_loses_only_the_newcomer():
    """The pixels inside the predictions of all tracks in a blob stay one piece (the tracker
    carries whichever track finds no box); what joined them outside every prediction is cut off."""
    from pipeline.analytics.split import cut_grown

    blob = np.zeros((100, 60), bool)
    blob[0:30, 0:60] = True      # two tracked cars side by side
    blob[30:95, 10:50] = True    # a third, entering behind them, joined
    predicted = np.array([[0, 0, 28, 28], [32, 0, 28, 28]], np.float64)
    inside, *rest = cut_grown(blob, (0, 0), predicted)
    assert len(rest) == 1 and inside[:30].all() and not inside[40:].any() and rest[0][40:90, 10:50].all()


def _car_with_shadow_pieces(frame: int) -> np.ndarray:
    """Cars 40 px wide near the bottom and 20 px near the top (perspective), one per lane, driving
    down 5 px a frame; beside each a 6x6 piece of its cast shadow that the mask cut off."""
    mask = np.zeros((H, W), np.uint8)
    for lane, start in ((60, 0), (180, 25)):
        k = frame - start
        if k < 0:
            continue
        bottom = 40 + 5 * k
        width = int(20 + 20 * (bottom - 40) / 200)
        if bottom > H - 5:
            continue
        top = bottom - int(0.8 * width)
        mask[top:bottom, lane:lane + width] = 255
        mask[bottom - 8:bottom - 2, lane + width + 6:lane + width + 12] = 255
    return mask


@pytest.mark.parametrize("split_width", [2.2, 0])
def test_shadow_fragments_are_tracked_but_never_counted(split_width):
    """Each car is counted once; the shadow pieces beside them cross the line too but are far
    smaller than one vehicle at their row (the learned width), so they are flagged ``fragment``
    and left out of lines and counts. With ``min_size`` 0 they count as vehicles. The width is
    learned for ``min_size`` alone too (``split_width`` 0)."""
    def run(min_size: float) -> tuple[dict, int]:
        blobs = BlobStage(BlobStage.Config(min_area=20, min_size=min_size, split_width=split_width))
        stage = AnalyticsStage(AnalyticsStage.Config(lines={"road": [[0, 200], [319, 200]]}))
        image = np.zeros((H, W, 3), np.uint8)
        flagged = 0
        for i in range(120):
            frame = Frame("s", i + 1, i / 25.0, image, data={"mask": _car_with_shadow_pieces(i)})
            stage.process(blobs.process([frame]))
            flagged += sum(bool(o.get("fragment")) for o in frame.data["objects"])
        return frame.data["analytics"]["totals"]["road"], flagged

    totals, flagged = run(0.5)
    assert flagged > 0
    without, none_flagged = run(0)
    assert none_flagged == 0 and without["in"] > totals["in"], (without, totals)


def test_bad_min_size_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stages": [{"blobs": {"min_size": 1.5}}]})
    assert err.value.input == "stages.blobs.min_size" and "\n" not in str(err.value)


# ------------------------------------------------ two vehicles side by side at different distances
def _width_at(bottom: float) -> float:
    """One car's width at its bottom row in the scenes below (perspective: 20 px at row 40, 40 at 240)."""
    return 20 + 20 * (bottom - 40) / 200


def test_staggered_cut_parts_two_cars_at_their_own_rows_and_leaves_one_wide_vehicle_whole():
    from pipeline.analytics.split import cut_staggered

    line = (0.1, 16.0)  # _width_at as slope, intercept
    blob = np.zeros((60, 120), bool)
    near, far = int(_width_at(250)), int(_width_at(225))        # 41 and 38 px
    blob[10:60, 0:near] = True                                  # nearer car, bottom row 249 (frame row 190 + 59)
    blob[5:34, near:near + far] = True                          # farther car beside it, bottom row 223
    left, right = cut_staggered(blob, 190, line)
    assert left[:, :near].sum() == blob[:, :near].sum() and not left[:, near + 2:].any()
    assert right[:, near + 2:].sum() == blob[:, near + 2:].sum() and not right[:, :near - 2].any()
    lorry = np.zeros((50, 80), bool)
    lorry[5:50, 0:75] = True                                    # 1.8 cars wide, one bottom row
    assert cut_staggered(lorry, 190, line) is None
    car_and_shadow = np.zeros((50, 60), bool)
    car_and_shadow[5:45, 0:41] = True                           # a car with its cast shadow lower beside it
    car_and_shadow[30:50, 41:58] = True
    assert cut_staggered(car_and_shadow, 190, line) is None


def _staggered_pair(frame: int) -> np.ndarray:
    """Two lanes at x 60 and 110 with cars driving down 5 px a frame, widths as _width_at. Frames 0-59:
    single cars, one lane at a time (the blob stage learns the width per row). From frame 60 a pair
    that touches: the right car further back, so 12 px higher in the picture and narrower."""
    mask = np.zeros((H, W), np.uint8)
    cars = [(60, 5 * (frame % 30) + 40) if frame < 60 and (frame // 30) % 2 == 0 else None,
            (110, 5 * (frame % 30) + 40) if frame < 60 and (frame // 30) % 2 == 1 else None]
    if frame >= 60:
        k = frame - 60
        cars = [(60, 80 + 5 * k), (60 + int(_width_at(80 + 5 * k)), 68 + 5 * k)]  # touching, 12 px higher
    for car in cars:
        if car is None or car[1] > H - 3:
            continue
        x, bottom = car
        width = int(_width_at(bottom))
        mask[max(bottom - int(0.8 * width), 0):bottom, x:x + width] = 255
    return mask


def test_two_cars_side_by_side_at_different_distances_are_both_counted():
    """The pair is about 1.9 times one car's width at its bottom row: the side-by-side rule (2.2)
    leaves it one blob and one count; the staggered cut counts both."""
    def run(staggered: float) -> dict:
        blobs = BlobStage(BlobStage.Config(min_area=20, split_staggered=staggered, min_size=0))
        stage = AnalyticsStage(AnalyticsStage.Config(lines={"road": [[0, 200], [319, 200]]}))
        image = np.zeros((H, W, 3), np.uint8)
        totals = {"in": 0, "out": 0}
        for i in range(100):
            frame = Frame("s", i + 1, i / 25.0, image, data={"mask": _staggered_pair(i)})
            stage.process(blobs.process([frame]))
            for c in frame.data["crossings"]:
                totals[c["direction"]] += i >= 60
        return totals

    assert run(0) == {"in": 1, "out": 0}
    assert run(1.5) == {"in": 2, "out": 0}


# ------------------------------------------------ a vehicle that parts from a joined blob past the line
def _car_joined_to_a_lorry(k: int) -> np.ndarray:
    """Car A drives up, 6 px a frame, joined from its first frame (by its shadow) to a lorry B
    that stands below the line at row 150; they part when A is 30 px past the line."""
    mask = np.zeros((H, W), np.uint8)
    bottom = 250 - 6 * k
    mask[max(bottom - 30, 0):max(bottom, 0), 100:140] = 255
    mask[170:260, 160:230] = 255
    if bottom > 120:
        mask[bottom - 25:240, 140:160] = 255
    return mask


@pytest.mark.parametrize("parted, expected", [(0.3, 1), (0.0, 0)])
def test_a_vehicle_that_parts_from_a_joined_blob_past_the_line_is_counted(parted, expected):
    """The joined blob's anchor is the lorry's bottom, below the line, while the car crosses it.
    When the blob parts, the lorry keeps the track and the car gets a new one, its parent that
    track, already past the line: it counts once it has moved on."""
    blobs = BlobStage(BlobStage.Config(min_area=50))
    stage = AnalyticsStage(AnalyticsStage.Config(lines={"road": [[0, 150], [319, 150]]}, parted=parted))
    image = np.zeros((H, W, 3), np.uint8)
    totals, parents = {"in": 0, "out": 0}, []
    for k in range(40):
        frame = Frame("s", k + 1, k / 25.0, image, data={"mask": _car_joined_to_a_lorry(k)})
        stage.process(blobs.process([frame]))
        parents += [(o["track"], o["parent"]) for o in frame.data["objects"] if "parent" in o]
        for c in frame.data["crossings"]:
            totals[c["direction"]] += 1
    assert len(parents) == 1 and parents[0][0] != parents[0][1]
    assert totals == {"in": 0, "out": expected}
