"""The batch driver: plans from the manifest and the disk, hands units to workers, records every step.

Planning (every run, so re-running the same command resumes):

* ``DIR/<name>/`` exists and passes ``check_output_set`` -> done, not redone;
  one that fails the check (left by something else) is removed, then redone;
* an input whose failures in the manifest exceed ``retries`` -> failed, not retried;
* anything else -> queued. Hidden temporary folders of killed runs are removed.

Running: each idle worker gets the next queued unit (``running`` on that
worker); its result is ``done`` or ``failed``; a failed unit with attempts
left is queued again; a worker that dies fails its unit (its attempt counts)
and is replaced while work remains. One driver per DIR (a lock file).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.batch.inputs import WorkUnit, name_units
from pipeline.batch.manifest import MANIFEST_NAME, Manifest, read_history
from pipeline.batch.worker import TMP_DIR, check_output_set, one_line
from pipeline.errors import ConfigError, PipelineError, StageError
from pipeline.sinks import inside, safe_name, write_json_atomic

LOCK_NAME = ".batch.lock"
#: idle workers that may die (not while holding a unit) before the batch gives up on the pool
MAX_IDLE_LOSSES = 3


@dataclass
class Entry:
    """The driver's view of one input in this run."""

    unit: WorkUnit
    state: str = "queued"
    failures: int = 0
    attempts: int = 0
    frames: int | None = None
    seconds: float | None = None
    worker: str | None = None
    error: str | None = None
    note: str | None = None
    ran_here: bool = False  # processed in this run (not skipped)

    def row(self) -> dict:
        d = {"input": self.unit.masked, "name": self.unit.name, "state": self.state, "attempts": self.attempts,
             "frames": self.frames, "seconds": self.seconds, "worker": self.worker, "error": self.error}
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class BatchReport:
    entries: list[Entry]
    wall_s: float
    workers: int
    engine: str
    interrupted: bool = False
    frames_here: int = 0
    summary_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(1 for e in self.entries if e.state == state)


class BatchRun:
    """One invocation of ``hazeflow batch`` over ``inputs`` (URIs already expanded) into ``root``."""

    def __init__(self, config, root: str | Path, inputs: list[str], *, retries: int = 1,
                 progress: bool = False):
        if retries < 0:
            raise ConfigError("--retries", f"must be >= 0, got {retries}")
        self.config = config
        self.root = Path(root).resolve()
        self.inputs = inputs
        self.retries = retries
        self.show_progress = progress
        self.manifest_path = self.root / MANIFEST_NAME

    # ------------------------------------------------------------ planning
    def plan(self, manifest: Manifest) -> list[Entry]:
        history = read_history(self.manifest_path)
        units = name_units(self.inputs, {uri: h.name for uri, h in history.items()})
        shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)
        entries = []
        for unit in units:
            h = history.get(unit.masked)
            e = Entry(unit, failures=h.failures if h else 0, attempts=h.attempts if h else 0)
            final = self.root / unit.name
            if final.exists():
                try:
                    e.frames = check_output_set(final)
                    e.state = "done"
                    last = h.last if h else None
                    if last and last.get("state") == "done":
                        e.seconds, e.worker = last.get("seconds"), last.get("worker")
                    else:  # published by a worker whose driver died before writing it down
                        manifest.append("done", unit.input, unit.name, frames=e.frames,
                                        note="found complete on disk")
                    entries.append(e)
                    continue
                except PipelineError as err:
                    shutil.rmtree(final, ignore_errors=True)
                    e.note = one_line(f"removed an incomplete output folder ({err.cause})")
            if e.failures > self.retries:
                e.state, e.error = "failed", (h.last or {}).get("error") if h else None
                e.note = f"not retried: failed {e.failures} times (--retries {self.retries})"
            else:
                manifest.append("queued", unit.input, unit.name, note=e.note)
            entries.append(e)
        return entries

    # ------------------------------------------------------------ running
    def run(self, make_pool, workers: int, hold_until_ready: bool = False) -> BatchReport:
        """``make_pool()`` returns a LocalPool or RayPool; ``workers`` is the most slots to start.

        ``hold_until_ready``: hand out no unit before every worker is ready (benchmarks, so that
        throughput is measured with all workers running; ``extra["all_ready_s"]`` says when)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.root), Manifest(self.manifest_path) as manifest:
            entries = self.plan(manifest)
            queue = deque(e for e in entries if e.state == "queued")
            n = max(1, min(workers, len(queue)))
            t0 = time.monotonic()
            report = BatchReport(entries, 0.0, n if queue else 0, "none")
            if queue:
                pool = make_pool()
                report.engine = pool.engine
                try:
                    self._schedule(pool, n, queue, manifest, entries, report, t0, hold_until_ready)
                except KeyboardInterrupt:
                    report.interrupted = True
                    pool.terminate()
                    for e in entries:
                        if e.state == "running":  # left 'running' in the manifest: redone on resume
                            _remove_leftovers(self.root, e)
                except BaseException:
                    pool.terminate()
                    raise
                else:
                    pool.close()
            report.wall_s = time.monotonic() - t0
            _remove_if_empty(self.root / TMP_DIR)
            report.summary_path = self.write_summary(report)
        return report

    def _schedule(self, pool, n, queue, manifest, entries, report, t0, hold: bool = False) -> None:
        labels: dict[int, str] = {}
        idle: deque[int] = deque()
        busy: dict[int, Entry] = {}
        idle_losses = 0
        for slot in range(n):
            pool.start(slot)
        bar = _Bar(entries, self.show_progress)
        try:
            while queue or busy:
                for kind, slot, payload in pool.events(0.2):
                    if kind == "ready":
                        labels[slot] = payload
                        idle.append(slot)
                        report.extra.setdefault("first_ready_s", round(time.monotonic() - t0, 3))
                        if len(labels) == n:
                            report.extra.setdefault("all_ready_s", round(time.monotonic() - t0, 3))
                    elif kind == "start_failed":
                        raise StageError("batch worker", payload)
                    elif kind == "result":
                        entry = busy.pop(slot)
                        self._finish(entry, payload, manifest, queue, report)
                        idle.append(slot)
                    elif kind == "lost":
                        labels.pop(slot, None)
                        entry = busy.pop(slot, None)
                        if entry is not None:
                            _remove_leftovers(self.root, entry)
                            cause = f"worker {entry.worker} was lost while processing this input: {payload}"
                            self._finish(entry, {"state": "failed", "error": cause, "worker": entry.worker},
                                         manifest, queue, report)
                        else:
                            idle_losses += 1
                            if idle_losses > MAX_IDLE_LOSSES:
                                raise StageError("batch worker", f"workers keep dying while idle ({payload})")
                        if queue or busy:
                            pool.start(slot)  # a fresh worker in the same slot
                while idle and queue and not (hold and "all_ready_s" not in report.extra):
                    slot, entry = idle.popleft(), queue.popleft()
                    entry.attempts += 1
                    entry.state, entry.worker = "running", labels[slot]
                    manifest.append("running", entry.unit.input, entry.unit.name, worker=labels[slot],
                                    attempt=entry.attempts)
                    pool.submit(slot, {"input": entry.unit.input, "name": entry.unit.name,
                                       "masked": entry.unit.masked, "attempt": entry.attempts})
                    busy[slot] = entry
                bar.update(report, len(busy), time.monotonic() - t0)
        finally:
            bar.close(report, len(busy), time.monotonic() - t0)

    def _finish(self, entry: Entry, result: dict, manifest, queue, report) -> None:
        entry.ran_here = True
        entry.worker = result.get("worker", entry.worker)
        entry.seconds = result.get("seconds")
        if result["state"] == "done":
            entry.state, entry.frames, entry.error = "done", result["frames"], None
            entry.note = result.get("note")
            report.frames_here += entry.frames
            manifest.append("done", entry.unit.input, entry.unit.name, worker=entry.worker,
                            attempt=result.get("attempt"), frames=entry.frames, seconds=entry.seconds, note=entry.note)
            return
        entry.failures += 1
        entry.state, entry.error = "failed", result["error"]
        manifest.append("failed", entry.unit.input, entry.unit.name, worker=entry.worker,
                        attempt=result.get("attempt", entry.attempts), seconds=entry.seconds, error=entry.error)
        if entry.failures <= self.retries:
            entry.state = "queued"
            manifest.append("queued", entry.unit.input, entry.unit.name,
                            note=f"retry {entry.failures} of {self.retries}")
            queue.append(entry)

    # ------------------------------------------------------------ results
    def write_summary(self, report: BatchReport) -> Path:
        """``DIR/summary.json``: every input's state plus each output set's own summary under ``streams``."""
        streams, frames_in, frames_done = {}, 0, 0
        for e in report.entries:
            if e.state != "done":
                continue
            try:
                s = json.loads((self.root / e.unit.name / "summary.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            streams[e.unit.name] = s
            frames_in += s["frames"]["in"]
            frames_done += s["frames"]["processed"]
        wall = report.wall_s
        summary = {
            "batch": {"inputs": len(report.entries), "done": report.count("done"), "failed": report.count("failed"),
                      "unfinished": len(report.entries) - report.count("done") - report.count("failed"),
                      "engine": report.engine, "workers": report.workers, "retries": self.retries,
                      "manifest": MANIFEST_NAME, "frames_this_run": report.frames_here,
                      "fps_this_run": round(report.frames_here / wall, 2) if wall > 0 and report.frames_here else None},
            "inputs": [e.row() for e in report.entries],
            "streams": streams,
            "frames": {"in": frames_in, "processed": frames_done, "dropped": frames_in - frames_done},
            "errors": [{"where": e.unit.masked, "error": e.error} for e in report.entries if e.state == "failed"],
            "interrupted": report.interrupted, "running": False, "wall_s": round(wall, 3),
        }
        path = self.root / "summary.json"
        write_json_atomic(path, summary)
        return path


@dataclass
class _Bar:
    """tqdm over inputs: done / failed / running and frames/s of this run (stderr on a terminal only)."""

    entries: list
    enabled: bool

    def __post_init__(self):
        self.bar = None
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.entries), unit="input", dynamic_ncols=True, file=sys.stderr)

    def update(self, report: BatchReport, running: int, elapsed: float) -> None:
        if self.bar is None:
            return
        done, failed = report.count("done"), report.count("failed")
        self.bar.n = done + failed
        fps = report.frames_here / elapsed if elapsed > 0 else 0.0
        self.bar.set_postfix(done=done, failed=failed, running=running, fps=f"{fps:.1f}", refresh=False)
        self.bar.refresh()

    def close(self, report, running, elapsed) -> None:
        if self.bar is not None:
            self.update(report, running, elapsed)
            self.bar.close()


class _exclusive:
    """``DIR/.batch.lock`` held for the run: a second driver on the same DIR is refused."""

    def __init__(self, root: Path):
        self.path = root / LOCK_NAME

    def __enter__(self):
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise ConfigError(str(self.path.parent), "another `hazeflow batch` is writing to this folder") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()
        return False


def format_table(report: BatchReport, root: Path) -> str:
    """The final table: one row per input, then the totals."""
    rows = [("input", "state", "frames", "s", "frames/s", "worker / cause")]
    for e in report.entries:
        fps = f"{e.frames / e.seconds:.1f}" if e.frames and e.seconds else "-"
        last = e.error if e.state == "failed" else (e.worker or e.note or "")
        if e.state == "done" and not e.ran_here:
            last = "complete before this run"
        rows.append((e.unit.name, e.state, str(e.frames) if e.frames is not None else "-",
                     f"{e.seconds:.2f}" if e.seconds is not None else "-", fps, last or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths + [0]))).rstrip() for r in rows]
    done, failed = report.count("done"), report.count("failed")
    fps = f", {report.frames_here / report.wall_s:.1f} frames/s" if report.frames_here and report.wall_s > 0 else ""
    how = f"{report.workers} {report.engine} workers" if report.workers else "nothing left to run"
    lines.append(f"{done} done, {failed} failed of {len(report.entries)} inputs; {report.frames_here} frames "
                 f"processed in this run in {report.wall_s:.1f} s{fps} ({how}) -> {root / 'summary.json'}")
    return "\n".join(lines)


def _remove_leftovers(root: Path, entry: Entry) -> None:
    """The temporary folder a lost worker was writing (named as in ``BatchWorker.process``)."""
    pid = (entry.worker or "").rpartition(":")[2]
    if pid.isdigit():
        shutil.rmtree(inside(root, TMP_DIR, f"{safe_name(entry.unit.name)}.{pid}.{entry.attempts}"),
                      ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # absent, or a terminated worker's leftovers (removed by the next run)
        pass


def cpu_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
