"""`hazeflow train msfgnet`: a tiny run, --resume, export, and the CDnet loader's errors."""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="training needs torch (the [train] extra)")

from pipeline.cli import main as cli  # noqa: E402
from pipeline.errors import SourceError  # noqa: E402
from training.data.cdnet import load_sequence  # noqa: E402
from training.train_msfgnet import export, main  # noqa: E402

W, H, N = 64, 48, 24


def make_sequence(folder, frames=N, temporal_roi=(5, N)):
    """A CDnet-layout folder: a bright square crossing a textured background, exact labels."""
    rng = np.random.default_rng(0)
    background = rng.integers(40, 120, (H, W), dtype=np.uint8)
    (folder / "input").mkdir(parents=True)
    (folder / "groundtruth").mkdir()
    for n in range(1, frames + 1):
        image, gt = background.copy(), np.zeros((H, W), np.uint8)
        x = 2 * n % (W - 10)
        image[20:30, x:x + 10] = 230
        gt[20:30, x:x + 10] = 255
        if n < temporal_roi[0]:
            gt[:] = 85
        cv2.imwrite(str(folder / "input" / f"in{n:06d}.jpg"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
        cv2.imwrite(str(folder / "groundtruth" / f"gt{n:06d}.png"), gt)
    (folder / "temporalROI.txt").write_text(f"{temporal_roi[0]} {temporal_roi[1]}\n")
    return folder


@pytest.fixture
def tiny(tmp_path):
    seq = make_sequence(tmp_path / "seq")
    config = {
        "seed": 3,
        "model": {"frames": 4, "be_channels": 4, "sm_channels": 4, "enc1": 8, "enc2": 8},
        "data": {"cdnet": [{"path": str(seq), "frames": "5:16"}],
                 "validate": [{"path": str(seq), "frames": "17:24"}],
                 "traffic": {"sequences": 0}, "textures": [], "mix": {"cdnet": 1.0}},
        "augment": {"crop": 32, "scale": [0.7, 0.9], "stride": [1, 2]},
        "train": {"epochs": 1, "iterations": 2, "batch": 2, "threads": 1},
        "validate": {"scale": 1.0, "stride": 1, "threshold": 0.5},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return tmp_path, path, config


def args(**kw):
    base = dict(config=None, out=None, resume=False, device="cpu", no_progress=True)
    return argparse.Namespace(**{**base, **kw})


def test_two_iterations_then_resume_then_export(tiny):
    tmp, config_path, config = tiny
    out = tmp / "run"
    assert main(args(config=str(config_path), out=str(out))) == 0
    for name in ("last.pt", "best.pt", "curves.png", "history.json"):
        assert (out / name).is_file(), name
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]["loss"]) == 1

    config["train"]["epochs"] = 2  # continue for one more epoch from the checkpoint
    config_path.write_text(yaml.safe_dump(config))
    assert main(args(config=str(config_path), out=str(out), resume=True)) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]["loss"]) == 2
    history = json.loads((out / "history.json").read_text())
    assert 0.0 <= history["history"]["val_F"][-1] <= 1.0

    onnx_path = tmp / "tiny.onnx"
    assert export(argparse.Namespace(weights=str(out / "best.pt"), out=str(onnx_path))) == 0
    import onnxruntime as ort
    from training.train_msfgnet import model_from_checkpoint

    model, meta = model_from_checkpoint(out / "best.pt")
    x = np.random.default_rng(0).random((1, 4, 48, 64), dtype=np.float32)
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"frames": x})[0]
    with torch.no_grad():
        assert np.abs(got - model(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_resume_without_a_checkpoint_is_one_line(tiny, capsys):
    tmp, config_path, _ = tiny
    rc = cli(["train", "msfgnet", "--config", str(config_path), "--out", str(tmp / "empty"), "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "last.pt" in err and "checkpoint not found" in err


def test_missing_ground_truth_is_a_clear_error(tmp_path):
    seq = make_sequence(tmp_path / "seq")
    (seq / "groundtruth" / "gt000010.png").unlink()
    with pytest.raises(SourceError, match="no ground truth .*gt000010.png"):
        load_sequence(seq)


def test_missing_temporal_roi_is_a_clear_error(tmp_path):
    seq = make_sequence(tmp_path / "seq")
    (seq / "temporalROI.txt").unlink()
    with pytest.raises(SourceError, match="temporalROI.txt missing"):
        load_sequence(seq)


def test_cli_reports_a_bad_training_folder_in_one_line(tiny, capsys):
    tmp, config_path, config = tiny
    config["data"]["cdnet"] = [{"path": str(tmp / "nowhere")}]
    config_path.write_text(yaml.safe_dump(config))
    rc = cli(["train", "msfgnet", "--config", str(config_path), "--out", str(tmp / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("hazeflow: error: ") and "nowhere" in err and "\n" not in err


def test_labels_follow_the_cdnet_rules(tmp_path):
    seq = load_sequence(make_sequence(tmp_path / "seq"))
    seq.labels[20 - seq.first, 0, :4] = [50, 85, 170, 255]
    fg, valid = seq.targets(20)
    assert fg[0, :4].tolist() == [False, False, False, True]   # shadow is background
    assert valid[0, :4].tolist() == [True, False, False, True]  # 85 and 170 are ignored
    with pytest.raises(SourceError, match="outside the labelled range"):
        seq.check_range(1, 10)


def test_windows_are_deterministic_given_a_seed(tmp_path):
    from training.data.scenes import Augment, WindowSampler

    seq = load_sequence(make_sequence(tmp_path / "seq"))
    sampler = WindowSampler(4, Augment(crop=32, scale=(0.7, 0.9)), [(seq, (5, 24))], mix={"cdnet": 1.0})
    a = sampler.batch(np.random.default_rng(7), 3)
    b = sampler.batch(np.random.default_rng(7), 3)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert a[0].shape == (3, 4, 32, 32) and a[1].shape == a[2].shape == (3, 1, 32, 32)


def test_checkpoints_with_numpy_numbers_still_load_safely(tmp_path):
    from training.common import load_checkpoint, save_checkpoint
    from training.train_msfgnet import lr_at

    assert type(lr_at(5000, 6000, 3e-3)) is float
    opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=np.float64(1e-3))
    save_checkpoint(tmp_path / "c.pt", optimiser=opt.state_dict(), history={"F": [np.float64(0.5)]})
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    assert state["history"]["F"] == [0.5] and type(state["optimiser"]["param_groups"][0]["lr"]) is float
