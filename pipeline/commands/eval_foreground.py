"""``hazeflow eval foreground``: CDnet metrics of a foreground method on CDnet-layout folders.

Every frame of a sequence goes through the method in order, the warm-up
frames before ``temporalROI.txt`` included (background models need them);
only frames inside the temporal ROI (and inside ``--frames A:B`` if given)
are scored. ``fps`` counts the method's own ``process`` time, not decoding or
scoring.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from typing import Any

from pipeline.cdnet import METRICS, CdnetSequence, Confusion, mean_metrics, open_sequence, read_image
from pipeline.errors import ConfigError, PipelineError, StageError
from pipeline.frame import Frame
from pipeline.stages import stage_class


def main(args) -> int:
    sequences = [open_sequence(d) for d in args.dirs]  # check every layout before the long run
    _check_unique_names(sequences)
    span = parse_frames(getattr(args, "frames", None))
    stabilize = getattr(args, "stabilize", "auto")
    weights = getattr(args, "weights", None)
    if weights is not None and args.method != "msfgnet":
        raise ConfigError("--weights", f"only --method msfgnet has weights, not {args.method}")
    stage = build_stage(args.method, backend=getattr(args, "backend", "auto"), stabilize=stabilize, weights=weights)
    results = {}
    with stage:
        for seq in sequences:
            results[seq.name] = evaluate_sequence(stage, seq, args.method, span)
    report = {"method": args.method, "stabilize": stabilize, "sequences": results,
              "mean": mean_metrics(list(results.values()))}
    if weights is not None:
        report["weights"] = str(weights)
    to_stdout = args.json == "-"
    print_table(report, file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        write_json(report, args.json)
    return 0


def build_stage(method: str, **options: Any):
    """The registry's stage for ``method`` with its default Config plus the options it has fields for."""
    cls = stage_class(method)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    chosen = {k: v for k, v in options.items() if k in fields and v not in (None, "auto")}
    return cls(cls.Config(**chosen))


def parse_frames(text: str | None) -> tuple[int, int]:
    """``A:B`` (inclusive, either end may be left out) -> (first, last)."""
    if not text:
        return 1, sys.maxsize
    first, sep, last = text.partition(":")
    try:
        if not sep:
            raise ValueError
        span = (int(first) if first else 1, int(last) if last else sys.maxsize)
    except ValueError:
        raise ConfigError("--frames", f"expected A:B frame numbers (inclusive), got {text!r}") from None
    if span[0] < 1 or span[1] < span[0]:
        raise ConfigError("--frames", f"empty or invalid range {text!r}")
    return span


def evaluate_sequence(stage, seq: CdnetSequence, method: str, span: tuple[int, int]) -> dict[str, float]:
    first = max(span[0], seq.temporal_roi[0])
    last = min(span[1], seq.temporal_roi[1])
    if first > last:
        raise ConfigError("--frames", f"{seq.name}: no frame of {span[0]}..{span[1]} lies in the "
                          f"temporal ROI {seq.temporal_roi[0]}..{seq.temporal_roi[1]}")
    frames = [f for f in seq.frames if f[0] <= last]  # nothing after the last scored frame matters
    confusion = Confusion()
    busy = 0.0
    batch = max(1, int(getattr(stage, "max_batch", 1)))
    stage.reset_stream(seq.name)
    for start in range(0, len(frames), batch):
        chunk = [Frame(stream=seq.name, index=n, pts=None, image=read_image(p)) for n, p in frames[start:start + batch]]
        t = time.perf_counter()
        chunk = _run(stage, chunk, method)
        busy += time.perf_counter() - t
        for frame in chunk:
            if first <= frame.index <= last:
                _score(confusion, frame, seq, method)
    stage.reset_stream(seq.name)
    result = confusion.metrics()
    result["fps"] = len(frames) / busy if busy > 0 else math.nan
    result["frames_scored"] = last - first + 1
    return result


def _run(stage, frames: list[Frame], method: str) -> list[Frame]:
    try:
        return list(stage.process(frames))
    except PipelineError:
        raise
    except Exception as e:
        raise StageError(f"stages.{method}", f"{type(e).__name__}: {e}") from e


def _score(confusion: Confusion, frame: Frame, seq: CdnetSequence, method: str) -> None:
    mask = frame.data.get("mask")
    if mask is None:
        raise StageError(f"stages.{method}", f"wrote no 'mask' for frame {frame.index} of {seq.name}")
    try:
        confusion.add(mask, seq.groundtruth(frame.index), seq.roi)
    except ValueError as e:
        raise StageError(f"stages.{method}", f"{seq.name} frame {frame.index}: {e}") from None


def _check_unique_names(sequences: list[CdnetSequence]) -> None:
    seen: dict[str, str] = {}
    for seq in sequences:
        if seq.name in seen:
            raise ConfigError(str(seq.root), f"same sequence name as {seen[seq.name]}; results are keyed by name")
        seen[seq.name] = str(seq.root)


def print_table(report: dict, file=sys.stdout) -> None:
    keys = METRICS + ("fps",)
    rows = list(report["sequences"].items()) + [("mean", report["mean"])]
    width = max(len(name) for name, _ in rows)
    print(f"method: {report['method']}", file=file)
    print(f"{'sequence':<{width}}  " + "  ".join(f"{k:>11}" for k in keys), file=file)
    for name, m in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{m[k]:>11.4f}" for k in keys), file=file)


def write_json(report: dict, dest: str) -> None:
    """JSON to ``dest`` ('-' = stdout); NaN (an undefined metric) becomes null."""
    text = json.dumps(_finite(report), indent=2) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        return
    try:
        with open(dest, "w") as f:
            f.write(text)
    except OSError as e:
        raise PipelineError(dest, f"cannot write JSON: {e.strerror or e}") from None


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
