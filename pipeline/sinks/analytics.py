"""``analytics.csv``: counts per line and direction, zone occupancy and speeds per time bin.

Fed by the ``analytics`` port of the analytics stage; a run without that stage writes no
file. Columns: ``stream, bin_start_s, name, kind, direction, count, mean_speed_kmh,
occupancy`` (``pipeline.analytics.bins``). The same rows, the totals, and per bin the haze
score, the share of frames dehazed, dwell times and queue lengths go into summary.json under
``analytics``. The file is written once, atomically, when the stream ends.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.analytics.bins import BinTable
from pipeline.frame import Frame
from pipeline.sinks.atomic import write_bytes_atomic

#: clock of a source without timestamps (image folders), frames per second
_DEFAULT_FPS = 25.0


class AnalyticsSink:
    filename = "analytics.csv"

    def __init__(self, folder: Path, stream: str):
        self.path = Path(folder) / self.filename
        self.stream = stream
        self.table: BinTable | None = None
        self._written = False

    @property
    def paths(self):
        return [self.path] if self._written else []

    def write(self, frame: Frame) -> None:
        result = frame.data.get("analytics")
        if result is None:
            return
        if self.table is None:
            shapes = result["shapes"]
            self.table = BinTable(self.stream, result["bin_s"], [l.name for l in shapes.lines],
                                  [z.name for z in shapes.zones])
        t = frame.pts if frame.pts is not None else (frame.index - 1) / _DEFAULT_FPS
        self.table.add(float(t), result, frame.data.get("haze_score"), frame.data.get("dehaze_applied"))

    def summary(self) -> dict:
        return {} if self.table is None else {"analytics": self.table.summary()}

    def close(self) -> None:
        if self.table is None or self._written:
            return
        self.table.close()
        write_bytes_atomic(self.path, self.table.csv_text().encode("utf-8"))
        self._written = True
