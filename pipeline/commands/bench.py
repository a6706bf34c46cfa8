"""``hazeflow bench``: what ``hazeflow run`` does, timed, with the classical chain beside it.

For each resolution, number of streams K and backend:

1. a clip of N frames of the synthetic traffic scene with haze on every frame is
   rendered once and written as an mp4 by the production video writer; each of
   the K streams decodes its own copy (a file source, as ``run`` opens it);
2. ``end_to_end``: the configuration's stages (``configs/default.yaml`` unless
   ``--config``) are built, given the backend and precision, and run by the same
   ``Graph`` and production sinks as ``hazeflow run`` into a temporary folder with
   every output on (dehazed.mp4, preview.mp4, masks, events, summary). Every
   frame of the clip is hazy and the dehaze stage runs with ``when: always``, so
   the dehazer works on every frame whatever the gate would decide on this clip
   (the default density gate scores it ~0.06, below its 0.12 threshold); the
   gate's own score (``score: auto`` -> density every 8 frames) is still computed
   as in a run. ``dehazed_frames`` counts the frames events.jsonl marks as dehazed.
   frames/s = frames written /
   (first frame read -> outputs finalised), so the encoders' flushes and the
   renames are inside; stage set-up (model loading) is not. Latency p50/p99 is
   per frame from read to written, as ``summary.json`` reports it (for a file the
   queues are full, so it includes the wait in them);
3. ``baseline``: the same configuration with every learned stage replaced by its
   classical stand-in (dehaze -> dcp, msfgnet -> mog2), same sinks, same clip,
   same run: decode + DCP + MOG2 (+ the configuration's other stages) + encode;
4. ``stages``: each stage's own time inside the end-to-end run (``summary.json``'s
   per-stage numbers: frames / busy time, p50/p99 per call), ``sinks`` the
   encoding and writing, and ``decode`` the clip decoded on its own.

A learned stage that cannot be built or loaded (missing weights, a precision its
backend cannot run) is an error, not a silent substitution: the bench stops with
the stage's one-line message. The run records the commit, the chain actually
run (stage, backend, precision) and the machine.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
import numpy as np

from pipeline.errors import ConfigError

DEFAULT_RESOLUTIONS = ("640x360",)
STANDARD_RESOLUTIONS = ("320x240", "640x360", "1280x720", "1920x1080")
#: learned stage -> its classical stand-in in the baseline chain
CLASSICAL = {"dehaze": "dcp", "msfgnet": "mog2"}
ROOT = Path(__file__).resolve().parents[2]


# --- statistics --------------------------------------------------------------------
def summarise(times_s, frames: int) -> dict:
    """fps over the total time; p50/p99 of the per-call times, in ms."""
    total = float(sum(times_s))
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "fps": round(frames / total, 2) if total > 0 else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
        "frames": frames,
    }


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(text, "resolution must be WxH, e.g. 640x360") from None
    if w < 32 or h < 32 or w % 2 or h % 2:
        raise ConfigError(text, "resolution must be at least 32x32 with even sides (H.264 4:2:0)")
    return w, h


# --- media ---------------------------------------------------------------------------
def render_frames(width: int, height: int, count: int, haze: float = 0.5, seed: int = 1) -> list[np.ndarray]:
    """BGR frames of the synthetic hazy traffic scene (haze on every frame)."""
    from pipeline.sources import open_source

    uri = f"synthetic:traffic?size={width}x{height}&frames={count}&haze={haze}&seed={seed}"
    with open_source(uri) as source:
        return [f.image for f in source]


def write_clip(path: Path, frames, fps: float = 25.0) -> Path:
    """The frames as an mp4, written by the production writer (pipeline.sinks.video)."""
    from pipeline.sinks.video import VideoWriter

    writer = VideoWriter(path, fps=fps)
    for i, image in enumerate(frames):
        writer.write(image, i / fps)
    writer.close()
    return path


def time_decode(clip: Path, streams: int) -> dict:
    """The file source alone, K times over the clip: what the graph's readers cost."""
    from pipeline.sources import open_source

    times, count = [], 0
    for _ in range(streams):
        with open_source(str(clip)) as source:
            it = iter(source)
            while True:
                t0 = time.perf_counter()
                frame = next(it, None)
                if frame is None:
                    break
                times.append(time.perf_counter() - t0)
                count += 1
    return summarise(times, count)


# --- the graph, as `hazeflow run` builds it ----------------------------------------------
def bench_config(args, backend: str, clip: Path, streams: int, output: Path, classical: bool = False):
    """The run's configuration for one measurement: inputs, output folder, backend, precision, every output on."""
    from pipeline.config import load_config, stage_spec, with_overrides
    from pipeline.stages.dehaze import resolve_score

    config = load_config(args.config)
    config = with_overrides(config, inputs=[str(clip)] * streams, output=str(output),
                            backend=None if backend == "auto" else backend, device=args.device)
    specs = []
    for spec in config.stages:
        if classical and spec.name in CLASSICAL:
            specs.append(stage_spec(CLASSICAL[spec.name], {}, f"stages.{CLASSICAL[spec.name]}"))
            continue
        conf = spec.config
        if conf is not None and dataclasses.is_dataclass(conf):
            fields = {f.name for f in dataclasses.fields(conf)}
            changes = {k: v for k, v in (("precision", args.precision), ("threads", args.threads or None))
                       if k in fields and v is not None}
            if spec.name == "dehaze":  # haze on every frame: dehazed on every frame, the gate's score still paid
                changes.update(when="always", score=resolve_score(conf))
            try:
                conf = dataclasses.replace(conf, **changes)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"stages.{spec.name}", str(e)) from None
        specs.append(dataclasses.replace(spec, config=conf))
    outputs = dataclasses.replace(config.outputs, dehazed_video=True, masks=True, preview=True, events=True)
    return dataclasses.replace(config, stages=tuple(specs), outputs=outputs,
                               runtime=dataclasses.replace(config.runtime, max_frames=None))


def chain_of(nodes, stages: dict) -> list[dict]:
    """What actually ran: each stage with the backend and precision it loaded (``summary.json``'s
    ``engine`` record of a learned stage; ``auto`` may have chosen OpenVINO or ONNX Runtime)."""
    chain = []
    for node in nodes:
        conf = getattr(node.stage, "config", None)
        entry = {"stage": node.name}
        for key in ("method", "backend", "precision", "device", "refresh_every"):
            if conf is not None and hasattr(conf, key):
                entry[key] = getattr(conf, key)
        engine = (stages.get(node.name) or {}).get("engine") or {}
        for key in ("backend", "precision"):
            if engine.get(key):
                entry[key] = engine[key]
        if entry.get("backend") == "auto":  # no engine record: the stage's own resolution of auto
            entry["backend"] = getattr(node.stage, "backend", "auto")
        chain.append(entry)
    return chain


def run_graph(config) -> dict:
    """Build the stages and run them with the run command's builders; raise the run's first error."""
    from pipeline.commands.run import open_sources
    from pipeline.graph import Graph, build_stages
    from pipeline.sinks.summary import latency_stats

    nodes = build_stages(config.stages)
    sources = open_sources(config)
    try:
        graph = Graph(nodes, config.output, config.outputs, queue_size=config.runtime.queue_size,
                      policy=config.runtime.policy, max_frames=None,
                      summary_interval_s=config.runtime.summary_interval_s)
    except BaseException:
        for s in sources:
            s.close()
        raise
    report = graph.run(sources)
    done = time.monotonic()
    if report.error is not None:
        raise report.error
    starts = [s.t_first_in for s in graph.streams.values() if s.t_first_in is not None]
    frames = report.frames_processed
    span = done - min(starts) if starts else 0.0
    latency = np.concatenate([s.latency_s.values() for s in graph.streams.values()])
    lat = latency_stats(latency)
    outputs = sorted({str(p.relative_to(Path(config.output) / name)).split("/")[0]
                      for name, paths in report.outputs.items() for p in paths} | {"summary.json"})
    chain = chain_of(nodes, report.stages)
    stages = {name: {k: s[k] for k in ("fps", "p50_ms", "p99_ms", "frames")} for name, s in report.stages.items()}
    # how often a stage ran its network (dehaze: RI-GAN only every refresh_every frames)
    network_runs = {n.name: n.stage.network_runs for n in nodes if isinstance(getattr(n.stage, "network_runs", None), int)}
    return {"chain": chain, "stages": stages, "outputs": outputs, "dehazed_frames": dehazed_frames(report),
            "network_runs": network_runs,
            "fps": round(frames / span, 2) if span > 0 else None, "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"], "frames": frames, "wall_s": round(span, 3)}


def dehazed_frames(report) -> int | None:
    """Frames the dehazing stage changed, from the run's events.jsonl (None when no stage reports it)."""
    count, seen = 0, False
    for paths in report.outputs.values():
        for path in paths:
            if path.name != "events.jsonl":
                continue
            for line in path.read_text().splitlines():
                event = json.loads(line)
                if "dehaze_applied" in event:
                    seen = True
                    count += bool(event["dehaze_applied"])
    return count if seen else None


# --- one configuration -----------------------------------------------------------------
def bench_one(width: int, height: int, k: int, backend: str, args, clip: Path) -> dict:
    run = {"resolution": f"{width}x{height}", "streams": k, "backend": backend, "precision": args.precision,
           "device": args.device, "frames_per_stream": args.frames, "config": args.config or "configs/default.yaml",
           "forced": {"dehaze.when": "always"}}
    with tempfile.TemporaryDirectory(prefix="hazeflow-bench-") as tmp:
        learned = run_graph(bench_config(args, backend, clip, k, Path(tmp) / "learned"))
        classical = run_graph(bench_config(args, backend, clip, k, Path(tmp) / "classical", classical=True))
    run["chain"] = learned["chain"]
    run["outputs"] = learned["outputs"]
    run["stages"] = {"decode": time_decode(clip, k), **learned["stages"]}
    names = [c["stage"] for c in learned["chain"]]
    run["end_to_end"] = {"stages": ["decode", *names, "sinks"],
                         **{key: learned[key] for key in ("fps", "p50_ms", "p99_ms", "frames", "wall_s",
                                                          "dehazed_frames", "network_runs")}}
    base_names = [c["stage"] for c in classical["chain"]]
    run["baseline"] = {"name": "+".join(["decode", *base_names, "encode"]), "stages": ["decode", *base_names, "sinks"],
                       "stage_fps": {n: s["fps"] for n, s in classical["stages"].items()},
                       **{key: classical[key] for key in ("fps", "p50_ms", "p99_ms", "frames", "wall_s")}}
    e, b = run["end_to_end"]["fps"], run["baseline"]["fps"]
    run["ratio_to_baseline"] = round(e / b, 3) if e and b else None
    return run


# --- machine and reports ---------------------------------------------------------------
def git_commit() -> dict:
    """The checkout's commit (and whether it has uncommitted changes), or "unknown" outside one."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return {"commit": "unknown"}
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown"}


def machine_info(device: str) -> dict:
    import cv2
    import onnxruntime

    from pipeline.sinks.video import pick_codec

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu, "cores": cores, "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
        "codec": pick_codec(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        import openvino

        info["openvino"] = openvino.__version__
    except ImportError:
        pass
    if device == "cuda":
        import torch

        info.update(torch=torch.__version__, gpu=torch.cuda.get_device_name(0),
                    cuda=torch.version.cuda, compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    return info


def markdown(result: dict) -> str:
    m = result["machine"]
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    commit = result.get("commit", {})
    rev = str(commit.get("commit", "unknown"))[:12] + (" (uncommitted changes)" if commit.get("dirty") else "")
    lines = [f"\n### {when}: {m['cpu']} ({m['cores']} cores){gpu}, load average {m.get('load_avg_1m', 'n/a')}, "
             f"commit {rev}\n"]
    for run in result["runs"]:
        chain = ", ".join(_chain_text(c) for c in run["chain"])
        lines.append(f"\n**{run['resolution']}, {run['streams']} stream(s)**, backend {run['backend']}, "
                     f"precision {run['precision']}, device {run['device']}, {run['frames_per_stream']} frames/stream; "
                     f"chain: {chain}; outputs: {', '.join(run['outputs'])}\n")
        lines.append("| stage | frames/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
        for name, s in run["stages"].items():
            lines.append(f"| {name} | {_num(s['fps'])} | {_num(s['p50_ms'])} | {_num(s['p99_ms'])} |")
        e, b = run["end_to_end"], run["baseline"]
        lines.append(f"| **end to end** ({' + '.join(e['stages'])}) | {_num(e['fps'])} | "
                     f"{_num(e['p50_ms'])} | {_num(e['p99_ms'])} |")
        lines.append(f"| **baseline** ({b['name']}) | {_num(b['fps'])} | {_num(b['p50_ms'])} | {_num(b['p99_ms'])} |")
        lines.append(f"\nend to end / baseline: {_num(run['ratio_to_baseline'])}; frames dehazed (every frame is "
                     f"hazy): {_num(e.get('dehazed_frames'))} of {_num(e['frames'])}"
                     + "".join(f"; {name} ran its network on {n} frames" for name, n in e.get("network_runs", {}).items()))
    return "\n".join(lines) + "\n"


def _chain_text(entry: dict) -> str:
    extra = [str(entry[k]) for k in ("method", "backend", "precision") if k in entry]
    if entry.get("refresh_every", 1) != 1:
        extra.append(f"refresh_every {entry['refresh_every']}")
    return f"{entry['stage']} ({' '.join(extra)})" if extra else entry["stage"]


def _num(v) -> str:
    return "n/a" if v is None else f"{v:g}"


def main(args) -> int:
    resolutions = [parse_size(r) for r in (args.resolution or DEFAULT_RESOLUTIONS)]
    streams = args.streams or [1]
    backends = args.backend or ["auto"]
    if any(k < 1 for k in streams) or args.frames < 2:
        raise ConfigError("bench", "--streams must be >= 1 and --frames >= 2")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda", "no CUDA device (torch.cuda.is_available() is False)")
    args.threads = getattr(args, "threads", None) or 0
    args.config = getattr(args, "config", None)
    quiet = args.json == "-"
    log = (lambda msg: print(msg, file=sys.stderr)) if quiet else print
    runs = []
    with tempfile.TemporaryDirectory(prefix="hazeflow-clip-") as tmp:
        for w, h in resolutions:
            clip = write_clip(Path(tmp) / f"hazy_{w}x{h}.mp4", render_frames(w, h, args.frames))
            for k in streams:
                for backend in backends:
                    log(f"bench {w}x{h}, {k} stream(s), backend {backend}, {args.frames} frames each")
                    runs.append(bench_one(w, h, k, backend, args, clip))
                    e, b = runs[-1]["end_to_end"], runs[-1]["baseline"]
                    log(f"  end to end {_num(e['fps'])} frames/s ({' + '.join(e['stages'])}); "
                        f"classical {_num(b['fps'])} frames/s ({b['name']})")
    result = {"machine": machine_info(args.device), "commit": git_commit(), "runs": runs}
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown(result))
    return 0
