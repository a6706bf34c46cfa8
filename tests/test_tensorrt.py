"""TensorRT engine build, cache and runner.

The cache-key logic is pure and tested everywhere. A real build runs with
TensorRT for RTX where it imports (it compiles ahead of time without a GPU);
the runner and parity tests need TensorRT and a GPU (marked ``trt`` and ``gpu``).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engines.tensorrt.build import (BuildSettings, EngineCache, Profile, cache_record, default_profiles,
                                    rebuild_reasons, save_engine)

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_rebuild_reasons_name_every_changed_part_of_the_key():
    fp16 = BuildSettings(precision="fp16")
    stored = cache_record(SHA_A, fp16, "tensorrt-10.13.0", "8.7")
    assert rebuild_reasons(None, stored) == ["no cached engine"]
    assert rebuild_reasons(stored, cache_record(SHA_A, fp16, "tensorrt-10.13.0", "8.7")) == []
    wanted = cache_record(SHA_B, dataclasses.replace(fp16, workspace=1 << 28), "tensorrt-11.4.0", "9.0")
    reasons = rebuild_reasons(stored, wanted)
    assert any(r.startswith("ONNX changed (sha256 aaaaaaaaaaaa") for r in reasons)
    assert "TensorRT version tensorrt-10.13.0 -> tensorrt-11.4.0" in reasons
    assert "GPU compute capability 8.7 -> 9.0" in reasons
    assert f"builder setting workspace: {1 << 30!r} -> {1 << 28!r}" in reasons
    assert stored["key"] != wanted["key"]


def test_default_profile_covers_dynamic_axes_and_keeps_fixed_ones():
    (p,) = default_profiles({"frames": (None, 8, "height", "width")})
    assert p.as_dict() == {"frames": [[1, 8, 240, 320], [1, 8, 360, 640], [8, 8, 1088, 1920]]}
    with pytest.raises(ValueError, match="channel axis"):
        default_profiles({"x": (1, None, 8, 8)})


def test_save_engine_writes_engine_and_sidecar_atomically(tmp_path):
    record = cache_record(SHA_A, BuildSettings("fp32"), "tensorrt-10.13.0", "8.7")
    path = save_engine(b"\x01\x02", tmp_path / "m.fp32.engine", record)
    assert path.read_bytes() == b"\x01\x02"
    assert json.loads(path.with_suffix(".json").read_text())["key"] == record["key"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from engines.export import onnx_from_torch
    from tests.test_runners import make_tiny

    d = tmp_path_factory.mktemp("trt")
    model = make_tiny()
    path = onnx_from_torch(model, (torch.rand(1, 3, 32, 32),), d / "tiny.onnx", ["frames"], ["fg_prob"],
                           dynamic_axes={"frames": {0: "b", 2: "h", 3: "w"}, "fg_prob": {0: "b", 2: "h", 3: "w"}})
    return model, path


SMALL = (Profile.from_dict({"frames": [(1, 3, 16, 16), (1, 3, 64, 64), (2, 3, 128, 128)]}),)


def test_rtx_ahead_of_time_build_cache_hit_and_rebuild_reason(tiny_onnx, tmp_path):
    """A real TensorRT-family builder on a machine without a GPU: TensorRT for RTX."""
    rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed (optional: pip install tensorrt-rtx)")
    _, onnx = tiny_onnx
    cache = EngineCache(tmp_path / "engines")
    settings = BuildSettings(precision="fp32", workspace=1 << 28, profiles=SMALL)
    engine, reasons = cache.get(onnx, settings)
    assert reasons == ["no cached engine"] and engine.stat().st_size > 0
    sidecar = json.loads(engine.with_suffix(".json").read_text())
    assert sidecar["tensorrt_version"] == f"tensorrt_rtx-{rtx.__version__}"
    mtime = engine.stat().st_mtime_ns
    again, reasons = cache.get(onnx, settings)
    assert reasons == [] and again == engine and engine.stat().st_mtime_ns == mtime
    _, reasons = cache.get(onnx, dataclasses.replace(settings, workspace=1 << 27))
    assert reasons == [f"builder setting workspace: {1 << 28!r} -> {1 << 27!r}"]


def test_rtx_strongly_typed_int8_from_qdq_and_fp16_refused_without_flag(tiny_onnx, tmp_path):
    """Strong typing (TensorRT 11, TensorRT-RTX): int8 comes from a Q/DQ graph calibrated on frames;
    fp16 without a mixed-precision graph is refused with the reason, not built as fp32."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed (optional: pip install tensorrt-rtx)")
    from engines.quantize import quantize_qdq
    from engines.tensorrt.build import EngineBuildError, engine_from_onnx

    _, onnx = tiny_onnx
    rng = np.random.default_rng(0)
    feeds = [{"frames": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(4)]
    qdq = quantize_qdq(onnx, tmp_path / "tiny.qdq.onnx", feeds, symmetric=True)
    assert len(bytes(engine_from_onnx(qdq, "int8", profiles=SMALL, workspace=1 << 28))) > 0
    with pytest.raises(EngineBuildError, match="no FP16 builder flag"):
        engine_from_onnx(onnx, "fp16", profiles=SMALL, workspace=1 << 28)
    with pytest.raises(EngineBuildError, match="int8 only from Q/DQ ONNX"):
        engine_from_onnx(onnx, "int8", profiles=SMALL, workspace=1 << 28)


@pytest.mark.parametrize("model", ["msfgnet", "rigan", "rigan_light"])
def test_rtx_builds_the_shipped_graphs(model):
    """The exported ONNX graphs in weights/ parse and build with a TensorRT-family builder (ahead of
    time, no GPU): every layer is supported for the stage's range of sizes and batch. This does not
    show kernel choice, speed or numerical parity on a GPU, nor that datacenter TensorRT 11 accepts the
    same graph (same ONNX parser family, different builder): that needs the trt/gpu tests below."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed (optional: pip install tensorrt-rtx)")
    from engines.quantize import onnx_input_shapes
    from engines.tensorrt.build import engine_from_onnx
    from engines.weights import WEIGHTS_DIR, verified_path

    onnx = verified_path(WEIGHTS_DIR / f"{model}.onnx")
    limits = {"batch": (1, 1, 4), "height": (32, 180, 544), "width": (32, 320, 960)}  # up to 1080p at scale 0.5
    profiles = default_profiles(onnx_input_shapes(onnx), limits)
    assert len(bytes(engine_from_onnx(onnx, "fp32", profiles=profiles, workspace=1 << 30))) > 100_000


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_build_cache_and_parity(tiny_onnx, tmp_path, precision):
    import tensorrt as trt
    import torch

    from engines.parity import check_parity
    from engines.quantize import quantize_qdq
    from engines.tensorrt.build import EngineBuildError
    from engines.tensorrt.runner import TrtRunner
    from engines.torch.runner import TorchRunner

    model, onnx = tiny_onnx
    rng = np.random.default_rng(0)
    feeds = [{"frames": rng.random((1, 3, 48, 64), dtype=np.float32)} for _ in range(4)]
    source = onnx
    if precision == "int8":  # explicit quantisation works on TensorRT 10 and 11
        source = quantize_qdq(onnx, tmp_path / "tiny.qdq.onnx", feeds, symmetric=True)
    cache = EngineCache(tmp_path / "engines")
    settings = BuildSettings(precision=precision, workspace=1 << 28, profiles=SMALL)
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        with pytest.raises(EngineBuildError, match="no FP16 builder flag"):
            cache.get(source, settings)
        return
    engine, reasons = cache.get(source, settings)
    assert reasons == ["no cached engine"]
    assert cache.get(source, settings)[1] == []
    assert "builder setting optimization_level" in cache.get(source, dataclasses.replace(settings, optimization_level=2))[1][0]
    stream = torch.cuda.Stream()
    with TorchRunner(model) as ref, TrtRunner(engine, stream=stream) as cand:
        report = check_parity(ref, cand, feeds, precision=precision)
    print(report.summary())
