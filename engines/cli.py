"""``hazeflow build-engine FILE.onnx [--precision fp32|fp16|int8] [--calibration URI]``.

Builds (or reuses from the cache) a TensorRT engine through the same path the
stages use (``engines.tensorrt.build.gated_engine``): the ONNX is checked
against its manifest, fp16 under strong typing builds from an fp16 copy of the
graph, int8 from a Q/DQ graph calibrated on the first part of the frames, and
every output of a non-fp32 engine is compared with the fp32 PyTorch model (or,
without torch, the fp32 graph in ONNX Runtime) on the held-out part
(``engines.frames.split_frames``). Any failure of that check deletes the engine
and its sidecar and prints the measured error.

Frames: a video file or a folder of images (``--calibration``); default the
CDnet highway frames next to the repository when present, else the demo clip.
"""
from __future__ import annotations

import logging
from pathlib import Path

from engines.frames import DEMO_CLIP, read_frames, split_frames
from engines.tensorrt.build import EngineBuildError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FRAMES = ROOT.parent / "shared" / "data" / "foreground" / "cdnet2014-highway" / "input"
log = logging.getLogger("hazeflow.engines")


def default_frames() -> Path:
    return DEFAULT_FRAMES if DEFAULT_FRAMES.exists() else DEMO_CLIP


def tensorrt_import_error() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def manifest_for(onnx: Path) -> Path:
    """The manifest beside the graph when there is one, else weights/manifest.json."""
    from engines.weights import MANIFEST

    beside = onnx.parent / "manifest.json"
    return beside if beside.is_file() else MANIFEST


def profile_for(args):
    """The engine's input profile: up to --max-size and --max-batch; DLA needs fixed shapes (min = opt = max)."""
    from engines.gate import InputProfile

    w, h = (int(v) for v in str(getattr(args, "max_size", "1920x1088")).lower().split("x"))
    batch = int(getattr(args, "max_batch", 8))
    if getattr(args, "dla_core", None) is not None:
        return InputProfile(((w, h),) * 3, batch)
    return InputProfile(((min(320, w), min(240, h)), (min(640, w), min(360, h)), (w, h)), batch)


def main(args) -> int:
    from engines.load import model_files, reference_runner
    from engines.weights import verified_path

    onnx_path = Path(args.onnx)
    why = tensorrt_import_error()
    if why:
        raise EngineBuildError(onnx_path, f"TensorRT does not import ({why}); on a machine with an NVIDIA GPU install it "
                                          "with `pip install .[trt]` (or use --backend onnxruntime/torch)")
    if not onnx_path.is_file():
        raise EngineBuildError(onnx_path, "ONNX file not found")
    import torch

    from engines.tensorrt.build import gated_engine

    if not torch.cuda.is_available():
        raise EngineBuildError(onnx_path, "TensorRT imports but torch sees no CUDA device to build for")
    manifest = manifest_for(onnx_path)
    onnx_path = verified_path(onnx_path, manifest)
    calibration, held_out = split_frames(read_frames(args.calibration or default_frames(), count=64, stride=3))
    files = model_files(onnx_path, onnx_path.parent, manifest)
    cache_dir = Path(getattr(args, "cache", None) or onnx_path.parent / "engines")
    engine, how = gated_engine(onnx_path, args.precision, profile_for(args), cache_dir, device="cuda",
                               reference=lambda: reference_runner(files), model=files.family, frames=held_out,
                               calibration_frames=calibration, workspace=getattr(args, "workspace", 1024) << 20,
                               dla_core=getattr(args, "dla_core", None))
    print(f"{engine}: {how['engine_built']}")
    if how.get("parity"):
        print(f"{engine}: {how['parity']}")
    return 0
