"""CPU backends side by side for the shipped graphs: ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16
(where the CPU has it), int8 QDQ where the graph exists; time per call and max abs error against the
fp32 PyTorch model on held-out frames of the demo clip (engines.frames).

usage: nice -n 10 .venv/bin/python tools/engines_speed.py [--rounds 5] [--threads 2] [--json FILE]

All runners load through engines.load.runner_for. Timing interleaves the backends round by round (each
round: 5 calls of each after a warm-up), so a noisy shared machine slows them alike; report the
ratio to ONNX Runtime fp32 of the same run. Nothing here chooses a setting: it only measures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines.gate import InputProfile, parity_feeds  # noqa: E402
from engines.load import model_files, reference_runner, runner_for  # noqa: E402
from engines.parity import compare_outputs  # noqa: E402

CASES = [("rigan", (320, 180)), ("msfgnet", (320, 180)), ("msfgnet", (640, 360))]


def variants():
    from engines.openvino.runner import bf16_unavailable

    out = [("onnxruntime", "fp32"), ("openvino", "fp32")]
    if bf16_unavailable() is None:
        out.append(("openvino", "bf16"))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from engines.openvino.runner import bf16_unavailable, cpu_name

    results = {"cpu": cpu_name(), "bf16": bf16_unavailable() or "available", "threads": args.threads, "cases": []}
    for model, size in CASES:
        profile = InputProfile(((16, 16), size, (960, 544)), 1)
        ref = reference_runner(model_files(model), threads=args.threads)
        runners = {f"{b} {p}": runner_for(model, backend=b, precision=p, profile=profile, threads=args.threads).activate()
                   for b, p in variants()}
        feeds = parity_feeds(next(iter(runners.values())), size)
        errors = {}
        for name, r in runners.items():
            worst = {}
            for feed in feeds:
                for out, (mx, _, _) in compare_outputs(ref.infer(feed), r.infer(feed)).items():
                    worst[out] = max(worst.get(out, 0.0), mx)
            errors[name] = worst
        times = {name: [] for name in runners}
        for name, r in runners.items():
            r.infer(feeds[0])  # warm-up
        for _ in range(args.rounds):
            for name, r in runners.items():
                for _ in range(5):
                    t = time.perf_counter()
                    r.infer(feeds[0])
                    times[name].append(time.perf_counter() - t)
        base = float(np.median(times["onnxruntime fp32"]))
        case = {"model": model, "size": f"{size[0]}x{size[1]}", "rows": []}
        for name in runners:
            ms = float(np.median(times[name])) * 1e3
            case["rows"].append({"runner": name, "ms": round(ms, 2), "fps": round(1e3 / ms, 1),
                                 "speed_vs_ort_fp32": round(base * 1e3 / ms, 2),
                                 "max_abs_error": {k: float(f"{v:.3g}") for k, v in errors[name].items()}})
            print(f"{model:8s} {size[0]}x{size[1]}  {name:18s} {ms:7.2f} ms  x{base * 1e3 / ms:4.2f}  "
                  f"max abs error vs torch fp32: {case['rows'][-1]['max_abs_error']}", flush=True)
        for r in runners.values():
            r.deactivate()
        ref.deactivate()
        results["cases"].append(case)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
