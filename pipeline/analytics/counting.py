"""Per-stream state that turns tracked anchors into line crossings, zone members and speeds.

Every object is reduced to one anchor point, the bottom centre of its box: where a vehicle
touches the road, so the same point serves the counting lines, the zones and the ground-plane
homography (a box centre would sit above the road and shift with the vehicle's height).
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from pipeline.analytics.geometry import Calibration, Shape, to_ground

#: direction names of a line, by the side an anchor ends on (see LineCounter)
IN, OUT = "in", "out"


def anchors_of(boxes: np.ndarray) -> np.ndarray:
    """Nx4 boxes (x, y, w, h) -> Nx2 bottom centres, in the picture coordinates of OpenCV (and of
    the calibration's image points), where pixel (column c, row r) is centred on (c, r): a box of
    columns x .. x+w-1 and rows y .. y+h-1 is centred on x + (w - 1) / 2 and its bottom edge is
    y + h - 0.5. (``y + h``, half a pixel lower, measured approaching vehicles ~2 % slow: a fixed
    offset of the ground point shrinks distances most far from the camera; docs/analytics.md.)"""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack((boxes[:, 0] + (boxes[:, 2] - 1) / 2, boxes[:, 1] + boxes[:, 3] - 0.5), axis=1)


class LineCounter:
    """Direction-aware crossings of one line, at most one per track, with hysteresis.

    The line runs from A to B. An anchor's side is the sign of its signed distance to the line,
    positive on the right of A->B as seen on the screen (image y points down). A side counts only
    once the anchor is more than ``hysteresis`` pixels from the line, so a vehicle wobbling on the
    line (mask noise, camera shake) keeps its last side. A change of side is a crossing when the
    anchor is within the segment's extent: ``in`` from the left side to the right side, ``out``
    the other way; for a line drawn left to right, ``in`` is downwards in the picture.

    A track is counted once per line, unless it is handed another vehicle. With ``recount`` > 0,
    a counted track whose anchor comes back to the side it crossed from, further from the line
    than ``recount`` times its box's height when it crossed, may count again. A vehicle does not
    drive back a third of its length; a track's anchor does when its blob joins the vehicle
    behind (the joined blob's bottom is that vehicle's), and the track then carries that vehicle
    over the line. Such a second crossing counts only with a steady box (height within 30 % of
    the last frame's): when the joined blob parts again and the track jumps back to the vehicle
    ahead, that is not a crossing.

    A track born from a blob that parted (``parent``, from the blob stage) starts on its parent's
    side of the line. With ``parted`` > 0, if it appears on the other side, it crossed while its
    blob was joined to another vehicle's (whose lower edge held the joined blob's anchor back): the
    crossing counts once the track has moved on, away from the line, by ``parted`` times its box's
    height. A track that goes back over the line first (it was not crossing, e.g. an approaching
    vehicle above a line its parent's anchor was below) is not counted then, and crosses as any
    other.
    """

    #: a re-armed track's box height may change by this share between two frames as it crosses
    STEADY = 0.3

    def __init__(self, name: str, a, b, hysteresis: float, recount: float = 0.0, parted: float = 0.0):
        self.name = name
        self.a = np.asarray(a, np.float64)
        d = np.asarray(b, np.float64) - self.a
        self.length = float(np.hypot(*d))
        self.unit = d / self.length
        self.normal = np.array([-self.unit[1], self.unit[0]])  # points to the right of A->B on screen
        self.hysteresis = float(hysteresis)
        self.recount = float(recount)
        self.parted = float(parted)
        self.sides: dict[int, int] = {}
        self.counted: set[int] = set()
        self.onto: dict[int, tuple[int, float]] = {}  # counted track -> (side it crossed onto, its height then)
        self.rearmed: set[int] = set()                # tracks that came back: their next crossing needs a steady box
        self.heights: dict[int, float] = {}           # last box height per track (with recount)
        self.inherited: dict[int, int] = {}           # new track -> its parent's side, until it is first seen
        self.pending: dict[int, tuple[int, float]] = {}  # track -> (side it appeared on, distance then)
        self.totals = {IN: 0, OUT: 0}

    def inherit(self, track: int, parent: int) -> None:
        """``track`` is new and came out of ``parent``'s blob: it starts on the parent's side."""
        if self.parted and track not in self.sides and parent in self.sides:
            self.inherited[track] = self.sides[parent]

    def update(self, tracks, anchors: np.ndarray, heights=None) -> list[tuple[int, str]]:
        """(track, direction) of the crossings in this frame. ``heights``, the boxes' heights, are
        needed for ``recount`` and ``parted`` (without them neither applies)."""
        if not len(tracks):
            return []
        rel = anchors - self.a
        dist = rel @ self.normal
        along = rel @ self.unit
        recount = self.recount if heights is not None else 0.0
        if heights is None:
            heights = np.zeros(len(tracks))
            self.inherited.clear()
        crossings = []
        for track, d, u, h in zip(tracks, dist, along, heights):
            if recount:
                last_height = self.heights.get(track, 0.0)
                self.heights[track] = float(h)
            if abs(d) <= self.hysteresis:
                continue
            side = 1 if d > 0 else -1
            before = self.sides.get(track)
            self.sides[track] = side
            if before is None and track in self.inherited:
                if self.inherited.pop(track) != side:  # out of a joined blob on the other side
                    self.pending[track] = (side, abs(d))
                continue
            if track in self.pending:
                appeared, distance = self.pending[track]
                if side != appeared:
                    del self.pending[track]  # it came back: it was not crossing, and this is a crossing
                elif abs(d) < distance + self.parted * h:
                    continue
                else:
                    del self.pending[track]
                    if track not in self.counted:
                        self._count(track, side, u, h, crossings)
                    continue
            if recount and track in self.counted:
                onto, height = self.onto[track]
                if side != onto and abs(d) > recount * height:  # back a third of a vehicle: another one
                    self.counted.discard(track)
                    self.rearmed.add(track)
                continue
            if before is None or before == side or track in self.counted:
                continue
            if track in self.rearmed and not abs(h - last_height) <= self.STEADY * last_height:
                continue  # jumped over the line (a joined blob parted): no vehicle drove over it
            self._count(track, side, u, h, crossings)
        return crossings

    def _count(self, track: int, side: int, along: float, height: float, crossings: list) -> None:
        """Count ``track``'s arrival on ``side`` when its anchor is within the segment's extent."""
        if -self.hysteresis <= along <= self.length + self.hysteresis:
            direction = IN if side > 0 else OUT
            self.counted.add(track)
            self.onto[track] = (side, float(height))
            self.totals[direction] += 1
            crossings.append((track, direction))

    def forget(self, tracks) -> None:
        for t in tracks:
            self.sides.pop(t, None)
            self.counted.discard(t)
            self.onto.pop(t, None)
            self.rearmed.discard(t)
            self.heights.pop(t, None)
            self.inherited.pop(t, None)
            self.pending.pop(t, None)


class ZoneMembers:
    """Which anchors lie inside one polygon, by a lookup in a filled mask of the frame size."""

    def __init__(self, name: str, polygon: np.ndarray, width: int, height: int):
        self.name = name
        self.polygon = polygon
        self.mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(self.mask, [np.round(polygon).astype(np.int32)], 1)

    def inside(self, anchors: np.ndarray) -> np.ndarray:
        if not len(anchors):
            return np.zeros(0, bool)
        h, w = self.mask.shape
        xs = np.clip(np.round(anchors[:, 0]).astype(np.intp), 0, w - 1)
        ys = np.clip(np.round(anchors[:, 1]).astype(np.intp), 0, h - 1)
        return self.mask[ys, xs].astype(bool)


class SpeedMeter:
    """km/h per track from its anchor's path on the ground plane (homography from the config).

    The velocity is the least-squares slope of the ground positions over the last ``window_s``
    seconds (a line fit, so one noisy bottom edge moves it little); the speed is None until the
    track has been measured over ``min_span_s``. Anchors of boxes that touch the picture's border
    are left out: a vehicle entering or leaving the picture is cut by the border, so its box's
    bottom edge is not where it touches the road. A box whose width or height changes by more
    than ``jump`` (a share) from one frame to the next has merged with another vehicle's blob or
    split from it: its anchor jumped to another vehicle, so the track's path starts again.
    """

    def __init__(self, homography: np.ndarray, width: int, height: int, window_s: float = 1.0,
                 min_span_s: float = 0.2, jump: float = 0.3):
        self.h = homography
        self.size = (width, height)
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.jump = jump
        self.paths: dict[int, _Path] = {}
        self.last: dict[int, float] = {}
        self.sizes: dict[int, tuple[float, float]] = {}

    def update(self, tracks, anchors: np.ndarray, boxes: np.ndarray, t: float) -> list[float | None]:
        ground = to_ground(self.h, anchors)
        w, h = self.size
        cut = ((boxes[:, 0] <= 0.5) | (boxes[:, 1] <= 0.5) | (boxes[:, 0] + boxes[:, 2] >= w - 0.5)
               | (boxes[:, 1] + boxes[:, 3] >= h - 0.5))
        speeds = []
        for track, (x, y), edge, (_, _, bw, bh) in zip(tracks, ground, cut, boxes):
            before = self.sizes.get(track)
            self.sizes[track] = (bw, bh)
            if not edge:
                path = self.paths.get(track)
                if path is None:
                    path = self.paths[track] = _Path(t)
                elif before is not None and (abs(bw - before[0]) > self.jump * before[0]
                                             or abs(bh - before[1]) > self.jump * before[1]):
                    path = self.paths[track] = _Path(t)  # merged or split: the anchor is another vehicle's
                path.add(t, float(x), float(y))
                path.drop_before(t - self.window_s)
                if len(path.samples) >= 3 and path.span() >= self.min_span_s:
                    speed = path.speed_kmh()
                    if speed is not None:
                        self.last[track] = speed
            speeds.append(self.last.get(track))
        return speeds

    def forget(self, tracks) -> None:
        for t in tracks:
            self.paths.pop(t, None)
            self.last.pop(t, None)
            self.sizes.pop(t, None)


class _Path:
    """A track's recent ground points with running sums, so the least-squares fit costs O(1)
    per frame (a camera with tens of vehicles refits every one of them every frame). Times are
    kept relative to the path's first sample, which keeps the sums well conditioned."""

    __slots__ = ("t0", "samples", "n", "st", "sx", "sy", "stt", "stx", "sty", "sxx", "syy")

    def __init__(self, t0: float):
        self.t0 = t0
        self.samples: deque = deque()
        self.n = self.st = self.sx = self.sy = self.stt = self.stx = self.sty = self.sxx = self.syy = 0.0

    def _update(self, t: float, x: float, y: float, sign: float) -> None:
        self.n += sign
        self.st += sign * t
        self.sx += sign * x
        self.sy += sign * y
        self.stt += sign * t * t
        self.stx += sign * t * x
        self.sty += sign * t * y
        self.sxx += sign * x * x
        self.syy += sign * y * y

    def add(self, t: float, x: float, y: float) -> None:
        t -= self.t0
        self.samples.append((t, x, y))
        self._update(t, x, y, 1.0)

    def drop_before(self, t: float) -> None:
        t -= self.t0
        while self.samples and self.samples[0][0] < t:
            self._update(*self.samples.popleft(), -1.0)

    def span(self) -> float:
        return self.samples[-1][0] - self.samples[0][0]

    def speed_kmh(self, straightness: float = 0.15) -> float | None:
        """km/h of the least-squares straight motion through the samples; None when they stray
        from it by more than ``straightness`` times the distance it covers (RMS): a path with a
        jump in it (two vehicles under one id) gives no speed."""
        n = self.n
        ctt = self.stt - self.st * self.st / n
        if ctt <= 0:
            return None
        ctx, cty = self.stx - self.st * self.sx / n, self.sty - self.st * self.sy / n
        vx, vy = ctx / ctt, cty / ctt
        cxx, cyy = self.sxx - self.sx * self.sx / n, self.syy - self.sy * self.sy / n
        residual = max(cxx + cyy - (ctx * ctx + cty * cty) / ctt, 0.0) / n
        speed = (vx * vx + vy * vy) ** 0.5
        if residual ** 0.5 > straightness * speed * self.span():
            return None
        return speed * 3.6


class StreamAnalytics:
    """Lines, zones and speed of one stream at one frame size."""

    def __init__(self, lines: list[Shape], zones: list[Shape], calibration: Calibration | None,
                 width: int, height: int, hysteresis: float, speed_window_s: float, forget_after: int,
                 speed_min_s: float = 0.2, recount: float = 0.0, parted: float = 0.0):
        self.size = (width, height)
        self.lines = [LineCounter(s.name, *s.in_pixels(width, height), hysteresis, recount, parted)
                      for s in lines]
        self.zones = [ZoneMembers(s.name, s.in_pixels(width, height), width, height) for s in zones]
        self.speed = (SpeedMeter(calibration.homography(width, height), width, height, speed_window_s,
                                 min(speed_min_s, speed_window_s))
                      if calibration is not None else None)
        self.forget_after = forget_after
        self.speed_wait_s = 2.0 * speed_window_s
        self.last_seen: dict[int, int] = {}
        self.pending: list[dict] = []  # crossings whose vehicle had no speed yet
        self.frames = 0

    def update(self, tracks: list[int], boxes: np.ndarray, t: float, occluded=None, parents=None) -> dict:
        """This frame's crossings, zone members and speeds (by track).

        A vehicle is counted the frame it crosses. Its speed is often not known yet then (a
        vehicle that just entered the picture has too short a path): the crossing is counted
        with ``speed_kmh`` None and its speed follows in ``late_speeds`` (line, direction, t of
        the crossing, speed) as soon as it is measured, or never after ``2 * speed_window_s``.
        ``occluded`` flags tracks the blob stage carries on a predicted box inside another's
        blob: they cross lines and sit in zones, but their predicted path measures no speed
        (they keep the last one measured). ``parents`` maps a new track to the track whose blob it
        came out of (see LineCounter).
        """
        self.frames += 1
        anchors = anchors_of(boxes)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if self.speed is None:
            by_track = dict.fromkeys(tracks)
        elif occluded is not None and any(occluded):
            seen = [k for k, hidden in enumerate(occluded) if not hidden]
            by_track = dict(zip([tracks[k] for k in seen],
                                self.speed.update([tracks[k] for k in seen], anchors[seen], boxes[seen], t)))
            by_track.update({tr: self.speed.last.get(tr) for tr, hidden in zip(tracks, occluded) if hidden})
        else:
            by_track = dict(zip(tracks, self.speed.update(tracks, anchors, boxes, t)))
        crossings = []
        for line in self.lines:
            for track, parent in (parents or {}).items():
                line.inherit(track, parent)
            for track, direction in line.update(tracks, anchors, boxes[:, 3]):
                c = {"line": line.name, "direction": direction, "track": track, "t": t, "speed_kmh": by_track[track]}
                crossings.append(c)
                if c["speed_kmh"] is None and self.speed is not None:
                    self.pending.append(dict(c))
        late = self._late_speeds(by_track, t) if self.pending else []
        zones = {}
        for zone in self.zones:
            inside = zone.inside(anchors)
            zones[zone.name] = [t for t, ok in zip(tracks, inside) if ok]
        for track in tracks:
            self.last_seen[track] = self.frames
        if self.frames % 64 == 0:
            self._forget_old()
        return {"crossings": crossings, "late_speeds": late, "zones": zones, "speeds": by_track}

    def _late_speeds(self, by_track: dict, t: float) -> list[dict]:
        late, waiting = [], []
        for c in self.pending:
            speed = by_track.get(c["track"])
            if speed is not None:
                c["speed_kmh"] = speed
                late.append(c)
            elif t - c["t"] <= self.speed_wait_s:
                waiting.append(c)
        self.pending = waiting
        return late

    def _forget_old(self) -> None:
        """Drop the state of tracks unseen for ``forget_after`` frames (a camera runs for weeks)."""
        old = [t for t, f in self.last_seen.items() if self.frames - f > self.forget_after]
        for t in old:
            del self.last_seen[t]
        for line in self.lines:
            line.forget(old)
        if self.speed is not None:
            self.speed.forget(old)
