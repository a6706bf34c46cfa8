"""Soak test: one live camera through the default graph for many frames; does anything grow?

    nice -n 10 .venv/bin/python tools/soak.py --frames 100000 --fps 25 --json out/soak/soak.json \\
        --markdown docs/benchmarks.md

The camera is a generated traffic scene (``synthetic:traffic``) paced to
``--fps`` and marked live, so the queues drop instead of blocking, exactly as
for an RTSP camera; ``--input rtsp://...`` soaks a real camera instead. Live
outputs are segmented (``outputs.segment_s``, every minute here) where the
build has segmented sinks.

Every ``--every`` frames written it records one row: frames in, written and
dropped so far, resident memory (RSS) and the heap malloc has handed out
(glibc's mallinfo2: RSS minus it is code, libraries and pages the allocator
keeps), open file descriptors, and the
end-to-end latency p50/p99 of the frames of that window. The verdict compares
RSS after warm-up (the first row) with the last row, and the fd counts.

Ctrl-C (SIGINT) or SIGTERM stops the camera cleanly: a row is taken at that
moment, the frames in flight are written, and the table, JSON and markdown are
written as for a finished run (marked interrupted; exit status 130). A second
signal drops what is still queued. The handlers are installed explicitly, so
this also holds for a soak started in the background by a script, which
inherits SIGINT ignored.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.graph import Graph, build_stages  # noqa: E402
from pipeline.memory import heap_in_use_mib  # noqa: E402
from pipeline.observability.logs import configure_logging  # noqa: E402
from pipeline.observability.stats import recent_latencies  # noqa: E402
from pipeline.sources import open_source  # noqa: E402


class PacedCamera:
    """A source read at ``fps`` in real time and marked live: what a camera does."""

    def __init__(self, source, fps: float):
        self.source, self.fps = source, fps
        self.name, self.uri_masked, self.is_live = source.name, source.uri_masked, True
        self.events = source.events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.source.close()

    def stop(self):
        self.source.stop()

    def __iter__(self):
        t0 = time.monotonic()
        for i, frame in enumerate(self.source, start=1):
            yield frame
            wait = t0 + i / self.fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)


class Interrupts:
    """Counts SIGINT/SIGTERM instead of raising KeyboardInterrupt wherever the main thread is; the
    main loop reads ``count`` and stops the graph itself."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.count = 0
        self._previous = {}

    def __call__(self, signum, frame):
        self.count += 1

    def install(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self) for sig in self.SIGNALS}
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--input", default=None, help="a live URI instead of the generated camera")
    p.add_argument("--frames", type=int, default=100_000, help="stop after this many frames read")
    p.add_argument("--minutes", type=float, default=None, help="or after this long, whichever comes first")
    p.add_argument("--fps", type=float, default=25.0, help="the generated camera's frame rate")
    p.add_argument("--size", default="320x240", help="the generated camera's frame size")
    p.add_argument("--every", type=int, default=10_000, help="frames written per row")
    p.add_argument("--segment-s", type=float, default=60.0, help="segment length (where supported)")
    p.add_argument("--masks", action="store_true", help="also write a mask PNG per frame")
    p.add_argument("--output", default=str(ROOT / "out" / "soak"))
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--markdown", default=None, metavar="FILE", help="append the table to this file")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="print the table of a soak saved with --json (trend recomputed) and exit")
    return p.parse_args(argv)


def outputs_with_segments(outputs, segment_s: float, masks: bool):
    """Segments every ``segment_s``; masks off unless asked (a PNG per frame, as configs/rtsp.yaml says)."""
    outputs = dataclasses.replace(outputs, masks=masks)
    names = {f.name for f in dataclasses.fields(outputs)}
    if "segment_s" not in names:
        print("soak: this build has no outputs.segment_s; one file per output", file=sys.stderr)
        return outputs, None
    return dataclasses.replace(outputs, segment_s=segment_s), segment_s


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        out = json.loads(Path(args.render).read_text())
        trend = rss_trend([r for r in out["rows"] if not r["after_end"]])
        out["rss_trend_mib_per_10k_frames"] = None if trend is None else round(trend, 3)
        print(markdown(out))
        return 0
    interrupts = Interrupts().install()
    try:
        return soak(args, interrupts)
    finally:
        interrupts.restore()


def soak(args, interrupts: Interrupts) -> int:
    configure_logging("text")
    config = load_config(args.config)
    outputs, segment_s = outputs_with_segments(config.outputs, args.segment_s, args.masks)
    if args.input:
        camera = open_source(args.input, name="soak")
    else:
        uri = f"synthetic:traffic?size={args.size}&frames=0&seed=1"
        camera = PacedCamera(open_source(uri, name="soak", fps=args.fps), args.fps)
    graph = Graph(build_stages(config.stages), args.output, outputs, queue_size=config.runtime.queue_size,
                  policy="auto", max_frames=args.frames, summary_interval_s=60.0)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("report", graph.run([camera])), daemon=True)
    t0 = time.monotonic()
    runner.start()
    rows: list = []
    state = {"next_row": args.every, "last_count": 0}
    stopped_by = 0  # signals acted on
    while runner.is_alive():
        runner.join(0.5)
        if interrupts.count > stopped_by:
            if stopped_by == 0:
                print("soak: interrupted; stopping the camera, writing what is in flight", file=sys.stderr, flush=True)
                take_row(graph, rows, state, args, t0, ended=False, force=True)  # the state at the stop
                graph.stop()
            else:
                graph.abort()
            stopped_by = interrupts.count
            continue
        if args.minutes is not None and time.monotonic() - t0 > args.minutes * 60:
            graph.stop()
        take_row(graph, rows, state, args, t0, ended=not runner.is_alive())
    report = result.get("report")
    out = summarise(args, rows, report, segment_s)
    out["segments"] = graph.observer.segments("soak")
    out["interrupted"] = bool(stopped_by)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown(out))
    print(markdown(out))
    if stopped_by:
        return 130
    return 0 if report is not None and report.error is None else 1


def take_row(graph, rows: list, state: dict, args, t0: float, ended: bool, force: bool = False) -> None:
    """Append a row when ``--every`` more frames were written (or ``force``, or at the end): frames,
    drops, RSS, open fds and the latency of the frames written since the previous row."""
    stream = graph.observer.streams.get("soak")
    if stream is None or not (stream.processed >= state["next_row"] or ended or force):
        return
    if stream.processed == state["last_count"] and not (force and not rows):
        return
    window = recent_latencies(stream.latency_s, stream.latency_s.count - state["last_count"])
    state["last_count"] = stream.latency_s.count
    p50, p99 = (np.percentile(window, [50, 99]) * 1000.0) if window.size else (float("nan"),) * 2
    dropped = sum(graph.observer.dropped_by_reason("soak").values())
    rows.append({"written": stream.processed, "in": stream.frames_in, "dropped": dropped,
                 "elapsed_s": round(time.monotonic() - t0, 1), "rss_mib": round(rss_mib(), 1),
                 "heap_mib": None if (heap := heap_in_use_mib()) is None else round(heap, 1),
                 "fds": open_fds(), "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1),
                 "after_end": ended})
    print(json.dumps(rows[-1]), flush=True)
    state["next_row"] = (stream.processed // args.every + 1) * args.every


def rss_trend(running: list) -> float | None:
    """RSS growth in MiB per 10,000 frames written: the least-squares slope over the rows taken while
    running. The first and last rows each carry the allocator's minute-to-minute swing (about
    +-1.5 MiB at 320x240), which the slope over every row averages out."""
    if len(running) < 3:
        return None
    return float(np.polyfit([r["written"] for r in running], [r["rss_mib"] for r in running], 1)[0]) * 10_000


def summarise(args, rows, report, segment_s) -> dict:
    running = [r for r in rows if not r["after_end"]]  # the last row may come after the outputs closed
    warm, end = (running[0], running[-1]) if running else ({}, {})
    growth = (end["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"] * 100 if running else None
    trend = rss_trend(running)
    frames = report.streams["soak"]["frames"] if report else {}
    return {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "camera": args.input and "(given URI)" or f"synthetic:traffic {args.size} at {args.fps:g} frames/s",
            "config": os.path.relpath(args.config, ROOT), "segment_s": segment_s,
            "frames_target": args.frames, "frames": frames, "rows": rows,
            "rss_growth_pct_after_warmup": None if growth is None else round(growth, 2),
            "rss_trend_mib_per_10k_frames": None if trend is None else round(trend, 3),
            "fds": [r["fds"] for r in running], "errors": report.errors if report else ["no report"]}


def markdown(out: dict) -> str:
    f = out["frames"]
    stopped = " (stopped by a signal before its end)" if out.get("interrupted") else ""
    lines = ["", f"### Soak: {out['camera']}, `{out['config']}`, segments every "
             f"{out['segment_s'] or 'n/a'} s{stopped}", "",
             f"{f.get('in', 0)} frames read ({out['frames_target']} planned), {f.get('processed', 0)} written, "
             f"{f.get('dropped', 0)} dropped {f.get('dropped_by_reason', {})}; RSS growth from the first to "
             f"the last row while running {out['rss_growth_pct_after_warmup']} % (least-squares trend over the rows "
             f"{out.get('rss_trend_mib_per_10k_frames')} MiB per 10,000 frames); open fds while running "
             f"{sorted(set(out['fds']))}; {out.get('segments', 0)} segments; "
             f"machine {out['machine']['cores']} cores (shared).", "",
             "| frames written | elapsed s | frames in | dropped | RSS MiB | heap in use MiB | open fds | p50 ms "
             "| p99 ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        written = f"{r['written']} (after the end)" if r["after_end"] else r["written"]
        lines.append(f"| {written} | {r['elapsed_s']} | {r['in']} | {r['dropped']} | {r['rss_mib']} | "
                     f"{r.get('heap_mib', '')} | "
                     f"{r['fds']} | {r['p50_ms']} | {r['p99_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
