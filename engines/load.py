"""``runner_for``: pick a backend for a model name or file, with verified weights.

auto = TensorRT when it imports and the device is CUDA, else PyTorch on CUDA,
else ONNX Runtime on the CPU. Named models resolve to ``weights/<model>.onnx``
(ONNX Runtime, TensorRT) or ``weights/<model>.pt`` (PyTorch state_dict), each
checked against ``weights/manifest.json`` before it is opened.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engines.base import Runner, RunnerError
from engines.weights import MANIFEST, WEIGHTS_DIR, verified_path

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")


@dataclass(frozen=True)
class ModelEntry:
    """Where a named model's code and files are. ``factory`` is imported only for the torch backend."""

    factory: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    colour: str = "rgb"   # how frames become inputs: "rgb" (3 channels a frame) or "grey" (1)


#: factories live in `training` (torch); the runtime reaches them only through this string
MODELS: dict[str, ModelEntry] = {
    # (N, T, H, W) grey frames, oldest first -> (N, 1, H, W) probability
    "msfgnet": ModelEntry("training.models.msfgnet:build", ("frames",), ("fg_prob",), "grey"),
    # (N, 3, H, W) RGB in [0, 1] -> same; H and W multiples of 4
    "rigan": ModelEntry("training.models.rigan:RIGenerator", ("hazy",), ("dehazed",), "rgb"),
}


def tensorrt_available() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def choose_backend(backend: str, device: str) -> str:
    if backend not in BACKENDS:
        raise RunnerError(f"backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    if device.startswith("cuda"):
        return "tensorrt" if tensorrt_available() else "torch"
    return "onnxruntime"


def runner_for(
    model: str | Path,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    threads: int | None = None,
    weights_dir: str | Path = WEIGHTS_DIR,
    manifest: str | Path = MANIFEST,
    engine_cache: str | Path | None = None,
    stream=None,
) -> Runner:
    """A (not yet activated) runner for ``model``: "msfgnet", "rigan" or a .onnx/.pt/.engine path."""
    backend = choose_backend(backend, device)
    weights_dir = Path(weights_dir)
    path = Path(model)
    named = str(model) in MODELS
    if backend == "onnxruntime":
        if device != "cpu":
            raise RunnerError(f"{model}: the onnxruntime backend here is CPU-only; use --backend torch or tensorrt on {device}")
        onnx = weights_dir / f"{model}.onnx" if named else path
        if precision == "int8":
            onnx = onnx.with_name(onnx.stem + ".int8.onnx")
        elif precision != "fp32":
            raise RunnerError(f"{model}: onnxruntime on the CPU runs fp32 or int8 (QDQ), not {precision}")
        from engines.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(verified_path(onnx, manifest), threads=threads)
    if backend == "torch":
        if precision not in ("fp32", "fp16"):
            raise RunnerError(f"{model}: the torch backend runs fp32 or fp16, not {precision}")
        if not named:
            raise RunnerError(f"{model}: the torch backend needs a model name ({', '.join(MODELS)}) to build the module")
        entry = MODELS[str(model)]
        from engines.torch.runner import TorchRunner

        return TorchRunner(entry.factory, weights=weights_dir / f"{model}.pt", device=device,
                           fp16=precision == "fp16", channels_last=device.startswith("cuda"),
                           stream=stream, input_names=entry.input_names, output_names=entry.output_names,
                           manifest=manifest, threads=threads, name=f"{model}.pt")
    # tensorrt
    if not device.startswith("cuda"):
        raise RunnerError(f"{model}: TensorRT needs --device cuda")
    if not tensorrt_available():
        raise RunnerError(f"{model}: TensorRT does not import; install it with `pip install .[trt]` on an NVIDIA machine")
    from engines.tensorrt.build import BuildSettings, EngineCache
    from engines.tensorrt.runner import TrtRunner

    if path.suffix in (".engine", ".plan"):
        return TrtRunner(path, device=device, stream=stream)
    onnx = verified_path(weights_dir / f"{model}.onnx" if named else path, manifest)
    cache = EngineCache(engine_cache or Path(weights_dir) / "engines")
    engine, _ = cache.get(onnx, BuildSettings(precision=precision))
    return TrtRunner(engine, device=device, stream=stream)
