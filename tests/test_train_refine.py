"""`hazeflow train msfgnet-refine`: the learned edge's data, model and export (the full run is in docs/models.md)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (the [train] extra)")

from engines.weights import WEIGHTS_DIR, sha256_of  # noqa: E402
from pipeline.frame import Frame  # noqa: E402
from pipeline.refine import FEATURES  # noqa: E402
from pipeline.sources.synthetic import SceneGenerator  # noqa: E402
from pipeline.stages.msfgnet import MsfgnetStage, refine_guided  # noqa: E402
from training.models.refine import MsfgnetRefine, RefineSpec  # noqa: E402
from training.train_refine import collect, crops, export, targets  # noqa: E402

needs_weights = pytest.mark.skipif(not (WEIGHTS_DIR / "msfgnet.onnx").is_file(),
                                   reason="weights/msfgnet.onnx not shipped in this checkout")


def clip(frames=30, seed=5):
    gen = SceneGenerator(160, 120, seed=seed, frames=frames, density=0.2)
    return [(image, truth, i >= 20, None) for i, (image, truth) in enumerate(gen.frames(), start=1)]


def test_an_untrained_head_gives_the_guided_mask_back():
    """The last layer starts at zero: before training the learned edge is the guided one."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((2, len(FEATURES), 20, 24), dtype=np.float32))
    logit = MsfgnetRefine()(x)
    assert logit.shape == (2, 1, 20, 24)
    guided = x[:, 1:2].clamp(1e-3, 1 - 1e-3)
    assert torch.equal(logit > 0, guided > 0.5)


def test_labels_become_targets_by_the_cdnet_rules():
    t, w = targets(np.array([[0, 50, 85, 170, 255]], np.uint8))
    assert t.tolist() == [[0, 0, 0, 0, 1]] and w.tolist() == [[1, 1, 0, 0, 1]]


@needs_weights
def test_collect_keeps_the_stage_inputs_of_the_scored_frames():
    """The training inputs are the stage's own: its probability (refine: off), the guided filter of it."""
    frames = clip()
    sets = collect([iter(frames)], stride_frames=2)
    assert len(sets) == 6                                     # scored frames 20..30, every second
    x = sets.features(0)
    assert x.shape == (len(FEATURES), 120, 160) and x.dtype == np.float32
    with MsfgnetStage(MsfgnetStage.Config(threads=1, refine="off")) as stage:
        for i, (image, truth, _, _) in enumerate(frames[:20], start=1):
            out = stage.process([Frame("s", i, None, image)])[0]
    prob = out.data["fg_prob"]
    assert np.abs(x[0] - prob).max() < 2e-3                   # stored as float16
    assert np.abs(x[1] - np.clip(refine_guided(prob, frames[19][0]), 0, 1)).max() < 2e-3
    assert np.allclose(x[2:5], frames[19][0].transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert np.array_equal(sets.labels[0], frames[19][1]) and x[5:].max() > 0.1   # vehicles moved
    rng = np.random.default_rng(1)
    xb, tb, wb = crops({"clip": sets}, rng, 4, 32, band_share=1.0)
    assert xb.shape == (4, len(FEATURES), 32, 32) and tb.shape == wb.shape == (4, 1, 32, 32)


@needs_weights
def test_an_exported_head_runs_in_the_stage_as_in_torch(tmp_path, monkeypatch):
    """Export -> ONNX Runtime in the stage gives torch's logits; the stage checks it against a manifest."""
    from engines import weights

    torch.manual_seed(0)
    model = MsfgnetRefine(RefineSpec())
    with torch.no_grad():
        model.head[-1].weight.normal_(0, 0.5)
    ckpt = tmp_path / "best.pt"
    from training.common import save_checkpoint

    save_checkpoint(ckpt, model=model.state_dict(), spec=RefineSpec().to_dict(), step=1, val={}, val_guided={},
                    seed=1, data={})
    onnx = tmp_path / "msfgnet_refine.onnx"
    assert export(argparse.Namespace(weights=str(ckpt), out=str(onnx))) == 0
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    x = np.random.default_rng(3).random((1, len(FEATURES), 36, 52), dtype=np.float32)
    runner = OnnxRuntimeRunner(onnx, threads=1)
    runner.activate()
    got = runner.infer({"features": x})["fg_logit"]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-4
    manifest = tmp_path / "manifest.json"
    listed = json.loads(weights.MANIFEST.read_text())
    listed["files"][onnx.name] = {"sha256": sha256_of(onnx)}
    manifest.write_text(json.dumps(listed))
    image = np.zeros((120, 160, 3), np.uint8)
    with MsfgnetStage(MsfgnetStage.Config(threads=1, refine_weights=str(onnx), manifest=str(manifest))) as stage:
        out = stage.process([Frame("s", 1, None, image)])[0]
    assert out.data["mask"].shape == (120, 160)


def test_options_the_refine_training_does_not_have_are_refused_in_one_line(capsys):
    from pipeline.cli import main as cli

    assert cli(["train", "msfgnet-refine", "--resume", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume not supported" in err and "\n" not in err
