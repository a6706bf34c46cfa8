"""``hazeflow quantize FILE.onnx [--calibration URI] [--out FILE] [--manifest FILE]``.

Writes the int8 QDQ copy of a verified fp32 ONNX graph for the CPU backends
(``<stem>.int8.onnx`` beside it, the name the learned stages look for with
``precision: int8``). The frames read are split (``engines.frames.split_frames``):
the first part calibrates, the held-out last part scores every output of the
QDQ graph against the fp32 PyTorch model (without torch: the fp32 graph in ONNX
Runtime). A graph that fails, or a check that cannot run, is deleted; one that
passes is recorded in the manifest with its parity report, so the stages' hash
check accepts it.
"""
from __future__ import annotations

from pathlib import Path

from engines.cli import DEFAULT_FRAMES
from engines.frames import read_frames, split_frames
from engines.weights import MANIFEST, WeightsError, record, verified_path

#: the stages' default working size is half the frame (msfgnet ``scale``, dehaze ``internal_scale``)
CALIBRATION_SCALE = 0.5


def main(args) -> int:
    from engines.load import model_files, reference_runner
    from engines.onnxruntime.runner import OnnxRuntimeRunner
    from engines.parity import ParityError, check_parity
    from engines.quantize import feeds_from_frames, onnx_input_shapes, quantize_qdq

    manifest = Path(args.manifest) if args.manifest else MANIFEST
    onnx = verified_path(Path(args.onnx), manifest)
    uri = Path(args.calibration) if args.calibration else DEFAULT_FRAMES
    if not uri.exists():
        raise WeightsError(uri, "no calibration frames there; give --calibration (a video file or an image folder "
                                "of the camera the model will run on)")
    # --frames calibrate; as many again are read so the held-out quarter scores the result
    frames = read_frames(uri, count=2 * args.frames, stride=args.stride)
    calibration, held_out = split_frames(frames)
    h, w = frames[0].shape[:2]
    size = (max(8, int(w * CALIBRATION_SCALE) // 8 * 8), max(8, int(h * CALIBRATION_SCALE) // 8 * 8))
    shapes = onnx_input_shapes(onnx)
    feeds = list(feeds_from_frames(calibration, shapes, size=size))
    checks = list(feeds_from_frames(held_out, shapes, size=size))[:8]
    if not checks:
        raise WeightsError(uri, f"too few frames ({len(frames)}) to keep any apart for the parity check; "
                                "raise --frames or lower --stride")
    out = Path(args.out) if args.out else onnx.with_name(f"{onnx.stem}.int8.onnx")
    files = model_files(onnx, onnx.parent, manifest)
    quantize_qdq(onnx, out, feeds)
    try:
        reference = reference_runner(files)
        try:
            with OnnxRuntimeRunner(out) as candidate:
                report = check_parity(reference, candidate, checks, model=files.family, precision="int8")
        finally:
            reference.deactivate()
    except BaseException as e:
        out.unlink(missing_ok=True)
        if isinstance(e, ParityError):
            e.input = str(out)  # the refused file, not the runner's label
        raise
    record(out, manifest, model=files.family, precision="int8",
           command=f"hazeflow quantize {args.onnx}" + (f" --calibration {args.calibration}" if args.calibration else ""),
           source_sha256=verified_sha(onnx, manifest),
           calibration=f"{uri}: the first {len(calibration)} of {len(frames)} frames read ({len(feeds)} samples at "
                       f"{size[0]}x{size[1]}); parity on the last {len(held_out)}",
           parity=report.to_dict())
    print(f"{out}: {report.summary()}; recorded in {manifest}")
    return 0


def verified_sha(path: Path, manifest: Path) -> str:
    import json

    return json.loads(manifest.read_text())["files"][path.name]["sha256"]
