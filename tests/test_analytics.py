"""Traffic analytics: counting lines, zones, speed, time bins, analytics.csv, report page.

Accuracy is checked on synthetic scenes whose vehicles, identities and ground speeds are exact
(``SceneGenerator.objects``); the end-to-end test runs the real graph (``hazeflow run``) on a
generated scene and renders the report in headless Chromium where it is installed.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from pipeline.analytics.bins import COLUMNS, BinTable
from pipeline.analytics.counting import LineCounter, SpeedMeter
from pipeline.analytics.geometry import parse_calibration
from pipeline.cli import main as hazeflow
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.sources.synthetic import SceneGenerator
from pipeline.stages.analytics import AnalyticsStage
from pipeline.stages.blobs import BlobStage

FPS = 25.0


# ---------------------------------------------------------------- lines
def test_line_counts_each_direction_once_despite_wobble():
    line = LineCounter("road", (0, 50), (100, 50), hysteresis=3)
    crossings = []
    # track 1 comes down, wobbles +-2 px on the line, then passes it; later it goes back up
    path1 = [30, 40, 48, 51, 49, 52, 48, 51, 56, 70, 80, 60, 40]
    path2 = [90, 70, 55, 45, 30]  # track 2 goes up once
    for k in range(max(len(path1), len(path2))):
        tracks, anchors = [], []
        for tid, path in ((1, path1), (2, path2)):
            if k < len(path):
                tracks.append(tid)
                anchors.append((20.0 * tid, path[k]))
        crossings += line.update(tracks, np.array(anchors, np.float64))
    assert crossings == [(2, "out"), (1, "in")]
    assert line.totals == {"in": 1, "out": 1}


def _run_line(recount: float, path: list[tuple[float, float]]) -> list:
    """One track's (anchor row, box height) per frame over a line at row 100, counted upwards."""
    line = LineCounter("road", (0, 100), (200, 100), hysteresis=3, recount=recount)
    crossings = []
    for y, h in path:
        crossings += line.update([7], np.array([[50.0, y]]), np.array([h]))
    return crossings


# a receding car (40 px tall) crosses at row 100; its blob then joins the car behind, whose bottom
# (row 130, the joined blob 80 px tall) becomes the track's anchor, and the track carries that car
# steadily over the line
HANDED_OVER = [(130, 40), (115, 40), (98, 40), (85, 40), (130, 80), (118, 42), (106, 40), (95, 38), (85, 36)]


@pytest.mark.parametrize("recount, expected", [(0.3, 2), (0.0, 1)])
def test_a_track_handed_the_vehicle_behind_counts_it_too(recount, expected):
    crossings = _run_line(recount, HANDED_OVER)
    assert [d for _, d in crossings] == ["out"] * expected


def test_a_track_is_not_recounted_for_a_wobble_or_for_jumping_back_to_the_vehicle_ahead():
    # back 8 px behind the line (a fifth of its 40 px), then on: one vehicle, one count
    assert len(_run_line(0.3, [(130, 40), (97, 40), (90, 40), (108, 40), (96, 40), (80, 40)])) == 1
    # joined with the car behind (anchor back to 130), then the blobs part and the track jumps
    # back to the car ahead (80 -> 40 px tall): the vehicle ahead is not counted again
    assert len(_run_line(0.3, [(130, 40), (98, 40), (85, 40), (130, 80), (126, 82), (80, 40), (70, 38)])) == 1


def test_a_track_out_of_a_parted_blob_counts_only_once_it_moves_on_away_from_the_line():
    def run(path) -> list:
        line = LineCounter("road", (0, 100), (200, 100), hysteresis=3, parted=0.3)
        line.update([1], np.array([[50.0, 130.0]]), np.array([80.0]))  # the joined blob, below the line
        line.inherit(2, 1)                                              # track 2 came out of it
        crossings = []
        for y in path:
            crossings += line.update([2], np.array([[60.0, y]]), np.array([40.0]))
        return crossings

    assert run([90, 80, 70]) == [(2, "out")]     # above the line, moving up: it crossed while joined
    assert run([90, 88, 87]) == []                # not yet 12 px (0.3 x 40) further on
    # above the line but moving down (an approaching vehicle): not an `out`, and its own crossing counts
    assert run([90, 96, 110, 120]) == [(2, "in")]


def test_crossing_beyond_the_segment_is_not_counted():
    line = LineCounter("short", (0, 50), (40, 50), hysteresis=2)
    for y in (30, 45, 55, 70):
        assert line.update([7], np.array([[80.0, y]])) == []  # x = 80 is past B
    assert line.totals == {"in": 0, "out": 0}


# ---------------------------------------------------------------- speed
def test_speed_from_the_ground_plane_homography():
    # a road plane seen in perspective: a true homography built from four known correspondences
    calib = parse_calibration({"image": [[100, 100], [220, 100], [300, 230], [20, 230]],
                               "ground": [[0, 40], [7, 40], [7, 5], [0, 5]]})
    h_img_to_ground = calib.homography(320, 240)
    to_image = np.linalg.inv(h_img_to_ground)
    meter = SpeedMeter(h_img_to_ground, 320, 240, window_s=1.0)
    speed = None
    for k in range(30):  # 20 m/s = 72 km/h straight towards the camera along x = 3.5 m
        g = np.array([3.5, 35.0 - 20.0 * k / FPS, 1.0])
        p = to_image @ g
        anchor = p[:2] / p[2]
        box = np.array([[anchor[0] - 10, anchor[1] - 12, 20, 12]])
        speed = meter.update([1], anchor[None], box, k / FPS)[0]
    assert speed == pytest.approx(72.0, rel=1e-3)


@pytest.mark.parametrize("min_span_s, measured", [(0.2, True), (0.4, False)])
def test_a_vehicle_seen_clear_for_a_quarter_second_gets_a_speed(min_span_s, measured):
    """A fast vehicle on a close camera is clear of the border and of other blobs for only 7
    frames (0.24 s at 25 frames/s) before it joins the queue near the horizon: the shortest path
    that gives a speed decides whether it has one (fast vehicles without one bias a bin's mean)."""
    calib = parse_calibration({"image": [[100, 100], [220, 100], [300, 230], [20, 230]],
                               "ground": [[0, 40], [7, 40], [7, 5], [0, 5]]})
    h_img_to_ground = calib.homography(320, 240)
    to_image = np.linalg.inv(h_img_to_ground)
    meter = SpeedMeter(h_img_to_ground, 320, 240, window_s=1.0, min_span_s=min_span_s)
    speeds = []
    for k in range(7):  # 25 m/s = 90 km/h away from the camera
        p = to_image @ np.array([3.5, 8.0 + 25.0 * k / FPS, 1.0])
        anchor = p[:2] / p[2]
        speeds.append(meter.update([1], anchor[None], np.array([[anchor[0] - 10, anchor[1] - 12, 20, 12]]), k / FPS)[0])
    assert (speeds[-1] is not None) == measured
    if measured:
        assert speeds[-1] == pytest.approx(90.0, rel=1e-3)


# ---------------------------------------------------------------- zones and bins
def test_bins_give_counts_occupancy_queue_and_dwell():
    table = BinTable("cam", bin_s=2.0, lines=["road"], zones=["queue"])
    # 4 frames/s for 4 s: tracks 1 and 2 sit in the zone from 0.5 s to 1.5 s, track 3 from 2.0 to 2.75 s
    for k in range(16):
        t = k / 4
        members = ([1, 2] if 0.5 <= t <= 1.5 else []) + ([3] if 2.0 <= t <= 2.75 else [])
        crossings = [{"line": "road", "direction": "in", "track": 1, "t": t, "speed_kmh": 50.0}] if k == 3 else []
        table.add(t, {"crossings": crossings, "late_speeds": [], "zones": {"queue": members}, "speeds": {}},
                  haze_score=0.2 if t < 2 else 0.6, dehazed=t >= 2)
    table.close()
    rows = {(r["bin_start_s"], r["name"], r["direction"]): r for r in table.rows()}
    assert [list(r) for r in table.rows()][0] == list(COLUMNS)
    assert rows[(0.0, "road", "in")]["count"] == 1 and rows[(0.0, "road", "in")]["mean_speed_kmh"] == 50.0
    assert rows[(0.0, "road", "out")]["count"] == 0 and rows[(0.0, "road", "out")]["mean_speed_kmh"] is None
    assert rows[(0.0, "queue", "")]["occupancy"] == pytest.approx(5 / 8)   # frames at 0.5..1.5 s
    assert rows[(2.0, "queue", "")]["occupancy"] == pytest.approx(4 / 8)
    assert rows[(0.0, "queue", "")]["count"] == 2 and rows[(2.0, "queue", "")]["count"] == 1
    summary = table.summary()
    assert summary["zones"]["queue"]["max_queue"] == 2
    assert summary["zones"]["queue"]["mean_dwell_s"] == pytest.approx((1.25 + 1.25 + 1.0) / 3, abs=1e-3)  # seen to left
    assert [b["dehazed_share"] for b in summary["bins"]] == [0.0, 1.0]
    assert summary["bins"][1]["haze_score"] == pytest.approx(0.6)


def test_a_capped_table_folds_old_bins_into_totals_that_match_the_whole_run():
    """A camera's whole-run table keeps max_bins bins; its totals still count every bin."""
    rng = np.random.default_rng(3)
    full = BinTable("cam", bin_s=1.0, lines=["road"], zones=["queue"])
    capped = BinTable("cam", bin_s=1.0, lines=["road"], zones=["queue"], max_bins=3)
    for k in range(200):  # 10 frames/s for 20 s: 20 bins
        t = k / 10
        members = [int(m) for m in rng.choice(6, size=rng.integers(0, 4), replace=False)]
        crossings = ([{"line": "road", "direction": ("in", "out")[k % 2], "track": k, "t": t,
                       "speed_kmh": float(40 + k % 30)}] if k % 7 == 0 else [])
        result = {"crossings": crossings, "late_speeds": [], "zones": {"queue": members},
                  "speeds": {m: 30.0 + m for m in members}}
        for table in (full, capped):
            table.add(t, result, haze_score=0.1 * (k % 5), dehazed=k % 3 == 0)
    for table in (full, capped):
        table.close()
    assert len(full.bins) == 20 and len(capped.bins) == 3 and capped.folded.bins == 17
    a, b = full.summary(), capped.summary()
    for direction in ("in", "out"):
        assert b["lines"]["road"][direction] == a["lines"]["road"][direction] > 0
    assert b["lines"]["road"]["speed_histogram_in"] == a["lines"]["road"]["speed_histogram_in"]
    for key in ("entered", "occupancy", "mean_queue", "max_queue", "mean_dwell_s"):
        assert b["zones"]["queue"][key] == a["zones"]["queue"][key], key
    assert b["bins"] == a["bins"][-3:] and b["rows"] == full.rows()[-9:]  # 3 bins x (2 directions + 1 zone)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("section, key, fragment", [
    ({"lines": {"road": [[0, 0.5]]}}, "stages.analytics.lines.road", "expected 2 points"),
    ({"lines": {"road": [[0.2, 0.5], [0.2, 0.5]]}}, "stages.analytics.lines.road", "same"),
    ({"zones": {"q": [[0, 0], [1, 1]]}}, "stages.analytics.zones.q", "at least 3 points"),
    ({"zones": {"q": "left half"}}, "stages.analytics.zones.q", "list of [x, y] points"),
    ({"lines": {"a": [[0, 0.5], [1, 0.5]]}, "calibration": {"image": [[0, 0], [1, 0], [2, 0], [3, 5]],
                                                         "ground": [[0, 0], [1, 0], [1, 1], [0, 1]]}},
     "stages.analytics.calibration.image", "one line"),
    ({"lines": {"a": [[0, 0.5], [1, 0.5]]}, "bin_s": 0}, "stages.analytics.bin_s", "> 0"),
    ({"lines": {"a": [[0, 0.5], [1, 0.5]]}, "recount": -0.5}, "stages.analytics.recount", ">= 0"),
    ({"lines": {"a": [[0, 0.5], [1, 0.5]]}, "parted": -1}, "stages.analytics.parted", ">= 0"),
    ({"lines": {"a": [[0, 0.5], [1, 0.5]]}, "speed_min_s": 0}, "stages.analytics.speed_min_s", "> 0"),
    ({"lines": {"a": [[0, 0.5], [1, 0.5]]}, "colour": "red"}, "stages.analytics.colour", "unknown key"),
    ({}, "stages.analytics", "at least one of lines or zones"),
])
def test_config_errors_name_the_key(section, key, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stages": [{"blobs": {}}, {"analytics": section}]})
    assert err.value.input == key and fragment in err.value.cause and "\n" not in str(err.value)


# ---------------------------------------------------------------- accuracy on exact masks
def _true_crossings(gen, frames, line_y, skip):
    first, last = {}, {}
    for k, objs in enumerate(frames):
        if k < skip:
            continue
        for o in objs:
            first.setdefault(o["id"], o["base"][1])
            last[o["id"]] = o["base"][1]
    counts = {"in": 0, "out": 0}
    for vid, y0 in first.items():
        if y0 < line_y <= last[vid]:
            counts["in"] += 1
        elif last[vid] < line_y <= y0:
            counts["out"] += 1
    return counts


def test_counts_and_speeds_on_exact_masks():
    """Seed 1 is a validation scene (the line row was chosen on it); exact masks isolate the
    blob stage, the tracker and the analytics from the foreground model."""
    gen = SceneGenerator(640, 360, seed=1, motion="ground")  # haze and nuisances leave the truth as it is
    lanes = gen.lane_speeds(FPS)
    blobs = BlobStage(BlobStage.Config(min_area=100))
    stage = AnalyticsStage(AnalyticsStage.Config(lines={"road": [[0.0, 0.8], [1.0, 0.8]]},
                                                 calibration=gen.calibration()))
    truth, crossings, skip = [], [], 50
    image = np.zeros((360, 640, 3), np.uint8)
    for i, (_, mask) in enumerate(gen.frames(300), start=1):
        truth.append(gen.objects())
        frame = Frame("s", i, (i - 1) / FPS, image, data={"mask": mask})
        stage.process(blobs.process([frame]))
        result = frame.data["analytics"]
        for c in result["crossings"]:
            if i > skip:
                box = next(o["box"] for o in frame.data["objects"] if o["track"] == c["track"])
                crossings.append(dict(c, box=box, frame=i))
        for late in result["late_speeds"]:
            for c in crossings:
                if c["track"] == late["track"]:
                    c["speed_kmh"] = late["speed_kmh"]
    expected = _true_crossings(gen, truth, 0.8 * 360, skip)
    counted = {d: sum(c["direction"] == d for c in crossings) for d in ("in", "out")}
    assert expected["in"] >= 8 and expected["out"] >= 8
    for d in ("in", "out"):
        assert abs(counted[d] - expected[d]) <= 0.05 * expected[d], (counted, expected)
    errors = []
    for c in crossings:
        objs = truth[c["frame"] - 1]
        x, y, w, h = c["box"]
        best = max(objs, key=lambda o: _overlap(o["box"], (x, y, w, h)))
        if c["speed_kmh"] is not None and _overlap(best["box"], (x, y, w, h)) > 0.5:
            errors.append(c["speed_kmh"] / lanes[best["lane"]][1] - 1)
    assert len(errors) >= 0.6 * len(crossings)  # a vehicle merged with another soon after the line has none
    assert abs(float(np.mean(errors))) < 0.10 and float(np.median(np.abs(errors))) < 0.10


def _overlap(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


# ---------------------------------------------------------------- the whole run, then the report
@pytest.fixture(scope="module")
def analytics_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("analytics")
    calib = SceneGenerator(320, 240, seed=3, motion="ground").calibration()
    uri = "synthetic:traffic?size=320x240&frames=150&motion=ground&seed=3&haze=0.3"
    config = {
        "inputs": [{"uri": uri, "name": "cam"}], "output": str(root / "out"),
        "stages": [{"mog2": {}}, {"blobs": {"min_area": 40}},
                   {"analytics": {"lines": {"road": [[0.0, 0.75], [1.0, 0.75]]},
                                  "zones": {"near": [[0.2, 0.6], [0.8, 0.6], [0.95, 0.95], [0.05, 0.95]]},
                                  "calibration": calib, "bin_s": 2}}],
        "outputs": {"dehazed_video": False, "masks": False, "preview": True, "events": True},
    }
    path = root / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    assert hazeflow(["run", str(path), "--no-progress"]) == 0
    return root / "out"


def test_run_writes_analytics_csv_and_summary(analytics_run):
    folder = analytics_run / "cam"
    with open(folder / "analytics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    summary = json.loads((folder / "summary.json").read_text())["analytics"]
    assert len(rows) == len(summary["rows"]) == 3 * len(summary["bins"])  # road in, road out, near per bin
    assert {r["bin_start_s"] for r in rows} == {str(b["bin_start_s"]) for b in summary["bins"]}
    for d in ("in", "out"):
        assert sum(int(r["count"]) for r in rows if r["direction"] == d) == summary["lines"]["road"][d]
    assert sum(summary["lines"]["road"][d] for d in ("in", "out")) > 0
    occupancy = [float(r["occupancy"]) for r in rows if r["kind"] == "zone"]
    assert all(0 <= o <= 1 for o in occupancy) and max(occupancy) > 0
    events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
    assert sum(len(e["crossings"]) for e in events) == sum(int(r["count"]) for r in rows if r["kind"] == "line")


def test_report_page_renders_with_the_csv_numbers(analytics_run, tmp_path):
    assert hazeflow(["report", str(analytics_run)]) == 0
    page = analytics_run / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    assert text.count("data:image/png;base64,") >= 4  # plots and sample frames are embedded
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] >= 1000
    assert float(image.std()) > 20  # not a blank page: text, tables and plots
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], check=True, capture_output=True,
                         timeout=120, text=True).stdout
    table = dom[dom.index('<table class="analytics">'):]
    table = table[:table.index("</table>")]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    with open(analytics_run / "cam" / "analytics.csv", newline="") as f:
        expected = [list(r.values()) for r in csv.DictReader(f)]
    assert [c for c in cells if c] == expected


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert hazeflow(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hazeflow: error: ") and "summary.json" in err and "\n" not in err


def test_preview_draws_lines_and_tracks(analytics_run):
    import av

    with av.open(str(analytics_run / "cam" / "preview.mp4")) as c:
        last = None
        for last in c.decode(video=0):
            pass
        image = last.to_ndarray(format="bgr24")
    right = image[:, 2 * image.shape[1] // 3:]
    row = int(0.75 * 240)
    band = right[row - 1:row + 2].astype(int)
    yellow = (band[..., 1] > 180) & (band[..., 2] > 180) & (band[..., 0] < 120)
    assert yellow.mean() > 0.5  # the counting line is drawn across the panel


def test_synthetic_objects_match_the_truth_mask():
    gen = SceneGenerator(320, 240, seed=2, motion="ground")
    for _, truth in gen.frames(20):
        objs = gen.objects()
    assert objs and all(o["id"] > 0 for o in objs)
    for o in objs:
        x, y, w, h = (int(round(v)) for v in o["box"])
        assert truth[y:y + h, x:x + w].any()
    # the calibration maps the scene's ground points back exactly
    calib = parse_calibration(gen.calibration())
    h = calib.homography(320, 240)
    from pipeline.analytics.geometry import to_ground

    for o in objs:
        if 0 <= o["base"][1] < 240:
            assert to_ground(h, np.array([o["base"]]))[0] == pytest.approx(o["ground"], rel=1e-6, abs=1e-6)


def test_segmented_run_writes_one_csv_per_segment(tmp_path):
    """With outputs.segment_s each segment gets analytics/<stem>.csv; summary.json keeps the whole run."""
    import yaml

    uri = "synthetic:traffic?size=320x240&frames=150&motion=ground&seed=4"
    config = {"inputs": [{"uri": uri, "name": "cam"}], "output": str(tmp_path / "out"),
              "stages": [{"mog2": {}}, {"blobs": {"min_area": 40}},
                         {"analytics": {"lines": {"road": [[0.0, 0.75], [1.0, 0.75]]}, "bin_s": 1}}],
              "outputs": {"dehazed_video": False, "masks": False, "preview": False, "events": True,
                          "segment_s": 2.0}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert hazeflow(["run", str(path), "--no-progress"]) == 0
    folder = tmp_path / "out" / "cam"
    files = sorted((folder / "analytics").glob("*.csv"))
    assert len(files) == 3 and not list((folder / "analytics").glob("*.open*"))
    counted = {"in": 0, "out": 0}
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                counted[row["direction"]] += int(row["count"])
    totals = json.loads((folder / "summary.json").read_text())["analytics"]["lines"]["road"]
    assert counted == {"in": totals["in"], "out": totals["out"]} and sum(counted.values()) > 0
    assert hazeflow(["report", str(tmp_path / "out")]) == 0  # the page reads the segments' files
    page = (tmp_path / "out" / "report.html").read_text()
    table = page[page.index('<table class="analytics">'):]
    assert table.count("<tr>") - 1 == sum(len(list(csv.DictReader(open(f, newline="")))) for f in files)


def test_anchor_is_the_bottom_edge_of_the_box_in_opencv_pixel_coordinates():
    """Pixel (c, r) is centred on (c, r), as for the calibration's image points: a box of columns
    10-19 and rows 20-29 touches the road at the lower edge of row 29, x 14.5. The ground point one
    half pixel lower measured approaching vehicles slow (docs/analytics.md)."""
    from pipeline.analytics.counting import anchors_of

    mask = np.zeros((40, 40), np.uint8)
    mask[20:30, 10:20] = 255
    x, y, w, h = cv2.boundingRect(mask)
    assert anchors_of(np.array([[x, y, w, h]])).tolist() == [[14.5, 29.5]]
