"""Segmented recording: names, rotation and retention of ``outputs.segment_s`` files.

With ``segment_s > 0`` a stream's outputs are cut into segments, each a
complete file named by the UTC time its first frame was written::

    <stream>/dehazed/20261202T011500Z.mp4
    <stream>/preview/20261202T011500Z.mp4
    <stream>/events/20261202T011500Z.jsonl
    <stream>/masks/20261202T011500Z/binNNNNNN.png

The segment being written carries ``.open`` before its extension
(``dehazed/20261202T011500Z.open.mp4``, ``events/…open.jsonl``) and is renamed
to its final name when it is closed. So the temp-name-then-rename rule still
holds (a final name only ever holds a complete segment), but the open name is
not hidden: the open video is a fragmented MP4 and its events file is written
line by line, so both are readable up to their last fragment / line at any
time, also after ``kill -9``. A ``.open`` file that no process is writing is
what a killed run left behind. A new run never reuses a name: when the UTC
second is taken it appends ``-2``, ``-3``, ...

Rotation: live streams rotate on the wall clock at multiples of ``segment_s``
since the epoch (300 s -> :00, :05, :10 past the hour), files on their own
media time (``frame.pts``) every ``segment_s`` from their first frame, so a
file cut into segments gives the same cuts on every run. A live segment is
normally cut by the first frame after its cut time; when no frame comes (a
stalled camera), a timer closes it ``CUT_GRACE_S`` after the cut time, so it is
complete and renamed on time, and the next frame opens a new segment.

Retention (``outputs.keep_hours``, ``outputs.max_disk_gb``) runs in the
background when a segment opens (at most every 10 s per output folder). It
deletes whole closed segments (video, preview, events, analytics and masks
together), oldest first, of every stream under the output folder, never a
segment this process is writing. ``max_disk_gb`` is a cap on every file under
the output folder (segments open or closed, summaries, one-file outputs,
leftovers), plus room for the segments being written to grow to the size of
their stream's recent ones, so the folder stays under the cap until the next
sweep instead of overshooting by one segment per stream. Each deletion is
logged on ``hazeflow.sinks``, and so is a cap that only open segments and
other files exceed.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("hazeflow.sinks")

#: marks the segment being written: ``STEM.open.mp4``
OPEN_TAG = ".open"
#: subfolders of a stream folder that hold segment files, with their extension ("" = folder per segment)
KINDS = {"dehazed": ".mp4", "preview": ".mp4", "events": ".jsonl", "masks": "", "analytics": ".csv"}
#: default segment length for live streams when ``outputs.segment_s`` is not set
LIVE_SEGMENT_S = 300.0
#: longest video fragment of an open segment, i.e. the most a kill -9 loses (the encoder's delay aside)
FRAGMENT_S = 1.0
#: a live segment still open this long after its cut time (its camera sent nothing since) is closed
#: by a timer, so a stalled camera's last segment gets its final name on time, not at its next frame
CUT_GRACE_S = 0.5

_STEM = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?(?:\.open)?(?:\.[A-Za-z0-9]+)?$")
_OPEN: set[tuple[Path, str]] = set()  # (stream folder, stem) of segments this process is writing
_WRITING: dict[Path, int] = {}  # stream folder -> segmented writers of this process not closed yet
_LIVE_SEGMENT_S: dict[Path, float] = {}  # stream folder -> segment length of a live writer (cut by the wall clock)
_OPEN_LOCK = threading.Lock()


def segment_length(outputs, live: bool) -> float:
    """Seconds per segment for a stream: ``outputs.segment_s``, or 300 for live and 0 (one file) for files."""
    value = getattr(outputs, "segment_s", None)
    if value is None:
        return LIVE_SEGMENT_S if live else 0.0
    return float(value)


def utc_stem(t: float) -> str:
    """``20261202T011500Z`` for a unix time (seconds resolution)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def stem_time(name: str) -> float | None:
    """Unix time of a segment file or folder name, None when the name is not a segment's."""
    m = _STEM.match(name)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()


def stem_of(name: str) -> str | None:
    """``20261202T011500Z-2`` from ``20261202T011500Z-2.open.mp4``; None for other names."""
    m = _STEM.match(name)
    if m is None:
        return None
    return m.group(1) + (f"-{m.group(2)}" if m.group(2) else "")


@dataclass(frozen=True)
class Segment:
    """One segment of one stream: where each kind of output goes while open and once closed."""

    folder: Path  # the stream folder
    stem: str

    def final(self, kind: str) -> Path:
        return self.folder / kind / f"{self.stem}{KINDS[kind]}"

    def open(self, kind: str) -> Path:
        return self.folder / kind / f"{self.stem}{OPEN_TAG}{KINDS[kind]}"

    def taken(self) -> bool:
        return any(self.final(k).exists() or self.open(k).exists() for k in KINDS)

    @classmethod
    def new(cls, folder: Path, t: float) -> "Segment":
        """The segment starting at unix time ``t``, with a suffix when that second is already taken."""
        base = utc_stem(t)
        segment, k = cls(folder, base), 2
        while segment.taken():
            segment, k = cls(folder, f"{base}-{k}"), k + 1
        return segment

    def mark_open(self) -> None:
        with _OPEN_LOCK:
            _OPEN.add((self.folder, self.stem))

    def mark_closed(self) -> None:
        with _OPEN_LOCK:
            _OPEN.discard((self.folder, self.stem))


def writer_started(folder: Path, live_segment_s: float | None = None) -> None:
    """A segmented writer of this process writes under ``folder`` (a stream folder) until ``writer_ended``;
    retention keeps room for its open segment to grow, also in the moment between two segments.
    ``live_segment_s``: the length of its segments when they are cut by the wall clock (live), which
    lets retention size a first segment that has no closed one before it."""
    with _OPEN_LOCK:
        _WRITING[folder] = _WRITING.get(folder, 0) + 1
        if live_segment_s:
            _LIVE_SEGMENT_S[folder] = float(live_segment_s)


def writer_ended(folder: Path) -> None:
    with _OPEN_LOCK:
        n = _WRITING.get(folder, 0) - 1
        if n > 0:
            _WRITING[folder] = n
        else:
            _WRITING.pop(folder, None)
            _LIVE_SEGMENT_S.pop(folder, None)


def leftover_open_files(folder: Path) -> list[Path]:
    """``.open`` segment files in a stream folder that no writer of this process holds (a killed run's)."""
    with _OPEN_LOCK:
        busy = {stem for f, stem in _OPEN if f == folder}
    found = []
    for kind, ext in KINDS.items():
        if ext and (folder / kind).is_dir():
            found += [p for p in sorted((folder / kind).glob(f"*{OPEN_TAG}{ext}")) if stem_of(p.name) not in busy]
    return found


class SegmentClock:
    """When the next segment starts.

    ``live``: wall clock, cuts at multiples of ``length`` since the epoch.
    Otherwise media time: cuts every ``length`` seconds from the first frame.
    """

    def __init__(self, length: float, live: bool):
        self.length = float(length)
        self.live = live
        self._origin: float | None = 0.0 if live else None
        self._end: float | None = None

    @property
    def end(self) -> float | None:
        """When the current segment ends (None before the first frame)."""
        return self._end

    def due(self, t: float) -> bool:
        """True when the frame at time ``t`` belongs to a new segment (always for the first frame)."""
        if self._origin is None:
            self._origin = t
        if self._end is not None and t < self._end:
            return False
        steps = math.floor((t - self._origin) / self.length) + 1
        self._end = self._origin + steps * self.length
        return True


@dataclass
class _Group:
    """The files of one segment of one stream, for retention."""

    folder: Path
    stem: str
    paths: list
    size: int
    start: float
    end: float  # newest modification time


def _segment_groups(root: Path) -> list[_Group]:
    groups: dict[tuple[Path, str], _Group] = {}
    if not root.is_dir():
        return []
    for stream in root.iterdir():
        if not stream.is_dir():
            continue
        for kind in KINDS:
            sub = stream / kind
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                stem = stem_of(path.name)
                if stem is None:
                    continue
                try:
                    size, mtime = _size_and_mtime(path)
                except OSError:  # deleted meanwhile
                    continue
                key = (stream.resolve(), stem)
                g = groups.get(key)
                if g is None:
                    g = groups[key] = _Group(key[0], stem, [], 0, stem_time(stem) or 0.0, 0.0)
                g.paths.append(path)
                g.size += size
                g.end = max(g.end, mtime)
    return sorted(groups.values(), key=lambda g: (g.start, g.stem, str(g.folder)))


def _tree_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (what the disk cap counts); files deleted meanwhile are skipped."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name), follow_symlinks=False).st_size
            except OSError:
                continue
    return total


#: closed segments of a stream whose largest size predicts how big its open one will grow
RECENT_SEGMENTS = 3


#: a first live segment younger than this is not extrapolated (too few bytes to say its rate)
MIN_PROJECTION_S = 5.0


def _growth_room(groups: list[_Group], busy: set, writing: set, live_segment_s: dict | None = None,
                 now: float | None = None) -> int:
    """Bytes the open segments of this process's streams may still add: per stream that writes, the largest
    of its last closed segments less what its open one holds already. A live stream with none closed yet
    has its open segment's rate so far extrapolated to the segment's cut time (from 5 s of age on)."""
    room = 0
    live_segment_s = live_segment_s or {}
    for folder in writing:
        mine = [g for g in groups if g.folder == folder]
        closed = [g.size for g in mine if (g.folder, g.stem) not in busy][-RECENT_SEGMENTS:]
        opened = [g for g in mine if (g.folder, g.stem) in busy]
        open_now = sum(g.size for g in opened)
        expected = max(closed, default=0)
        if not closed and opened and folder in live_segment_s and now is not None:
            start = min(g.start for g in opened)
            clock = SegmentClock(live_segment_s[folder], live=True)
            clock.due(start)  # the cut the writer's own clock set for a segment opened at `start`
            cut, age = clock.end, now - start
            if age >= MIN_PROJECTION_S:
                expected = open_now * max((cut - start) / age, 1.0)
        room += max(0, int(expected) - open_now)
    return room


def _size_and_mtime(path: Path) -> tuple[int, float]:
    if path.is_dir():
        size, mtime = 0, path.stat().st_mtime
        for p in path.iterdir():
            st = p.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime)
        return size, mtime
    st = path.stat()
    return st.st_size, st.st_mtime


class Retention:
    """Deletes the oldest segments under ``root`` beyond ``keep_hours`` or ``max_disk_gb`` (None = no limit).

    ``sweep`` works synchronously. The sinks call ``request`` instead, which
    sweeps in a background thread, at most once every ``MIN_INTERVAL_S``, so
    that listing a folder of many thousand segments never holds up the frames
    of the live streams; every stream under the same folder shares one
    instance (``shared``), so the cameras that all cut at :05 cost one sweep.
    """

    MIN_INTERVAL_S = 10.0
    _shared: dict = {}
    _shared_lock = threading.Lock()

    def __init__(self, root: Path, keep_hours: float | None = None, max_disk_gb: float | None = None):
        self.root = Path(root)
        self.keep_hours = keep_hours
        self.max_disk_gb = max_disk_gb
        self._thread: threading.Thread | None = None
        self._last = -math.inf
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, root: Path, keep_hours: float | None, max_disk_gb: float | None) -> "Retention":
        key = (Path(root).resolve(), keep_hours, max_disk_gb)
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(key[0], keep_hours, max_disk_gb)
            return cls._shared[key]

    @property
    def active(self) -> bool:
        return self.keep_hours is not None or self.max_disk_gb is not None

    def request(self) -> None:
        """Sweep soon, in the background, unless one runs or ran less than ``MIN_INTERVAL_S`` ago."""
        if not self.active:
            return
        with self._lock:
            now = time.monotonic()
            if (self._thread is not None and self._thread.is_alive()) or now - self._last < self.MIN_INTERVAL_S:
                return
            self._last = now
            self._thread = threading.Thread(target=self._sweep_logged, name="retention", daemon=True)
            self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a background sweep (the sinks do at close, so an exit never cuts one short)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _sweep_logged(self) -> None:
        try:
            self.sweep()
        except Exception:  # retention must never stop a recording; say why it did not run
            log.warning("retention: sweep of %s failed", self.root, exc_info=True)

    def sweep(self, now: float | None = None) -> list[Path]:
        """Apply both limits once; returns the deleted paths."""
        if not self.active:
            return []
        now = time.time() if now is None else now
        groups = _segment_groups(self.root)
        budget = None if self.max_disk_gb is None else self.max_disk_gb * 1e9
        cutoff = None if self.keep_hours is None else now - self.keep_hours * 3600.0
        with _OPEN_LOCK:
            busy, writing = set(_OPEN), {f.resolve() for f in _WRITING}
            live_segment_s = {f.resolve(): v for f, v in _LIVE_SEGMENT_S.items()}
        used = room = 0
        if budget is not None:
            used = _tree_bytes(self.root)  # every file, not only the segments
            room = _growth_room(groups, busy, writing, live_segment_s, now)
        total = used + room
        deleted = []
        for g in groups:  # oldest first
            too_old = cutoff is not None and g.end < cutoff
            too_big = budget is not None and total > budget
            if not (too_old or too_big):
                continue
            with _OPEN_LOCK:  # looked up now: a segment may have opened or closed since the listing
                if (g.folder, g.stem) in _OPEN:
                    continue
            reason = f"older than keep_hours {self.keep_hours:g}" if too_old else \
                f"files under the output folder take {(total - room) / 1e9:.3f} GB + {room / 1e9:.3f} GB for " \
                f"the open segments to grow > max_disk_gb {self.max_disk_gb:g}"
            failed = [p for p in g.paths if not _remove(p)]
            deleted += [p for p in g.paths if p not in failed]
            total -= g.size
            log.info("retention: deleted segment %s/%s (%d files, %.1f MB): %s", g.folder.name, g.stem,
                     len(g.paths) - len(failed), g.size / 1e6, reason)
        if budget is not None and total > budget:
            log.warning("retention: %s still takes %.3f GB (+ %.3f GB for the open segments to grow) > max_disk_gb "
                        "%g: nothing closed is left to delete (open segments and other files)", self.root,
                        (total - room) / 1e9, room / 1e9, self.max_disk_gb)
        return deleted


def _remove(path: Path) -> bool:
    """Delete a file or a mask folder; False (and a warning) when it could not be."""
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("retention: cannot delete %s: %s", path, e)
        return False
    return True
