"""Foreground mask -> objects (boxes, areas, track ids) and counts per zone.

Connected components of the mask become objects. Pieces of one vehicle that the
mask broke apart (a windscreen the model missed, a dark roof) are joined first by
a closing of ``merge_gap`` pixels; shadow pixels, where the mask marks them with
a grey level below 255 (OpenCV's 127), are not foreground. Components outside the
shape filters (area, aspect ratio, fill of the box) are dropped. A greedy
tracker per stream carries ids across frames by box overlap (IoU), falling back
to centroid distance for small fast objects whose boxes no longer overlap; it
kept identities better than the Kalman/Hungarian library tracker it was measured
against (tools/track_study.py, docs/analytics.md). Counts give the number of
objects whose centroid lies in each configured zone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from pipeline.errors import ConfigError, StageError
from pipeline.frame import Frame
from pipeline.stages.base import Stage


def _whole_frame() -> dict[str, list[float]]:
    return {"all": [0.0, 0.0, 1.0, 1.0]}


class BoxTracker:
    """Greedy IoU / centroid matcher that gives boxes stable ids across frames of one stream."""

    def __init__(self, match_iou: float, match_distance: float, max_missed: int):
        self.match_iou = match_iou
        self.match_distance = match_distance
        self.max_missed = max_missed
        self._boxes = np.zeros((0, 4), np.float64)   # x, y, w, h of live tracks
        self._ids: list[int] = []
        self._missed: list[int] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> list[int]:
        """Ids for ``boxes`` (Nx4 x,y,w,h), continuing tracks where they match."""
        ids = [0] * len(boxes)
        matched_tracks: set[int] = set()
        for t, b in self._greedy_pairs(boxes):
            ids[b] = self._ids[t]
            matched_tracks.add(t)
        boxes_out, ids_out, missed_out = [], [], []
        for t in range(len(self._ids)):  # keep unmatched tracks a few frames (occlusion, mask dropout)
            if t not in matched_tracks and self._missed[t] < self.max_missed:
                boxes_out.append(self._boxes[t]); ids_out.append(self._ids[t]); missed_out.append(self._missed[t] + 1)
        for b, box in enumerate(boxes):
            if not ids[b]:
                ids[b] = self._next_id
                self._next_id += 1
            boxes_out.append(box); ids_out.append(ids[b]); missed_out.append(0)
        self._boxes = np.array(boxes_out, np.float64).reshape(-1, 4)
        self._ids, self._missed = ids_out, missed_out
        return ids

    def _greedy_pairs(self, boxes: np.ndarray) -> list[tuple[int, int]]:
        if not len(boxes) or not len(self._ids):
            return []
        score = self._match_scores(self._boxes, np.asarray(boxes, np.float64))
        pairs, used_t, used_b = [], set(), set()
        for flat in np.argsort(-score, axis=None):
            t, b = divmod(int(flat), score.shape[1])
            if score[t, b] <= 0:
                break
            if t not in used_t and b not in used_b:
                pairs.append((t, b)); used_t.add(t); used_b.add(b)
        return pairs

    def _match_scores(self, tracks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """IoU where it passes ``match_iou``; else a small score for near centroids; else 0."""
        t, b = tracks[:, None, :], boxes[None, :, :]  # broadcast to tracks x boxes
        t_lo, t_size, b_lo, b_size = t[..., :2], t[..., 2:], b[..., :2], b[..., 2:]
        overlap = np.minimum(t_lo + t_size, b_lo + b_size) - np.maximum(t_lo, b_lo)
        inter = np.prod(np.clip(overlap, 0, None), axis=-1)
        iou = inter / (np.prod(t_size, axis=-1) + np.prod(b_size, axis=-1) - inter)
        dx, dy = np.moveaxis((t_lo + t_size / 2) - (b_lo + b_size / 2), -1, 0)
        reach = self.match_distance * np.maximum(np.hypot(*np.moveaxis(t_size, -1, 0)),
                                                 np.hypot(*np.moveaxis(b_size, -1, 0)))
        near = np.clip(1.0 - np.hypot(dx, dy) / reach, 0, None) * 1e-3  # always below any accepted IoU
        return np.where(iou >= self.match_iou, iou, near)


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
        max_area: int | None = None   # largest component kept, pixels (None = no limit)
        aspect: list = field(default_factory=lambda: [0.0, float("inf")])  # kept width/height range
        min_fill: float = 0.0         # smallest share of its box a component must cover

        def __post_init__(self):
            if self.merge_gap < 0:
                raise ConfigError("stages.blobs.merge_gap", f"must be >= 0, got {self.merge_gap}")
            if self.max_area is not None and self.max_area < self.min_area:
                raise ConfigError("stages.blobs.max_area", f"must be >= min_area ({self.min_area}), got {self.max_area}")
            if len(self.aspect) != 2 or not 0 <= self.aspect[0] <= self.aspect[1]:
                raise ConfigError("stages.blobs.aspect", f"expected [low, high] with 0 <= low <= high, got {self.aspect!r}")
            if not 0 <= self.min_fill <= 1:
                raise ConfigError("stages.blobs.min_fill", f"must be in [0, 1], got {self.min_fill}")

            _parse_zones(self.zones)
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
        gap = self.config.merge_gap
        self._closing = cv2.getStructuringElement(cv2.MORPH_RECT, (gap + 1, gap + 1)) if gap else None

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        for frame in frames:
            mask = frame.data.get("mask")
            if mask is None:
                raise StageError(f"stream {frame.stream} frame {frame.index}",
                                 "blobs needs a 'mask' from an earlier stage")
            boxes, areas = self._components(mask)
            ids = self._tracker(frame.stream).update(boxes)
            frame.data["objects"] = [
                {"box": [int(v) for v in box], "area": int(area), "track": int(i)}
                for box, area, i in zip(boxes, areas, ids)
            ]
            frame.data["counts"] = self._count(boxes, mask.shape)
        return frames

    def _components(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        if mask.dtype == np.uint8 and mask.size and mask.max() not in (0, 255):
            mask = np.where(mask == 255, np.uint8(255), np.uint8(0))  # grey levels (shadows) are background
        if self._closing is not None:
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._closing)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=c.connectivity)
        stats = stats[1:]  # label 0 is the background
        area = stats[:, cv2.CC_STAT_AREA]
        w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        keep = area >= c.min_area
        if c.max_area is not None:
            keep &= area <= c.max_area
        if c.aspect[0] > 0 or np.isfinite(c.aspect[1]):
            ratio = w / h
            keep &= (ratio >= c.aspect[0]) & (ratio <= c.aspect[1])
        if c.min_fill > 0:
            keep &= area >= c.min_fill * w * h
        return stats[keep, :4], area[keep]

    def _tracker(self, stream: str) -> BoxTracker:
        tracker = self._trackers.get(stream)
        if tracker is None:
            c = self.config
            tracker = self._trackers[stream] = BoxTracker(c.match_iou, c.match_distance, c.max_missed)
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
