"""Time bins of one stream: counts per line and direction, zone occupancy, speeds, haze.

Bins are ``bin_s`` seconds of the video's own clock (pts), so a file gives the same table
however fast it was processed. One bin holds, per line and direction, the vehicles that
crossed and their speeds; per zone, the frames with at least one vehicle in it (occupancy),
the vehicles in it per frame (queue length), the vehicles that entered and how long each
stayed (dwell, credited to the bin where the stay ended); and the frames' haze score and
whether they were dehazed.

Nothing here grows with the number of frames: per-frame values (haze score, speeds of the
vehicles in a zone) are kept as sums and counts. A table given ``max_bins`` (the whole-run
table of a live camera) folds its oldest bins into running totals, so a camera that runs for
months holds at most that many bins; its totals still count every bin, and its medians
(speed, dwell) describe the bins it holds.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from statistics import median

from pipeline.analytics.counting import IN, OUT

#: clock of a source without timestamps (image folders), frames per second
DEFAULT_FPS = 25.0


def frame_time(frame) -> float:
    """Seconds on the video's own clock: the pts, or the index at DEFAULT_FPS when there is none."""
    return float(frame.pts if frame.pts is not None else (frame.index - 1) / DEFAULT_FPS)


#: width of a bin of the speed histogram in summary.json, km/h
HISTOGRAM_KMH = 5

#: columns of analytics.csv, in this order
COLUMNS = ("stream", "bin_start_s", "name", "kind", "direction", "count", "mean_speed_kmh", "occupancy")


class _Bin:
    __slots__ = ("frames", "haze_sum", "haze_n", "dehazed", "counts", "speeds", "zone_frames", "zone_vehicles",
                 "zone_max", "zone_entered", "zone_speed_sum", "zone_speed_n", "dwell")

    def __init__(self):
        self.frames = 0
        self.haze_sum = 0.0  # haze scores of the frames that had one: their sum and how many
        self.haze_n = 0
        self.dehazed = 0
        self.counts: dict[tuple[str, str], int] = defaultdict(int)        # (line, dir) -> vehicles
        self.speeds: dict[tuple[str, str], list] = defaultdict(list)      # (line, dir) -> km/h of those measured
        self.zone_frames: dict[str, int] = defaultdict(int)
        self.zone_vehicles: dict[str, int] = defaultdict(int)
        self.zone_max: dict[str, int] = defaultdict(int)
        self.zone_entered: dict[str, int] = defaultdict(int)
        self.zone_speed_sum: dict[str, float] = defaultdict(float)  # km/h of the vehicles in the zone, per frame
        self.zone_speed_n: dict[str, int] = defaultdict(int)
        self.dwell: dict[str, list[float]] = defaultdict(list)


class _Folded:
    """The totals of the bins a table no longer holds (see BinTable's ``max_bins``)."""

    def __init__(self):
        self.bins = 0
        self.frames = 0
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.zone_frames: dict[str, int] = defaultdict(int)
        self.zone_vehicles: dict[str, int] = defaultdict(int)
        self.zone_max: dict[str, int] = defaultdict(int)
        self.zone_entered: dict[str, int] = defaultdict(int)
        self.dwell_sum: dict[str, float] = defaultdict(float)
        self.dwell_n: dict[str, int] = defaultdict(int)

    def add(self, b: _Bin) -> None:
        self.bins += 1
        self.frames += b.frames
        for key, n in b.counts.items():
            self.counts[key] += n
        for zone in b.zone_frames.keys() | b.zone_entered.keys() | b.dwell.keys():
            self.zone_frames[zone] += b.zone_frames.get(zone, 0)
            self.zone_vehicles[zone] += b.zone_vehicles.get(zone, 0)
            self.zone_max[zone] = max(self.zone_max[zone], b.zone_max.get(zone, 0))
            self.zone_entered[zone] += b.zone_entered.get(zone, 0)
            self.dwell_sum[zone] += sum(b.dwell.get(zone, ()))
            self.dwell_n[zone] += len(b.dwell.get(zone, ()))


class BinTable:
    """Accumulates the per-frame analytics of one stream into ``bin_s`` bins."""

    def __init__(self, stream: str, bin_s: float, lines=(), zones=(), max_bins: int | None = None):
        self.stream = stream
        self.max_bins = max_bins
        self.folded = _Folded()
        self.bin_s = float(bin_s)
        self.lines = list(lines)
        self.zones = list(zones)
        self.bins: dict[int, _Bin] = {}
        self._inside: dict[str, dict[int, float]] = {z: {} for z in self.zones}  # zone -> track -> entry time
        self._last_t: float | None = None
        self.histogram: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))

    def _bin(self, t: float) -> _Bin:
        b = self.bins.get(k := int(math.floor(t / self.bin_s)))
        if b is None:
            b = self.bins[k] = _Bin()
            while self.max_bins and len(self.bins) > self.max_bins:
                self.folded.add(self.bins.pop(min(self.bins)))
        return b

    def _speed(self, c: dict) -> None:
        """A crossing's speed goes to the bin of the crossing, however late it was measured."""
        key = (c["line"], c["direction"])
        self._bin(c.get("t", self._last_t or 0.0)).speeds[key].append(c["speed_kmh"])
        self.histogram[key][int(c["speed_kmh"] // HISTOGRAM_KMH)] += 1

    def add(self, t: float, analytics: dict | None, haze_score=None, dehazed=None) -> None:
        b = self._bin(t)
        b.frames += 1
        if haze_score is not None:
            b.haze_sum += float(haze_score)
            b.haze_n += 1
        if dehazed:
            b.dehazed += 1
        if analytics:
            for c in analytics.get("crossings", ()):
                b.counts[(c["line"], c["direction"])] += 1
                if c.get("speed_kmh") is not None:
                    self._speed(c)
            for c in analytics.get("late_speeds", ()):
                self._speed(c)
            speeds = analytics.get("speeds", {})
            for zone, members in analytics.get("zones", {}).items():
                self._zone_frame(b, zone, members, speeds, t)
        self._last_t = t

    def _zone_frame(self, b: _Bin, zone: str, members, speeds: dict, t: float) -> None:
        inside = self._inside.setdefault(zone, {})
        now = set(members)
        if now:
            b.zone_frames[zone] += 1
        b.zone_vehicles[zone] += len(now)
        b.zone_max[zone] = max(b.zone_max[zone], len(now))
        for track in now:
            if track not in inside:
                inside[track] = t
                b.zone_entered[zone] += 1
            s = speeds.get(track)
            if s is not None:
                b.zone_speed_sum[zone] += s
                b.zone_speed_n[zone] += 1
        for track in [tr for tr in inside if tr not in now]:
            b.dwell[zone].append(t - inside.pop(track))

    def close(self) -> None:
        """End every stay still open at the last frame (end of the input)."""
        if self._last_t is None:
            return
        last = self._bin(self._last_t)
        for zone, inside in self._inside.items():
            for entry in inside.values():
                last.dwell[zone].append(self._last_t - entry)
            inside.clear()

    # ------------------------------------------------------------ outputs
    def rows(self, last_bins: int | None = None) -> list[dict]:
        """One row per bin and line direction, and per bin and zone (the columns of COLUMNS)."""
        out = []
        for k in sorted(self.bins)[-last_bins if last_bins else 0:]:
            b = self.bins[k]
            start = round(k * self.bin_s, 3)
            for line in self.lines:
                for direction in (IN, OUT):
                    out.append(self._row(start, line, "line", direction, b.counts.get((line, direction), 0),
                                         _mean(b.speeds.get((line, direction), ())), None))
            for zone in self.zones:
                out.append(self._row(start, zone, "zone", "", b.zone_entered.get(zone, 0),
                                     _ratio(b.zone_speed_sum.get(zone, 0.0), b.zone_speed_n.get(zone, 0)),
                                     b.zone_frames.get(zone, 0) / b.frames))
        return out

    def _row(self, start, name, kind, direction, count, speed, occupancy) -> dict:
        return {"stream": self.stream, "bin_start_s": start, "name": name, "kind": kind, "direction": direction,
                "count": int(count), "mean_speed_kmh": None if speed is None else round(speed, 2),
                "occupancy": None if occupancy is None else round(occupancy, 4)}

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return buf.getvalue()

    def summary(self, last_bins: int | None = None) -> dict:
        """Totals per line and zone, and per bin the detail the CSV leaves out (haze, dwell, queue);
        ``last_bins`` lists only the most recent bins (the totals cover every bin, folded ones too;
        the medians cover the bins the table holds)."""
        past = self.folded
        lines = {}
        for line in self.lines:
            entry = {}
            for direction in (IN, OUT):
                speeds = [s for b in self.bins.values() for s in b.speeds.get((line, direction), ())]
                entry[direction] = past.counts.get((line, direction), 0) + sum(
                    b.counts.get((line, direction), 0) for b in self.bins.values())
                entry[f"median_speed_kmh_{direction}"] = _round(median(speeds)) if speeds else None
                hist = self.histogram.get((line, direction), {})
                entry[f"speed_histogram_{direction}"] = {f"{k * HISTOGRAM_KMH:g}": n for k, n in sorted(hist.items())}
            lines[line] = entry
        frames = past.frames + sum(b.frames for b in self.bins.values())
        zones = {}
        for zone in self.zones:
            dwell = [d for b in self.bins.values() for d in b.dwell.get(zone, ())]
            zone_frames = past.zone_frames.get(zone, 0) + sum(b.zone_frames.get(zone, 0) for b in self.bins.values())
            vehicles = past.zone_vehicles.get(zone, 0) + sum(b.zone_vehicles.get(zone, 0) for b in self.bins.values())
            zones[zone] = {
                "entered": past.zone_entered.get(zone, 0) + sum(b.zone_entered.get(zone, 0) for b in self.bins.values()),
                "occupancy": _round(zone_frames / frames) if frames else None,
                "mean_queue": _round(vehicles / frames) if frames else None,
                "max_queue": max([past.zone_max.get(zone, 0)] + [b.zone_max.get(zone, 0) for b in self.bins.values()]),
                "mean_dwell_s": _round(_ratio(past.dwell_sum.get(zone, 0.0) + sum(dwell),
                                              past.dwell_n.get(zone, 0) + len(dwell))),
                "median_dwell_s": _round(median(dwell)) if dwell else None,
            }
        bins = []
        for k in sorted(self.bins)[-last_bins if last_bins else 0:]:
            b = self.bins[k]
            crossing_speeds = [s for v in b.speeds.values() for s in v]
            bins.append({
                "bin_start_s": round(k * self.bin_s, 3), "frames": b.frames,
                "haze_score": _round(_ratio(b.haze_sum, b.haze_n)),
                "dehazed_share": _round(b.dehazed / b.frames),
                "median_speed_kmh": _round(median(crossing_speeds)) if crossing_speeds else None,
                "zones": {z: {"max_queue": b.zone_max.get(z, 0),
                              "mean_queue": _round(b.zone_vehicles.get(z, 0) / b.frames),
                              "mean_dwell_s": _round(_mean(b.dwell.get(z, ())))}
                          for z in self.zones},
            })
        return {"bin_s": self.bin_s, "lines": lines, "zones": zones, "bins": bins, "rows": self.rows(last_bins)}


def _ratio(total: float, n: int):
    return total / n if n else None


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else None


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)
