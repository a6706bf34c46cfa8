"""Shapes from the config and the ground-plane calibration.

A point is ``[x, y]``. A shape whose coordinates are all within [0, 1] is in fractions of the
frame (so one config fits any resolution), otherwise in pixels, the rule the blob stage's
rectangles already follow. Every failure is a ``ConfigError`` naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    """Points as given in the config; ``relative`` when they are fractions of the frame."""

    name: str
    points: np.ndarray  # Kx2 float64
    relative: bool

    def in_pixels(self, width: int, height: int) -> np.ndarray:
        if not self.relative:
            return self.points.copy()
        return self.points * np.array([width, height], np.float64)


def parse_points(value, where: str, count: int | None = None, at_least: int = 1) -> np.ndarray:
    """``[[x, y], ...]`` -> Kx2 float array, or a one-line ConfigError naming ``where``."""
    try:
        points = np.array([[float(x), float(y)] for x, y in value], np.float64)
    except (TypeError, ValueError):
        raise ConfigError(where, f"expected a list of [x, y] points, got {value!r}") from None
    if count is not None and len(points) != count:
        raise ConfigError(where, f"expected {count} points, got {len(points)}")
    if len(points) < at_least:
        raise ConfigError(where, f"expected at least {at_least} points, got {len(points)}")
    if not np.all(np.isfinite(points)) or np.any(points < 0):
        raise ConfigError(where, f"coordinates must be finite and >= 0, got {value!r}")
    return points


def parse_shape(name, value, where: str, count: int | None = None, at_least: int = 1) -> Shape:
    points = parse_points(value, where, count, at_least)
    return Shape(str(name), points, bool(np.all(points <= 1.0)))


def parse_lines(lines, where: str = "stages.analytics.lines") -> list[Shape]:
    """``{name: [[x1, y1], [x2, y2]]}``; a line of zero length is refused."""
    if not isinstance(lines, dict):
        raise ConfigError(where, f"expected a mapping name: [[x1, y1], [x2, y2]], got {lines!r}")
    shapes = []
    for name, value in lines.items():
        shape = parse_shape(name, value, f"{where}.{name}", count=2)
        if np.allclose(shape.points[0], shape.points[1]):
            raise ConfigError(f"{where}.{name}", "the two end points are the same")
        shapes.append(shape)
    return shapes


def parse_zones(zones, where: str = "stages.analytics.zones") -> list[Shape]:
    """``{name: [[x, y], [x, y], [x, y], ...]}``: polygons of three points or more, not flat."""
    if not isinstance(zones, dict):
        raise ConfigError(where, f"expected a mapping name: [[x, y], ...], got {zones!r}")
    shapes = []
    for name, value in zones.items():
        shape = parse_shape(name, value, f"{where}.{name}", at_least=3)
        if abs(cv2.contourArea(shape.points.astype(np.float32))) <= 0:
            raise ConfigError(f"{where}.{name}", "the polygon has no area")
        shapes.append(shape)
    return shapes


@dataclass(frozen=True)
class Calibration:
    """Four picture points (pixels or fractions) and their ground coordinates in metres."""

    image: Shape
    ground: np.ndarray  # 4x2 metres

    def homography(self, width: int, height: int) -> np.ndarray:
        """3x3 picture -> ground (metres) for a frame of this size."""
        src = self.image.in_pixels(width, height).astype(np.float32)
        return cv2.getPerspectiveTransform(src, self.ground.astype(np.float32)).astype(np.float64)


def parse_calibration(value, where: str = "stages.analytics.calibration") -> Calibration | None:
    """``{image: [4 x [x, y]], ground: [4 x [X, Y]]}`` (metres); None when not given."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"image", "ground"}:
        raise ConfigError(where, "expected {image: [[x, y] x 4], ground: [[X, Y] x 4]} (ground in metres)")
    image = parse_shape("calibration", value["image"], f"{where}.image", count=4)
    try:
        ground = np.array([[float(x), float(y)] for x, y in value["ground"]], np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.ground", f"expected four [X, Y] points in metres, got {value['ground']!r}") from None
    if ground.shape != (4, 2) or not np.all(np.isfinite(ground)):
        raise ConfigError(f"{where}.ground", f"expected four finite [X, Y] points in metres, got {value['ground']!r}")
    for pts, key in ((image.points, "image"), (ground, "ground")):
        if _has_collinear_triple(pts):
            raise ConfigError(f"{where}.{key}", "three of the four points lie on one line; the homography is undefined")
    return Calibration(image, ground)


def _has_collinear_triple(points: np.ndarray) -> bool:
    scale = max(float(np.ptp(points, axis=0).max()), 1e-12)
    for skip in range(4):
        a, b, c = (points[i] / scale for i in range(4) if i != skip)
        if abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])) < 1e-6:
            return True
    return False


def to_ground(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Nx2 picture points -> Nx2 ground points through the homography ``h``."""
    if not len(points):
        return np.zeros((0, 2), np.float64)
    p = np.asarray(points, np.float64)
    q = p @ h[:, :2].T + h[:, 2]
    return q[:, :2] / q[:, 2:3]
