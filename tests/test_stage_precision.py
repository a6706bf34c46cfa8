"""Backend x precision x device of the learned stages (msfgnet, dehaze): config checks, int8 on
ONNX Runtime from a QDQ graph made the way the error message says, TensorRT wiring, torch fp16 on CUDA."""
from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.weights import WEIGHTS_DIR, record
from pipeline.errors import ConfigError, WeightsError
from pipeline.frame import Frame
from pipeline.sources.synthetic import SceneGenerator
from pipeline.stages.dehaze import DehazeStage
from pipeline.stages.msfgnet import MsfgnetStage
from tests.conftest import HIGHWAY, ROOT, need, tensorrt_probe

STAGES = {"msfgnet": MsfgnetStage, "dehaze": DehazeStage}


def shipped(*names: str):
    missing = [n for n in names if not (WEIGHTS_DIR / n).is_file()]
    if missing:
        pytest.skip(f"weights/{', '.join(missing)} not shipped in this checkout")


@functools.lru_cache(maxsize=None)
def scene(frames: int = 40, seed: int = 3, size=(320, 240)):
    gen = SceneGenerator(*size, seed=seed, nuisances="mild", density=0.1)
    return [image for image, _ in gen.frames(frames)]


def run_stage(stage, images, stream="cam"):
    frames = [Frame(stream, i + 1, None, image) for i, image in enumerate(images)]
    for f in frames:
        stage.process([f])
    return frames


# --- config checks ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(STAGES))
@pytest.mark.parametrize("settings, key, words", [
    ({"precision": "fp8"}, "precision", "must be one of fp32, fp16, bf16, int8"),
    ({"backend": "onnxruntime", "precision": "fp16"}, "precision", "fp32 or int8"),
    ({"precision": "fp16"}, "precision", "fp32 or int8"),                          # auto on cpu = onnxruntime
    ({"backend": "torch", "precision": "fp16"}, "precision", "needs device: cuda"),
    ({"backend": "torch", "precision": "int8"}, "precision", "runs fp32 on cpu, not int8"),
    ({"backend": "onnxruntime", "precision": "bf16"}, "precision", "bf16 runs on backend openvino"),
    ({"backend": "openvino", "device": "cuda"}, "backend", "openvino needs device: cpu"),
    ({"backend": "tensorrt"}, "backend", "tensorrt needs device: cuda"),
    ({"backend": "tensorrt", "precision": "fp16"}, "backend", "tensorrt needs device: cuda"),
    ({"backend": "tpu"}, "backend", ""),
])
def test_bad_backend_precision_device_combinations_name_the_key(name, settings, key, words):
    cls = STAGES[name]
    with pytest.raises(ConfigError) as e:
        cls(cls.Config(**settings))
    assert e.value.input == f"stages.{name}.{key}" and words in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(STAGES))
@pytest.mark.parametrize("settings", [
    {}, {"precision": "int8"}, {"backend": "onnxruntime", "precision": "int8"}, {"backend": "torch"},
    {"backend": "openvino"}, {"backend": "openvino", "precision": "bf16"}, {"precision": "bf16"},
    {"backend": "openvino", "precision": "int8"},
    {"backend": "torch", "device": "cuda", "precision": "fp16"},
    {"backend": "tensorrt", "device": "cuda", "precision": "fp32"},
    {"backend": "tensorrt", "device": "cuda", "precision": "fp16"},
    {"backend": "tensorrt", "device": "cuda", "precision": "int8"},
])
def test_supported_combinations_construct(name, settings):
    cls = STAGES[name]
    cls(cls.Config(**settings))  # nothing is loaded before setup()


def test_auto_on_cuda_picks_torch_unless_tensorrt_imports():
    from engines.load import choose_backend

    stage = MsfgnetStage(MsfgnetStage.Config(device="cuda"))
    assert stage.backend == choose_backend("auto", "cuda")
    assert MsfgnetStage(MsfgnetStage.Config()).backend == "onnxruntime"
    if tensorrt_probe():  # torch on cuda runs fp32/fp16, so int8 on auto is refused, saying why
        assert stage.backend == "torch"
        with pytest.raises(ConfigError, match=r"auto \(chose torch on cuda\) runs fp32 or fp16"):
            MsfgnetStage(MsfgnetStage.Config(device="cuda", precision="int8"))


def test_dehaze_does_not_check_precision_when_the_network_never_runs():
    DehazeStage(DehazeStage.Config(method="dcp", precision="fp16"))
    DehazeStage(DehazeStage.Config(when="never", precision="fp16"))
    with pytest.raises(ConfigError, match="stages.dehaze.precision"):
        DehazeStage(DehazeStage.Config(method="dcp", precision="half"))


def test_precision_key_is_checked_by_the_config_loader_too():
    from pipeline.config import config_from_dict

    config = config_from_dict({"stages": [{"msfgnet": {"precision": "int8"}}, {"dehaze": {"precision": "int8"}}]})
    assert [s.config.precision for s in config.stages] == ["int8", "int8"]
    with pytest.raises(ConfigError, match="stages.msfgnet.precision"):
        stage = config_from_dict({"stages": [{"msfgnet": {"precision": "fp16"}}]}).stages[0]
        MsfgnetStage(stage.config)


# --- TensorRT -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(STAGES))
def test_tensorrt_that_does_not_import_is_a_one_line_config_error(name):
    if tensorrt_probe() is None:
        pytest.skip("tensorrt imports here; the not-installed path is not reachable")
    cls = STAGES[name]
    stage = cls(cls.Config(backend="tensorrt", device="cuda"))
    with pytest.raises(ConfigError) as e:
        stage.setup()
    assert e.value.input == f"stages.{name}.backend"
    assert "TensorRT is not installed" in e.value.cause and "pip install .[trt]" in e.value.cause
    assert "\n" not in str(e.value)


def test_tensorrt_from_the_command_line_says_what_to_install(tmp_path, capsys):
    if tensorrt_probe() is None:
        pytest.skip("tensorrt imports here; the not-installed path is not reachable")
    pytest.importorskip("av", reason="PyAV is needed by `hazeflow run` (the GPU image lacks it)")
    from pipeline.cli import main

    rc = main(["run", "--input", "synthetic:traffic?size=64x48&frames=2", "--output", str(tmp_path),
               "--backend", "tensorrt", "--device", "cuda", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1
    assert err[0].startswith("hazeflow: error: stages.") and "pip install .[trt]" in err[0]


# --- ONNX Runtime int8 ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_weights(tmp_path_factory):
    """A copy of the shipped msfgnet.onnx in a manifest of its own, then its int8 QDQ graph made with
    the command the stage's error message gives (so the message is checked to work)."""
    shipped("msfgnet.onnx")
    frames = need(HIGHWAY / "input")  # the calibration frames the command reads
    d = tmp_path_factory.mktemp("int8")
    onnx, manifest = d / "msfgnet.onnx", d / "manifest.json"
    shutil.copy(WEIGHTS_DIR / "msfgnet.onnx", onnx)
    record(onnx, manifest, model="msfgnet")
    config = MsfgnetStage.Config(weights=str(onnx), manifest=str(manifest), precision="int8", threads=1)
    with pytest.raises(WeightsError) as e:
        MsfgnetStage(config).setup()
    assert e.value.input == str(d / "msfgnet.int8.onnx") and "QDQ graph not found" in e.value.cause
    command = shlex.split(e.value.cause.split("manifest with: ", 1)[1])
    assert command[:2] == ["hazeflow", "quantize"] and "VIDEO_OR_IMAGE_FOLDER" in command
    command[command.index("VIDEO_OR_IMAGE_FOLDER")] = str(frames)
    r = subprocess.run([sys.executable, "-m", "pipeline", *command[1:]], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    refused = None
    if r.returncode != 0:  # the gate scores frames held out from calibration: a refusal must leave nothing
        refused = r.stderr.strip().splitlines()[-1]
        assert "REFUSED parity" in refused and "max abs error" in refused, r.stderr[-2000:]
        assert not (d / "msfgnet.int8.onnx").exists() and "msfgnet.int8.onnx" not in manifest.read_text()
    return config, refused


def test_quantize_gates_msfgnet_int8_on_held_out_frames(int8_weights):
    """The command either records a graph that passed on frames it was not calibrated on, or refuses it
    with the measured error and leaves no file (checked in the fixture)."""
    config, refused = int8_weights
    print(refused or "msfgnet int8 QDQ graph passed the gate")
    if refused is None:
        assert "int8" in (Path(config.manifest).read_text())


def test_msfgnet_int8_masks_agree_with_fp32(int8_weights):
    import dataclasses

    import onnx

    int8_weights, refused = int8_weights
    if refused:
        pytest.skip(f"the parity gate refused the msfgnet int8 graph, so no stage can load it: {refused}")

    fp32 = dataclasses.replace(int8_weights, precision="fp32", stride=2)
    with MsfgnetStage(dataclasses.replace(int8_weights, stride=2)) as q, MsfgnetStage(fp32) as ref:
        ops = {n.op_type for n in onnx.load(q.runner.model_path).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert q.runner.model_path.endswith("msfgnet.int8.onnx")
        images = scene()[:24]
        got, want = run_stage(q, images), run_stage(ref, images)
    agree = [np.mean(a.data["mask"] == b.data["mask"]) for a, b in zip(got[8:], want[8:])]
    moving = np.mean([(b.data["mask"] > 0).mean() for b in want[8:]])
    print(f"int8 vs fp32 mask agreement: min {min(agree):.4f}, mean {np.mean(agree):.4f}; fp32 foreground {moving:.4f}")
    assert moving > 0.002  # something moves, so agreement is not only on empty masks
    assert min(agree) > 0.95
    assert all(a.data["fg_prob"].dtype == np.float32 for a in got)


def test_int8_graph_not_in_the_manifest_is_refused(tmp_path):
    from engines.quantize import feeds_from_frames, onnx_input_shapes, quantize_qdq

    shipped("msfgnet.onnx")
    d = tmp_path / "w"
    d.mkdir()
    shutil.copy(WEIGHTS_DIR / "msfgnet.onnx", d / "msfgnet.onnx")
    frames = scene(frames=12)
    quantize_qdq(d / "msfgnet.onnx", d / "msfgnet.int8.onnx",
                 list(feeds_from_frames(frames, onnx_input_shapes(d / "msfgnet.onnx"), size=(160, 120)))[:2])
    record(d / "msfgnet.onnx", d / "manifest.json")
    with pytest.raises(WeightsError, match="not listed"):
        MsfgnetStage(MsfgnetStage.Config(weights=str(d / "msfgnet.onnx"), manifest=str(d / "manifest.json"),
                                         precision="int8")).setup()


def test_bench_passes_precision_to_the_learned_stages(capsys):
    """``hazeflow bench --precision`` reaches the learned stages; one they cannot run stops the bench with the
    stage's one-line reason (no classical stand-in)."""
    pytest.importorskip("av", reason="PyAV is needed by `hazeflow bench` (the GPU image lacks it)")
    from pipeline.cli import main

    assert main(["bench", "--precision", "fp16", "--resolution", "64x48", "--frames", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stages.dehaze.precision" in err
    if not any((WEIGHTS_DIR / f"{m}.int8.onnx").is_file() for m in ("rigan", "msfgnet")):
        assert main(["bench", "--precision", "int8", "--resolution", "64x48", "--frames", "3"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "int8.onnx" in err and "hazeflow quantize" in err


# --- CUDA -----------------------------------------------------------------------------------
@pytest.mark.gpu
def test_torch_fp16_on_cuda_matches_fp32_on_the_cpu():
    """Both stages, shipped weights: torch fp16 on CUDA against the default fp32 ONNX Runtime CPU path."""
    shipped("msfgnet.onnx", "msfgnet.pt", "rigan.onnx", "rigan.pt")
    images = scene(frames=24)
    cuda = dict(backend="torch", device="cuda", precision="fp16")
    with MsfgnetStage(MsfgnetStage.Config(stride=2, **cuda)) as half, \
         MsfgnetStage(MsfgnetStage.Config(stride=2, threads=1)) as full:
        assert half.runner.fp16 and half.runner.channels_last
        got, want = run_stage(half, images), run_stage(full, images)
    assert all(f.data["fg_prob"].dtype == np.float32 for f in got)
    prob_err = max(np.abs(a.data["fg_prob"] - b.data["fg_prob"]).max() for a, b in zip(got, want))
    agree = min(np.mean(a.data["mask"] == b.data["mask"]) for a, b in zip(got, want))
    print(f"msfgnet fp16 cuda vs fp32 cpu: max |prob diff| {prob_err:.4f}, min mask agreement {agree:.4f}")
    assert agree > 0.99 and prob_err < 0.1

    with DehazeStage(DehazeStage.Config(when="always", **cuda)) as half, \
         DehazeStage(DehazeStage.Config(when="always", threads=1)) as full:
        got, want = run_stage(half, images[:6]), run_stage(full, images[:6])
    diffs = [np.abs(a.data["dehazed"].astype(int) - b.data["dehazed"].astype(int)) for a, b in zip(got, want)]
    print(f"dehaze fp16 cuda vs fp32 cpu: max {max(d.max() for d in diffs)}, mean {np.mean(diffs):.3f} grey levels")
    assert all(a.data["dehazed"].dtype == np.uint8 and a.data["dehazed"].shape == images[0].shape for a in got)
    assert np.mean(diffs) < 1.5 and np.percentile(np.concatenate([d.ravel() for d in diffs]), 99.9) <= 8


def test_quantize_refuses_unverified_graphs_and_missing_frames(tmp_path, capsys):
    """`hazeflow quantize` checks the fp32 graph against its manifest and names a missing calibration source."""
    from pipeline.cli import main as cli

    onnx = tmp_path / "msfgnet.onnx"
    shutil.copy(WEIGHTS_DIR / "msfgnet.onnx", onnx)
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"files": {}}')
    assert cli(["quantize", str(onnx), "--manifest", str(manifest)]) != 0  # not listed: refused before loading
    assert "msfgnet.onnx" in capsys.readouterr().err
    record(onnx, manifest, model="msfgnet")
    missing = tmp_path / "no-such-folder"
    assert cli(["quantize", str(onnx), "--manifest", str(manifest), "--calibration", str(missing)]) != 0
    err = capsys.readouterr().err
    assert str(missing) in err and "calibration" in err
    assert not (tmp_path / "msfgnet.int8.onnx").exists()
