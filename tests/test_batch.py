"""``hazeflow batch``: 20 clips with 3 corrupt ones, a worker killed mid-file, resume; local pool and Ray.

Clips are encoded here with PyAV (64x48, a few frames) so the runs are short;
most runs use classical stages (MOG2 + blobs), one worker test uses the
shipped learned stages of ``configs/batch.yaml``. The Ray tests start a local
instance with ``ray.init(num_cpus=2)`` (``RAY_AUTH_MODE=disabled``, set in
conftest and .ci/run).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.batch.inputs import expand_inputs, name_units
from pipeline.batch.manifest import Manifest, read_history
from pipeline.batch.worker import TMP_DIR, BatchWorker, check_output_set
from pipeline.config import CONFIG_DIR, load_config
from pipeline.errors import ConfigError, SourceError, SourceNotFoundError
from tests.media import write_clip

GOOD, CORRUPT = 17, 3
LONG_FRAMES = 300  # the clip a worker is killed on: long enough to be mid-file when the kill lands


def encode(path: Path, frames: int, w: int = 64, h: int = 48) -> Path:
    """A square moving over grey, mpeg4 in mp4."""
    def square(i: int) -> np.ndarray:
        img = np.full((h, w, 3), 90, np.uint8)
        x = (i * 3) % (w - 12)
        img[h // 4: h // 4 + 10, x:x + 10] = 230
        return img

    return write_clip(path, (square(i) for i in range(frames)))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """20 inputs: 16 short clips, one long one (``long``), 3 corrupt (garbage, cut in half, empty)."""
    folder = tmp_path_factory.mktemp("archive")
    for i in range(GOOD - 1):
        encode(folder / f"cam{i:02d}.mp4", 6)
    encode(folder / "long.mp4", LONG_FRAMES, 96, 64)
    (folder / "bad-garbage.mp4").write_bytes(b"this is not a video file " * 40)
    whole = (folder / "cam00.mp4").read_bytes()
    (folder / "bad-truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "bad-empty.mp4").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def cheap_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "cheap.yaml"
    path.write_text("stages:\n  - mog2: {}\n  - blobs: {}\n"
                    "outputs: {dehazed_video: true, masks: true, preview: false, events: true}\n")
    return path


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "batch.jsonl").read_text().splitlines()]


def final_states(out: Path) -> dict[str, dict]:
    """input name -> the manifest's last line about it."""
    return {h.name: h.last for h in read_history(out / "batch.jsonl").values()}


def kill_when_running(out: Path, name: str, found: list) -> threading.Thread:
    """Background thread: once ``name`` runs and its temporary folder exists, SIGKILL that worker."""
    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
            path = out / "batch.jsonl"
            if not path.exists():
                continue
            running = [x for x in lines(out) if x["state"] == "running" and x["name"] == name]
            if not running:
                continue
            pid = int(running[0]["worker"].rpartition(":")[2])
            tmp = out / TMP_DIR / f"{name}.{pid}.1"
            if tmp.exists() and any(tmp.rglob("*.png")):  # masks written: the worker is mid-file
                os.kill(pid, signal.SIGKILL)
                found.append(pid)
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def check_batch(out: Path, clips: Path, killed: list) -> None:
    """17 complete output sets, 3 clear failures, the killed unit retried elsewhere, nothing left over."""
    states = final_states(out)
    good = sorted(p.stem for p in clips.glob("*.mp4") if not p.stem.startswith("bad"))
    bad = sorted(p.stem for p in clips.glob("bad*.mp4"))
    assert sorted(n for n, s in states.items() if s["state"] == "done") == good
    assert sorted(n for n, s in states.items() if s["state"] == "failed") == bad
    for name in bad:
        error = states[name]["error"]
        assert "\n" not in error and error.startswith(str(clips / f"{name}.mp4") + ": "), error
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == good  # one output set per good input, none for the bad ones
    for name in good:
        assert check_output_set(out / name) == states[name]["frames"]
    assert check_output_set(out / "long") == LONG_FRAMES
    assert not (out / TMP_DIR).exists() and not list(out.rglob("*.partial"))
    # the kill: that attempt failed naming the worker, the retry ran on another worker and finished
    assert len(killed) == 1
    history = [x for x in lines(out) if x["name"] == "long" and x["state"] in ("running", "failed", "done")]
    assert [x["state"] for x in history] == ["running", "failed", "running", "done"]
    assert history[0]["worker"].endswith(f":{killed[0]}") and "was lost" in history[1]["error"]
    assert not history[2]["worker"].endswith(f":{killed[0]}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["batch"]["done"] == GOOD and summary["batch"]["failed"] == CORRUPT
    assert sorted(summary["streams"]) == good
    assert summary["frames"]["processed"] == sum(states[n]["frames"] for n in good)


def check_resume(out: Path, argv: list, capsys) -> None:
    """Re-running the same command redoes nothing complete, gives up on the corrupt inputs, mends a damaged set."""
    before = {p.name: p.stat().st_ino for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    (out / "cam03" / "events.jsonl").unlink()  # a damaged output set is not complete any more
    with open(out / "batch.jsonl", "a") as f:
        f.write('{"time": "torn')  # a driver killed mid-line
    n_lines = len((out / "batch.jsonl").read_text().splitlines())
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"hazeflow: error: {out / 'batch.jsonl'}: 3 of 20 inputs failed " \
                      "(causes in the table above and in the manifest)"
    new = [json.loads(x) for x in (out / "batch.jsonl").read_text().splitlines()[n_lines:]]
    assert sorted({x["name"] for x in new if x["state"] == "running"}) == ["cam03"]
    after = {p.name: p.stat().st_ino for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert after.keys() == before.keys()
    assert all(after[n] == before[n] for n in after if n != "cam03")  # untouched
    assert check_output_set(out / "cam03") == 6


# ------------------------------------------------------------------ local pool
def batch_killing_a_worker(out: Path, clips: Path, cheap_config: Path, capsys, *extra: str):
    """Run ``hazeflow batch`` over the 20 clips with 2 workers, killing the worker of clip ``long``
    mid-file; returns (argv, exit status, captured output, killed pids)."""
    argv = ["batch", str(clips), "--output", str(out), "--config", str(cheap_config), "--workers", "2",
            *extra, "--no-progress"]
    killed: list = []
    watcher = kill_when_running(out, "long", killed)
    status = cli.main(argv)
    watcher.join(1)
    return argv, status, capsys.readouterr(), killed


def test_local_pool_20_clips_3_corrupt_worker_killed_then_resume(tmp_path, clips, cheap_config, capsys):
    out = tmp_path / "out"
    argv, status, captured, killed = batch_killing_a_worker(out, clips, cheap_config, capsys)
    assert status == 2
    assert captured.err.strip().splitlines() == [
        f"hazeflow: error: {out / 'batch.jsonl'}: 3 of 20 inputs failed (causes in the table above and in the manifest)"]
    assert "17 done, 3 failed of 20 inputs" in captured.out and "bad-empty" in captured.out
    check_batch(out, clips, killed)
    check_resume(out, argv, capsys)


def test_killed_driver_resumes_without_duplicates(tmp_path, clips, cheap_config):
    """SIGKILL the whole command mid-run; its workers leave, the re-run finishes the rest once."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "out"
    good = sorted(p for p in clips.glob("cam*.mp4"))[:4] + [clips / "long.mp4"]
    argv = [sys.executable, "-m", "pipeline", "batch", *map(str, good), "--output", str(out),
            "--config", str(cheap_config), "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if (out / "batch.jsonl").exists() and any(x["state"] == "running" and x["name"] == "long"
                                                 for x in lines(out)):
            break
    proc.kill()
    proc.wait()
    first = final_states(out)
    assert first["long"]["state"] == "running"  # killed mid-run
    time.sleep(1.5)  # orphaned workers notice their driver is gone within a second
    done_before = {n for n, s in first.items() if s["state"] == "done"}
    n_lines = len(lines(out))
    rerun = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    states = final_states(out)
    assert all(s["state"] == "done" for s in states.values()) and len(states) == len(good)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == sorted(p.stem for p in good)
    for p in good:
        check_output_set(out / p.stem)
    new = lines(out)[n_lines:]
    rerun_ran = {x["name"] for x in new if x["state"] == "running"}
    assert not rerun_ran & done_before  # nothing finished before the kill ran again
    # the unit in flight: redone, or (an orphaned worker published it in its last second) found complete
    found = {x["name"] for x in new if x["state"] == "done" and x.get("note") == "found complete on disk"}
    assert "long" in rerun_ran ^ found


# ------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is the [cluster] extra (pip install -e '.[cluster]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_20_clips_3_corrupt_worker_killed_then_resume(tmp_path, clips, cheap_config, ray_local, capsys):
    out = tmp_path / "out"
    argv, status, captured, killed = batch_killing_a_worker(out, clips, cheap_config, capsys, "--ray", "auto")
    assert status == 2
    assert "17 done, 3 failed of 20 inputs" in captured.out and "2 ray workers" in captured.out
    check_batch(out, clips, killed)
    check_resume(out, argv, capsys)


def test_ray_worker_that_cannot_load_its_weights_is_one_line(tmp_path, clips, ray_local, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"stages:\n  - dehaze: {{when: always, weights: {tmp_path / 'missing.onnx'}}}\n  - mog2: {{}}\n")
    status = cli.main(["batch", str(clips / "cam00.mp4"), "--output", str(tmp_path / "o"), "--config", str(config),
                       "--ray", "auto", "--workers", "1", "--no-progress"])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"hazeflow: error: batch worker: {tmp_path / 'missing.onnx'}: file not found"]


# ------------------------------------------------------------------ the worker
def test_worker_with_learned_stages_loads_models_once(tmp_path):
    """configs/batch.yaml (RI-GAN gate, MSFgNet, blobs): two inputs, the same runners, two complete sets."""
    config = load_config(CONFIG_DIR / "batch.yaml")
    worker = BatchWorker(config, tmp_path / "out")
    try:
        runners = [getattr(n.stage, "_runner", None) or getattr(n.stage, "runner", None) for n in worker.nodes]
        assert sum(r is not None for r in runners) == 2  # RI-GAN and MSFgNet loaded when the worker started
        for i in range(2):
            clip = encode(tmp_path / f"road{i}.mp4", 10, 160, 120)
            result = worker.process({"input": str(clip), "name": f"road{i}", "attempt": 1})
            assert result["state"] == "done" and result["frames"] == 10, result
            assert check_output_set(tmp_path / "out" / f"road{i}") == 10
        after = [getattr(n.stage, "_runner", None) or getattr(n.stage, "runner", None) for n in worker.nodes]
        assert all(a is b for a, b in zip(runners, after))
    finally:
        worker.close()


def test_worker_failure_is_one_line_and_publishes_nothing(tmp_path, clips, cheap_config):
    worker = BatchWorker(load_config(cheap_config), tmp_path)
    try:
        result = worker.process({"input": str(clips / "bad-truncated.mp4"), "name": "bad", "attempt": 1})
    finally:
        worker.close()
    assert result["state"] == "failed"
    assert result["error"] == f"{clips / 'bad-truncated.mp4'}: no video stream in the file"
    assert not (tmp_path / "bad").exists()
    assert not (tmp_path / TMP_DIR).exists() or not any((tmp_path / TMP_DIR).iterdir())


def test_check_output_set_refuses_incomplete_sets(tmp_path, clips, cheap_config):
    worker = BatchWorker(load_config(cheap_config), tmp_path)
    try:
        assert worker.process({"input": str(clips / "cam01.mp4"), "name": "cam", "attempt": 1})["state"] == "done"
    finally:
        worker.close()
    folder = tmp_path / "cam"
    assert check_output_set(folder) == 6
    masks = sorted((folder / "masks").iterdir())
    masks[-1].unlink()
    with pytest.raises(SourceError, match="holds 5 frames, summary.json says 6"):
        check_output_set(folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary["running"] = True
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SourceError, match="not final"):
        check_output_set(folder)


# ------------------------------------------------------------------ inputs and manifest
def test_inputs_files_folders_globs_and_lists(tmp_path, clips):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    encode(a / "clip.mp4", 2)
    encode(b / "clip.mp4", 2)
    (b / "notes.md").write_text("not a video")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# archive\n\na/clip.mp4\n{b / 'clip.mp4'}\nsynthetic:traffic?size=64x48&frames=4\n")
    got = expand_inputs([str(listing), str(a), str(tmp_path / "*" / "clip.mp4")])
    assert got == [str(a / "clip.mp4"), str(b / "clip.mp4"), "synthetic:traffic?size=64x48&frames=4"]
    units = name_units(got, {})
    assert units[0].name == "clip" and units[1].name.startswith("clip-") and len(units[1].name) == 13
    # a name the manifest already gave an input stays, even when the inputs change order
    again = name_units(list(reversed(got)), {u.input: u.name for u in units})
    assert {u.input: u.name for u in again} == {u.input: u.name for u in units}
    assert len(expand_inputs([str(clips)])) == 20
    with pytest.raises(SourceNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.mkv")])
    with pytest.raises(ConfigError, match="live cameras do not end") as e:
        expand_inputs(["rtsp://user:secret@127.0.0.1:8554/cam"])
    assert "secret" not in e.value.input


def test_manifest_replay_counts_attempts_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "batch.jsonl"
    with Manifest(path) as m:
        m.append("queued", "/v/a.mp4", "a")
        m.append("running", "/v/a.mp4", "a", worker="h:1", attempt=1)
        m.append("failed", "/v/a.mp4", "a", worker="h:1", attempt=1, error="/v/a.mp4: cannot open")
        m.append("running", "/v/a.mp4", "a", worker="h:2", attempt=2)
    with open(path, "a") as f:
        f.write('{"state": "done", "inp')
    with Manifest(path) as m:  # reopening ends the torn line first
        m.append("done", "/v/a.mp4", "a", frames=5, seconds=0.1)
    h = read_history(path)["/v/a.mp4"]
    assert (h.state, h.failures, h.attempts, h.last["frames"]) == ("done", 1, 2, 5)
    assert len(path.read_text().splitlines()) == 6


@pytest.mark.gpu
def test_worker_on_cuda_keeps_its_stream_and_matches_a_fresh_worker(tmp_path):
    """A resident MSFgNet on the torch/CUDA device path: the second input on a worker that already ran
    one gives the masks a fresh worker gives (the graph reuses the stage's CUDA stream)."""
    from pipeline.config import config_from_dict

    config = config_from_dict({"stages": [{"msfgnet": {"backend": "torch", "device": "cuda"}}, {"blobs": {}}],
                               "outputs": {"dehazed_video": False, "preview": False, "events": False}})
    first, second = encode(tmp_path / "a.mp4", 12, 160, 120), encode(tmp_path / "b.mp4", 24, 160, 120)
    kept, fresh = BatchWorker(config, tmp_path / "kept"), BatchWorker(config, tmp_path / "fresh")
    try:
        assert kept.process({"input": str(first), "name": "a", "attempt": 1})["state"] == "done"
        stream = kept.nodes[0].stage._stream
        assert kept.process({"input": str(second), "name": "b", "attempt": 1})["state"] == "done"
        assert kept.nodes[0].stage._stream is stream
        assert fresh.process({"input": str(second), "name": "b", "attempt": 1})["state"] == "done"
    finally:
        kept.close()
        fresh.close()
    import cv2

    names = sorted(p.name for p in (tmp_path / "fresh" / "b" / "masks").iterdir())
    assert len(names) == 24
    for name in names:
        a = cv2.imread(str(tmp_path / "kept" / "b" / "masks" / name), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(tmp_path / "fresh" / "b" / "masks" / name), cv2.IMREAD_GRAYSCALE)
        assert np.mean(a != b) < 0.001, name


def test_check_output_set_adds_up_segments(tmp_path):
    """With outputs.segment_s the outputs are folders of segments; their frames add up to the set's."""
    from pipeline.config import config_from_dict

    config = config_from_dict({"stages": [{"mog2": {}}, {"blobs": {}}],
                               "outputs": {"preview": False, "segment_s": 1}})
    clip = encode(tmp_path / "seg.mp4", 60)  # 2.4 s at 25 frames/s: three segments
    worker = BatchWorker(config, tmp_path / "out")
    try:
        assert worker.process({"input": str(clip), "name": "seg", "attempt": 1})["state"] == "done"
    finally:
        worker.close()
    folder = tmp_path / "out" / "seg"
    assert len(list((folder / "dehazed").glob("*.mp4"))) == 3
    assert check_output_set(folder) == 60
    sorted((folder / "events").iterdir())[0].unlink()
    with pytest.raises(SourceError, match=r"events: holds \d+ frames, summary.json says 60"):
        check_output_set(folder)
