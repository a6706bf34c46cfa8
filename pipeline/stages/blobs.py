"""Foreground mask -> objects (boxes, areas, track ids) and counts per zone.

Connected components of the mask become objects. Pieces of one vehicle that the
mask broke apart (a windscreen the model missed, a dark roof) are joined first by
a closing of ``merge_gap`` pixels; shadow pixels, where the mask marks them with
a grey level below 255 (OpenCV's 127), are not foreground. Components outside the
shape filters (area, aspect ratio, fill of the box) are dropped. Blobs that hold
more than one vehicle from the start (side by side, or one entering behind another
it touches) are cut first (``split_growth``, ``split_width``; pipeline.analytics.split).
Blobs far smaller than one vehicle at their row (``min_size``: shadow and smear pieces) are
kept and tracked but flagged ``fragment``, and nothing counts them.
A greedy tracker per stream carries ids across frames by box overlap (IoU), falling back
to centroid distance for small fast objects whose boxes no longer overlap; it
kept identities better than the Kalman/Hungarian library tracker it was measured
against (tools/track_study.py, docs/analytics.md). Counts give the number of
objects whose centroid lies in each configured zone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from pipeline.analytics.counting import anchors_of
from pipeline.analytics.geometry import parse_zones
from pipeline.analytics.split import MAX_SIDE_BY_SIDE, RowWidths, box_of, cut_grown, cut_side_by_side, cut_staggered
from pipeline.errors import ConfigError, StageError
from pipeline.frame import Frame
from pipeline.stages.base import Stage


def _whole_frame() -> dict[str, list[float]]:
    return {"all": [0.0, 0.0, 1.0, 1.0]}


class BoxTracker:
    """Greedy IoU / centroid matcher that gives boxes stable ids across frames of one stream.

    Vehicles that the mask joins into one blob are not lost: when a track that has been seen for
    ``min_age`` frames finds no box, and its position predicted by its recent motion lies inside
    the box of a blob that another track took, it is *occluded*: it is carried on its predicted
    box for up to ``max_occluded`` frames (or until that prediction leaves every blob), and is
    reported with the visible objects, flagged, so a line it crosses meanwhile counts it. When the
    blobs part again, the prediction is what picks its box back up.

    Tracks are matched where their vehicle should be now, not where it was: a track's last box
    moved by its smoothed step (times the frames it has been missing). Receding vehicles near
    the camera move 30-40 px a frame and leave their last box behind. A box that the picture's
    border cuts moves with its uncut edges (a vehicle entering at the bottom edge grows upwards:
    its centre moves half as fast as its top), so a vehicle gets its motion while it enters.

    Vehicles on a road do not turn round: once a track's ground point (its box's bottom centre) has
    travelled its own size (its box's longer side, at least ``TRAVEL_PX``) from where it was first
    seen clear of the picture's border (a box that the border cuts is no ground point), the direction from there
    to the furthest point it reached is its *heading*, and a box that would put the ground point more
    than ``max_reverse`` times the track's height (at least ``REVERSE_PX``) behind that furthest
    point, along the heading, is refused; a track whose best box is refused so has lost its vehicle
    and ends. Without this a receding track near the horizon, a few pixels big there, took over an
    approaching vehicle and its crossing was never counted. Boxes whose size jumps by more than 30 %
    (merged, split, regained) are not checked, and the furthest point restarts at them.
    """

    #: the least travel, pixels, that gives a track a heading
    TRAVEL_PX = 10.0
    #: the least distance, pixels, behind its furthest point that counts as turning round
    REVERSE_PX = 3.0
    #: a box matched by nearness alone (no overlap) has between 1/3 and 3 times the track's area
    NEAR_AREA_RATIO = 3.0
    #: a new track's parent is the track whose last box held at least this share of its box
    PARENT_SHARE = 0.5
    #: ... and only if the new box is no narrower (or flatter) than this share of its other side:
    #: a thin sliver is a piece of one vehicle whose mask broke up, not another vehicle
    PARENT_ASPECT = 0.4

    def __init__(self, match_iou: float, match_distance: float, max_missed: int,
                 max_occluded: int = 0, min_age: int = 3, max_reverse: float = 0.0):
        self.match_iou = match_iou
        self.match_distance = match_distance
        self.max_missed = max_missed
        self.max_occluded = max_occluded
        self.min_age = min_age
        self.max_reverse = max_reverse
        self._boxes = np.zeros((0, 4), np.float64)   # x, y, w, h of live tracks
        self._ids: list[int] = []
        self._missed: list[int] = []
        self._velocity = np.zeros((0, 2), np.float64)  # smoothed centre motion per frame
        self._growth: list[float] = []                 # smoothed change of box size per frame (ratio)
        self._age: list[int] = []                      # frames matched
        self._occluded: list[int] = []                 # frames carried inside another's blob
        self._origin_l: list[tuple[float, float]] = []   # first ground point clear of the border
        self._heading_l: list[tuple[float, float]] = []  # unit direction of travel, (0, 0) until known
        self._front_l: list[tuple[float, float]] = []    # furthest ground point since a jump (nan: none)
        self._heading = np.zeros((0, 2), np.float64)     # the same two as arrays, for the matcher
        self._front = np.zeros((0, 2), np.float64)
        self._next_id = 1
        self.occluded: list[tuple[int, list[float]]] = []  # (id, predicted box) after the last update
        self.parents: dict[int, int] = {}  # new track -> the track whose blob it came out of, last update
        self.steady: list[int] = []  # indices of the last update's boxes whose track kept a steady size

    def update(self, boxes: np.ndarray, size: "tuple[int, int] | None" = None) -> list[int]:
        """Ids for ``boxes`` (Nx4 x,y,w,h), continuing tracks where they match; the occluded
        tracks of this frame are left in ``self.occluded``. ``size`` (width, height) of the frame
        tells which boxes the border cuts: their bottom centre is not where the vehicle touches the
        road, so they neither give nor test a heading."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        clear = np.ones(len(boxes), bool) if size is None else clear_of_border(boxes, *size)
        was_clear = np.ones(len(self._ids), bool) if size is None else clear_of_border(self._boxes, *size)
        grounds = anchors_of(boxes)  # where each vehicle touches the road
        ground_list = [(float(x), float(y)) for x, y in grounds.tolist()]
        ids = [0] * len(boxes)
        matched: dict[int, int] = {}
        pairs, turned = self._greedy_pairs(boxes, clear, grounds)
        for t, b in pairs:
            ids[b] = self._ids[t]
            matched[t] = b
        taken = np.array([boxes[b] for b in matched.values()], np.float64).reshape(-1, 4)
        out = {"box": [], "id": [], "missed": [], "vel": [], "age": [], "occ": [], "growth": [],
               "origin": [], "heading": [], "front": []}

        def keep(box, track_id, missed, vel, age, occ, growth=1.0, origin=(math.nan, math.nan),
                 heading=(0.0, 0.0), front=(math.nan, math.nan)):
            for key, v in zip(out, (box, track_id, missed, vel, age, occ, growth, origin, heading, front)):
                out[key].append(v)

        self.occluded = []
        self.steady = []
        for t in range(len(self._ids)):
            box, vel, growth = self._boxes[t], self._velocity[t], self._growth[t]
            origin, heading, front = self._origin_l[t], self._heading_l[t], self._front_l[t]
            if t in matched:
                new = boxes[matched[t]]
                step = (new[:2] + new[2:] / 2) - (box[:2] + box[2:] / 2)
                (bw, bh), (nw, nh) = box[2:].tolist(), new[2:].tolist()
                steady = self._occluded[t] == 0 and abs(nw - bw) <= 0.3 * bw and abs(nh - bh) <= 0.3 * bh
                edge = None
                if size is not None and self._occluded[t] == 0 and not (clear[matched[t]] and was_clear[t]):
                    edge = _edge_step(box, new, size)  # cut by the border: the uncut edges move with it
                if edge is not None:
                    vel = 0.5 * vel + 0.5 * edge if self._age[t] > 1 else edge
                if steady:
                    # a box that merged, split or was regained jumps: no motion update then
                    ratio = math.sqrt(nw * nh / (bw * bh))
                    if edge is None:
                        vel = 0.5 * vel + 0.5 * step if self._age[t] > 1 else step
                    growth = 0.5 * growth + 0.5 * ratio if self._age[t] > 1 else ratio
                    if self._age[t] >= self.min_age:
                        self.steady.append(matched[t])
                # plain floats: a few of these per track and frame cost less than numpy calls
                (gx, gy), (hx, hy), (fx, fy) = ground_list[matched[t]], heading, front
                if not clear[matched[t]]:
                    front = (math.nan, math.nan)  # cut by the border: the next clear box restarts it
                elif math.isnan(origin[0]):
                    origin = front = (gx, gy)
                elif (hx == hy == 0.0) or not steady or math.isnan(fx) or (gx - fx) * hx + (gy - fy) * hy > 0:
                    front = (gx, gy)  # a new furthest point, or a jump restarts it
                    travel = math.hypot(gx - origin[0], gy - origin[1])
                    if travel >= max(self.TRAVEL_PX, nw, nh):
                        heading = ((gx - origin[0]) / travel, (gy - origin[1]) / travel)
                keep(new, self._ids[t], 0, vel, self._age[t] + 1, 0, growth, origin, heading, front)
                continue
            if turned[t]:
                continue  # its vehicle went on and what it found is going the other way: it ends
            predicted = box.copy()
            predicted[:2] += vel
            if (self.max_occluded and self._age[t] >= self.min_age and self._occluded[t] < self.max_occluded
                    and _inside_any(predicted, taken)):
                keep(predicted, self._ids[t], self._missed[t], vel, self._age[t], self._occluded[t] + 1, growth,
                     origin, heading)
                self.occluded.append((self._ids[t], [float(v) for v in predicted]))
            elif self._occluded[t] == 0 and self._missed[t] < self.max_missed:
                # keep unmatched tracks a few frames (mask dropout); an occluded one whose
                # prediction left every blob ends here, so it cannot take a stranger's box later
                keep(box, self._ids[t], self._missed[t] + 1, vel, self._age[t], 0, growth, origin, heading, front)
        self.parents = {}
        for b, box in enumerate(boxes):
            if not ids[b]:
                ids[b] = self._next_id
                self._next_id += 1
                parent = self._parent(box)
                if parent is not None:
                    self.parents[ids[b]] = parent
                ground = ground_list[b] if clear[b] else (math.nan, math.nan)
                keep(box, ids[b], 0, np.zeros(2), 1, 0, 1.0, ground, (0.0, 0.0), ground)
        self._boxes = np.array(out["box"], np.float64).reshape(-1, 4)
        self._velocity = np.array(out["vel"], np.float64).reshape(-1, 2)
        self._ids, self._missed, self._age, self._occluded = out["id"], out["missed"], out["age"], out["occ"]
        self._growth = out["growth"]
        self._origin_l, self._heading_l, self._front_l = out["origin"], out["heading"], out["front"]
        self._heading = np.array(self._heading_l, np.float64).reshape(-1, 2)
        self._front = np.array(self._front_l, np.float64).reshape(-1, 2)
        return ids

    def _parent(self, box: np.ndarray) -> "int | None":
        """The id of the track (before this update) whose last box holds ``PARENT_SHARE`` of
        ``box`` or more, the most of them: a new box inside a track's old one is a piece of a
        blob that parted (two vehicles the mask had joined), and the piece the track did not keep
        is the other vehicle. None for a sliver (``PARENT_ASPECT``): on the demo clip a white car's
        mask broke into tall strips as it crossed a line, and each strip counted as a vehicle."""
        if not self._ids or min(box[2], box[3]) < self.PARENT_ASPECT * max(box[2], box[3]):
            return None
        old = self._boxes
        w = np.minimum(old[:, 0] + old[:, 2], box[0] + box[2]) - np.maximum(old[:, 0], box[0])
        h = np.minimum(old[:, 1] + old[:, 3], box[1] + box[3]) - np.maximum(old[:, 1], box[1])
        share = np.clip(w, 0, None) * np.clip(h, 0, None) / max(float(box[2] * box[3]), 1e-9)
        k = int(np.argmax(share))
        return self._ids[k] if share[k] >= self.PARENT_SHARE else None

    def predictions(self, width: int, height: int) -> np.ndarray:
        """Nx4 boxes where the tracks seen in the last frame (and the one before, so they have a
        motion) should be now. Clear of the picture's border: the last box's centre moved by its
        smoothed step, its size changed by its smoothed growth (vehicles near the camera grow or
        shrink fast). Cut by the border (a vehicle entering or leaving): the sides of the last box
        on the border stay there and the others move by its step."""
        if not self._ids:
            return np.zeros((0, 4), np.float64)
        b = self._boxes
        seen = ((np.asarray(self._age) >= 2) & (np.asarray(self._missed) == 0)
                & (np.asarray(self._occluded) == 0))
        clear = clear_of_border(b, width, height)
        sure, cut = seen & clear, seen & ~clear
        size = b[sure, 2:] * np.asarray(self._growth)[sure, None]
        centre = b[sure, :2] + b[sure, 2:] / 2 + self._velocity[sure]
        # the sides on the border stay there (the vehicle goes on beyond it), the others move
        frame = np.array([width, height], np.float64)
        lo, hi = b[cut, :2], b[cut, :2] + b[cut, 2:]
        lo = np.where(lo <= 0, 0.0, np.clip(lo + self._velocity[cut], 0, frame))
        hi = np.where(hi >= frame, frame, np.clip(hi + self._velocity[cut], 0, frame))
        entering = np.concatenate((lo, hi - lo), axis=1)
        return np.concatenate((np.concatenate((centre - size / 2, size), axis=1),
                               entering[(entering[:, 2:] > 1).all(axis=1)]))

    def _greedy_pairs(self, boxes: np.ndarray, clear: np.ndarray,
                      grounds: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
        """(track, box) pairs, best score first, and per track whether its best box was refused
        because it lies back against the track's heading."""
        turned = np.zeros(len(self._ids), bool)
        if not len(boxes) or not len(self._ids):
            return [], turned
        # where each vehicle should be now: its last box moved by its step for each frame since
        steps = np.asarray(self._missed, np.float64)[:, None] + 1.0
        score = self._match_scores(self._boxes + np.pad(self._velocity * steps, ((0, 0), (0, 2))),
                                   np.asarray(boxes, np.float64))
        hidden = np.asarray(self._occluded) > 0
        if hidden.any():  # an occluded track comes back only on a box overlapping its prediction
            score[hidden] = np.where(score[hidden] >= self.match_iou, score[hidden], 0.0)
        if self.max_reverse:
            back = self._reversed(boxes, grounds) & clear[None, :]
            turned = back[np.arange(len(score)), np.argmax(score, axis=1)] & (score.max(axis=1) > 0)
            score[back] = 0.0
        pairs, used_t, used_b = [], set(), set()
        for flat in np.argsort(-score, axis=None):
            t, b = divmod(int(flat), score.shape[1])
            if score[t, b] <= 0:
                break
            if t not in used_t and b not in used_b:
                pairs.append((t, b)); used_t.add(t); used_b.add(b)
        return pairs, turned

    def _reversed(self, boxes: np.ndarray, grounds: np.ndarray) -> np.ndarray:
        """tracks x boxes: the box would take the track's ground point back against its heading, more
        than ``max_reverse`` times its height behind the furthest point it reached, with a steady size."""
        known = self._heading.any(axis=1) & (np.asarray(self._occluded) == 0) & ~np.isnan(self._front[:, 0])
        if not known.any():
            return np.zeros((len(self._ids), len(boxes)), bool)
        back = ((self._front[:, None, 0] - grounds[None, :, 0]) * self._heading[:, None, 0]
                + (self._front[:, None, 1] - grounds[None, :, 1]) * self._heading[:, None, 1])
        allowed = np.maximum(self.REVERSE_PX, self.max_reverse * self._boxes[:, 3])[:, None]
        size, new = self._boxes[:, None, 2:], boxes[None, :, 2:]
        steady = (np.abs(new - size) <= 0.3 * size).all(axis=-1)
        return known[:, None] & steady & (back > allowed)  # a front not known (nan) compares False

    def _match_scores(self, tracks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """IoU where it passes ``match_iou``; else a small score for near centroids of boxes of
        about the track's size (``NEAR_AREA_RATIO``); else 0."""
        t, b = tracks[:, None, :], boxes[None, :, :]  # broadcast to tracks x boxes
        t_lo, t_size, b_lo, b_size = t[..., :2], t[..., 2:], b[..., :2], b[..., 2:]
        overlap = np.minimum(t_lo + t_size, b_lo + b_size) - np.maximum(t_lo, b_lo)
        inter = np.prod(np.clip(overlap, 0, None), axis=-1)
        iou = inter / (np.prod(t_size, axis=-1) + np.prod(b_size, axis=-1) - inter)
        dx, dy = np.moveaxis((t_lo + t_size / 2) - (b_lo + b_size / 2), -1, 0)
        reach = self.match_distance * np.maximum(np.hypot(*np.moveaxis(t_size, -1, 0)),
                                                 np.hypot(*np.moveaxis(b_size, -1, 0)))
        near = np.clip(1.0 - np.hypot(dx, dy) / reach, 0, None) * 1e-3  # always below any accepted IoU
        # by nearness only a box of about the track's size: a vehicle's blob that the mask joined
        # to another's is not continued on a shadow fragment a box-length away
        ratio = np.prod(b_size, axis=-1) / np.maximum(np.prod(t_size, axis=-1), 1e-9)
        near = np.where((ratio >= 1 / self.NEAR_AREA_RATIO) & (ratio <= self.NEAR_AREA_RATIO), near, 0.0)
        return np.where(iou >= self.match_iou, iou, near)


def clear_of_border(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Per box (Nx4 x, y, w, h), whether it lies inside a ``width`` x ``height`` picture without
    touching its border (a box the border cuts is not the whole vehicle)."""
    return ((boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 0] + boxes[:, 2] < width)
            & (boxes[:, 1] + boxes[:, 3] < height))


def _edge_step(old: np.ndarray, new: np.ndarray, size: tuple[int, int]) -> "np.ndarray | None":
    """A vehicle's motion between two boxes of which one or both are cut by the picture's border:
    per axis, the step of the edge that no border cuts in either box (the centre's where neither
    edge is cut). None when a box spans the picture on an axis, so no edge of it moved visibly, or
    when on an axis that no border cuts the box's size changed by more than 30 % (the blob changed
    shape there: a piece of a long lorry growing as it enters gave a made-up motion)."""
    step = []
    for k in (0, 1):
        lo_cut = old[k] <= 0 or new[k] <= 0
        hi_cut = old[k] + old[k + 2] >= size[k] or new[k] + new[k + 2] >= size[k]
        if lo_cut and hi_cut:
            return None
        if hi_cut:
            step.append(new[k] - old[k])
        elif lo_cut:
            step.append(new[k] + new[k + 2] - old[k] - old[k + 2])
        else:
            if abs(new[k + 2] - old[k + 2]) > 0.3 * old[k + 2]:
                return None  # a blob that changed its shape there: its centre did not move with the vehicle
            step.append(new[k] + new[k + 2] / 2 - old[k] - old[k + 2] / 2)
    return np.array(step, np.float64)


def _inscribed_square(kernel: np.ndarray) -> int:
    """Side of the largest square of ones centred in a structuring element (at least 1)."""
    n = min(kernel.shape)
    cy, cx = kernel.shape[0] // 2, kernel.shape[1] // 2
    side = 1
    for s in range(1, n + 1):
        top, left = cy - (s - 1) // 2, cx - (s - 1) // 2
        if top < 0 or left < 0 or not kernel[top:top + s, left:left + s].all():
            break
        side = s
    return side


def _inside_any(box: np.ndarray, others: np.ndarray) -> bool:
    """Whether ``box``'s centre lies inside any of ``others`` (Nx4 x, y, w, h)."""
    if not len(others):
        return False
    cx, cy = box[:2] + box[2:] / 2
    lo, hi = others[:, :2], others[:, :2] + others[:, 2:]
    return bool(np.any((cx >= lo[:, 0]) & (cx <= hi[:, 0]) & (cy >= lo[:, 1]) & (cy <= hi[:, 1])))


class BlobStage(Stage):
    """Connected components of ``mask`` -> ``objects`` with track ids, and ``counts`` per zone."""

    name = "blobs"
    inputs = ("mask",)
    outputs = ("objects", "counts")
    max_batch = 8

    @dataclass(frozen=True)
    class Config:
        min_area: int = 50            # smallest component kept, pixels of the mask
        connectivity: int = 8
        # name -> [x, y, w, h]; all values <= 1 means fractions of the frame, else pixels
        zones: dict = field(default_factory=_whole_frame)
        match_iou: float = 0.2        # lowest box overlap that continues a track
        match_distance: float = 0.75  # else centroids closer than this x the box diagonal
        max_missed: int = 5           # frames a track is kept without a match
        merge_gap: int = 0            # close gaps up to this many pixels before labelling (0 = off)
        neck: int = 9                 # cut bridges thinner than this many pixels between blobs (0 = off)
        max_area: int | None = None   # largest component kept, pixels (None = no limit)
        aspect: list = field(default_factory=lambda: [0.0, float("inf")])  # kept width/height range
        min_fill: float = 0.0         # smallest share of its box a component must cover
        max_occluded: int = 25        # frames a track is carried inside another's blob (0 = off)
        min_age: int = 3              # frames a track must have been seen before it can be occluded
        # name -> polygon [[x, y], ...] (pixels, or fractions when all <= 1) whose pixels are never
        # foreground: on-screen captions, timestamps
        ignore: dict = field(default_factory=dict)
        # cut a blob whose box grew to this many times its track's predicted box (0 = off)
        split_growth: float = 1.8
        # cut a blob this many times as wide as one vehicle at its bottom row, side by side (0 = off)
        split_width: float = 2.2
        # a blob this many times as wide may be two vehicles side by side at different distances:
        # cut where each side fits one vehicle at its own bottom row (0 = off; needs the learned width)
        split_staggered: float = 1.5
        # refuse a box that takes a track back against its heading by more than this many times
        # its height (vehicles do not turn round; 0 = off)
        max_reverse: float = 0.5
        # a blob whose longer side is under this share of one vehicle's width at its bottom row
        # (learned per stream, as for split_width) is a shadow or smear fragment: tracked but
        # flagged, and left out of lines, zones and counts (0 = off)
        min_size: float = 0.5

        def __post_init__(self):
            if self.merge_gap < 0:
                raise ConfigError("stages.blobs.merge_gap", f"must be >= 0, got {self.merge_gap}")
            if self.neck < 0:
                raise ConfigError("stages.blobs.neck", f"must be >= 0, got {self.neck}")
            if self.max_area is not None and self.max_area < self.min_area:
                raise ConfigError("stages.blobs.max_area", f"must be >= min_area ({self.min_area}), got {self.max_area}")
            if len(self.aspect) != 2 or not 0 <= self.aspect[0] <= self.aspect[1]:
                raise ConfigError("stages.blobs.aspect", f"expected [low, high] with 0 <= low <= high, got {self.aspect!r}")
            if not 0 <= self.min_fill <= 1:
                raise ConfigError("stages.blobs.min_fill", f"must be in [0, 1], got {self.min_fill}")

            _parse_zones(self.zones)
            parse_zones(self.ignore, "stages.blobs.ignore")
            for key in ("split_growth", "split_width", "split_staggered"):
                value = getattr(self, key)
                if not (value == 0 or value > 1) or not np.isfinite(value):
                    raise ConfigError(f"stages.blobs.{key}", f"must be 0 (off) or > 1, got {value}")
            if not 0 <= self.min_size < 1:
                raise ConfigError("stages.blobs.min_size", f"must be in [0, 1) (0 = off), got {self.min_size}")
            if not self.max_reverse >= 0 or not np.isfinite(self.max_reverse):
                raise ConfigError("stages.blobs.max_reverse", f"must be >= 0 (0 = off), got {self.max_reverse}")
            if self.max_occluded < 0:
                raise ConfigError("stages.blobs.max_occluded", f"must be >= 0, got {self.max_occluded}")
            if self.min_age < 1:
                raise ConfigError("stages.blobs.min_age", f"must be >= 1, got {self.min_age}")
            if self.connectivity not in (4, 8):
                raise ConfigError("stages.blobs.connectivity", f"must be 4 or 8, got {self.connectivity}")
            if self.min_area < 1:
                raise ConfigError("stages.blobs.min_area", f"must be >= 1, got {self.min_area}")
            if self.max_missed < 0:
                raise ConfigError("stages.blobs.max_missed", f"must be >= 0, got {self.max_missed}")

    def __init__(self, config: "BlobStage.Config | None" = None):
        self.config = config or self.Config()
        self._zones = _parse_zones(self.config.zones)
        self._trackers: dict[str, BoxTracker] = {}
        self._widths: dict[str, RowWidths] = {}
        self._ignore = parse_zones(self.config.ignore, "stages.blobs.ignore")
        self._ignore_masks: dict[tuple[int, int], np.ndarray] = {}
        gap = self.config.merge_gap
        self._closing = cv2.getStructuringElement(cv2.MORPH_RECT, (gap + 1, gap + 1)) if gap else None
        neck = self.config.neck
        self._neck = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (neck, neck)) if neck else None
        self._neck_step = _inscribed_square(self._neck) if neck else 1

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        for frame in frames:
            mask = frame.data.get("mask")
            if mask is None:
                raise StageError(f"stream {frame.stream} frame {frame.index}",
                                 "blobs needs a 'mask' from an earlier stage")
            tracker = self._tracker(frame.stream)
            widths = self._row_widths(frame.stream, mask.shape[0])
            boxes, areas, cut = self._components(mask, tracker, widths)
            ids = tracker.update(boxes, (mask.shape[1], mask.shape[0]))
            self._learn_widths(widths, boxes, cut, tracker.steady, mask.shape)
            small = self._fragments(boxes, widths, mask.shape)
            frame.data["objects"] = [
                {"box": [int(v) for v in box], "area": int(area), "track": int(i)} | (
                    {"fragment": True} if fragment else {}) | (
                    {"parent": tracker.parents[i]} if i in tracker.parents else {})
                for box, area, i, fragment in zip(boxes, areas, ids, small)
            ] + [  # vehicles hidden in another's blob, on their predicted boxes
                {"box": [int(round(v)) for v in box], "area": 0, "track": int(i), "occluded": True}
                for i, box in tracker.occluded
            ]
            frame.data["counts"] = self._count(boxes[~small], mask.shape)
        return frames

    def _components(self, mask: np.ndarray, tracker: "BoxTracker | None" = None,
                    widths: "RowWidths | None" = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (Nx4 x, y, w, h), pixel counts and whether each is a piece of a cut blob."""
        c = self.config
        if mask.dtype == np.uint8 and mask.size and mask.max() not in (0, 255):
            _, mask = cv2.threshold(mask, 254, 255, cv2.THRESH_BINARY)  # grey levels (shadows) are background
        if self._ignore:
            if mask.dtype == np.uint8:
                mask = cv2.bitwise_and(mask, self._ignore_mask(mask.shape[:2]))
            else:
                mask = np.where(self._ignore_mask(mask.shape[:2]) > 0, mask, np.zeros((), mask.dtype))
        if self._closing is not None:
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._closing)
        if self._neck is not None:
            mask = self._break_necks(mask)
        # label only the rectangle around the foreground (the sky above a road is empty), with
        # 16-bit labels where every possible label fits: the same labels and stats, about 3x
        # faster than 32-bit ones with the OpenCV build we ship (docs/analytics.md)
        x0, y0, w_fg, h_fg = cv2.boundingRect(mask)
        if not w_fg:
            return np.zeros((0, 4), np.int32), np.zeros(0, np.int32), np.zeros(0, bool)
        # on even rows and columns: the labelling works in 2x2 blocks, and an aligned crop keeps
        # the components in the same order as labelling the whole frame
        w_fg, h_fg, x0, y0 = w_fg + x0 % 2, h_fg + y0 % 2, x0 - x0 % 2, y0 - y0 % 2
        most = ((h_fg + 1) // 2) * ((w_fg + 1) // 2) if c.connectivity == 8 else (h_fg * w_fg + 1) // 2
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            mask[y0:y0 + h_fg, x0:x0 + w_fg], connectivity=c.connectivity,
            ltype=cv2.CV_16U if most + 1 < np.iinfo(np.uint16).max else cv2.CV_32S)
        stats = stats[1:]  # label 0 is the background
        stats[:, 0] += x0
        stats[:, 1] += y0
        big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= c.min_area)
        boxes, area = stats[big, :4], stats[big, cv2.CC_STAT_AREA]
        cut = np.zeros(len(big), bool)
        if tracker is not None and (c.split_growth or c.split_width or c.split_staggered):
            boxes, area, cut = self._split(labels, (x0, y0), mask.shape[:2], big + 1, boxes, area, tracker, widths)
        w, h = boxes[:, 2], boxes[:, 3]
        keep = area >= c.min_area
        if c.max_area is not None:
            keep &= area <= c.max_area
        if c.aspect[0] > 0 or np.isfinite(c.aspect[1]):
            ratio = w / h
            keep &= (ratio >= c.aspect[0]) & (ratio <= c.aspect[1])
        if c.min_fill > 0:
            keep &= area >= c.min_fill * w * h
        return boxes[keep], area[keep], cut[keep]

    def _break_necks(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` opened by a disc ``neck`` pixels across: the thin bridges that join two
        vehicles' blobs (a smear, a shadow's tongue) are cut, and thin parts of a blob (a tongue
        of shadow, a blob's sharp corners) are dropped. A blob that the opening would remove whole
        (a distant vehicle, narrower than the disc) is kept as it was."""
        if mask.dtype != np.uint8:
            mask = (mask > 0).astype(np.uint8) * 255
        x, y, w, h = cv2.boundingRect(mask)
        if not w:
            return mask
        # only the rectangle around the foreground (the morphology of a whole 640x360 frame cost
        # three times as much on sparse masks), with a margin so the disc sees the same pixels
        r = self.config.neck
        x0, y0 = max(x - r, 0), max(y - r, 0)
        x1, y1 = min(x + w + r, mask.shape[1]), min(y + h + r, mask.shape[0])
        crop = mask[y0:y1, x0:x1]
        opened = cv2.morphologyEx(crop, cv2.MORPH_OPEN, self._neck, borderType=cv2.BORDER_REPLICATE)
        count, labels = cv2.connectedComponents(crop, connectivity=self.config.connectivity, ltype=cv2.CV_32S)
        # what the opening keeps is a union of whole discs, each holding a square of _neck_step
        # pixels, so a grid of that step finds every blob that kept any pixel; a disc cut by the
        # picture's border (replicated there) may hold less, but it touches the border
        step = self._neck_step
        survived = np.zeros(count, bool)
        survived[labels[::step, ::step][opened[::step, ::step] > 0]] = True
        for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
            survived[labels[edge][opened[edge] > 0]] = True
        survived[0] = True  # the background
        if not survived.all():
            gone = np.zeros(max(count, 256), np.uint8)
            gone[:count][~survived] = 255
            small = (cv2.LUT(cv2.convertScaleAbs(labels), gone) if count <= 256  # a table lookup: labels fit a byte
                     else np.take(gone, labels))
            opened = cv2.bitwise_or(opened, small)
        out = mask.copy()
        out[y0:y1, x0:x1] = opened
        return out

    def _fragments(self, boxes: np.ndarray, widths: "RowWidths | None", shape: tuple[int, ...]) -> np.ndarray:
        """Per box, whether it is far smaller than one vehicle at its row: a piece of a cast shadow
        or of a smear, clear of the border, whose longer side is under ``min_size`` times the
        learned width at its bottom row. Such blobs stay tracked (so the width they feed keeps
        learning, even if it was once learned wrong) but lines, zones and counts leave them out."""
        line = widths.line() if self.config.min_size and widths is not None else None
        if line is None or not len(boxes):
            return np.zeros(len(boxes), bool)
        expected = line[0] * (boxes[:, 1] + boxes[:, 3]) + line[1]
        return (clear_of_border(boxes, shape[1], shape[0]) & (expected > 1.0)
                & (np.maximum(boxes[:, 2], boxes[:, 3]) < self.config.min_size * expected))

    def _split(self, labels, origin, shape, label_ids, boxes, areas, tracker, widths):
        """Blobs cut where they hold more than one vehicle (pipeline.analytics.split). The tests
        run on all blobs at once; only the few that fire are cut, one by one."""
        c = self.config
        height, width = shape
        x, y, w, h = (boxes[:, k].astype(np.int64) for k in range(4))
        grown = np.zeros(len(boxes), bool)
        predicted = tracker.predictions(width, height) if c.split_growth else np.zeros((0, 4))
        inside = np.zeros((len(boxes), len(predicted)), bool)
        if len(predicted) and len(boxes):
            cx, cy = (predicted[:, :2] + predicted[:, 2:] / 2).T
            inside = ((cx >= x[:, None]) & (cx < (x + w)[:, None]) & (cy >= y[:, None]) & (cy < (y + h)[:, None]))
            # tracked vehicles inside, and the blob grew well past them together: more joined them
            known = inside.astype(np.float64) @ (predicted[:, 2] * predicted[:, 3])
            grown = inside.any(axis=1) & (w * h >= c.split_growth * known)
        line = widths.line() if (c.split_width or c.split_staggered) and widths is not None else None
        wide = np.zeros(len(boxes), bool)
        if line is not None:
            wide = self._too_wide(x, y, w, h, line, width, min(v for v in (c.split_width, c.split_staggered) if v))
        todo = np.flatnonzero(grown | wide)
        if not len(todo):
            return boxes, areas, np.zeros(len(boxes), bool)
        out_boxes, out_areas, out_cut, last = [boxes[:todo[0]]], [areas[:todo[0]]], [np.zeros(todo[0], bool)], 0
        for n, i in enumerate(todo):
            if n:
                out_boxes.append(boxes[last + 1:i])
                out_areas.append(areas[last + 1:i])
                out_cut.append(np.zeros(i - last - 1, bool))
            last = i
            pieces = self._cut(labels, origin, int(label_ids[i]), boxes[i], int(areas[i]),
                               predicted[inside[i]] if grown[i] else None, line, width)
            out_boxes.append(np.array([p[0] for p in pieces], np.int32).reshape(-1, 4))
            out_areas.append(np.array([p[1] for p in pieces], np.int32))
            out_cut.append(np.full(len(pieces), len(pieces) > 1))
        out_boxes.append(boxes[last + 1:])
        out_areas.append(areas[last + 1:])
        out_cut.append(np.zeros(len(boxes) - last - 1, bool))
        return (np.concatenate(out_boxes).astype(np.int32), np.concatenate(out_areas).astype(np.int32),
                np.concatenate(out_cut))

    @staticmethod
    def _too_wide(x, y, w, h, line, width, factor: float) -> np.ndarray:
        """Blobs at least ``factor`` times one vehicle's width at their bottom row, clear of the
        left, top and right border (a blob that the border cuts has no known width)."""
        expected = line[0] * (y + h) + line[1]
        clear = (x > 0) & (y > 0) & (x + w < width)
        return clear & (expected > 1.0) & (w >= factor * expected)

    def _cut(self, labels, origin, label, box, area, predicted, line, width):
        """(box, pixels) of the pieces of one blob: first cut by its tracks' predictions (when given
        and it leaves two pieces of min_area), then each piece that is too wide, side by side."""
        c = self.config
        x, y, w, h = (int(v) for v in box)
        blob = labels[y - origin[1]:y - origin[1] + h, x - origin[0]:x - origin[0] + w] == label
        pieces = [(box, area, blob)]
        if predicted is not None:
            parts = cut_grown(blob, (x, y), predicted)
            if sum(int(np.count_nonzero(q)) >= c.min_area for q in parts) >= 2:
                pieces = [box_of(q, (x, y)) + (q,) for q in parts]
        done = []
        for pbox, parea, pmask in pieces:
            px, py, pw, ph = (np.array([int(v)]) for v in pbox)
            columns = pmask[:, pbox[0] - x:pbox[0] - x + pbox[2]]
            if line is not None and c.split_width and self._too_wide(px, py, pw, ph, line, width, c.split_width)[0]:
                count = min(int(round(pbox[2] / (line[0] * (pbox[1] + pbox[3]) + line[1]))), MAX_SIDE_BY_SIDE)
                done += [box_of(q, (pbox[0], y)) for q in cut_side_by_side(columns, max(count, 2))]
            elif (line is not None and c.split_staggered
                  and self._too_wide(px, py, pw, ph, line, width, c.split_staggered)[0]
                  and (parts := cut_staggered(columns, y, line)) is not None):
                done += [box_of(q, (pbox[0], y)) for q in parts]
            else:
                done.append((pbox, parea))
        return done

    def _learn_widths(self, widths, boxes, cut, steady, shape) -> None:
        """Feed the per-row vehicle width with the boxes of steady tracks, not cut, clear of the border
        (for ``split_width``, ``split_staggered`` and ``min_size``: any one alone needs it)."""
        if not (self.config.split_width or self.config.split_staggered or self.config.min_size) or not steady:
            return
        b = boxes[steady]
        clear = ~cut[steady] & clear_of_border(b, shape[1], shape[0])
        widths.add(b[clear, 1] + b[clear, 3], b[clear, 2])

    def _row_widths(self, stream: str, height: int) -> RowWidths:
        widths = self._widths.get(stream)
        if widths is None or widths.height != height:
            widths = self._widths[stream] = RowWidths(height)
        return widths

    def _ignore_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """0 inside the ``ignore`` polygons, 255 elsewhere (uint8, for a bitwise and), drawn once
        per frame size."""
        mask = self._ignore_masks.get(shape)
        if mask is None:
            h, w = shape
            canvas = np.full((h, w), 255, np.uint8)
            for polygon in self._ignore:
                cv2.fillPoly(canvas, [np.round(polygon.in_pixels(w, h)).astype(np.int32)], 0)
            mask = self._ignore_masks[shape] = canvas
        return mask

    def _tracker(self, stream: str) -> BoxTracker:
        tracker = self._trackers.get(stream)
        if tracker is None:
            c = self.config
            tracker = self._trackers[stream] = BoxTracker(c.match_iou, c.match_distance, c.max_missed,
                                                          c.max_occluded, c.min_age, c.max_reverse)
        return tracker

    def _count(self, boxes: np.ndarray, shape: tuple[int, ...]) -> dict[str, int]:
        h, w = shape[:2]
        cx = boxes[:, 0] + boxes[:, 2] / 2
        cy = boxes[:, 1] + boxes[:, 3] / 2
        counts = {}
        for name, (zx, zy, zw, zh, relative) in self._zones.items():
            if relative:
                zx, zy, zw, zh = zx * w, zy * h, zw * w, zh * h
            counts[name] = int(np.count_nonzero((cx >= zx) & (cx < zx + zw) & (cy >= zy) & (cy < zy + zh)))
        return counts

    def reset_stream(self, stream: str) -> None:
        self._trackers.pop(stream, None)
        self._widths.pop(stream, None)


def _parse_zones(zones) -> dict[str, tuple[float, float, float, float, bool]]:
    if not isinstance(zones, dict) or not zones:
        raise ConfigError("stages.blobs.zones", "must be a mapping name: [x, y, w, h] with at least one zone")
    parsed = {}
    for name, rect in zones.items():
        where = f"stages.blobs.zones.{name}"
        try:
            x, y, w, h = (float(v) for v in rect)
        except (TypeError, ValueError):
            raise ConfigError(where, f"expected [x, y, w, h] numbers, got {rect!r}") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise ConfigError(where, f"needs x, y >= 0 and w, h > 0, got {rect!r}")
        parsed[str(name)] = (x, y, w, h, max(x, y, w, h) <= 1.0)
    return parsed
