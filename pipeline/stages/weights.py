"""Shipped model files for the learned stages: path resolution, manifest check, ONNX Runtime session.

Both ``msfgnet`` and ``dehaze`` load their graph the same way, so a missing,
corrupt or unlisted file gives the same one-line ``WeightsError`` naming it.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import WeightsError

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


def onnxruntime_runner(path: Path, *, threads: int | None, name: str):
    """An activated ONNX Runtime runner for a verified graph; an unloadable one is a WeightsError."""
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=threads, name=name)
    try:
        return runner.activate()
    except Exception as e:  # hash matches the manifest but ORT cannot load it (wrong opset, not ONNX)
        cause = " ".join(str(e).split())[:160]
        raise WeightsError(str(path), f"ONNX Runtime cannot load it ({type(e).__name__}: {cause})") from None
