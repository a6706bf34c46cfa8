"""``analytics.csv``: counts per line and direction, zone occupancy and speeds per time bin.

Fed by the ``analytics`` port of the analytics stage; a run without that stage writes no
file. Columns: ``stream, bin_start_s, name, kind, direction, count, mean_speed_kmh,
occupancy`` (``pipeline.analytics.bins``). The same rows, the totals, and per bin the haze
score, the share of frames dehazed, dwell times and queue lengths go into summary.json under
``analytics``. The file is written atomically when the stream (or its segment) ends: with
segmented outputs each segment gets ``analytics/<stem>.csv`` with the bins of its own frames
(a bin cut by a segment boundary appears in both files, each with its own frames), while
summary.json keeps the whole run.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.analytics.bins import BinTable, frame_time
from pipeline.frame import Frame
from pipeline.sinks.atomic import write_bytes_atomic

#: most recent bins listed in summary.json (a camera runs for weeks: 1440 one-minute bins = a day)
SUMMARY_BINS = 1440


class AnalyticsTotals:
    """The whole run's table of one stream when its outputs are cut into segments."""

    def __init__(self):
        self.table: BinTable | None = None


def _table(stream: str, result: dict, max_bins: int | None = None) -> BinTable:
    shapes = result["shapes"]
    return BinTable(stream, result["bin_s"], [l.name for l in shapes.lines], [z.name for z in shapes.zones],
                    max_bins=max_bins)


class AnalyticsSink:
    filename = "analytics.csv"
    kind = "analytics"  # folder of its segments

    def __init__(self, folder: Path, stream: str, *, segment=None, totals: AnalyticsTotals | None = None):
        self.path = Path(folder) / self.filename if segment is None else segment.final(self.kind)
        self.stream = stream
        self.totals = totals
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
            self.table = _table(self.stream, result)
        t = frame_time(frame)
        haze, dehazed = frame.data.get("haze_score"), frame.data.get("dehaze_applied")
        self.table.add(t, result, haze, dehazed)
        if self.totals is not None:
            if self.totals.table is None:
                # a camera's whole-run table holds the bins summary.json lists and folds older ones into
                # its totals (every bin is in its segment's CSV), so it stays the same size for months
                self.totals.table = _table(self.stream, result, max_bins=SUMMARY_BINS)
            self.totals.table.add(t, result, haze, dehazed)

    def summary(self) -> dict:
        table = self.totals.table if self.totals is not None else self.table
        return {} if table is None else {"analytics": table.summary(last_bins=SUMMARY_BINS)}

    def close(self) -> None:
        if self.table is None or self._written:
            return
        self.table.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, self.table.csv_text().encode("utf-8"))
        self._written = True
