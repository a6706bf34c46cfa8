"""Preview overlay of the analytics: lines with their running counts, zones with the vehicles
in them, and each track's id with a short trail of its anchor (bottom centre of the box)."""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np

_LINE = (0, 255, 255)     # yellow (BGR)
_ZONE = (255, 160, 0)     # blue
_TRAIL = (0, 200, 255)    # orange
_TEXT = (255, 255, 255)


class AnalyticsOverlay:
    """Draws one stream's analytics onto a BGR picture; keeps the last ``trail`` anchors per track."""

    def __init__(self, trail: int = 12):
        self.trail = trail
        self._paths: dict[int, deque] = {}
        self._frame = 0

    def draw(self, image: np.ndarray, frame) -> None:
        result = frame.data.get("analytics")
        if result is None:
            return
        state = result["shapes"]
        self._frame += 1
        for zone in state.zones:
            pts = np.round(zone.polygon).astype(np.int32)
            cv2.polylines(image, [pts], True, _ZONE, 1, cv2.LINE_AA)
            n = len(result["zones"].get(zone.name, ()))
            x, y = pts.min(axis=0)
            cv2.putText(image, f"{zone.name}: {n}", (int(x) + 2, int(y) + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _ZONE, 1,
                        cv2.LINE_AA)
        for line in state.lines:
            a = line.a
            b = a + line.unit * line.length
            cv2.line(image, _pt(a), _pt(b), _LINE, 2, cv2.LINE_AA)
            totals = result["totals"].get(line.name, {})
            label = f"{line.name} in {totals.get('in', 0)} out {totals.get('out', 0)}"
            mid = (a + b) / 2 - line.normal * 6
            cv2.putText(image, label, _pt(mid), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _LINE, 1, cv2.LINE_AA)
        seen = set()
        for obj in frame.data.get("objects") or ():
            x, y, w, h = obj["box"]
            track = int(obj["track"])
            seen.add(track)
            path = self._paths.setdefault(track, deque(maxlen=self.trail))
            path.append((int(x + w / 2), int(y + h)))
            if len(path) > 1:
                cv2.polylines(image, [np.array(path, np.int32)], False, _TRAIL, 1, cv2.LINE_AA)
            speed = obj.get("speed_kmh")
            label = f"#{track}" + (f" {speed:.0f} km/h" if speed is not None else "")
            cv2.putText(image, label, (int(x), int(y + h) + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, _TEXT, 1, cv2.LINE_AA)
        if self._frame % 50 == 0:  # forget the trails of tracks that are gone
            for track in [t for t in self._paths if t not in seen]:
                del self._paths[track]


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))
