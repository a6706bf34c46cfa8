"""Camera-motion compensation (pipeline.stabilize) in the frame buffer, MSFgNet, MOG2/KNN and events.

Real frames: CDnet highway shaken with training.data.jitter (seeds not used by tools/eval_jitter.py),
video02.avi for a scene cut; blank frames for a registration that must fail.
"""
from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest

from pipeline import cli
from pipeline.cdnet import Confusion
from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.framebuffer import FrameBuffer
from pipeline.sinks.events import event_record
from pipeline.stabilize import Stabilizer
from pipeline.stages.background import KnnStage, Mog2Stage
from pipeline.stages.msfgnet import MsfgnetStage
from tests.conftest import HIGHWAY, VIDEOS, need
from tests.test_msfgnet_stage import needs_weights
from training.data.jitter import jitter_pair, shake_matrix, shake_trajectory

SEED = 4242  # a shake used only by these tests


@functools.lru_cache(maxsize=None)
def highway(first: int, count: int, seed: int | None = SEED):
    """Highway frames ``first``.. with their labels, shaken by the trajectory of ``seed`` (None = still)."""
    need(HIGHWAY)
    roi = cv2.imread(str(HIGHWAY / "ROI.bmp"), cv2.IMREAD_GRAYSCALE) > 0
    path = shake_trajectory(count, seed) if seed is not None else np.zeros((count, 3))
    out = []
    for k in range(count):
        n = first + k
        image = cv2.imread(str(HIGHWAY / "input" / f"in{n:06d}.jpg"))
        labels = cv2.imread(str(HIGHWAY / "groundtruth" / f"gt{n:06d}.png"), cv2.IMREAD_GRAYSCALE)
        out.append(jitter_pair(image, labels, path[k], roi=roi))
    return out, path


def run_stage(stage, images, stream="cam", first=1):
    frames = []
    with stage:
        for i, image in enumerate(images):
            frame = Frame(stream, first + i, None, image)
            stage.process([frame])
            frames.append(frame)
    return frames


def scores(frames, labels, skip: int) -> dict:
    c = Confusion()
    for f, gt in list(zip(frames, labels))[skip:]:
        c.add(f.data["mask"], gt)
    return c.metrics()


# --- registration ------------------------------------------------------------------------
def test_registration_follows_a_real_shake():
    clip, path = highway(900, 60)
    stab = Stabilizer()
    corners = np.array([[0, 0, 1], [320, 0, 1], [0, 240, 1], [320, 240, 1]], float).T
    first = np.eye(3)
    first[:2] = shake_matrix(path[0], (320, 240))
    errors, statuses = [], set()
    for (image, _), offset in zip(clip, path):
        motion = stab.update(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        statuses.add(motion.status)
        truth = np.eye(3)
        truth[:2] = shake_matrix(offset, (320, 240))
        truth = truth @ np.linalg.inv(first)  # first frame -> this frame
        errors.append(np.abs((motion.pose @ corners)[:2] - (truth @ corners)[:2]).max())
        assert motion.confidence >= 0.15
    assert statuses <= {"anchor", "ok", "renewed"}
    assert np.abs(path[:, :2]).max() > 5  # the shake is real: several pixels
    assert np.median(errors) < 0.6 and max(errors) < 2.0  # pixels at a frame corner


def test_blank_frames_are_unreliable_and_recover():
    clip, _ = highway(900, 12, seed=None)
    stab = Stabilizer()
    greys = [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) for image, _ in clip]
    blank = np.full_like(greys[0], 128)
    statuses = [stab.update(g).status for g in greys[:5]]
    assert statuses == ["anchor"] + ["ok"] * 4
    lost = [stab.update(blank) for _ in range(5)]
    assert all(m.pose is None and m.status == "unreliable" for m in lost)
    assert all(m.confidence < 0.15 for m in lost)
    back = [stab.update(g) for g in greys[5:]]
    assert back[0].status == "reanchored" and back[0].epoch == 1  # texture again: a new epoch
    assert all(m.pose is not None for m in back)


def test_slow_pan_and_zoom_are_followed_and_a_large_jump_reanchors():
    clip, _ = highway(900, 90, seed=None)
    stab = Stabilizer()
    corners = np.array([[0, 0, 1], [320, 0, 1], [0, 240, 1], [320, 240, 1]], float).T
    poses, truths, statuses = [], [], []
    for t, (image, _) in enumerate(clip):
        m = np.eye(3)
        if t < 70:  # pan right 0.5 px and zoom in 0.1 % per frame
            m[:2] = cv2.getRotationMatrix2D((160, 120), 0, 1 + 0.001 * t)
            m[0, 2] += 0.5 * t
        else:       # then the camera jumps (a preset move), too far to follow from before
            m[0, 2], m[1, 2] = -80, 40
        moved = cv2.warpAffine(image, m[:2], (320, 240), borderMode=cv2.BORDER_REFLECT_101)
        motion = stab.update(cv2.cvtColor(moved, cv2.COLOR_BGR2GRAY))
        poses.append(motion.pose)
        truths.append(m)
        statuses.append(motion.status)
    assert all(p is not None for p in poses[:70]) and "unreliable" not in statuses[:70]
    for t in range(30, 70):  # what the frame buffer uses: the relation of frames 30 apart
        got = poses[t] @ np.linalg.inv(poses[t - 30])
        want = truths[t] @ np.linalg.inv(truths[t - 30])
        assert np.abs((got @ corners)[:2] - (want @ corners)[:2]).max() < 1.0, t
    assert "reanchored" in statuses[70:] and stab.epoch == 1
    assert all(p is not None for p in poses[statuses.index("reanchored", 70):])


# --- the frame buffer ---------------------------------------------------------------------
def test_aligned_warps_past_frames_into_the_newest_and_marks_unknown():
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.integers(0, 256, (60, 80), dtype=np.uint8), (5, 5), 0)
    shifted = np.roll(base, 4, axis=1)  # the camera turned: the scene moved 4 px to the right
    fb = FrameBuffer(3)
    fb.push("cam", base, np.eye(3), 0)
    pose = np.eye(3)
    pose[0, 2] = 4
    fb.push("cam", shifted, pose, 0)
    frames, unknown = fb.aligned("cam", np.array([0, 1]))
    np.testing.assert_array_equal(frames[0][:, 5:], shifted[:, 5:])
    np.testing.assert_array_equal(frames[1], shifted)
    assert unknown[:, :4].all() and not unknown[:, 5:].any()
    # where the past frame has no pixel its own edge column is carried on, not the newest frame's
    # pixels (those would read as "no change" and hide a vehicle on the border)
    np.testing.assert_array_equal(frames[0][:, :4], np.repeat(base[:, :1], 4, axis=1))
    # another epoch: no relation is known, the frame is left as it was seen
    fb.push("cam", base, np.eye(3), 1)
    frames, unknown = fb.aligned("cam", np.array([1, 2]))
    np.testing.assert_array_equal(frames[0], shifted)
    assert unknown is None
    # a frame without a pose is never warped
    fb.push("cam", shifted, None, 1)
    assert fb.aligned("cam", np.array([1, 2]))[1] is None


def test_a_wrong_pose_that_looks_confident_is_not_applied():
    rng = np.random.default_rng(2)
    base = cv2.GaussianBlur(rng.integers(0, 256, (60, 80), dtype=np.uint8), (5, 5), 0)
    fb = FrameBuffer(2)
    fb.push("cam", base, np.eye(3), 0)
    wrong = np.eye(3)
    wrong[:2, 2] = (5, -3)  # the camera did not move, the registration says it did
    fb.push("cam", base, wrong, 0)
    frames, unknown = fb.aligned("cam", np.array([0, 1]))
    np.testing.assert_array_equal(frames[0], base)  # the warp made it worse: left as seen
    assert unknown is None


# --- stages -------------------------------------------------------------------------------
@needs_weights
def test_compensation_raises_msfgnet_precision_on_a_shaken_clip():
    clip, _ = highway(1000, 90)
    images, labels = zip(*clip)
    off = scores(run_stage(MsfgnetStage(MsfgnetStage.Config(stabilize="off")), images), labels, 40)
    frames = run_stage(MsfgnetStage(), images)
    on = scores(frames, labels, 40)
    assert on["Precision"] > off["Precision"] + 0.3, (on, off)
    assert on["F-measure"] > off["F-measure"] + 0.2, (on, off)
    record = event_record(frames[-1])["stabilize"]
    assert record["status"] in ("ok", "renewed") and record["confidence"] > 0.15
    assert {"dx", "dy", "rotation", "zoom", "epoch", "unknown"} <= set(record)


@pytest.mark.parametrize("cls", [Mog2Stage, KnnStage])
def test_compensation_raises_classical_precision_on_a_shaken_clip(cls):
    clip, _ = highway(1000, 90)
    images, labels = zip(*clip)
    off = scores(run_stage(cls(cls.Config(stabilize="off")), images), labels, 40)
    on = scores(run_stage(cls(), images), labels, 40)
    assert on["Precision"] > off["Precision"] + 0.2, (on, off)
    assert on["F-measure"] > off["F-measure"], (on, off)


@needs_weights
def test_still_camera_gives_the_same_masks_as_off():
    clip, _ = highway(1000, 45, seed=None)
    images = [image for image, _ in clip]
    off = run_stage(MsfgnetStage(MsfgnetStage.Config(stabilize="off")), images)
    on = run_stage(MsfgnetStage(), images)
    assert all("stabilize" not in f.data for f in off)
    assert all(f.data["stabilize"]["unknown"] == 0 for f in on)  # nothing warped: inside the dead band
    for a, b in zip(off, on):
        np.testing.assert_array_equal(a.data["mask"], b.data["mask"])


@needs_weights
def test_scene_cut_and_blank_frames_fall_back_to_no_compensation():
    need(VIDEOS / "video02.avi")
    import av

    clip, _ = highway(1000, 25)
    images = [image for image, _ in clip] + [np.full((240, 320, 3), 90, np.uint8)] * 4
    with av.open(str(VIDEOS / "video02.avi")) as container:
        for k, f in enumerate(container.decode(video=0)):
            images.append(cv2.resize(f.to_ndarray(format="bgr24"), (320, 240), interpolation=cv2.INTER_AREA))
            if k == 15:
                break
    off = run_stage(MsfgnetStage(MsfgnetStage.Config(stabilize="off")), images)
    on = run_stage(MsfgnetStage(), images)
    statuses = [f.data["stabilize"]["status"] for f in on]
    assert statuses[25:29] == ["unreliable"] * 4  # blank: nothing to follow
    assert "reanchored" in statuses[29:] and on[-1].data["stabilize"]["epoch"] == 1
    for a, b in zip(off[25:], on[25:]):  # no pose or no relation to the past: exactly as without
        np.testing.assert_array_equal(a.data["mask"], b.data["mask"])


def test_a_bare_off_in_yaml_means_off(tmp_path):
    from pipeline.config import load_config

    config = tmp_path / "c.yaml"
    config.write_text("stages:\n  - mog2: {stabilize: off}\n  - knn: {stabilize: auto}\n")
    mog2, knn = (spec.config for spec in load_config(config).stages)
    assert Mog2Stage(mog2)._registrations is None and KnnStage(knn)._registrations is not None


def test_bad_mode_is_refused_with_its_key():
    with pytest.raises(ConfigError, match=r"stages\.mog2\.stabilize.*auto, off"):
        Mog2Stage.Config(stabilize="on")
    with pytest.raises(ConfigError, match=r"stages\.msfgnet\.stabilize"):
        MsfgnetStage(MsfgnetStage.Config(stabilize="yes"))


@pytest.fixture(scope="module")
def shaken_folder(tmp_path_factory):
    """Highway 1000-1059 shaken, as a CDnet folder (frames 1030-1059 scored); and the shake."""
    clip, path = highway(1000, 60)
    root = tmp_path_factory.mktemp("shaken") / "shaky"
    (root / "input").mkdir(parents=True)
    (root / "groundtruth").mkdir()
    for k, (image, labels) in enumerate(clip):
        cv2.imwrite(str(root / "input" / f"in{1000 + k:06d}.png"), image)
        cv2.imwrite(str(root / "groundtruth" / f"gt{1000 + k:06d}.png"), labels)
    (root / "temporalROI.txt").write_text("1030 1059\n")
    return root, path


def test_events_of_a_run_carry_motion_and_confidence(tmp_path, shaken_folder, capsys):
    root, path = shaken_folder
    config = tmp_path / "c.yaml"
    config.write_text(f"inputs: ['{root / 'input'}']\noutput: {tmp_path / 'o'}\n"
                      "stages:\n  - mog2: {stabilize: auto}\nruntime: {max_frames: 30}\n"
                      "outputs: {preview: false, dehazed_video: false}\n")
    assert cli.main(["run", str(config), "--no-progress"]) == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in next((tmp_path / "o").rglob("events.jsonl")).read_text().splitlines()]
    assert len(lines) == 30
    moves = [(e["stabilize"]["dx"], e["stabilize"]["dy"]) for e in lines]
    assert all(0 <= e["stabilize"]["confidence"] <= 1 for e in lines)
    # dx, dy: how far the picture's centre moved since the first frame, in input pixels
    truth = path[:30, :2] - path[0, :2]
    assert np.abs(np.array(moves) - truth).max() < 2.0


def test_eval_foreground_takes_stabilize(tmp_path, shaken_folder, capsys):
    root, _ = shaken_folder
    reports = {}
    for mode in ("off", "auto"):
        out = tmp_path / f"{mode}.json"
        argv = ["eval", "foreground", str(root), "--method", "knn", "--stabilize", mode, "--json", str(out)]
        assert cli.main(argv) == 0, capsys.readouterr().err
        reports[mode] = json.loads(out.read_text())
    assert reports["off"]["stabilize"] == "off" and reports["auto"]["stabilize"] == "auto"
    off, on = (reports[m]["sequences"]["shaky"]["Precision"] for m in ("off", "auto"))
    assert on > off + 0.2, (on, off)


def test_still_synthetic_camera_with_oncoming_vehicles_stays_at_identity():
    """Issue 12: on a still synthetic camera (little texture, most corners on vehicles coming towards
    it) the vehicles' tracks once fitted a zoom and the chained renewals drifted to zoom 0.33 by frame
    200. Seed 201 of the clean family (a validation seed: this checks, it chooses nothing)."""
    from pipeline.stabilize import displacement
    from training.data.families import synthetic_frames

    stab, warped = Stabilizer(), []
    for i, (image, _truth, _scored) in enumerate(synthetic_frames("clean", 201, 200), start=1):
        motion = stab.update(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        if motion.pose is not None and displacement(motion.pose, motion.size) > 1.0:  # the dead band
            warped.append(i)
    # before the fix 196 of the 200 frames were outside the dead band; one isolated frame (32) still
    # takes the vehicles' zoom for a moment, the next frame is back at identity
    assert len(warped) <= 1, warped


@functools.lru_cache(maxsize=None)
def _synthetic_jitter(seed: int):
    """The `jitter` family (4 px camera shake, a new integer shift every frame) of seed ``seed``: frames,
    truth masks and the true shift of each frame, found as the shift of the empty scene
    (``SceneGenerator.background``) that matches the frame best."""
    from pipeline.sources.synthetic import SceneGenerator
    from training.data.families import FRAMES, SIZE, SYNTHETIC

    gen = SceneGenerator(SIZE[0], SIZE[1], seed=seed, frames=FRAMES, **SYNTHETIC["jitter"])
    pad = gen.pad
    shifts = [(dx, dy) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)]
    empty = np.stack([cv2.cvtColor(gen.background(s), cv2.COLOR_BGR2GRAY)[::4, ::4] for s in shifts]).astype(np.int16)
    images, truths, true_shift = [], [], []
    for image, truth in gen.frames():
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[::4, ::4]
        true_shift.append(shifts[int(np.argmin((np.abs(empty - grey) > 12).sum(axis=(1, 2))))])
        images.append(image)
        truths.append(truth)
    return images, truths, np.array(true_shift, float)


def test_shaking_synthetic_camera_is_registered_to_its_true_shake():
    """Issue 12: on the synthetic `jitter` family (little texture, a new 4 px jump every frame)
    wrong fits renewed the reference and the chain drifted by 96 px by frame 147 (seed 201, a
    validation seed: this checks, it chooses nothing); registration against the epoch's first
    reference and the candidate check keep every frame within half a pixel of the truth."""
    images, _, true_shift = _synthetic_jitter(201)
    stab, errors = Stabilizer(), []
    for image, shift in zip(images, true_shift):
        motion = stab.update(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        if motion.pose is None:
            continue
        record = motion.record()
        # the picture moves against the crop: its content shifted by -(shift - first shift)
        errors.append(np.abs(np.array([record["dx"], record["dy"]]) + shift - true_shift[0]).max())
    assert len(errors) >= 190 and np.abs(true_shift).max() == 4
    assert np.median(errors) < 0.2 and max(errors) < 1.0, (np.median(errors), max(errors))


@pytest.mark.parametrize("cls", [Mog2Stage, KnnStage])
def test_compensation_is_not_worse_than_none_on_a_shaking_synthetic_camera(cls):
    """Issue 12: KNN with compensation scored F 0.78 on seed 201 of the `jitter` family, 0.92
    without (the registration drifted); with the registration fixed MOG2 still lost (0.875 against
    0.886) because every pixel the shake moved out of the model's frame came back as background,
    until the model's canvas got a margin. The classical models with `auto` must not lose to `off`."""
    images, truths, _ = _synthetic_jitter(201)
    off = scores(run_stage(cls(cls.Config(stabilize="off")), images), truths, 71)
    on = scores(run_stage(cls(), images), truths, 71)
    assert on["F-measure"] >= off["F-measure"] - 0.005, (on, off)
