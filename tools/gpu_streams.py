"""How many camera streams the real threaded pipeline (`hazeflow run`) carries on one machine.

K copies of one hazy clip (assets/demo.mp4 resized to --size, H.264, made once) run through
`hazeflow run` with the learned chain (dehaze -> msfgnet -> blobs) on --device, writing only
events.jsonl and summary.json (video encoding is a CPU cost a GPU deployment would move to
NVENC). Files are lossless (queues block), so frames/s = what the graph sustains; divide by the
camera rate (30) for streams. Prints one markdown row per K and writes --json.

    python tools/gpu_streams.py --device cuda --precision fp16 --size 1920x1080 --streams 1 --streams 8 --streams 32
    python tools/gpu_streams.py --device cpu --precision fp32 --size 640x360 --streams 1     # CPU reference
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def make_clip(size: tuple[int, int], frames: int, path: Path) -> Path:
    import av
    import cv2

    if path.is_file():
        return path
    w, h = size
    tmp = path.with_name(path.name + ".partial")
    with av.open(str(ROOT / "assets" / "demo.mp4")) as src, av.open(str(tmp), "w", format="mp4") as dst:
        out = dst.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=30)
        out.width, out.height, out.pix_fmt = w, h, "yuv420p"
        n = 0
        while n < frames:
            src.seek(0)
            for frame in src.decode(video=0):
                img = cv2.resize(frame.to_ndarray(format="bgr24"), (w, h), interpolation=cv2.INTER_LINEAR)
                vf = av.VideoFrame.from_ndarray(img, format="bgr24")
                vf.pts = n
                for p in out.encode(vf):
                    dst.mux(p)
                n += 1
                if n == frames:
                    break
        for p in out.encode():
            dst.mux(p)
    tmp.replace(path)
    return path


def run_streams(clip: Path, k: int, args, work: Path) -> dict:
    out = work / f"run_{k}"
    config = {
        "inputs": [{"uri": str(clip), "name": f"cam{i:02d}"} for i in range(k)],
        "output": str(out),
        "runtime": {"device": args.device, "backend": "torch" if args.device == "cuda" else "auto",
                    "queue_size": 8, "policy": "block", "summary_interval_s": 0},
        "stages": [{"dehaze": {"when": args.when, "precision": args.precision}},
                   {"msfgnet": {"batch": min(k, 8), "batch_timeout_ms": 5, "precision": args.precision}},
                   {"blobs": {}}],
        "outputs": {"dehazed_video": False, "masks": False, "preview": False, "events": True},
    }
    cfg = work / f"streams_{k}.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg), "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"streams": k, "error": (r.stderr or r.stdout).strip()[-600:]}
    summary = json.loads((out / "summary.json").read_text())
    stages = {n: {"fps": v.get("fps"), "p50_ms": v.get("p50_ms"), "calls": v.get("calls")}
              for n, v in summary["stages"].items()}
    fps = summary["fps"]
    return {"streams": k, "frames": summary["frames"]["processed"], "fps": fps, "wall_s": round(wall, 1),
            "streams_at_30fps": round(fps / 30, 1) if fps else None, "stages": stages}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--streams", type=int, action="append", default=None)
    p.add_argument("--frames", type=int, default=60, help="frames per stream")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16")
    p.add_argument("--when", choices=("always", "auto", "never"), default="always")
    p.add_argument("--work", default="/tmp/hazeflow_streams")
    p.add_argument("--timeout", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip((w, h), args.frames, work / f"clip_{w}x{h}_{args.frames}.mp4")
    rows = []
    print(f"| streams ({args.size}) | frames/s | streams at 30 frames/s | stage frames/s (busy time) |\n|---:|---:|---:|---|")
    for k in args.streams or [1]:
        row = run_streams(clip, k, args, work)
        rows.append(row)
        if "error" in row:
            print(f"| {k} | error: {row['error'][-200:]} | | |", flush=True)
        else:
            per = ", ".join(f"{n} {v['fps']}" for n, v in row["stages"].items())
            print(f"| {k} | {row['fps']} | {row['streams_at_30fps']} | {per} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "device": args.device, "precision": args.precision,
                                               "when": args.when, "rows": rows}, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
