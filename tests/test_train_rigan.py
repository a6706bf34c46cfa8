"""``hazeflow train rigan`` / ``hazeflow export rigan``: a tiny real run, --resume, export, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from pipeline.cli import main as cli  # noqa: E402

TINY = """
seed: 3
model: {{width: 8, blocks: 1, d_width: 8}}
data: {{patch: 32, short_side: [40, 48], samples_per_epoch: 4, clear: [{{path: {clear}, kind: road}}]}}
train: {{epochs: {epochs}, batch: 2, adv_start: 1, checkpoint_every: 1}}
val: {{hazy: {hazy}, clear: {clear}, limit: 2, sheet: 1}}
"""


@pytest.fixture()
def tiny_setup(tmp_path: Path):
    import cv2

    rng = np.random.default_rng(0)
    clear, hazy = tmp_path / "clear", tmp_path / "hazy"
    clear.mkdir()
    hazy.mkdir()
    for i in range(2):
        img = (rng.random((40, 52, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(clear / f"{i}.png"), img)
        cv2.imwrite(str(hazy / f"{i}.png"), (img * 0.5 + 100).astype(np.uint8))

    def config(epochs: int) -> Path:
        path = tmp_path / f"tiny{epochs}.yaml"
        path.write_text(TINY.format(clear=clear, hazy=hazy, epochs=epochs))
        return path

    return tmp_path, config


def test_two_iterations_then_resume_then_export(tiny_setup, capsys):
    import onnxruntime as ort
    import torch

    tmp, config = tiny_setup
    out = tmp / "run"
    assert cli(["train", "rigan", "--config", str(config(1)), "--out", str(out), "--device", "cpu"]) == 0
    for name in ("last.pt", "rigan.pt", "curves.png", "samples.png", "history.json", "train.log"):
        assert (out / name).is_file(), name
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["iteration"] == 2 and ck["epoch"] == 1
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["val_psnr"]) == 1 and np.isfinite(hist["val_psnr"][0])

    # resume with one more epoch: continues from iteration 2, not from scratch
    assert cli(["train", "rigan", "--config", str(config(2)), "--out", str(out), "--resume", "--device", "cpu"]) == 0
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["iteration"] == 4 and ck["epoch"] == 2
    assert "resumed at epoch 1" in (out / "train.log").read_text()
    assert len(json.loads((out / "history.json").read_text())["val_psnr"]) == 2

    onnx_path = tmp / "tiny.onnx"
    assert cli(["export", "rigan", "--weights", str(out / "rigan.pt"), "--out", str(onnx_path)]) == 0
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"hazy": np.random.rand(1, 3, 36, 44).astype(np.float32)})[0]
    assert y.shape == (1, 3, 36, 44)


def test_bad_config_and_bad_weights_are_one_line_errors(tiny_setup, capsys):
    tmp, config = tiny_setup
    bad = tmp / "bad.yaml"
    bad.write_text("train: {epochz: 3}\n")
    assert cli(["train", "rigan", "--config", str(bad), "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hazeflow: error: train.epochz: unknown key") and "\n" not in err
    for haze, key in (("{skyprob: 0.3}", "data.haze.skyprob: unknown key"),
                      ("{sky_prob: 1.5}", "data.haze: sky_prob must be in [0, 1]"),
                      ("{sky_level: [0.9, 0.6]}", "data.haze: sky_level must be [low, high]")):
        bad.write_text(f"data: {{haze: {haze}}}\n")
        assert cli(["train", "rigan", "--config", str(bad), "--out", str(tmp / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"hazeflow: error: {key}") and "\n" not in err, err
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert cli(["export", "rigan", "--weights", str(junk), "--out", str(tmp / "o.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "junk.pt" in err and "\n" not in err


def test_nan_loss_stops_training_with_a_clear_message(tiny_setup, capsys):
    """An absurd learning rate blows the weights up; the guard stops with one line, not a traceback."""
    tmp, config = tiny_setup
    path = config(3)
    path.write_text(path.read_text().replace("adv_start: 1", "adv_start: 1, lr_g: 1.0e+30, lr_d: 1.0e+30"))
    code = cli(["train", "rigan", "--config", str(path), "--out", str(tmp / "nan"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # lines before it are the progress bar
    assert code == 2, err
    assert err.startswith("hazeflow: error: train rigan iteration") and "loss is" in err


WORKERS_CHECK = """
import sys
import torch
from training.data.dehaze import SynthHazeDataset, clear_pool
from training.train_rigan import batches

if __name__ == "__main__":
    ds = SynthHazeDataset(clear_pool([{"path": sys.argv[1], "kind": "road"}]), patch=32, length=8, seed=5,
                          short_side=(40, 48))
    main = list(batches(ds, 1, 4, 2, 0, torch.device("cpu")))
    spawned = list(batches(ds, 1, 4, 2, 2, torch.device("cpu")))
    assert len(main) == len(spawned) == 3, (len(main), len(spawned))
    for (h0, c0), (h1, c1) in zip(main, spawned):
        assert torch.equal(h0, h1) and torch.equal(c0, c1)
    print("same batches")
"""


def test_workers_give_the_same_batches_as_the_main_thread(tiny_setup):
    """In a fresh interpreter, as ``hazeflow train rigan`` runs: inside this long test process (ray,
    OpenVINO, RTSP servers loaded by earlier tests) the spawned loader workers crashed the process
    or handed back different batches now and then on an Intel AMX VM, and passed alone (2026-12-02)."""
    import subprocess
    import sys

    tmp, _ = tiny_setup
    script = tmp / "workers_check.py"
    script.write_text(WORKERS_CHECK)
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, str(script), str(tmp / "clear")], capture_output=True, text=True,
                         timeout=300, cwd=str(root), env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == 0 and "same batches" in run.stdout, run.stderr[-2000:]


def test_init_from_a_run_and_a_time_budget_that_ends_mid_epoch(tiny_setup):
    import torch

    tmp, config = tiny_setup
    first = tmp / "first"
    assert cli(["train", "rigan", "--config", str(config(1)), "--out", str(first), "--device", "cpu"]) == 0
    budget = tmp / "budget.yaml"
    # 500 epochs (1000 iterations) cannot finish inside the budget; 8 s leaves room for a first
    # iteration on a loaded machine (3 s with a loader worker process gave none at load average ~15)
    text = config(500).read_text().replace("checkpoint_every: 1}", "checkpoint_every: 1, max_seconds: 8, workers: 0}")
    budget.write_text(text)
    out = tmp / "second"
    assert cli(["train", "rigan", "--config", str(budget), "--out", str(out), "--device", "cpu",
                "--init", str(first / "last.pt")]) == 0
    log = (out / "train.log").read_text()
    assert f"initialised from {first / 'last.pt'} (generator + discriminator)" in log
    # with validation off, the epoch line does not repeat the init run's val_psnr as if measured
    # (one whole epoch, no time budget: an epoch line is written only when an epoch ends)
    novali_config = tmp / "novali.yaml"
    novali_config.write_text(config(1).read_text().replace("val: {", "val: {hazy: null, clear: null, ").replace(
        "hazy: " + str(tmp / "hazy") + ", clear: " + str(tmp / "clear") + ", ", ""))
    novali = tmp / "novali"
    assert cli(["train", "rigan", "--config", str(novali_config), "--out", str(novali), "--device", "cpu",
                "--init", str(first / "last.pt")]) == 0
    epoch_lines = [ln for ln in (novali / "train.log").read_text().splitlines() if " epoch " in ln and "train_g=" in ln]
    assert epoch_lines and not any("val_psnr" in ln for ln in epoch_lines)
    ck = torch.load(out / "last.pt", weights_only=True)
    assert 0 < ck["iteration"] < 1000 and ck["epoch"] < 500  # stopped by the 8 s budget, not the 500 epochs
    # a state_dict of another width is refused with the file named
    wrong = tmp / "wrong.yaml"
    wrong.write_text(text.replace("width: 8,", "width: 4,"))
    assert cli(["train", "rigan", "--config", str(wrong), "--out", str(tmp / "third"), "--device", "cpu",
                "--init", str(first / "rigan.pt")]) != 0


def test_weight_interpolation_blends_two_generators_and_refuses_different_models(tmp_path):
    import subprocess
    import sys

    import torch

    from training.common import interpolate_weights
    from training.models.rigan import RIGenerator

    torch.manual_seed(0)
    a, b = RIGenerator(8, 1).state_dict(), RIGenerator(8, 1).state_dict()
    key = next(k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k]))
    assert torch.equal(interpolate_weights(a, b, 0.0)[key], a[key])
    assert torch.equal(interpolate_weights(a, b, 1.0)[key], b[key])
    assert torch.allclose(interpolate_weights(a, b, 0.25)[key], 0.75 * a[key] + 0.25 * b[key], atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_weights(a, b, 1.5)
    with pytest.raises(ValueError, match="different tensors"):
        interpolate_weights(a, RIGenerator(8, 2).state_dict(), 0.5)

    # the tool writes a generator that loads like any other, and fails in one line on a mismatch
    root = Path(__file__).resolve().parent.parent
    paths = {}
    for name, blocks in (("a", 1), ("b", 1), ("c", 2)):
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(RIGenerator(8, blocks).state_dict(), paths[name])
    tool = [sys.executable, str(root / "tools" / "soup_rigan.py")]
    done = subprocess.run(tool + [str(paths["a"]), str(paths["b"]), "--alpha", "0.5", "--out", str(tmp_path / "ab.pt")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from training.train_rigan import load_generator

    blend = load_generator(tmp_path / "ab.pt").state_dict()
    sa, sb = torch.load(paths["a"], weights_only=True), torch.load(paths["b"], weights_only=True)
    assert torch.allclose(blend[key], (sa[key] + sb[key]) / 2, atol=1e-6)
    bad = subprocess.run(tool + [str(paths["a"]), str(paths["c"]), "--alpha", "0.5", "--out", str(tmp_path / "ac.pt")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "different tensors" in bad.stderr
    assert not (tmp_path / "ac.pt").exists()


def test_heldout_tool_scores_the_stage_on_whole_frames(tmp_path: Path):
    """tools/heldout_rigan.py --stage: whole frames through the dehaze stage per internal_scale;
    a graph the manifest does not list is refused in one line."""
    import re
    import subprocess
    import sys

    from tests.conftest import SHARED_DATA, need

    need(SHARED_DATA / "videos" / "video.avi")
    need(SHARED_DATA / "foreground" / "cdnet2014-highway" / "input")
    root = Path(__file__).resolve().parent.parent
    tool = [sys.executable, str(root / "tools" / "heldout_rigan.py"), "--side", "64", "--count", "2"]
    done = subprocess.run(tool + ["--stage", "weights/rigan_light.onnx", "--scales", "0.5", "1.0"],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "2 64x64 frames" in done.stdout
    means = re.findall(r"internal_scale (\S+): mean PSNR (\S+) dB", done.stdout)
    assert [m[0] for m in means] == ["0.5", "1.0"]
    hazy = [float(x) for x in re.findall(r"hazy input PSNR (\S+) dB", done.stdout)]
    assert len(hazy) == 3 and all(np.isfinite(float(m[1])) and float(m[1]) > 10 for m in means)

    stray = tmp_path / "stray.onnx"
    stray.write_bytes((root / "weights" / "rigan_light.onnx").read_bytes() + b"\0")
    bad = subprocess.run(tool + ["--stage", str(stray)], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "stray.onnx" in bad.stderr
