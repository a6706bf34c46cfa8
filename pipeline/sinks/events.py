"""``events.jsonl``: one JSON line per processed frame.

Keys: ``index``, ``pts``, ``objects`` (``frame.data["objects"]`` as the blob
stage wrote them: box, area, track id), ``counts`` (per zone), and
``haze_score`` / ``dehaze_applied`` when a dehazing stage set them, ``stabilize``
(camera motion: dx, dy, rotation, zoom, confidence, status) when a background
stage compensated camera motion (pipeline.stabilize).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.frame import Frame
from pipeline.sinks.atomic import commit, partial_path

_OPTIONAL = ("haze_score", "dehaze_applied", "crossings", "stabilize")


def _plain(value):
    """json.dumps fallback for numpy scalars and arrays coming out of stages."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def event_record(frame: Frame) -> dict:
    data = frame.data
    record = {
        "index": frame.index,
        "pts": frame.pts,
        "objects": data.get("objects", []),
        "counts": data.get("counts", {}),
    }
    for key in _OPTIONAL:
        if key in data:
            record[key] = data[key]
    return record


class EventsSink:
    """``events.jsonl``, or in a segment ``events/<stem>.open.jsonl`` renamed to ``<stem>.jsonl`` on close.

    A segment's file is line-buffered: every line reaches the file as the frame
    is written, so the open file is valid JSONL up to its last line at any time
    (also after ``kill -9``).
    """

    filename = "events.jsonl"
    kind = "events"  # folder of its segments

    def __init__(self, folder: Path, *, segment=None):
        if segment is None:
            self.path = Path(folder) / self.filename
            self._partial = partial_path(self.path)
            self._file = open(self._partial, "w", encoding="utf-8")
        else:
            self.path = segment.final(self.kind)
            self._partial = segment.open(self.kind)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._partial, "w", encoding="utf-8", buffering=1)
        self._encoder = json.JSONEncoder(default=_plain, separators=(",", ":"), allow_nan=False)
        self.lines = 0

    @property
    def paths(self):
        return [self.path]

    def write(self, frame: Frame) -> None:
        self._file.write(self._encoder.encode(event_record(frame)) + "\n")  # one write: never half a line
        self.lines += 1

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        commit(self._partial, self.path)
