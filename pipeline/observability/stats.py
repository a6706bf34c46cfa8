"""What a run counts, and the ``summary.json`` files made from it.

The graph reports what happens (a frame read, a stage call, a frame written, a
drop with its reason, an error, a stream's end); :class:`Observer` keeps the
numbers, notices stalls, logs the events an operator should see, and writes the
summaries. Exporters (``pipeline.observability.metrics``) read the same numbers
at scrape time, so the frame path pays for one counter update, not one per
exporter.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.sinks import inside, safe_name, write_json_atomic
from pipeline.sources.base import mask_credentials
from pipeline.sinks.summary import LatencyWindow, latency_stats

log = logging.getLogger("hazeflow.graph")

#: seconds a live camera may send nothing before it counts as stalled (``inputs[].stall_timeout_s``)
DEFAULT_STALL_TIMEOUT_S = 10.0
#: at most one drop line per stream this often (a saturated camera drops many frames a second)
DROP_LOG_INTERVAL_S = 5.0
REASON_SHUTDOWN = "shutdown"
REASON_STAGE_ERROR = "stage error"
#: drops that follow an error or a stop, which the run reports on its own: no drop line for them
QUIET_DROP_REASONS = frozenset({REASON_STAGE_ERROR, REASON_SHUTDOWN})
#: upper bounds (seconds) of the stage latency histogram buckets
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative-ready bucket counts and a sum, for a Prometheus histogram read at scrape time."""

    def __init__(self, bounds=LATENCY_BUCKETS_S):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


@dataclass
class StreamStats:
    name: str
    input: str
    live: bool
    fps_hint: float
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    frames_in: int = 0
    processed: int = 0
    dropped: Counter = field(default_factory=Counter)
    latency_s: LatencyWindow = field(default_factory=LatencyWindow)  # read -> written, per frame
    errors: list = field(default_factory=list)
    t_first_in: float | None = None
    t_last_in: float | None = None
    t_last_out: float | None = None
    ended: bool = False  # outputs finalised
    source_done: bool = False  # the reader returned (end of input, fault or stop)
    failed: bool = False  # the reader returned with an error
    stalls: int = 0
    stalled_since: float | None = None
    dehaze_applied: bool | None = None  # the haze gate's last decision
    haze_score: float | None = None
    logged_drops: Counter = field(default_factory=Counter)  # drops already reported in a log line
    t_drop_log: float = 0.0


@dataclass
class StageStats:
    name: str
    frames: int = 0
    calls: int = 0
    busy_s: float = 0.0
    latency_s: LatencyWindow = field(default_factory=LatencyWindow)  # duration of the call each frame was in
    histogram: Histogram = field(default_factory=Histogram)
    engine: dict | None = None  # a learned stage's engine_info: backend, precision, how it was chosen, parity

    def add_call(self, seconds: float, frames: int) -> None:
        self.calls += 1
        self.frames += frames
        self.busy_s += seconds
        self.latency_s.add(seconds, frames)
        self.histogram.observe(seconds, frames)

    def as_dict(self) -> dict:
        d = latency_stats(self.latency_s.values())
        out = {"frames": self.frames, "calls": self.calls,
               "fps": round(self.frames / self.busy_s, 2) if self.busy_s > 0 else None,
               "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "mean_ms": d["mean_ms"]}
        if self.engine:
            out["engine"] = self.engine
        return out


@dataclass
class RunReport:
    """What ``Graph.run`` returns; ``error`` is the first failure (None on success)."""

    streams: dict
    stages: dict
    errors: list
    interrupted: bool
    wall_s: float
    outputs: dict  # stream -> list of paths
    summary_paths: list
    error: PipelineError | None = None
    failed_inputs: list = field(default_factory=list)  # inputs that could not be opened (the run went on)

    @property
    def frames_processed(self) -> int:
        return sum(s["frames"]["processed"] for s in self.streams.values())


class Observer:
    """The numbers of one run, updated by the graph's threads (all methods are thread-safe).

    ``stage_names``: the stages in order; ``sinks`` is added as the last one.
    ``queues`` (set by the graph once it built them): the queue in front of
    each stage and of the sinks, read for depths, waits and drops.
    """

    def __init__(self, output: str | Path, stage_names=()):
        self.output = Path(output)
        self.lock = threading.Lock()
        self.streams: dict[str, StreamStats] = {}
        self.stages: dict[str, StageStats] = {n: StageStats(n) for n in stage_names}
        self.sinks = StageStats("sinks")  # encoding and writing, timed like a stage
        self.errors: list[dict] = []
        self.graph_errors: list[dict] = []  # errors not tied to one stream (stage, sink)
        self.failed_inputs: list[dict] = []  # inputs that could not be opened; the others ran
        self.first_error: PipelineError | None = None
        self.interrupted = False
        self.queues: list = []
        self.outputs: dict = {}  # stream -> StreamOutputs (segment counts)
        self.sources: dict[str, object] = {}
        self.t0: float | None = None
        self.finished = False
        # (stream, stage) -> (backend, precision, device) its frames last ran on; written by each stage's
        # own worker only (one key per stage), read by the summaries
        self.engines: dict[tuple[str, str], tuple] = {}

    # ------------------------------------------------------------ set-up
    def add_stream(self, name: str, input: str, live: bool, fps: float, source=None,
                   stall_timeout_s: float | None = None) -> StreamStats:
        stats = StreamStats(name, input, live, float(fps),
                            DEFAULT_STALL_TIMEOUT_S if stall_timeout_s is None else float(stall_timeout_s))
        with self.lock:
            self.streams[name] = stats
            if source is not None:
                self.sources[name] = source
        return stats

    def start(self) -> None:
        self.t0 = time.monotonic()

    def watch(self, queues, outputs: dict) -> None:
        """The graph's queues (depths, waits, drops) and per-stream outputs (segment counts)."""
        self.queues = list(queues)
        self.outputs = dict(outputs)

    # ------------------------------------------------------------ events from the graph
    def stage_ready(self, stage: str, engine: dict | None = None) -> None:
        """A stage's setup ran; ``engine``: its engine_info (backend, precision, parity), if any."""
        self.stages[stage].engine = engine

    def frame_in(self, stream: str, now: float) -> int:
        """A frame was read; returns the stream's frames read so far."""
        s = self.streams[stream]
        with self.lock:
            s.frames_in += 1
            if s.t_first_in is None:
                s.t_first_in = now
            s.t_last_in = now
            resumed = s.stalled_since
            s.stalled_since = None
            n = s.frames_in
        if resumed is not None:
            log.info("%s: frames again after %.1f s without any", stream, now - resumed,
                     extra={"stream": stream, "event": "stall_end", "stalled_s": round(now - resumed, 3)})
        return n

    def stage_call(self, stage: str, seconds: float, frames: int, streams=(), engine: dict | None = None) -> None:
        """A stage call over ``frames`` frames of ``streams`` took ``seconds``; ``engine``: the stage's
        engine_info at that call (a learned stage's backend, precision, device)."""
        self.stages[stage].add_call(seconds, frames)  # one writer per stage: its worker
        if engine:
            self._engine_seen(stage, engine, streams)

    def _engine_seen(self, stage: str, engine: dict, streams) -> None:
        """One INFO line per stream when its frames first run on an engine, or on another one than before
        (a backend chosen, changed or fallen back to); nothing while it stays the same."""
        key = engine_key(engine)
        for stream in set(streams):
            before = self.engines.get((stream, stage))
            if before == key:
                continue
            self.engines[(stream, stage)] = key
            why = engine.get("chosen_by")
            how = f" ({why})" if why else ""
            if before is None:
                log.info("%s: %s runs on %s%s", stream, stage, " ".join(key), how,
                         extra={"stream": stream, "event": "engine", "stage": stage, "backend": key[0]})
            else:
                log.info("%s: %s engine changed from %s to %s%s", stream, stage, " ".join(before), " ".join(key), how,
                         extra={"stream": stream, "event": "engine", "stage": stage, "backend": key[0],
                                "previous": before[0]})

    def frame_written(self, frame, seconds: float, now: float) -> None:
        """The sinks wrote ``frame`` in ``seconds``; its read time is ``frame.data['_t_in']``."""
        self.sinks.add_call(seconds, 1)
        s = self.streams[frame.stream]
        t_in = frame.data.pop("_t_in", None)
        applied = frame.data.get("dehaze_applied")
        with self.lock:
            s.processed += 1
            s.t_last_out = now
            if t_in is not None:
                s.latency_s.add(now - t_in)
            if applied is not None:
                s.dehaze_applied = bool(applied)
                score = frame.data.get("haze_score")
                s.haze_score = float(score) if score is not None else None

    def dropped(self, stream: str, reason: str, n: int = 1) -> None:
        with self.lock:
            self.streams[stream].dropped[reason] += n

    def segments(self, stream: str) -> int:
        """Segments the stream's outputs started so far (0 when they write one file per input)."""
        return int(getattr(self.outputs.get(stream), "segments", 0) or 0)

    def error(self, error: PipelineError, stream: str | None = None) -> None:
        entry = {"where": error.input, "error": error.cause, "type": type(error).__name__}
        with self.lock:
            self.errors.append(entry)
            if self.first_error is None:
                self.first_error = error
            if stream is not None:
                self.streams[stream].errors.append(entry)
            else:
                self.graph_errors.append(entry)
        # debug only: the CLI prints the first error as its one line, summary.json keeps them all
        log.debug("%s: %s", error.input, error.cause, extra={"stream": stream, "event": "error"})

    def input_failed(self, error: PipelineError) -> None:
        """An input that could not be opened (before the run): listed in summary.json, not a stream of its own.

        Not ``first_error``: that one stops the graph, and the inputs that did open must run."""
        entry = {"where": mask_credentials(error.input), "error": mask_credentials(error.cause),
                 "type": type(error).__name__}
        with self.lock:
            self.errors.append(entry)
            self.failed_inputs.append(entry)
        log.warning("%s: cannot be opened, the other inputs go on: %s", error.input, error.cause,
                    extra={"event": "input_failed"})

    def source_done(self, stream: str, failed: bool) -> None:
        with self.lock:
            s = self.streams[stream]
            s.source_done = True
            s.failed = failed

    def stream_ended(self, stream: str) -> bool:
        """Mark the stream's outputs finalised; False if they already were."""
        with self.lock:
            s = self.streams[stream]
            if s.ended:
                return False
            s.ended = True
            return True

    # ------------------------------------------------------------ periodic checks
    def check_stalls(self, now: float | None = None) -> list[str]:
        """Live streams that just went ``stall_timeout_s`` without a frame after their first one
        (each stall counted once, until frames come again)."""
        now = time.monotonic() if now is None else now
        stalled = []
        with self.lock:
            for s in self.streams.values():
                # before its first frame a camera is connecting (its failures are its own events)
                if not s.live or s.source_done or s.stalled_since is not None or s.t_last_in is None:
                    continue
                if now - s.t_last_in >= s.stall_timeout_s:
                    s.stalls += 1
                    s.stalled_since = s.t_last_in
                    stalled.append(s.name)
        for name in stalled:
            s = self.streams[name]
            log.warning("%s: stalled: no frame for %.1f s (stall_timeout_s %g); reconnecting", name,
                        now - s.stalled_since, s.stall_timeout_s,
                        extra={"stream": name, "event": "stall", "stalls": s.stalls})
        return stalled

    def log_drops(self, now: float | None = None, force: bool = False) -> None:
        """One line per stream with new drops, at most every ``DROP_LOG_INTERVAL_S``."""
        now = time.monotonic() if now is None else now
        for name, s in self.streams.items():
            if not force and now - s.t_drop_log < DROP_LOG_INTERVAL_S:
                continue
            total = {r: n for r, n in self.dropped_by_reason(name).items() if r not in QUIET_DROP_REASONS}
            new = {r: n - s.logged_drops.get(r, 0) for r, n in total.items() if n > s.logged_drops.get(r, 0)}
            if not new:
                continue
            s.logged_drops = Counter(total)
            s.t_drop_log = now
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(new.items()))
            log.warning("%s: dropped %d frames (%s)", name, sum(new.values()), reasons,
                        extra={"stream": name, "event": "drop", "dropped": new})

    # ------------------------------------------------------------ reads
    def pending_queue_drops(self) -> dict:
        """(stream, reason) -> frames the live queues dropped and have not handed over yet."""
        pending: dict = {}
        for q in self.queues:
            for key, n in q.drop_counts().items():
                pending[key] = pending.get(key, 0) + n
        return pending

    def collect_queue_drops(self) -> None:
        """Move the queues' drop counts into the streams' own (at the end of the run)."""
        for q in self.queues:
            for (stream, reason), n in q.take_drops().items():
                self.dropped(stream, reason, n)

    def dropped_by_reason(self, stream: str, pending: dict | None = None) -> dict:
        pending = self.pending_queue_drops() if pending is None else pending
        with self.lock:
            out = dict(self.streams[stream].dropped)
        for (name, reason), n in pending.items():
            if name == stream:
                out[reason] = out.get(reason, 0) + n
        return out

    def seconds_since_frame(self, stream: str, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        s = self.streams[stream]
        last = s.t_last_in if s.t_last_in is not None else self.t0
        return None if last is None else now - last

    def readiness(self, now: float | None = None) -> dict[str, str]:
        """Streams that are not ready, with why: no frame within their stall timeout, or failed."""
        now = time.monotonic() if now is None else now
        bad = {}
        with self.lock:
            for s in self.streams.values():
                if s.failed:
                    bad[s.name] = "input failed"
                elif s.source_done:
                    continue  # a file that ended is done, not unready
                elif s.t_last_in is None:
                    bad[s.name] = "no frame yet"
                elif now - s.t_last_in > s.stall_timeout_s:
                    bad[s.name] = f"no frame for {now - s.t_last_in:.1f} s"
            for entry in self.failed_inputs:
                bad[entry["where"]] = "cannot be opened"
        if self.t0 is None:
            bad["run"] = "not started"
        return bad

    def progress(self) -> dict:
        """Totals for a progress bar: frames in, processed, dropped, frames/s."""
        with self.lock:
            fin = sum(s.frames_in for s in self.streams.values())
            done = sum(s.processed for s in self.streams.values())
            dropped = sum(sum(s.dropped.values()) for s in self.streams.values())
        dropped += sum(self.pending_queue_drops().values())
        elapsed = time.monotonic() - self.t0 if self.t0 else 0.0
        return {"in": fin, "processed": done, "dropped": dropped,
                "fps": done / elapsed if elapsed > 0 else 0.0}

    def queue_stats(self) -> dict:
        """Per queue (named after the stage it feeds): depth now, deepest, blocked puts and their wait."""
        return {q.name: q.stats() for q in self.queues}

    # ------------------------------------------------------------ summaries
    def write_summaries(self, outputs: dict, final: bool) -> RunReport | None:
        """summary.json per stream and for the run; ``final=False`` while running (``"running": true``,
        the live queues' drops added without moving them). The workers keep counting meanwhile: a
        snapshot that changes under it is skipped and taken at the next interval."""
        wall = time.monotonic() - self.t0
        try:
            pending = {} if final else self.pending_queue_drops()
            stages = {name: s.as_dict() for name, s in self.stages.items()}
            stages["sinks"] = self.sinks.as_dict()
            streams, paths = {}, {}
            for name, s in self.streams.items():
                out = outputs[name]
                paths[name] = out.paths()
                streams[name] = self._stream_summary(s, stages, out, wall, pending)
                streams[name]["running"] = not final
        except RuntimeError:  # a dict resized by a worker during the snapshot
            if final:
                raise
            return None
        summary_paths = []
        for name in streams:
            folder = inside(self.output, safe_name(name))
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "summary.json", streams[name])
            summary_paths.append(folder / "summary.json")
        self.output.mkdir(parents=True, exist_ok=True)
        total = sum(s.processed for s in self.streams.values())
        write_json_atomic(self.output / "summary.json", {
            "streams": streams, "stages": stages, "errors": list(self.errors), "interrupted": self.interrupted,
            "failed_inputs": list(self.failed_inputs),
            "running": not final, "wall_s": round(wall, 3), "fps": round(total / wall, 2) if wall > 0 else None,
            "frames": {"in": sum(s.frames_in for s in self.streams.values()), "processed": total,
                       "dropped": sum(st["frames"]["dropped"] for st in streams.values())},
            "queues": self.queue_stats(),
        })
        summary_paths.append(self.output / "summary.json")
        if not final:
            return None
        self.finished = True
        return RunReport(streams=streams, stages=stages, errors=list(self.errors), interrupted=self.interrupted,
                         wall_s=wall, outputs=paths, summary_paths=summary_paths, error=self.first_error,
                         failed_inputs=list(self.failed_inputs))

    def _stream_summary(self, s: StreamStats, stages: dict, out, wall: float, pending: dict) -> dict:
        span = (s.t_last_out - s.t_first_in) if (s.t_last_out and s.t_first_in) else 0.0
        dropped = dict(s.dropped)
        for (stream, reason), n in pending.items():
            if stream == s.name:
                dropped[reason] = dropped.get(reason, 0) + n
        source = self.sources.get(s.name)
        return {
            "stream": s.name,
            "input": s.input,
            "live": s.live,
            "policy": "drop_oldest" if s.live else "block",
            "frames": {"in": s.frames_in, "processed": s.processed, "dropped": sum(dropped.values()),
                       "dropped_by_reason": dropped},
            "fps": round(s.processed / span, 2) if span > 0 else None,
            "wall_s": round(wall, 3),
            "latency": {"end_to_end": latency_stats(s.latency_s.values())},
            "stages": stages,
            # this stream's own errors, then those that stopped the whole graph
            "errors": list(s.errors) + list(self.graph_errors),
            "source_events": list(getattr(source, "events", []) or []),
            "stalls": s.stalls,
            # the engine each learned stage ran this stream's frames on (the last one, if it changed)
            "engines": {stage: " ".join(key) for (stream, stage), key in list(self.engines.items())
                        if stream == s.name},
            "interrupted": self.interrupted,
            "outputs": sorted(str(p.relative_to(out.folder)) for p in out.paths()),
            **out.summaries(),  # e.g. "analytics": totals and time bins
        }


def engine_key(engine: dict) -> tuple[str, str, str]:
    """(backend, precision, device) of a stage's engine_info: what a change of engine means."""
    return tuple(str(engine.get(k) or "?") for k in ("backend", "precision", "device"))


def recent_latencies(window: LatencyWindow, n: int) -> np.ndarray:
    """The last ``n`` samples of a LatencyWindow in the order they came (at most its capacity)."""
    n = max(0, min(int(n), len(window)))
    ring = window._samples
    return ring[(window._next - n + np.arange(n)) % ring.size].copy()
