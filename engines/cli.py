"""``hazeflow build-engine FILE.onnx [--precision fp32|fp16|int8] [--calibration URI]``.

Builds (or reuses from the cache) a TensorRT engine and runs the parity gate on
real frames against the fp32 PyTorch model (or, for an ONNX file that is not a
named model, against ONNX Runtime fp32 on the same graph). An engine that fails
parity is refused: the cached file is removed and the measured error printed.

Frames are read with OpenCV/PyAV here (``engines`` never imports ``pipeline``):
a video file or a folder of images; default the CDnet highway frames next to the
repository when present.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.tensorrt.build import EngineBuildError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FRAMES = ROOT.parent / "shared" / "data" / "foreground" / "cdnet2014-highway" / "input"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
log = logging.getLogger("hazeflow.engines")


def read_frames(uri: str | Path, count: int = 32, stride: int = 5) -> list[np.ndarray]:
    """Up to ``count`` BGR uint8 frames, every ``stride``-th, from a video file or an image folder."""
    import cv2

    path = Path(uri)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::stride][:count]
        frames = [f for f in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files) if f is not None]
    elif path.is_file():
        import av

        frames = []
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride == 0:
                    frames.append(frame.to_ndarray(format="bgr24"))
                if len(frames) >= count:
                    break
    else:
        raise EngineBuildError(uri, "calibration/parity frames not found (give a video file or an image folder)")
    if not frames:
        raise EngineBuildError(uri, "no readable frames")
    return frames


def tensorrt_import_error() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def reference_runner(onnx_path: Path):
    """fp32 PyTorch model when the ONNX is a named model with shipped weights, else ORT fp32 on the same graph."""
    from engines.load import MODELS, runner_for
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    model = onnx_path.stem.split(".")[0]
    if model in MODELS:
        try:
            runner = runner_for(model, backend="torch", device="cpu", weights_dir=onnx_path.parent)
            runner.activate()
            return runner, model
        except Exception as e:  # no torch / weights: say so and fall back
            log.warning("fp32 PyTorch reference unavailable (%s); using ONNX Runtime fp32", e)
    return OnnxRuntimeRunner(onnx_path).activate(), model if model in MODELS else "default"


def profiles_for(shapes: dict, args):
    """One profile up to --max-size / --max-batch; DLA needs fixed shapes, so min = opt = max there."""
    from engines.tensorrt.build import DEFAULT_PROFILE, default_profiles

    w, h = (int(v) for v in str(getattr(args, "max_size", "1920x1088")).lower().split("x"))
    batch = int(getattr(args, "max_batch", 8))
    if getattr(args, "dla_core", None) is not None:
        limits = {"batch": (batch,) * 3, "height": (h,) * 3, "width": (w,) * 3}
    else:
        limits = {"batch": (1, 1, batch), "height": (min(DEFAULT_PROFILE["height"][0], h), min(360, h), h),
                  "width": (min(DEFAULT_PROFILE["width"][0], w), min(640, w), w)}
    return default_profiles(shapes, limits)


def main(args) -> int:
    from engines.parity import ParityError, check_parity
    from engines.quantize import feeds_from_frames, onnx_input_shapes, quantize_qdq

    onnx_path = Path(args.onnx)
    why = tensorrt_import_error()
    if why:
        raise EngineBuildError(onnx_path, f"TensorRT does not import ({why}); on a machine with an NVIDIA GPU install it "
                                          "with `pip install .[trt]` (or use --backend onnxruntime/torch)")
    if not onnx_path.is_file():
        raise EngineBuildError(onnx_path, "ONNX file not found")
    import tensorrt as trt
    import torch

    from engines.tensorrt.build import BuildSettings, EngineCache
    from engines.tensorrt.calibrator import calibration_id, entropy_calibrator
    from engines.tensorrt.runner import TrtRunner

    if not torch.cuda.is_available():
        raise EngineBuildError(onnx_path, "TensorRT imports but torch sees no CUDA device to build for")
    uri = args.calibration or DEFAULT_FRAMES
    frames = read_frames(uri)
    shapes = onnx_input_shapes(onnx_path)
    max_w, max_h = (int(v) for v in str(getattr(args, "max_size", "1920x1088")).lower().split("x"))
    h, w = min(frames[0].shape[0], max_h), min(frames[0].shape[1], max_w)
    feeds = list(feeds_from_frames(frames, shapes, size=(w - w % 8, h - h % 8)))  # inside the profile
    cache_dir = getattr(args, "cache", None) or onnx_path.parent / "engines"
    source, calibrator, calib = onnx_path, None, ""
    if args.precision == "int8":
        calib = calibration_id(feeds)
        if hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.BuilderFlag, "INT8"):
            calibrator = entropy_calibrator(feeds, cache_file=Path(cache_dir) / f"{onnx_path.stem}.{calib[:12]}.calib")
        else:  # TensorRT 11: explicit quantisation from the same frames
            source = quantize_qdq(onnx_path, Path(cache_dir) / f"{onnx_path.stem}.qdq.onnx", feeds, symmetric=True)
    settings = BuildSettings(precision=args.precision, profiles=profiles_for(shapes, args), calibration=calib,
                             workspace=getattr(args, "workspace", 1024) << 20, dla_core=getattr(args, "dla_core", None))
    cache = EngineCache(cache_dir, device=torch.cuda.current_device())
    engine, reasons = cache.get(source, settings, calibrator=calibrator)
    print(f"{engine}: {'rebuilt: ' + '; '.join(reasons) if reasons else 'cache hit'}")

    reference, model = reference_runner(onnx_path)
    try:
        with TrtRunner(engine) as candidate:
            report = check_parity(reference, candidate, feeds[:8], model=model, precision=args.precision)
    except ParityError:
        engine.unlink(missing_ok=True)
        engine.with_suffix(".json").unlink(missing_ok=True)
        raise
    finally:
        reference.deactivate()
    print(f"{engine}: {report.summary()}")
    return 0
