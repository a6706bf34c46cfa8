"""``hazeflow batch`` throughput with 1 and 2 workers (local pool and Ray), and the cost per file of each.

    nice -n 10 .venv/bin/python tools/bench_batch.py [--inputs 6] [--frames 30] [--json FILE]

Throughput: ``--inputs`` copies of ``assets/demo.mp4`` (640x360 hazy road traffic), the first
``--frames`` frames of each, through ``configs/batch.yaml`` (RI-GAN gate, MSFgNet, blobs) with one
ONNX Runtime thread per stage, so a worker uses about one core. No unit starts before every worker
is ready; frames/s counts from then (worker start-up is reported apart), for 1 and 2 workers on
each engine.

Per-file overhead: 20 tiny clips (64x48, 2 frames) through MOG2 + blobs with one worker: the
seconds per file after start-up are mostly the engine's (dispatch, result, manifest) and the
graph's own set-up and output check. Every number comes from this one run on this machine; on a
shared machine compare the ratios, not the absolute values.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.batch.driver import BatchRun  # noqa: E402
from pipeline.batch.pools import LocalPool, RayPool  # noqa: E402
from pipeline.config import CONFIG_DIR, config_from_dict, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"


def tiny_clip(path: Path, frames: int = 2) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 60 + 40 * i, np.uint8), format="bgr24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def learned_config(frames: int):
    """configs/batch.yaml, one thread per ONNX Runtime session, the first ``frames`` frames."""
    config = load_config(CONFIG_DIR / "batch.yaml")
    stages = []
    for spec in config.stages:
        conf = spec.config
        if conf is not None and "threads" in {f.name for f in dataclasses.fields(conf)}:
            conf = dataclasses.replace(conf, threads=1)
        stages.append(dataclasses.replace(spec, config=conf))
    runtime = dataclasses.replace(config.runtime, max_frames=frames)
    return dataclasses.replace(config, stages=tuple(stages), runtime=runtime, inputs=())


def run(engine: str, workers: int, inputs: list[str], config, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    batch = BatchRun(config, out, inputs, retries=0)
    pool = (lambda: LocalPool(config, batch.root)) if engine == "local" else (lambda: RayPool(config, batch.root))
    report = batch.run(pool, workers, hold_until_ready=True)
    assert report.count("done") == len(inputs), f"{engine}: {report.count('failed')} inputs failed"
    ready = report.extra["all_ready_s"]
    busy = report.wall_s - ready
    return {"engine": engine, "workers": workers, "inputs": len(inputs), "frames": report.frames_here,
            "wall_s": round(report.wall_s, 3), "startup_s": ready, "after_startup_s": round(busy, 3),
            "fps": round(report.frames_here / busy, 2), "s_per_file": round(busy / len(inputs), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=6)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--tiny", type=int, default=20)
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        videos = []
        for i in range(args.inputs):
            dst = work / "in" / f"demo{i}.mp4"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DEMO, dst)
            videos.append(str(dst))
        (work / "tiny").mkdir()
        tiny = [str(tiny_clip(work / "tiny" / f"t{i:02d}.mp4")) for i in range(args.tiny)]
        learned = learned_config(args.frames)
        cheap = config_from_dict({"stages": [{"mog2": {}}, {"blobs": {}}],
                                  "outputs": {"dehazed_video": False, "preview": False, "masks": True, "events": True}})
        load = [os.getloadavg()[0]]
        rows = [run("local", 1, videos, learned, work / "o"), run("local", 2, videos, learned, work / "o"),
                run("local", 1, tiny, cheap, work / "o")]
        t = time.monotonic()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_init_s = round(time.monotonic() - t, 3)
        try:
            rows += [run("ray", 1, videos, learned, work / "o"), run("ray", 2, videos, learned, work / "o"),
                     run("ray", 1, tiny, cheap, work / "o")]
        finally:
            ray.shutdown()
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fps = {(r["engine"], r["workers"]): r["fps"] for r in rows if r["inputs"] == args.inputs}
    per_file = {r["engine"]: r for r in rows if r["inputs"] == args.tiny}
    result = {
        "machine": {"cpus": os.cpu_count(), "loadavg_1min_start_end": [round(x, 2) for x in load]},
        "throughput_inputs": f"{args.inputs} x assets/demo.mp4, first {args.frames} frames, configs/batch.yaml, 1 thread per session",
        "runs": rows, "ray_init_s": ray_init_s,
        "ratio_2_vs_1_workers": {e: round(fps[(e, 2)] / fps[(e, 1)], 2) for e in ("local", "ray")},
        "per_file_overhead_s": {e: per_file[e]["s_per_file"] for e in ("local", "ray")},
        "startup_s": {e: per_file[e]["startup_s"] for e in ("local", "ray")},
    }
    print("| engine | workers | inputs | frames | start-up s | s after start-up | frames/s | s per file |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['workers']} | {r['inputs']} | {r['frames']} | {r['startup_s']:.2f} | "
              f"{r['after_startup_s']:.2f} | {r['fps']:.1f} | {r['s_per_file']:.3f} |")
    print(f"2 vs 1 workers: {result['ratio_2_vs_1_workers']}; per-file overhead (tiny clips): "
          f"{result['per_file_overhead_s']}; ray.init {ray_init_s:.1f} s; load avg {result['machine']['loadavg_1min_start_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
