"""``hazeflow run`` end to end: outputs, exit status, one-line errors, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.stages import REGISTRY
from pipeline.stages.base import Stage
from tests.conftest import ROOT
from tests.test_graph import count_frames, encode_clip, partials


class FailingStage(Stage):
    """Registered under ``failing`` by a test: fails on frame 9."""

    name = "failing"
    inputs = ("mask",)
    outputs = ()

    @dataclass(frozen=True)
    class Config:
        at: int = 9

    def __init__(self, config=None):
        self.config = config or self.Config()

    def process(self, frames):
        for f in frames:
            if f.index == self.config.at:
                raise ValueError("cannot count cars in fog")
        return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return encode_clip(tmp_path_factory.mktemp("media") / "road.avi", 30)


def run(argv, capsys):
    status = cli.main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_run_default_config_on_a_clip(tmp_path, clip, capsys):
    status, out, err = run(["run", "--input", str(clip), "--output", str(tmp_path), "--max-frames", "20",
                            "--no-progress"], capsys)
    assert status == 0, err
    folder = tmp_path / "road"
    assert f"road: 20/20 frames" in out and str(folder / "preview.mp4") in out
    assert count_frames(folder / "dehazed.mp4") == 20
    assert len(list((folder / "masks").iterdir())) == 20
    summary = json.loads((folder / "summary.json").read_text())
    from pipeline.config import DEFAULT_CONFIG, load_config

    default_stages = {spec.name for spec in load_config(DEFAULT_CONFIG).stages}
    assert summary["frames"]["processed"] == 20 and set(summary["stages"]) == default_stages | {"sinks"}
    run_summary = json.loads((tmp_path / "summary.json").read_text())
    assert run_summary["frames"]["processed"] == 20 and "road" in run_summary["streams"]


def test_config_file_with_outputs_section(tmp_path, clip, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"inputs: ['{clip}']\noutput: {tmp_path / 'o'}\nstages:\n  - mog2: {{}}\n"
                      "outputs: {preview: false, dehazed_video: false}\n")
    status, out, err = run(["run", str(config), "--no-progress"], capsys)
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "o" / "road").iterdir()) == ["events.jsonl", "masks", "summary.json"]


def test_missing_input_is_one_line(tmp_path, capsys):
    status, out, err = run(["run", "--input", str(tmp_path / "nope.mp4"), "--output", str(tmp_path)], capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hazeflow: error: {tmp_path / 'nope.mp4'}: no such file")


def test_wrong_type_in_config_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("stages:\n  - mog2: {history: many}\n")
    status, _, err = run(["run", str(config)], capsys)
    assert status == 2
    assert err.strip() == (f"hazeflow: error: stages.mog2.history: expected int, got str 'many' (in {config})")


def test_stage_error_exit_status_and_summary(tmp_path, clip, capsys, monkeypatch):
    monkeypatch.setitem(REGISTRY, "failing", "tests.test_run_cli:FailingStage")
    config = tmp_path / "c.yaml"
    config.write_text("stages:\n  - mog2: {}\n  - failing: {at: 9}\n")
    status, _, err = run(["run", str(config), "--input", str(clip), "--output", str(tmp_path), "--no-progress"],
                         capsys)
    assert status == 2
    assert err.strip().splitlines() == [
        "hazeflow: error: stages.failing: ValueError: cannot count cars in fog"]
    folder = tmp_path / "road"
    assert count_frames(folder / "dehazed.mp4") == 8
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["errors"][0]["where"] == "stages.failing" and summary["frames"]["processed"] == 8
    assert not partials(tmp_path)


def test_sigint_finalises_outputs_and_exits_130(tmp_path):
    out = tmp_path / "o"
    uri = "synthetic:traffic?size=160x120&frames=100000&seed=3"
    # SIGINT at its default, as in a terminal: a suite started as a background job would hand the child
    # SIGINT ignored, and Python then installs no Ctrl-C handler at all (the run went on until the timeout)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--input", uri, "--output", str(out),
                             "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    masks = out / "synthetic-traffic-seed3" / "masks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (masks.exists() and len(os.listdir(masks)) >= 10):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    folder = out / "synthetic-traffic-seed3"
    summary = json.loads((folder / "summary.json").read_text())
    n = summary["frames"]["processed"]
    assert summary["interrupted"] and n >= 10
    assert count_frames(folder / "dehazed.mp4") == n == count_frames(folder / "preview.mp4")
    assert len((folder / "events.jsonl").read_text().splitlines()) == n
    assert len(os.listdir(folder / "masks")) == n
    assert not partials(out)


def test_sigkill_leaves_no_incomplete_file_under_a_final_name(tmp_path):
    import cv2

    out = tmp_path / "o"
    uri = "synthetic:traffic?size=160x120&frames=100000&seed=4"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--input", uri, "--output", str(out),
                             "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = out / "synthetic-traffic-seed4"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ((folder / "masks").exists()
                                               and len(os.listdir(folder / "masks")) >= 10):
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    names = set(os.listdir(folder))
    # the streams being written exist only under their partial names
    assert not names & {"dehazed.mp4", "preview.mp4", "events.jsonl", "summary.json"}
    assert {".dehazed.mp4.partial", ".events.jsonl.partial"} <= names
    for mask in (folder / "masks").glob("bin*.png"):  # every mask under a final name is whole
        assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED) is not None, mask
