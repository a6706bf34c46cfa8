"""``summary.json``: frames in, processed, dropped and why; frames/s; per-stage latency; errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.sinks.atomic import write_bytes_atomic


def latency_stats(samples_s) -> dict:
    """p50/p99/mean in milliseconds of a list of durations in seconds."""
    if len(samples_s) == 0:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None}
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p99 = np.percentile(a, [50, 99])
    return {"count": int(a.size), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(a.mean()), 3)}


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(Path(path), (json.dumps(obj, indent=2, default=_plain) + "\n").encode("utf-8"))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class LatencyWindow:
    """The most recent ``capacity`` durations, in a preallocated array.

    A camera can run for weeks: keeping every sample would grow without bound,
    so p50/p99 describe the last ``capacity`` frames (all of them for a file
    shorter than that).

    The array is written once here, not left to ``np.zeros``: zeroed memory is
    mapped lazily, so a fresh window would add its 0.8 MB to the resident size
    page by page over its first 100,000 frames and look like a leak in a soak.
    """

    def __init__(self, capacity: int = 100_000):
        self._samples = np.full(capacity, np.nan, np.float64)
        self._next = 0
        self.count = 0  # samples recorded in total

    def add(self, seconds: float, times: int = 1) -> None:
        cap = self._samples.size
        for _ in range(min(times, cap)):
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % cap
        self.count += times

    def values(self) -> np.ndarray:
        return self._samples[: min(self.count, self._samples.size)]

    def __len__(self) -> int:
        return min(self.count, self._samples.size)
