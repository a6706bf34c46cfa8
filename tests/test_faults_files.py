"""Broken input files through ``hazeflow run``: one line naming the input and the cause, a non-zero
exit, no traceback, and whatever was decoded before a mid-file fault is written, whole."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pipeline import cli
from tests.media import write_clip
from tests.test_graph import count_frames, moving_square

CHEAP_STAGES = "stages: [{mog2: {}}, {blobs: {}}]\n"
#: a text log line: "2026-12-02T02:15:00.123Z INFO hazeflow.sinks ..."
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ hazeflow\.")


def run_config(tmp_path: Path, uri: Path, capfd, outputs: str = "{preview: false}") -> tuple[int, str, Path]:
    config = tmp_path / "c.yaml"
    out = tmp_path / "out"
    config.write_text(f"inputs: ['{uri}']\noutput: {out}\n{CHEAP_STAGES}outputs: {outputs}\n")
    status = cli.main(["run", str(config), "--no-progress"])
    err = capfd.readouterr().err  # file-descriptor level: a thread's traceback would show here too
    return status, err, out


def assert_one_line(err: str, uri: Path, cause: str) -> None:
    # log lines (segment rotation; pipeline/observability/logs.py) may come first; the error is one line
    lines = [x for x in err.strip().splitlines() if not LOG_LINE.match(x)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hazeflow: error: {uri}: "), err
    assert cause in lines[0], err
    assert "Traceback" not in err


def encode_mp4(path: Path, frames: int, movflags: str | None = None) -> Path:
    """An H.264/MPEG-4 clip in MP4, with the index at the end (FFmpeg's default) or up front (+faststart)."""
    options = {"movflags": movflags} if movflags else None
    return write_clip(path, (moving_square(i) for i in range(frames)), fmt="mp4", options=options)


def cut(path: Path, fraction: float, name: str) -> Path:
    data = path.read_bytes()
    out = path.with_name(name)
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("kind", ["zero-length", "random bytes", "text", "truncated index at end"])
def test_unreadable_file_is_one_line(tmp_path, capfd, kind):
    path = tmp_path / "input.mp4"
    if kind == "zero-length":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(os.urandom(64 * 1024))
    elif kind == "text":
        path.write_text("these are meeting notes, not a video\n" * 50)
    else:  # FFmpeg writes the moov box last: cut in half, the file has no index at all
        path = cut(encode_mp4(tmp_path / "whole.mp4", 50), 0.5, "input.mp4")
    status, err, out = run_config(tmp_path, path, capfd)
    assert status != 0
    assert_one_line(err, path, "cannot open as video")
    assert not (out / "input").exists() or not [p for p in (out / "input").iterdir() if p.name != "summary.json"]


@pytest.mark.parametrize("segment_s", [0, 1])
def test_truncated_mp4_keeps_the_frames_before_the_fault(tmp_path, capfd, segment_s):
    whole = encode_mp4(tmp_path / "whole.mp4", 75, movflags="+faststart")  # index first: opens when cut
    path = cut(whole, 0.6, "cut.mp4")
    status, err, out = run_config(tmp_path, path, capfd, outputs=f"{{preview: false, segment_s: {segment_s}}}")
    assert status != 0
    assert_one_line(err, path, "truncated or corrupt")
    folder = out / "cut"
    summary = json.loads((folder / "summary.json").read_text())
    done = summary["frames"]["processed"]
    assert 0 < done < 75 and summary["running"] is False
    if segment_s == 0:
        assert count_frames(folder / "dehazed.mp4") == done
        assert len((folder / "events.jsonl").read_text().splitlines()) == done
        assert len(list((folder / "masks").iterdir())) == done
    else:  # 25 frames/s, 1 s segments: every one closed, the last one at the fault
        assert not list(folder.rglob("*.open*")) and not list(folder.rglob("*.partial"))
        total = 0
        for events in sorted((folder / "events").glob("*.jsonl")):
            n = len(events.read_text().splitlines())
            assert count_frames(folder / "dehazed" / f"{events.stem}.mp4") == n
            total += n
        assert total == done and len(list((folder / "events").iterdir())) == -(-done // 25)



def test_unreadable_inputs_do_not_stop_the_readable_ones(tmp_path, capfd):
    good = encode_mp4(tmp_path / "good.mp4", 30)
    other = encode_mp4(tmp_path / "other.mp4", 20)
    broken = cut(encode_mp4(tmp_path / "whole.mp4", 75, movflags="+faststart"), 0.6, "broken.mp4")  # fails mid-file
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(os.urandom(32 * 1024))
    missing = tmp_path / "missing.mp4"
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(f"inputs: ['{good}', '{noise}', '{broken}', '{missing}', '{other}']\noutput: {out}\n"
                      f"{CHEAP_STAGES}outputs: {{preview: false}}\n")
    status = cli.main(["run", str(config), "--no-progress"])
    err = capfd.readouterr().err
    assert status != 0 and "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if not LOG_LINE.match(x)]
    assert len(lines) == 3, err  # one line per bad input: those that did not open, then the one that broke
    assert lines[0].startswith(f"hazeflow: error: {noise}: ") and "cannot open as video" in lines[0], err
    assert lines[1].startswith(f"hazeflow: error: {missing}: ") and "no such file" in lines[1], err
    assert lines[2].startswith(f"hazeflow: error: {broken}: ") and "truncated or corrupt" in lines[2], err
    for name, frames in (("good", 30), ("other", 20)):  # nothing lost for the good ones
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["frames"]["processed"] == frames and summary["errors"] == []
        assert count_frames(out / name / "dehazed.mp4") == frames
        assert len((out / name / "events.jsonl").read_text().splitlines()) == frames
    done = json.loads((out / "broken" / "summary.json").read_text())["frames"]["processed"]
    assert 0 < done < 75 and count_frames(out / "broken" / "dehazed.mp4") == done  # kept up to the fault
    run = json.loads((out / "summary.json").read_text())
    assert [f["where"] for f in run["failed_inputs"]] == [str(noise), str(missing)]
    assert sorted(run["streams"]) == ["broken", "good", "other"] and not (out / "noise").exists()
