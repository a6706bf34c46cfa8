"""Shipped model files for the learned stages: path resolution, manifest check, ONNX Runtime session.

Both ``msfgnet`` and ``dehaze`` load their graph the same way, so a missing,
corrupt or unlisted file gives the same one-line ``WeightsError`` naming it.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from pipeline.errors import ConfigError, WeightsError

ROOT = Path(__file__).resolve().parent.parent.parent


def resolve_path(path: str | Path) -> Path:
    """Relative paths are tried from the working directory, then from the project root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return ROOT / path


def verified_weights(path: str | Path, manifest: str | Path | None = None) -> Path:
    """``path`` resolved and checked against its sha256 in the manifest (default weights/manifest.json)."""
    from engines import weights

    path = resolve_path(path)
    try:
        if manifest is None:
            return weights.verified_path(path)
        return weights.verified_path(path, resolve_path(manifest))
    except weights.WeightsError as e:
        raise WeightsError(e.input, e.cause) from None


def model_files(weights: str | Path, torch_weights: str | Path, manifest: str | Path | None,
                stem: str) -> tuple[str | Path, str | Path, str | Path | None]:
    """(ONNX graph, state_dict, manifest) of a stage's ``weights`` setting.

    ``weights`` may name a folder, as ``hazeflow adapt`` writes one: it holds
    ``<stem>.onnx``, ``<stem>.pt`` and their own ``manifest.json``, checked exactly
    like the shipped files (an explicit ``manifest`` setting still wins).
    """
    folder = resolve_path(weights)
    if not folder.is_dir():
        return weights, torch_weights, manifest
    return folder / f"{stem}.onnx", folder / f"{stem}.pt", manifest if manifest is not None else folder / "manifest.json"


def onnxruntime_runner(path: Path, *, threads: int | None, name: str):
    """An activated ONNX Runtime runner for a verified graph; an unloadable one is a WeightsError."""
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=threads, name=name)
    try:
        return runner.activate()
    except Exception as e:  # hash matches the manifest but ORT cannot load it (wrong opset, not ONNX)
        cause = " ".join(str(e).split())[:160]
        raise WeightsError(str(path), f"ONNX Runtime cannot load it ({type(e).__name__}: {cause})") from None


# --- backend x precision x device ------------------------------------------------------
PRECISIONS = ("fp32", "fp16", "int8")
TENSORRT_MISSING = ("TensorRT is not installed (`import tensorrt` fails); install it with `pip install .[trt]` "
                    "on an NVIDIA machine, or use backend: torch")


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` -> tensorrt on cuda when it imports, else torch on cuda, else onnxruntime (engines.load's rule)."""
    from engines.load import choose_backend

    return choose_backend(backend, device)


def check_precision(section: str, configured: str, backend: str, device: str, precision: str) -> None:
    """Refuse a precision the (resolved) backend cannot run on ``device``; the ConfigError names the key."""
    key = f"{section}.precision"
    chosen = backend if configured == backend else f"{configured} (chose {backend} on {device})"
    if precision not in PRECISIONS:
        raise ConfigError(key, f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "tensorrt" and device != "cuda":
        raise ConfigError(f"{section}.backend", f"tensorrt needs device: cuda, got device: {device}")
    if backend == "onnxruntime" and precision == "fp16":
        raise ConfigError(key, f"backend {chosen} runs fp32 or int8 (QDQ graph) on the CPU, not fp16; "
                               "fp16 needs device: cuda with backend torch or tensorrt")
    if backend == "torch" and precision == "int8":
        raise ConfigError(key, f"backend {chosen} runs fp32 or fp16, not int8; int8 runs on backend onnxruntime "
                               "(CPU, QDQ graph) or tensorrt (cuda)")
    if backend == "torch" and precision == "fp16" and device != "cuda":
        raise ConfigError(key, f"fp16 with backend {chosen} needs device: cuda (half convolutions on the CPU are "
                               "slow and inexact); on the CPU use fp32, or int8 with backend onnxruntime")


def int8_graph(onnx: Path, manifest: str | Path | None = None) -> Path:
    """The int8 QDQ copy ``<stem>.int8.onnx`` next to the verified fp32 ``onnx``, itself verified.

    A missing one is a WeightsError that gives the command making it (engines.quantize on real frames).
    """
    qdq = onnx.with_name(onnx.stem + ".int8.onnx")
    if not qdq.is_file():
        raise WeightsError(str(qdq), "int8 QDQ graph not found; make it from real frames and list it in the "
                                     f"manifest with: {quantize_command(onnx, qdq, manifest)}")
    return verified_weights(qdq, manifest)


def quantize_command(onnx: Path, qdq: Path, manifest: str | Path | None = None) -> str:
    """The ``hazeflow quantize`` command that writes ``qdq`` from real frames and records it."""
    default = qdq == onnx.with_name(onnx.stem + ".int8.onnx")
    parts = ["hazeflow", "quantize", shlex.quote(str(onnx)), "--calibration", "VIDEO_OR_IMAGE_FOLDER"]
    if not default:
        parts += ["--out", shlex.quote(str(qdq))]
    if manifest is not None:
        parts += ["--manifest", shlex.quote(str(resolve_path(manifest)))]
    return " ".join(parts)


def tensorrt_runner(onnx: Path, *, section: str, device: str, precision: str, batch: int,
                    sizes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]], name: str):
    """An activated TrtRunner for the verified ``onnx``, built or reused through the engine cache.

    The cache (``<onnx folder>/engines``, as ``engines.load.runner_for``) rebuilds when the ONNX,
    the settings, TensorRT or the GPU changed. ``sizes`` = (min, opt, max) network input (w, h):
    the stage's working sizes, which start below the engines layer's default profile (240 rows).
    """
    from engines.load import tensorrt_available

    if not tensorrt_available():
        raise ConfigError(f"{section}.backend", TENSORRT_MISSING)
    from engines.base import RunnerError
    from engines.quantize import onnx_input_shapes
    from engines.tensorrt.build import BuildSettings, EngineBuildError, EngineCache, default_profiles
    from engines.tensorrt.runner import TrtRunner

    (w0, h0), (w1, h1), (w2, h2) = sizes
    limits = {"batch": (1, 1, batch), "height": (h0, h1, h2), "width": (w0, w1, w2)}
    try:
        settings = BuildSettings(precision=precision, profiles=default_profiles(onnx_input_shapes(onnx), limits))
        engine, _ = EngineCache(onnx.parent / "engines").get(onnx, settings)
        return TrtRunner(engine, device=device, name=name).activate()
    except (EngineBuildError, RunnerError, ValueError) as e:
        cause = " ".join(str(getattr(e, "cause", e)).split())[:300]
        raise WeightsError(str(onnx), f"no TensorRT {precision} engine ({cause})") from None
