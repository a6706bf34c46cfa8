"""``hazeflow quantize FILE.onnx [--calibration URI] [--out FILE] [--manifest FILE]``.

Writes the int8 QDQ copy of a verified fp32 ONNX graph for ONNX Runtime on the CPU
(``<stem>.int8.onnx`` beside it, the name the learned stages look for with
``precision: int8``), calibrated on real frames of the camera, refused when it
fails the parity gate against the fp32 graph on those frames, and recorded in the
manifest so the stages' hash check accepts it.
"""
from __future__ import annotations

from pathlib import Path

from engines.cli import DEFAULT_FRAMES, read_frames
from engines.weights import MANIFEST, WeightsError, record, verified_path

#: the stages' default working size is half the frame (msfgnet ``scale``, dehaze ``internal_scale``)
CALIBRATION_SCALE = 0.5


def main(args) -> int:
    from engines.onnxruntime.runner import OnnxRuntimeRunner
    from engines.parity import ParityError, check_parity
    from engines.quantize import feeds_from_frames, onnx_input_shapes, quantize_qdq

    manifest = Path(args.manifest) if args.manifest else MANIFEST
    onnx = verified_path(Path(args.onnx), manifest)
    uri = Path(args.calibration) if args.calibration else DEFAULT_FRAMES
    if not uri.exists():
        raise WeightsError(uri, "no calibration frames there; give --calibration (a video file or an image folder "
                                "of the camera the model will run on)")
    frames = read_frames(uri, count=args.frames, stride=args.stride)
    if not frames:
        raise WeightsError(uri, "no readable frames for calibration")
    h, w = frames[0].shape[:2]
    size = (max(8, int(w * CALIBRATION_SCALE) // 8 * 8), max(8, int(h * CALIBRATION_SCALE) // 8 * 8))
    feeds = list(feeds_from_frames(frames, onnx_input_shapes(onnx), size=size))
    out = Path(args.out) if args.out else onnx.with_name(f"{onnx.stem}.int8.onnx")
    quantize_qdq(onnx, out, feeds)
    model = onnx.stem.split(".")[0]
    with OnnxRuntimeRunner(onnx) as reference, OnnxRuntimeRunner(out) as candidate:
        try:
            report = check_parity(reference, candidate, feeds[:8], model=model, precision="int8")
        except ParityError:
            out.unlink(missing_ok=True)
            raise
    record(out, manifest, model=model, precision="int8",
           command=f"hazeflow quantize {args.onnx}" + (f" --calibration {args.calibration}" if args.calibration else ""),
           source_sha256=verified_sha(onnx, manifest), calibration=f"{uri} ({len(feeds)} samples at {size[0]}x{size[1]})",
           parity=report.to_dict())
    print(f"{out}: {report.summary()}; recorded in {manifest}")
    return 0


def verified_sha(path: Path, manifest: Path) -> str:
    import json

    return json.loads(manifest.read_text())["files"][path.name]["sha256"]
