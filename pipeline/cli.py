"""``hazeflow`` command line (also ``python -m pipeline``).

Each sub-command's work lives in its own module with a ``main(args) -> int``;
this file only parses arguments and turns expected failures into one line:
``hazeflow: error: <input>: <cause>``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from engines.constants import BACKENDS, PRECISIONS
from pipeline.errors import PipelineError

# sub-command -> module with main(args). train/export live in `training` (needs
# torch) and build-engine in `engines`; they are imported only when asked for,
# so the runtime never imports torch or training for `run`, `eval`, `bench`.
COMMANDS = {
    "run": "pipeline.commands.run",
    "eval foreground": "pipeline.commands.eval_foreground",
    "eval dehaze": "pipeline.commands.eval_dehaze",
    "bench": "pipeline.commands.bench",
    "train": "training.cli",
    "export": "training.export_cli",
    "build-engine": "engines.cli",
    "quantize": "engines.quantize_cli",
    "batch": "pipeline.commands.batch",
    "adapt": "training.adapt",
    "report": "pipeline.commands.report",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hazeflow", description="Dehazing and moving-object detection for video.")
    p.add_argument("--verbose", "-v", action="store_true", help="print tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the graph on inputs")
    run.add_argument("config", nargs="?", default=None, help="YAML config (default: configs/default.yaml)")
    run.add_argument("--input", "-i", action="append", default=None, metavar="URI",
                     help="video file, rtsp:// URL, image folder or synthetic: URI (repeatable)")
    run.add_argument("--output", "-o", default=None, metavar="DIR", help="output folder")
    run.add_argument("--backend", choices=BACKENDS, default=None)
    run.add_argument("--device", choices=("cpu", "cuda"), default=None)
    run.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop each stream after N frames")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="log lines on stderr as text or one JSON object per line")

    ev = sub.add_parser("eval", help="evaluate a method on a dataset")
    evsub = ev.add_subparsers(dest="what", required=True)
    fg = evsub.add_parser("foreground", help="CDnet metrics on CDnet-layout folders")
    fg.add_argument("dirs", nargs="+", metavar="DIR")
    fg.add_argument("--method", choices=("msfgnet", "mog2", "knn"), default="msfgnet")
    fg.add_argument("--backend", choices=BACKENDS, default="auto")
    fg.add_argument("--json", default=None, metavar="FILE", help="write results as JSON ('-' = stdout)")
    fg.add_argument("--frames", default=None, metavar="A:B",
                    help="score only frames A..B (inclusive) of the temporal ROI; all frames still run")
    fg.add_argument("--stabilize", choices=("auto", "off"), default="auto",
                    help="camera-motion compensation of the method (pipeline.stabilize; default auto)")
    fg.add_argument("--weights", default=None, metavar="PATH",
                    help="msfgnet: a manifest-listed ONNX graph or a folder written by `hazeflow adapt`")
    dh = evsub.add_parser("dehaze", help="PSNR/SSIM/CIEDE2000 on paired folders")
    dh.add_argument("--hazy", required=True, metavar="DIR")
    dh.add_argument("--clear", required=True, metavar="DIR")
    dh.add_argument("--method", choices=("rigan", "dcp", "none"), default="rigan")
    dh.add_argument("--backend", choices=BACKENDS, default="auto")
    dh.add_argument("--weights", default=None, metavar="ONNX",
                    help="rigan: ONNX graph listed in the manifest (default weights/rigan.onnx; "
                         "weights/rigan_light.onnx for the light model); ONNX Runtime only")
    dh.add_argument("--internal-scale", type=float, default=None, metavar="S",
                    help="rigan: network input size as a fraction of the image (stage default 0.5; 1 = full size)")
    dh.add_argument("--save", default=None, metavar="DIR", help="write each output as <stem>.png")
    dh.add_argument("--json", default=None, metavar="FILE")

    b = sub.add_parser("bench", help="per-stage and end-to-end throughput and latency")
    b.add_argument("--resolution", action="append", default=None, metavar="WxH")
    b.add_argument("--streams", type=int, action="append", default=None, metavar="K")
    b.add_argument("--frames", type=int, default=120, metavar="N")
    b.add_argument("--backend", choices=BACKENDS, action="append", default=None,
                   help="repeat to time several backends side by side (default: auto)")
    b.add_argument("--config", default=None, metavar="FILE", help="stages and outputs to run (default configs/default.yaml)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--precision", choices=PRECISIONS, default="fp32")
    b.add_argument("--json", default=None, metavar="FILE")
    b.add_argument("--markdown", default=None, metavar="FILE", help="append a table to this file")

    t = sub.add_parser("train", help="train a model (needs the [train] extra)")
    t.add_argument("model", choices=("msfgnet", "msfgnet-refine", "rigan"))
    t.add_argument("--config", default=None, metavar="FILE")
    t.add_argument("--out", default=None, metavar="DIR")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--init", default=None, metavar="CKPT",
                   help="start from the weights in CKPT (last.pt or a state_dict) with a fresh schedule")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")

    e = sub.add_parser("export", help="export trained weights to ONNX (needs the [train] extra)")
    e.add_argument("model", choices=("msfgnet", "msfgnet-refine", "rigan"))
    e.add_argument("--weights", default=None, metavar="FILE")
    e.add_argument("--out", required=True, metavar="FILE.onnx")

    ad = sub.add_parser("adapt", help="fine-tune MSFgNet on one camera's unlabelled footage (needs the [train] extra)")
    ad.add_argument("--input", "-i", required=True, metavar="URI", help="video file, rtsp:// URL or image folder")
    ad.add_argument("--minutes", type=float, default=5.0, metavar="N", help="footage to read (default 5)")
    ad.add_argument("--out", required=True, metavar="DIR", help="folder for msfgnet.{onnx,pt} and manifest.json")
    ad.add_argument("--base", default=None, metavar="PATH", help="model to start from (default: the stage's weights)")
    ad.add_argument("--iterations", type=int, default=None, metavar="N", help="fine-tuning steps (default 400)")
    ad.add_argument("--budget-s", type=float, default=None, metavar="S",
                    help="wall-clock budget (default: 2 s per second of footage)")
    ad.add_argument("--threads", type=int, default=2, metavar="N")
    ad.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    ad.add_argument("--no-progress", action="store_true", help="no progress bar")

    q = sub.add_parser("quantize", help="int8 QDQ copy of an ONNX graph for ONNX Runtime on the CPU, parity-gated")
    q.add_argument("onnx", metavar="FILE.onnx")
    q.add_argument("--calibration", default=None, metavar="URI",
                   help="video file or image folder of the camera (default: the CDnet highway frames when present)")
    q.add_argument("--frames", type=int, default=32, metavar="N", help="calibration frames to read")
    q.add_argument("--stride", type=int, default=5, metavar="N", help="take every N-th frame")
    q.add_argument("--out", default=None, metavar="FILE", help="default: <stem>.int8.onnx beside the input")
    q.add_argument("--manifest", default=None, metavar="FILE", help="default: weights/manifest.json")

    ba = sub.add_parser("batch", help="many inputs, one output set each, on a local process pool or a Ray cluster")
    ba.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="video file, folder of videos, glob pattern, synthetic: URI or a .txt list of them")
    ba.add_argument("--output", "-o", required=True, metavar="DIR", help="one folder per input, plus batch.jsonl")
    ba.add_argument("--config", default=None, metavar="FILE",
                    help="stages and outputs (default: configs/batch.yaml; its inputs are not used)")
    ba.add_argument("--workers", type=int, default=None, metavar="N",
                    help="worker processes or Ray actors (default: CPUs here / in the Ray cluster)")
    ba.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                    help="run the workers on a Ray cluster (auto: RAY_ADDRESS, a local `ray start`, else a new local instance)")
    ba.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                    help="Ray: GPUs each worker reserves, may be fractional (default 1 with device cuda, else 0)")
    ba.add_argument("--retries", type=int, default=1, metavar="N", help="attempts after a failure (default 1)")
    ba.add_argument("--backend", choices=BACKENDS, default=None)
    ba.add_argument("--device", choices=("cpu", "cuda"), default=None)
    ba.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("report", help="one self-contained HTML page with plots for a run's output folder")
    r.add_argument("output_dir", metavar="OUTPUT_DIR", help="the --output folder of a run")

    be = sub.add_parser("build-engine", help="build (or reuse) a TensorRT engine, parity-gated")
    be.add_argument("onnx", metavar="FILE.onnx")
    be.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    be.add_argument("--calibration", default=None, metavar="URI", help="frames for int8 calibration")
    be.add_argument("--workspace", type=int, default=1024, metavar="MiB", help="builder scratch memory (Jetson: 256-512)")
    be.add_argument("--max-size", default="1920x1088", metavar="WxH", help="largest frame the engine accepts")
    be.add_argument("--max-batch", type=int, default=8, metavar="N", help="most frames per engine call")
    be.add_argument("--dla-core", type=int, default=None, metavar="N", help="Jetson: run on this DLA core (fixed shapes)")
    be.add_argument("--cache", default=None, metavar="DIR", help="engine cache folder (default: <onnx folder>/engines)")
    return p


#: commands whose INFO log lines (stream events, backend choices) reach stderr without --verbose
LOUD_COMMANDS = ("run",)


def command_key(args: argparse.Namespace) -> str:
    return f"eval {args.what}" if args.command == "eval" else args.command


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    key = command_key(args)
    from pipeline.observability.logs import configure_logging

    # `run` is the long-lived, monitored command: its events are INFO lines. The others keep stderr
    # to warnings and the one-line error, so scripts can read their failure line as before.
    configure_logging(getattr(args, "log_format", "text"), args.verbose, quiet=key not in LOUD_COMMANDS)
    try:
        module = importlib.import_module(COMMANDS[key])
        return int(module.main(args) or 0)
    except PipelineError as e:
        if args.verbose:
            raise
        print(f"hazeflow: error: {e.input}: {e.cause}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if args.verbose:
            raise
        hint = " (install the [train] extra: pip install -e .[train])" if e.name == "torch" else ""
        print(f"hazeflow: error: {key}: missing module {e.name}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hazeflow: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # anything else still gets one line unless --verbose
        if args.verbose:
            raise
        where = getattr(e, "input", key)
        cause = getattr(e, "cause", None) or f"{type(e).__name__}: {e}"
        print(f"hazeflow: error: {where}: {cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
