"""Tracked objects -> line crossings, zone members and ground-plane speed, per frame.

Reads the ``objects`` the blob stage wrote (box and track id) and writes ``analytics`` (this
frame's crossings, zone members and speeds, the running totals and the shapes in pixels, read
by the analytics.csv sink and the preview) and ``crossings`` (for events.jsonl). Each object
also gets ``speed_kmh`` when a calibration is configured. Configured under ``analytics:``::

    - analytics:
        lines: {road: [[0.0, 0.55], [1.0, 0.45]]}           # A -> B; "in" = left of A->B to its right
        zones: {queue: [[0.1, 0.6], [0.5, 0.6], [0.5, 0.9], [0.1, 0.9]]}
        calibration: {image: [[x, y] x 4], ground: [[X, Y] x 4]}   # metres on the road
        bin_s: 60

Coordinates all within [0, 1] are fractions of the frame, otherwise pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipeline.analytics.bins import frame_time
from pipeline.analytics.counting import StreamAnalytics
from pipeline.analytics.geometry import parse_calibration, parse_lines, parse_zones
from pipeline.errors import ConfigError, StageError
from pipeline.frame import Frame
from pipeline.stages.base import Stage


class AnalyticsStage(Stage):
    name = "analytics"
    inputs = ("objects",)
    outputs = ("analytics", "crossings")
    max_batch = 8

    @dataclass(frozen=True)
    class Config:
        lines: dict = field(default_factory=dict)     # name -> [[x1, y1], [x2, y2]]
        zones: dict = field(default_factory=dict)     # name -> [[x, y], [x, y], [x, y], ...]
        calibration: dict | None = None               # {image: 4 points, ground: 4 points in metres}
        hysteresis: float = 3.0                       # pixels an anchor must pass beyond a line to change side
        recount: float = 0.3                          # a counted track back over a line by this x its height counts again (0 = off)
        parted: float = 0.3                           # a track out of a parted blob, across a line from its parent, counts
                                                      # once it moved on by this x its height (0 = off)
        bin_s: float = 60.0                           # length of a time bin of analytics.csv, seconds of pts
        speed_window_s: float = 1.0                   # path length used for one speed estimate
        speed_min_s: float = 0.2                      # shortest clean path that gives a speed
        forget_after: int = 250                       # frames after which an unseen track's state is dropped

        def __post_init__(self):
            parse_lines(self.lines)
            parse_zones(self.zones)
            parse_calibration(self.calibration)
            if not self.lines and not self.zones:
                raise ConfigError("stages.analytics", "needs at least one of lines or zones")
            names = list(self.lines) + list(self.zones)
            if len(set(map(str, names))) != len(names):
                raise ConfigError("stages.analytics", "a line and a zone share a name; names must be unique")
            for key, low in (("hysteresis", 0.0), ("recount", 0.0), ("parted", 0.0), ("bin_s", 1e-9), ("speed_window_s", 1e-9), ("speed_min_s", 1e-9)):
                if not getattr(self, key) >= low or not np.isfinite(getattr(self, key)):
                    raise ConfigError(f"stages.analytics.{key}", f"must be > 0, got {getattr(self, key)}"
                                      if low else f"must be >= 0, got {getattr(self, key)}")
            if self.forget_after < 1:
                raise ConfigError("stages.analytics.forget_after", f"must be >= 1, got {self.forget_after}")

    def __init__(self, config: "AnalyticsStage.Config | None" = None):
        self.config = config or self.Config(lines={"middle": [[0.0, 0.5], [1.0, 0.5]]})
        c = self.config
        self._lines = parse_lines(c.lines)
        self._zones = parse_zones(c.zones)
        self._calibration = parse_calibration(c.calibration)
        self._streams: dict[str, StreamAnalytics] = {}

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        for frame in frames:
            objects = frame.data.get("objects")
            if objects is None:
                raise StageError(f"stream {frame.stream} frame {frame.index}",
                                 "analytics needs 'objects' from the blobs stage before it")
            state = self._state(frame)
            objects = [o for o in objects if not o.get("fragment")]  # shadow or smear pieces
            boxes = np.array([o["box"] for o in objects], np.float64).reshape(-1, 4)
            tracks = [int(o["track"]) for o in objects]
            occluded = [bool(o.get("occluded")) for o in objects]
            parents = {int(o["track"]): int(o["parent"]) for o in objects if "parent" in o}
            result = state.update(tracks, boxes, frame_time(frame), occluded, parents)
            for obj, track in zip(objects, tracks):
                speed = result["speeds"].get(track)
                if speed is not None:
                    obj["speed_kmh"] = round(speed, 1)
            result["bin_s"] = self.config.bin_s
            result["totals"] = {line.name: dict(line.totals) for line in state.lines}
            result["shapes"] = state
            frame.data["analytics"] = result
            frame.data["crossings"] = result["crossings"]
        return frames

    def _state(self, frame: Frame) -> StreamAnalytics:
        h, w = frame.image.shape[:2]
        state = self._streams.get(frame.stream)
        if state is None or state.size != (w, h):
            c = self.config
            state = self._streams[frame.stream] = StreamAnalytics(
                self._lines, self._zones, self._calibration, w, h, c.hysteresis, c.speed_window_s, c.forget_after,
                c.speed_min_s, c.recount, c.parted)
        return state

    def reset_stream(self, stream: str) -> None:
        self._streams.pop(stream, None)
