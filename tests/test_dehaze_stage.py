"""Dehaze stage: ORT/torch parity, gating with hysteresis, odd inputs, weights checks."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from engines.weights import record
from pipeline.errors import ConfigError, WeightsError
from pipeline.frame import Frame
from pipeline.haze import apply_haze, road_depth, transmission
from pipeline.stages import stage_class
from pipeline.stages.dehaze import DehazeStage
from tests.conftest import ROOT

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

SHIPPED_ONNX = ROOT / "weights" / "rigan.onnx"
SHIPPED_PT = ROOT / "weights" / "rigan.pt"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A light RI-GAN generator with random (non-identity) weights, as .pt + .onnx in a manifest."""
    from training.models.rigan import RIGenerator, generator_light
    from training.train_rigan import onnx_from_torch

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    ports = generator_light().eval()
    torch.nn.init.normal_(ports.out.weight, std=0.05)
    gen = RIGenerator(ports.width, ports.blocks).eval()  # same weights, returns J only
    gen.load_state_dict(ports.state_dict())
    pt, onnx_path, manifest = folder / "tiny.pt", folder / "tiny.onnx", folder / "manifest.json"
    torch.save(gen.state_dict(), pt)
    onnx_from_torch(gen, onnx_path)
    record(pt, manifest, model="rigan-test")
    record(onnx_path, manifest, model="rigan-test")
    return {"gen": gen, "pt": pt, "onnx": onnx_path, "manifest": manifest}


def _config(model, **kw) -> DehazeStage.Config:
    base = dict(weights=str(model["onnx"]), torch_weights=str(model["pt"]), manifest=str(model["manifest"]),
                torch_factory="training.models.rigan:generator_light", threads=1)
    base.update(kw)
    return DehazeStage.Config(**base)


def _scene(h=120, w=160, seed=0) -> np.ndarray:
    """Colourful blocks with dark shadows: a clear frame in the dark-channel sense."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    for _ in range(25):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        img[y:y + rng.integers(5, 40), x:x + rng.integers(5, 60)] = rng.integers(0, 256, 3)
    return img


def _run(stage, images, stream="cam"):
    frames = [Frame(stream, i + 1, None, im) for i, im in enumerate(images)]
    for f in frames:
        stage.process([f])
    return frames


def test_onnx_runtime_matches_pytorch(tiny_model):
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    x = np.random.default_rng(1).random((1, 3, 92, 124), dtype=np.float32)
    with torch.no_grad():
        ref = [v.numpy() for v in tiny_model["gen"].scattering(torch.from_numpy(x))]
    with OnnxRuntimeRunner(tiny_model["onnx"], threads=1) as r:
        got = r.infer({"hazy": x})
    for name, want in zip(("dehazed", "transmission", "airlight"), ref):
        assert got[name].shape == want.shape
        assert np.abs(got[name] - want).max() < 1e-4, name


def test_stage_backends_agree(tiny_model):
    image = _scene(90, 130)
    outs, halves = {}, {}
    for backend in ("onnxruntime", "torch"):
        with DehazeStage(_config(tiny_model, when="always", backend=backend, internal_scale=1.0)) as stage:
            outs[backend] = _run(stage, [image])[0].data["dehazed"]
        with DehazeStage(_config(tiny_model, when="always", backend=backend, internal_scale=0.5)) as stage:
            halves[backend] = _run(stage, [image])[0].data["dehazed"]
    assert halves["onnxruntime"].shape == image.shape
    assert np.abs(halves["onnxruntime"].astype(int) - halves["torch"].astype(int)).max() <= 1
    gen = tiny_model["gen"]
    from training.models.rigan import dehaze_any_size

    x = torch.from_numpy(image.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.no_grad():
        ref = (dehaze_any_size(gen, x)[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    for backend, out in outs.items():
        assert out.shape == image.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(int) - ref.astype(int)).max()
        assert diff <= 1, f"{backend} differs from PyTorch by {diff}"


@pytest.mark.skipif(not SHIPPED_ONNX.is_file(), reason="weights/rigan.onnx not shipped yet")
def test_shipped_onnx_matches_shipped_state_dict():
    from engines.onnxruntime.runner import OnnxRuntimeRunner
    from engines.weights import verified_path
    from training.train_rigan import load_generator

    gen = load_generator(verified_path(SHIPPED_PT))
    x = np.random.default_rng(2).random((1, 3, 180, 320), dtype=np.float32)
    with torch.no_grad():
        ref = gen(torch.from_numpy(x)).numpy()
    with OnnxRuntimeRunner(verified_path(SHIPPED_ONNX), threads=1) as r:
        got = r.infer({"hazy": x})["dehazed"]
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.skipif(not SHIPPED_ONNX.is_file(), reason="weights/rigan.onnx not shipped yet")
def test_eval_harness_call_with_shipped_weights():
    """What `hazeflow eval dehaze --method rigan` does: build from the registry, feed frames of any size."""
    stage = stage_class("dehaze")(DehazeStage.Config(when="always", method="rigan", threads=1))
    for h, w in ((61, 83), (120, 160)):
        frame = _run(stage, [_scene(h, w)])[0]
        assert frame.data["dehazed"].shape == (h, w, 3) and frame.data["dehaze_applied"] is True
    stage.close()


def test_gate_switches_once_each_way_on_clear_hazy_clear_clip():
    """clear -> hazy -> clear, hazed with pipeline/haze.py; the score wobbles; the gate must not flicker."""
    clear = _scene()
    depth = road_depth(*clear.shape[:2], horizon=0.3) / 60.0
    clip = [clear] * 15
    clip += [apply_haze(clear, transmission(depth, beta), 0.9) for beta in np.linspace(0.3, 3.0, 10)]
    hazy = apply_haze(clear, transmission(depth, 3.0), 0.9)
    clip += [hazy] * 15
    clip += [clear] * 15
    stage = DehazeStage(DehazeStage.Config(when="auto", method="dcp", hold_frames=3))
    frames = _run(stage, clip)
    scores = np.array([f.data["haze_score"] for f in frames])
    assert (stage.threshold, stage.hysteresis) == (0.5, 0.04)  # the dark-channel defaults
    assert scores[:15].max() < stage.threshold - stage.hysteresis < stage.threshold
    assert scores[25:40].min() > stage.threshold
    applied = [f.data["dehaze_applied"] for f in frames]
    switches = sum(a != b for a, b in zip(applied, applied[1:]))
    assert switches == 2 and not any(applied[:15]) and all(applied[30:40]) and not any(applied[-5:])
    for f in frames:
        if not f.data["dehaze_applied"]:
            assert f.data["dehazed"] is f.image  # pass-through, no copy
        else:
            assert f.data["dehazed"] is not f.image


def test_gate_hysteresis_ignores_a_score_hovering_at_the_threshold():
    stage = DehazeStage(DehazeStage.Config(when="auto", method="dcp", threshold=0.5, hysteresis=0.05, hold_frames=3))
    gate_inputs = [0.6] + [0.48, 0.52] * 10 + [0.40] * 3  # dips below 0.5 but never below 0.45 until the end
    from pipeline.stages.dehaze import _Gate

    gate = _Gate()
    states = [gate.update(s, 0.5, 0.45, 3) for s in gate_inputs]
    assert all(states[:-1]) and states[-1] is False
    assert stage.config.threshold == 0.5


def test_density_score_gates_on_the_networks_haze_estimate():
    """score: density (RI-GAN's mean 1 - t, shipped w16 weights): low on a clear frame, high on the
    same frame under haze; the gate follows it; score_every reuses a score between frames."""
    clear = _scene(180, 320)
    depth = road_depth(*clear.shape[:2], horizon=0.3) / 60.0
    hazy = apply_haze(clear, transmission(depth, 2.0), 0.9)
    stage = DehazeStage(DehazeStage.Config(when="auto", score="density", hold_frames=2, score_every=3, threads=1))
    assert (stage.threshold, stage.hysteresis) == (0.12, 0.02)
    frames = _run(stage, [clear] * 6 + [hazy] * 9)
    scores = [f.data["haze_score"] for f in frames]
    assert scores[0] < stage.threshold - stage.hysteresis < stage.threshold < scores[8]
    # scored at frames 0, 3, 6, 9, 12: the frames in between carry the last score
    assert scores[0] == scores[1] == scores[2] and scores[6] == scores[7] == scores[8] and scores[6] != scores[5]
    applied = [f.data["dehaze_applied"] for f in frames]
    assert not any(applied[:6]) and all(applied[-3:])
    assert stage.density(hazy) == pytest.approx(scores[-1], abs=1e-6)
    stage.close()

    with pytest.raises(ConfigError, match="stages.dehaze.score"):
        DehazeStage(DehazeStage.Config(method="dcp", score="density"))
    with pytest.raises(ConfigError, match="score_every"):
        DehazeStage(DehazeStage.Config(score_every=0))
    with pytest.raises(ConfigError, match="hysteresis"):
        DehazeStage(DehazeStage.Config(score="density", hysteresis=0.2))


def test_auto_mode_on_clear_frames_is_cheap(tiny_model):
    """Not a benchmark: the clear path must skip the network (bounded loosely; measured in the report)."""
    stage = DehazeStage(_config(tiny_model, when="auto", score="dark_channel"))
    stage.setup()
    clear = np.ascontiguousarray(np.tile(_scene(90, 160), (4, 4, 1)))  # 360x640
    _run(stage, [clear] * 3)
    t0 = time.perf_counter()
    frames = _run(stage, [clear] * 20)
    per_frame = (time.perf_counter() - t0) / 20
    assert not any(f.data["dehaze_applied"] for f in frames)
    assert per_frame < 0.02
    stage.close()


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_odd_inputs_are_converted(tiny_model, scale):
    stage = DehazeStage(_config(tiny_model, when="always", internal_scale=scale))
    rgb = _scene(37, 53)
    odd = {
        "grey": rgb[:, :, 0].copy(),
        "grey1": rgb[:, :, :1].copy(),
        "bgra": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "uint16": rgb.astype(np.uint16) * 257,
        "tiny": rgb[:5, :6].copy(),
    }
    for name, image in odd.items():
        frame = _run(stage, [image], stream=name)[0]
        out = frame.data["dehazed"]
        assert out.shape == image.shape[:2] + (3,) and out.dtype == np.uint8, name
    stage.close()


def test_corrupt_missing_and_unlisted_weights_are_one_line_errors(tiny_model, tmp_path):
    corrupt = tmp_path / "tiny.onnx"
    data = bytearray(tiny_model["onnx"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(tiny_model["manifest"].read_text())
    cases = {
        "does not match": corrupt,
        "file not found": tmp_path / "absent.onnx",
    }
    for cause, path in cases.items():
        stage = DehazeStage(DehazeStage.Config(when="always", weights=str(path), manifest=str(manifest)))
        with pytest.raises(WeightsError, match=cause) as e:
            stage.setup()
        assert "\n" not in str(e.value) and str(path) in e.value.input
    unlisted = tmp_path / "other.onnx"
    unlisted.write_bytes(tiny_model["onnx"].read_bytes())
    with pytest.raises(WeightsError, match="not listed"):
        DehazeStage(DehazeStage.Config(when="always", weights=str(unlisted), manifest=str(manifest))).setup()
    assert json.loads(manifest.read_text())["files"]


def test_never_and_bad_config():
    stage = DehazeStage(DehazeStage.Config(when="never"))
    frame = _run(stage, [_scene()])[0]
    assert frame.data["dehazed"] is frame.image and frame.data["dehaze_applied"] is False
    assert 0.0 <= frame.data["haze_score"] <= 1.0
    with pytest.raises(ConfigError, match="internal_scale"):
        DehazeStage(DehazeStage.Config(internal_scale=0.0))
    with pytest.raises(ConfigError, match="hold_frames"):
        DehazeStage(DehazeStage.Config(hold_frames=0))


def test_transmission_upsampling_inverts_the_haze_model_at_full_size():
    """Stage maths without a network: a low-res t and A applied at full size undo pipeline/haze.py."""
    import cv2

    from pipeline.stages.dehaze import TransmissionUpsampler

    clear = _scene(120, 160)
    t_full = np.tile(np.linspace(0.35, 0.9, 160, dtype=np.float32), (120, 1))  # smooth, like real t
    hazy = apply_haze(clear, t_full, 0.85)
    t_low = cv2.resize(t_full, (80, 60), interpolation=cv2.INTER_AREA)
    grey_low = cv2.cvtColor(cv2.resize(hazy, (80, 60), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    out = TransmissionUpsampler()(t_low, np.full(3, 0.85, np.float32), grey_low.astype(np.float32) / 255.0, hazy)
    err = np.abs(out.astype(int) - clear.astype(int))
    assert out.shape == clear.shape and out.dtype == np.uint8
    assert np.median(err) <= 2 and err.mean() < 4  # rounding of the hazy uint8 is amplified by 1/t


def test_graph_with_only_a_dehazed_output_falls_back_to_guided_fit(tiny_model, tmp_path):
    """An ONNX graph without transmission/airlight outputs still runs at a reduced internal size."""
    import warnings

    onnx_path, manifest = tmp_path / "plain.onnx", tmp_path / "manifest.json"
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_model["gen"], (torch.rand(1, 3, 32, 32),), str(onnx_path), input_names=["hazy"],
                          output_names=["dehazed"], dynamic_axes={"hazy": axes, "dehazed": axes}, dynamo=False)
    record(onnx_path, manifest, model="rigan-test")
    image = _scene(90, 130)
    with DehazeStage(DehazeStage.Config(when="always", weights=str(onnx_path), manifest=str(manifest),
                                        internal_scale=0.5, threads=1)) as stage:
        out = _run(stage, [image])[0].data["dehazed"]
    with DehazeStage(_config(tiny_model, when="always", internal_scale=0.5)) as stage:
        ports = _run(stage, [image])[0].data["dehazed"]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ports.astype(int)).mean() < 8  # two upsamplings of the same network
    # score: density reads t, which this graph lacks: one line, not a guess
    stage = DehazeStage(DehazeStage.Config(when="auto", score="density", weights=str(onnx_path),
                                           manifest=str(manifest), threads=1))
    with pytest.raises(ConfigError, match="transmission") as e:
        _run(stage, [image])
    assert "\n" not in str(e.value)
    stage.close()
