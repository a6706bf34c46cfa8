"""Runner backends on a tiny convolutional model exported in a fixture: parity, input checks,
weights verification, the parity gate, int8 QDQ quantisation and lazy imports."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engines.base import RunnerError
from engines.weights import WeightsError, record
from tests.conftest import HIGHWAY, ROOT, need

torch = pytest.importorskip("torch", reason="torch is needed to build the reference model")
nn = torch.nn


class TinyNet(nn.Module):
    """Two 3x3 convolutions and a sigmoid: the shape of a foreground head, 3 -> 1 channel."""

    input_names = ("frames",)
    output_names = ("fg_prob",)

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x):
        return torch.sigmoid(self.body(x))


def make_tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A TinyNet, its state_dict and its ONNX export, both listed in a manifest of their own."""
    from engines.export import onnx_from_torch

    d = tmp_path_factory.mktemp("weights")
    model = make_tiny()
    onnx = onnx_from_torch(model, (torch.rand(1, 3, 32, 48),), d / "tiny.onnx", ["frames"], ["fg_prob"],
                           dynamic_axes={"frames": {0: "batch", 2: "height", 3: "width"},
                                         "fg_prob": {0: "batch", 2: "height", 3: "width"}})
    pt = d / "tiny.pt"
    torch.save(model.state_dict(), pt)
    manifest = d / "manifest.json"
    record(onnx, manifest, model="tiny")
    record(pt, manifest, model="tiny")
    return {"model": model, "onnx": onnx, "pt": pt, "manifest": manifest, "dir": d}


def feeds(n: int = 3, h: int = 40, w: int = 56, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [{"frames": rng.random((1, 3, h, w), dtype=np.float32)} for _ in range(n)]


def test_onnxruntime_matches_torch_fp32(tiny):
    from engines.onnxruntime.runner import OnnxRuntimeRunner
    from engines.parity import check_parity
    from engines.torch.runner import TorchRunner

    with TorchRunner(tiny["model"]) as ref, OnnxRuntimeRunner(tiny["onnx"], threads=1) as ort:
        report = check_parity(ref, ort, feeds(), precision="fp32")
        out = ort.infer(feeds(1, 24, 24)[0])  # dynamic H/W: another size works too
    assert report.passed and report.samples == 3
    assert report.max_abs < 1e-5, report.summary()
    assert out["fg_prob"].shape == (1, 1, 24, 24)


def test_torch_runner_from_factory_string_with_verified_weights(tiny):
    from engines.torch.runner import TorchRunner

    runner = TorchRunner("tests.test_runners:TinyNet", weights=tiny["pt"], manifest=tiny["manifest"])
    x = feeds(1)[0]
    with runner:
        got = runner.infer(x)["fg_prob"]
    want = tiny["model"](torch.from_numpy(x["frames"])).detach().numpy()
    assert np.array_equal(got, want)
    assert runner.input_specs()[0].name == "frames"


def test_weights_with_wrong_hash_are_refused(tiny, tmp_path):
    from engines.torch.runner import TorchRunner

    pt = tmp_path / "tiny.pt"
    pt.write_bytes(tiny["pt"].read_bytes())
    manifest = tmp_path / "manifest.json"
    record(pt, manifest)
    with open(pt, "ab") as f:
        f.write(b"\0")  # one byte appended: a corrupt download
    with pytest.raises(WeightsError, match="does not match the manifest"):
        TorchRunner("tests.test_runners:TinyNet", weights=pt, manifest=manifest).activate()


def test_base_class_checks_inputs(tiny):
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(tiny["onnx"], threads=1)
    with pytest.raises(RunnerError, match="before activate"):
        runner.infer(feeds(1)[0])
    with runner:
        with pytest.raises(RunnerError, match="do not match"):
            runner.infer({"image": np.zeros((1, 3, 8, 8), np.float32)})
        with pytest.raises(RunnerError, match="has shape"):
            runner.infer({"frames": np.zeros((3, 8, 8), np.float32)})
        with pytest.raises(RunnerError, match="has shape"):
            runner.infer({"frames": np.zeros((1, 4, 8, 8), np.float32)})  # channel axis is fixed at 3


def test_parity_gate_refuses_perturbed_candidate_with_measured_error(tiny):
    from engines.parity import ParityError, check_parity
    from engines.torch.runner import TorchRunner

    broken = make_tiny()
    with torch.no_grad():
        broken.body[2].bias += 0.5  # a shifted logit: what a bad int8 range does to a layer
    with TorchRunner(tiny["model"]) as ref, TorchRunner(broken, name="perturbed") as cand:
        with pytest.raises(ParityError) as info:
            check_parity(ref, cand, feeds(2), model="msfgnet", precision="fp16")
    report = info.value.report
    assert not report.passed and report.max_abs > 0.03
    message = str(info.value)
    assert "REFUSED" in message and f"{report.max_abs:.3g}" in message and "limit 0.03" in message


def test_int8_qdq_quantisation_on_real_frames(tiny, tmp_path):
    import onnx

    from engines.cli import read_frames
    from engines.onnxruntime.runner import OnnxRuntimeRunner
    from engines.parity import check_parity, tolerance_for
    from engines.quantize import feeds_from_frames, onnx_input_shapes, quantize_qdq
    from engines.torch.runner import TorchRunner

    frames = read_frames(need(HIGHWAY / "input"), count=12, stride=40)  # 320x240 CDnet highway
    calib = list(feeds_from_frames(frames[:8], onnx_input_shapes(tiny["onnx"])))
    out = quantize_qdq(tiny["onnx"], tmp_path / "tiny.int8.onnx", calib)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    test_feeds = list(feeds_from_frames(frames[8:], onnx_input_shapes(tiny["onnx"])))
    with TorchRunner(tiny["model"]) as ref, OnnxRuntimeRunner(out, threads=1) as q:
        report = check_parity(ref, q, test_feeds, precision="int8", refuse=False)
    print("int8 QDQ vs fp32 torch:", report.summary())
    assert report.passed, report.summary()
    assert 0 < report.mean_abs <= tolerance_for("default", "int8").mean_abs


def test_feeds_stack_consecutive_frames_for_multi_frame_inputs():
    from engines.quantize import feeds_from_frames

    frames = [np.full((6, 8, 3), i * 10, np.uint8) for i in range(5)]
    got = list(feeds_from_frames(frames, {"stack": (None, 9, None, None)}, batch=2))
    assert [f["stack"].shape for f in got] == [(2, 9, 6, 8), (1, 9, 6, 8)]
    assert got[0]["stack"][0, 6, 0, 0] == pytest.approx(20 / 255)  # third frame of the first window


def test_runner_for_picks_backend_and_verifies(tiny, tmp_path):
    from engines.load import choose_backend, runner_for
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    assert choose_backend("auto", "cpu") == "onnxruntime"
    runner = runner_for(tiny["onnx"], backend="onnxruntime", manifest=tiny["manifest"], threads=1)
    assert isinstance(runner, OnnxRuntimeRunner)
    auto = runner_for(tiny["onnx"], manifest=tiny["manifest"], threads=1, cache_dir=tmp_path / "cache")
    assert auto.backend == auto.load_info["backend"] and auto.load_info["chosen_by"].startswith("auto")
    with pytest.raises(WeightsError, match="file not found"):
        runner_for("msfgnet", weights_dir=tmp_path, manifest=tiny["manifest"])
    with pytest.raises(RunnerError, match="tensorrt needs device: cuda"):
        runner_for("msfgnet", backend="tensorrt", weights_dir=tmp_path)


def test_build_engine_without_tensorrt_says_what_to_install(tiny, capsys):
    from engines.cli import tensorrt_import_error
    from pipeline.cli import main

    if tensorrt_import_error() is None:
        pytest.skip("tensorrt imports here; the error path is not reachable")
    assert main(["build-engine", str(tiny["onnx"]), "--precision", "fp16"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"hazeflow: error: {tiny['onnx']}: TensorRT does not import")
    assert "pip install .[trt]" in err


def test_import_pipeline_and_engines_pulls_no_torch_or_tensorrt():
    code = ("import sys, pipeline, engines, pipeline.cli, pipeline.gpu, engines.load, engines.parity, "
            "engines.quantize, engines.tensorrt.build, engines.tensorrt.runner, engines.tensorrt.calibrator, "
            "engines.torch.runner, engines.export, engines.cli, pipeline.commands.bench; "
            "bad = [m for m in ('torch', 'tensorrt', 'training') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["msfgnet", "rigan"])
def test_named_models_onnxruntime_matches_torch_on_real_frames(name, tmp_path):
    """The project's two models (initial weights; RI-GAN's identity start perturbed so the check
    is not trivial), exported with onnx_from_torch and compared on CDnet highway frames."""
    from engines.cli import read_frames
    from engines.export import onnx_from_torch
    from engines.load import MODELS
    from engines.onnxruntime.runner import OnnxRuntimeRunner
    from engines.parity import check_parity
    from engines.quantize import feeds_from_frames
    from engines.torch.runner import TorchRunner, resolve_factory

    entry = MODELS[name]
    pytest.importorskip(entry.factory.split(":")[0], reason=f"{entry.factory} not available")
    torch.manual_seed(0)
    model = resolve_factory(entry.factory)().eval()
    if name == "rigan":
        with torch.no_grad():
            model.out.weight.normal_(0, 0.02)
    channels = model.spec.frames if name == "msfgnet" else 3
    frames = read_frames(need(HIGHWAY / "input"), count=channels + 1, stride=20)
    feeds = list(feeds_from_frames(frames, {entry.input_names[0]: (None, channels, None, None)},
                                   size=(160, 120), colour=entry.colour))
    axes = {0: "batch", 2: "height", 3: "width"}
    onnx = onnx_from_torch(model, (torch.from_numpy(feeds[0][entry.input_names[0]]),), tmp_path / f"{name}.onnx",
                           entry.input_names, entry.output_names,
                           {entry.input_names[0]: axes, entry.output_names[0]: axes})
    kw = dict(input_names=entry.input_names, output_names=entry.output_names)
    with TorchRunner(model, **kw) as ref, OnnxRuntimeRunner(onnx, threads=1) as ort:
        report = check_parity(ref, ort, feeds, model=name, precision="fp32")
    print(report.summary())
    assert report.max_abs > 0 or name == "msfgnet"  # RI-GAN really computed something


@pytest.mark.parametrize("level", ["disable", "basic", "extended"])
def test_onnxruntime_optimisation_levels_agree_with_full_optimisation(tiny, level):
    """Every graph optimisation level computes the same function as the default ("all")."""
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    inputs = feeds(1)[0]
    with OnnxRuntimeRunner(tiny["onnx"], threads=1) as full, \
            OnnxRuntimeRunner(tiny["onnx"], threads=1, optimization=level) as other:
        np.testing.assert_allclose(other.infer(inputs)["fg_prob"], full.infer(inputs)["fg_prob"], atol=1e-5)
    with pytest.raises(ValueError, match="optimization must be one of"):
        OnnxRuntimeRunner(tiny["onnx"], optimization="max")
