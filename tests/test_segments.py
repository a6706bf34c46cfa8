"""Segmented outputs: names, cuts, open segments readable, restarts, retention, and kill -9 of a run."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.config import OutputsConfig, config_from_dict
from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.sinks import StreamOutputs
from pipeline.sinks.segments import Retention, Segment, SegmentClock, stem_time, utc_stem
from tests.conftest import ROOT


def decode_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def decode_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [f.time for f in c.decode(c.streams.video[0])]


def jsonl(path: Path) -> list[dict]:
    """Every complete line of a JSONL file (a last line without its newline is not complete yet)."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # whatever follows the last newline is an unfinished line
    return [json.loads(line) for line in lines]


def frame(i: int, fps: float = 10.0, h: int = 48, w: int = 64) -> Frame:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, (i * 3) % w] = 255
    mask = np.zeros((h, w), np.uint8)
    mask[4:12, (i * 2) % (w - 8):(i * 2) % (w - 8) + 8] = 255
    return Frame("cam", i + 1, i / fps, img, data={"mask": mask, "objects": [], "counts": {"all": 0}})


def closed_stems(folder: Path) -> list[str]:
    return sorted(p.name[:-len(".jsonl")] for p in (folder / "events").glob("*.jsonl") if ".open" not in p.name)


# ------------------------------------------------------------------ config
def test_segment_keys_are_checked():
    conf = config_from_dict({"outputs": {"segment_s": 60, "keep_hours": 48, "max_disk_gb": 1.5}})
    assert (conf.outputs.segment_s, conf.outputs.keep_hours, conf.outputs.max_disk_gb) == (60.0, 48.0, 1.5)
    assert OutputsConfig().segment_s is None  # 300 for live inputs, one file for files
    for key, value in (("segment_s", 0.5), ("segment_s", -1), ("keep_hours", 0), ("max_disk_gb", -2)):
        with pytest.raises(ConfigError) as e:
            config_from_dict({"outputs": {key: value}})
        assert e.value.input == f"outputs.{key}"
    with pytest.raises(ConfigError, match="outputs.segment_s"):
        config_from_dict({"outputs": {"segment_s": "5m"}})


# ------------------------------------------------------------------ names and clocks
def test_stem_is_the_utc_start():
    t = 1796174100.0  # 2026-12-02 01:15:00 UTC
    assert utc_stem(t) == "20261202T011500Z"
    assert stem_time("20261202T011500Z.open.mp4") == t
    assert stem_time("20261202T011500Z-2.jsonl") == t
    assert stem_time("dehazed.mp4") is None


def test_live_clock_cuts_on_wall_clock_multiples():
    clock = SegmentClock(300, live=True)
    t0 = 1796174100.0 + 137.0  # 01:17:17
    assert clock.due(t0)  # the first frame opens a segment
    assert not clock.due(t0 + 162.9)  # 01:19:59.9
    assert clock.due(t0 + 163.0)  # 01:20:00
    assert not clock.due(t0 + 400)
    assert clock.due(t0 + 1000)  # after a gap: the next cut is again on a multiple of 300 s
    assert not clock.due(1796174100.0 + 1199.9) and clock.due(1796174100.0 + 1200)


def test_file_clock_cuts_on_media_time_from_the_first_frame():
    clock = SegmentClock(2, live=False)
    cuts = [t for t in np.arange(5.0, 12.0, 0.5) if clock.due(float(t))]
    assert cuts == [5.0, 7.0, 9.0, 11.0]


# ------------------------------------------------------------------ StreamOutputs in segment mode
def test_file_cut_into_segments_that_agree_with_their_events(tmp_path):
    out = StreamOutputs(tmp_path, "cam", OutputsConfig(segment_s=1), fps=10, live=False)
    for i in range(25):  # 2.5 s at 10 frames/s -> 10 + 10 + 5
        out.write(frame(i))
    out.close()
    folder = tmp_path / "cam"
    stems = closed_stems(folder)
    assert len(stems) == 3 and not list(folder.rglob("*.open*"))
    counts = []
    for stem in stems:
        events = jsonl(folder / "events" / f"{stem}.jsonl")
        counts.append(len(events))
        assert decode_count(folder / "dehazed" / f"{stem}.mp4") == len(events)
        assert decode_count(folder / "preview" / f"{stem}.mp4") == len(events)
        assert len(list((folder / "masks" / stem).iterdir())) == len(events)
        # each segment plays on its own: its timestamps start at 0
        assert decode_times(folder / "dehazed" / f"{stem}.mp4")[0] == 0.0
    assert sorted(counts) == [5, 10, 10]
    all_indices = sorted(e["index"] for s in stems for e in jsonl(folder / "events" / f"{s}.jsonl"))
    assert all_indices == list(range(1, 26))
    assert sorted(p.name for p in out.paths()) == ["dehazed", "events", "masks", "preview"]


def test_open_segment_is_readable_before_close(tmp_path):
    out = StreamOutputs(tmp_path, "cam", OutputsConfig(segment_s=300, codec="mpeg4", masks=False, preview=False),
                        fps=10, live=False)
    for i in range(35):  # fragments of 10 frames (1 s): three complete, the fourth still open
        out.write(frame(i))
    stem = out.segment.stem
    video = tmp_path / "cam" / "dehazed" / f"{stem}.open.mp4"
    events = tmp_path / "cam" / "events" / f"{stem}.open.jsonl"
    assert not (tmp_path / "cam" / "dehazed" / f"{stem}.mp4").exists()
    assert len(jsonl(events)) == 35  # written line by line
    assert decode_count(video) == 30  # up to the last complete fragment
    out.close()
    assert not video.exists() and not events.exists()
    assert decode_count(tmp_path / "cam" / "dehazed" / f"{stem}.mp4") == 35


def test_a_restart_opens_a_new_segment_and_never_overwrites(tmp_path):
    conf = OutputsConfig(segment_s=300, preview=False)
    first = StreamOutputs(tmp_path, "cam", conf, fps=10, live=True)
    for i in range(5):
        first.write(frame(i))
    first.close()
    before = {p: p.read_bytes() for p in (tmp_path / "cam").rglob("*") if p.is_file()}
    second = StreamOutputs(tmp_path, "cam", conf, fps=10, live=True)  # same UTC second: a suffix
    for i in range(3):
        second.write(frame(i))  # frame numbers start again at 1
    second.close()
    assert {p: p.read_bytes() for p in before} == before
    stems = closed_stems(tmp_path / "cam")
    assert len(stems) == 2 and len({stem_time(s) is not None for s in stems}) == 1
    assert sorted(len(jsonl(tmp_path / "cam" / "events" / f"{s}.jsonl")) for s in stems) == [3, 5]


def test_a_new_picture_size_starts_a_new_segment(tmp_path):
    out = StreamOutputs(tmp_path, "cam", OutputsConfig(segment_s=300, preview=False, masks=False), fps=10, live=True)
    for i in range(6):
        out.write(frame(i) if i < 4 else frame(i, h=96, w=128))
    out.close()
    sizes = []
    for stem in closed_stems(tmp_path / "cam"):
        with av.open(str(tmp_path / "cam" / "dehazed" / f"{stem}.mp4")) as c:
            sizes += [(f.width, f.height) for f in c.decode(video=0)]
    assert sizes == [(64, 48)] * 4 + [(128, 96)] * 2


def test_segment_zero_keeps_one_file_per_input_even_when_live(tmp_path):
    out = StreamOutputs(tmp_path, "cam", OutputsConfig(segment_s=0), fps=10, live=True)
    for i in range(4):
        out.write(frame(i))
    out.close()
    names = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert names == ["dehazed.mp4", "events.jsonl", "masks", "preview.mp4"]


def early_in_a_second() -> None:
    """Wait for the first half of a wall-clock second (a live 1 s segment cuts on whole seconds)."""
    while time.time() % 1.0 > 0.4:
        time.sleep(0.02)


def test_a_stalled_live_segment_is_closed_at_its_cut_time_without_a_frame(tmp_path):
    out = StreamOutputs(tmp_path, "cam", OutputsConfig(segment_s=1, preview=False, masks=False), fps=10, live=True)
    folder = tmp_path / "cam"

    def whole(stems):  # every closed segment plays exactly the frames its events list; their total
        counts = [len(jsonl(folder / "events" / f"{s}.jsonl")) for s in stems]
        assert [decode_count(folder / "dehazed" / f"{s}.mp4") for s in stems] == counts
        return sum(counts)

    try:
        early_in_a_second()  # the four frames fit one 1 s segment unless the machine is very slow
        for i in range(4):
            out.write(frame(i))
        assert (folder / "dehazed" / f"{out.segment.stem}.open.mp4").exists()
        # the camera stalls: no frame; the cut passes within 1 s, the timer closes 0.5 s after it
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and list(folder.rglob("*.open*")):
            time.sleep(0.05)
        assert not list(folder.rglob("*.open*")), "the open segment waited for the next frame"
        before = closed_stems(folder)
        assert out.segment is None and whole(before) == 4
        for i in range(4, 7):  # frames again: a new segment, named by its own start
            out.write(frame(i))
        assert out.segment is not None and out.segment.stem not in before
    finally:
        out.close()
    after = closed_stems(folder)
    assert not list(folder.rglob("*.open*")) and whole(after) == 7 and len(after) > len(before)


# ------------------------------------------------------------------ retention
def fake_segment(root: Path, stream: str, stem: str, size: int, mtime: float) -> list[Path]:
    seg = Segment(root / stream, stem)
    paths = []
    for kind in ("dehazed", "events"):
        p = seg.final(kind)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        paths.append(p)
    masks = seg.final("masks")
    masks.mkdir(parents=True)
    (masks / "bin000001.png").write_bytes(b"m")
    for p in paths + [masks / "bin000001.png", masks]:
        os.utime(p, (mtime, mtime))
    return paths + [masks]


def test_retention_deletes_oldest_segments_and_logs_them(tmp_path, caplog):
    now = 1796174100.0
    old = fake_segment(tmp_path, "cam1", utc_stem(now - 30 * 3600), 1000, now - 30 * 3600 + 300)
    kept = fake_segment(tmp_path, "cam2", utc_stem(now - 3600), 1000, now - 3600 + 300)
    busy = Segment((tmp_path / "cam1").resolve(), utc_stem(now - 40 * 3600))
    busy_paths = fake_segment(tmp_path, "cam1", busy.stem, 1000, now - 40 * 3600)
    (tmp_path / "cam1" / "dehazed.mp4").write_bytes(b"not a segment")
    busy.mark_open()
    try:
        with caplog.at_level(logging.INFO, logger="hazeflow.sinks"):
            deleted = Retention(tmp_path, keep_hours=24).sweep(now=now)
    finally:
        busy.mark_closed()
    assert sorted(deleted) == sorted(old)
    assert not any(p.exists() for p in old) and all(p.exists() for p in kept + busy_paths)
    assert (tmp_path / "cam1" / "dehazed.mp4").exists()  # only segment names are touched
    assert any("deleted segment cam1/" in r.getMessage() and "keep_hours" in r.getMessage() for r in caplog.records)


def test_retention_keeps_the_folder_under_max_disk_gb(tmp_path):
    now = 1796174100.0
    segments = [fake_segment(tmp_path, f"cam{i % 2}", utc_stem(now - 600 * (5 - i)), 100_000, now) for i in range(5)]
    # 5 segments of ~200 kB; a budget of 0.00045 GB keeps the newest two
    Retention(tmp_path, max_disk_gb=0.00045).sweep(now=now)
    alive = [all(p.exists() for p in s) for s in segments]
    assert alive == [False, False, False, True, True]


def test_max_disk_gb_counts_every_file_and_keeps_room_for_the_open_segment(tmp_path, caplog):
    from pipeline.sinks.segments import _tree_bytes, writer_ended, writer_started

    now = 1796174100.0
    closed = [fake_segment(tmp_path, "cam", utc_stem(now - 600 * (6 - i)), 100_000, now) for i in range(5)]
    (tmp_path / "cam" / "analytics").mkdir()
    (tmp_path / "cam" / "analytics" / f"{utc_stem(now - 3600)}.csv").write_bytes(b"a" * 1000)  # the oldest's csv
    (tmp_path / "cam" / "summary.json").write_bytes(b"s" * 150_000)  # not a segment: counted, never deleted
    busy = Segment((tmp_path / "cam").resolve(), utc_stem(now))
    open_paths = fake_segment(tmp_path, "cam", busy.stem, 25_000, now)  # the one being written, 50 kB so far
    busy.mark_open()
    writer_started(busy.folder)
    try:
        with caplog.at_level(logging.INFO, logger="hazeflow.sinks"):
            deleted = Retention(tmp_path, max_disk_gb=0.0008).sweep(now=now)
        # 1.2 MB on disk + 150 kB for the open segment to grow to its stream's usual 200 kB: the three
        # oldest go (counting segments only, two would have gone and the open one would overshoot)
        alive = [all(p.exists() for p in seg) for seg in closed]
        assert alive == [False, False, False, True, True]
        assert not list((tmp_path / "cam" / "analytics").iterdir())  # the oldest segment's csv went with it
        assert all(p.exists() for p in open_paths) and (tmp_path / "cam" / "summary.json").exists()
        grown = _tree_bytes(tmp_path) + (200_001 - 50_001)
        assert grown <= 0.0008e9 and len(deleted) == 3 * 3 + 1
        assert sum("open segments to grow" in r.getMessage() for r in caplog.records) == 3
        # only the open segment and the summary are left over the cap: nothing to delete, and it says so
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hazeflow.sinks"):
            Retention(tmp_path, max_disk_gb=0.0001).sweep(now=now)
        assert all(p.exists() for p in open_paths)
        assert any("nothing closed is left to delete" in r.getMessage() for r in caplog.records)
    finally:
        busy.mark_closed()
        writer_ended(busy.folder)


@pytest.mark.parametrize("live_segment_s, age_s, deletes", [(60.0, 15, True), (60.0, 3, False), (None, 15, False)])
def test_a_first_live_segment_is_sized_from_its_rate_so_far(tmp_path, live_segment_s, age_s, deletes):
    """No closed segment to size it from: a live one's bytes so far are extrapolated to its cut time."""
    from pipeline.sinks.segments import writer_ended, writer_started

    minute = 1796174100.0  # a multiple of 60 s
    start, now = minute + 5, minute + 5 + age_s  # live cuts at minute + 60: 55 s long
    old = [fake_segment(tmp_path, "cam2", utc_stem(minute - 3600 + 600 * i), 100_000, minute - 3600 + 600 * i)
           for i in range(3)]  # 3 x 200 kB of an earlier run, not being written
    busy = Segment((tmp_path / "cam").resolve(), utc_stem(start))
    fake_segment(tmp_path, "cam", busy.stem, 25_000, now)  # 50 kB so far
    busy.mark_open()
    writer_started(busy.folder, live_segment_s)
    try:
        # 650 kB on disk under a 700 kB cap; at 50 kB per 15 s the open segment reaches 183 kB by its cut
        Retention(tmp_path, max_disk_gb=0.0007).sweep(now=now)
        alive = [all(p.exists() for p in seg) for seg in old]
        assert alive == ([False, True, True] if deletes else [True, True, True])
    finally:
        busy.mark_closed()
        writer_ended(busy.folder)


def test_a_new_segment_sweeps_old_ones_in_the_background(tmp_path):
    now = time.time()
    old = fake_segment(tmp_path, "cam", utc_stem(now - 50 * 3600), 10, now - 50 * 3600)
    other = fake_segment(tmp_path, "cam2", utc_stem(now - 60 * 3600), 10, now - 60 * 3600)
    out = StreamOutputs(tmp_path, "cam", OutputsConfig(segment_s=300, keep_hours=1, preview=False), fps=10,
                        live=True)
    for i in range(3):
        out.write(frame(i))
    out.close()  # waits for the sweep
    assert not any(p.exists() for p in old + other)  # every stream under the output folder
    stems = closed_stems(tmp_path / "cam")
    assert len(stems) == 1 and decode_count(tmp_path / "cam" / "dehazed" / f"{stems[0]}.mp4") == 3


# ------------------------------------------------------------------ kill -9 of a live run
def test_kill_9_mid_run_leaves_playable_segments(tmp_path):
    """A live run killed with SIGKILL: closed segments are whole, the open one plays up to its last fragment."""
    out = tmp_path / "out"
    config = tmp_path / "live.yaml"
    fps = 10  # fragments of 10 frames
    config.write_text(
        "inputs:\n"
        "  - {uri: 'synthetic:traffic?size=160x96&frames=0&seed=3', name: cam, live: true, options: {fps: %d}}\n"
        "output: %s\n"
        "runtime: {summary_interval_s: 1, queue_size: 4}\n"
        "stages: [{mog2: {}}, {blobs: {}}]\n"
        "outputs: {segment_s: 3, codec: mpeg4}\n" % (fps, out))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = out / "cam"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            open_events = list((folder / "events").glob("*.open.jsonl")) if (folder / "events").is_dir() else []
            # kill well inside a 3 s segment, once the open one holds two fragments' worth of frames
            if open_events and len(closed_stems(folder)) >= 2 and 0.3 < time.time() % 3 < 2.6 \
                    and len(jsonl(open_events[0])) >= 2 * fps:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()
    stems = closed_stems(folder)
    assert len(stems) >= 2, "the run did not close two segments within 60 s"
    for stem in stems:
        n = len(jsonl(folder / "events" / f"{stem}.jsonl"))
        assert n > 0
        assert decode_count(folder / "dehazed" / f"{stem}.mp4") == n, stem
        assert decode_count(folder / "preview" / f"{stem}.mp4") == n, stem
    opened = list((folder / "dehazed").glob("*.open.mp4"))
    assert len(opened) == 1
    stem = opened[0].name.split(".")[0]
    lines = len(jsonl(folder / "events" / f"{stem}.open.jsonl"))
    played = decode_times(opened[0])
    assert played == sorted(played)
    # every complete fragment plays; at most the fragment being filled (and the frames inside the
    # encoder, none for mpeg4) are lost. The events file runs ahead (it is written per line).
    assert 0 < len(played) <= lines and lines - len(played) <= 3 * fps, (len(played), lines)
    assert json.loads((folder / "summary.json").read_text())["running"] is True

    # a restart continues in a new segment and leaves the killed run's files alone
    before = {p: p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "summary.json"}
    status = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress",
                             "--max-frames", "15"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert status.returncode == 0, status.stderr.decode()
    assert f"dehazed/{stem}.open.mp4 was left open" in status.stderr.decode()  # logged (obs sets the format)
    assert {p: p.stat().st_size for p in before} == before
    new = [s for s in closed_stems(folder) if s not in stems]
    processed = json.loads((folder / "summary.json").read_text())["frames"]["processed"]
    assert len(new) >= 1 and 0 < sum(len(jsonl(folder / "events" / f"{s}.jsonl")) for s in new) == processed
