"""Synthetic traffic scenes with exact per-pixel ground truth.

A static camera looks down a straight multi-lane road (pinhole ground plane:
the image scale of an object is proportional to its distance below the horizon
row). Vehicles are rounded boxes of varied colour, size and aspect that move
along lanes with a lane speed (no overtaking inside a lane, so they never
overlap their lane neighbours). ``truth`` is 255 exactly on the pixels a
vehicle covers and 0 elsewhere; the vehicle polygon is rasterised with the same
call into the image and into the truth, so the two agree pixel for pixel.

Nuisances (all off by default, each with its own random stream so switching one
does not change the others or the traffic):

* ``illumination``: global gain 1 + a*sin(2*pi*t/T + phi) on the whole picture;
* ``jitter``: camera shake, an integer translation of up to N pixels per frame
  applied to the picture and the truth alike (the scene is drawn on a padded
  canvas and cropped);
* ``shadows``: cast shadows beside each vehicle that darken the road; they are
  background in the truth, as in CDnet (shadow label 50 counts as background);
* ``sway``: trees beside the road whose crowns sway periodically (background);
* ``noise``: additive Gaussian sensor noise of the given standard deviation;
* haze (``SceneParams.haze``): the scattering model of :mod:`pipeline.haze`
  with per-pixel depth (road plane, vehicles at the depth of their base).

Usage::

    gen = SceneGenerator(320, 240, seed=1, haze=0.3, nuisances="mild")
    for image_bgr, truth in gen.frames():   # uint8 HxWx3, uint8 HxW (0/255)
        ...

or ``render_scene(SceneParams(...), seed)``. The URI form
``synthetic:traffic?size=640x360&frames=300&haze=0.5&seed=1`` is parsed by
:func:`parse_synthetic_uri` and read through :class:`SyntheticSource`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import parse_qsl

import cv2
import numpy as np

from pipeline.errors import SourceError
from pipeline.frame import Frame
from pipeline.haze import road_depth
from pipeline.sources.base import Source, safe_stream_name

__all__ = [
    "Nuisances", "SceneParams", "SceneGenerator", "render_scene",
    "parse_synthetic_uri", "SyntheticSource", "NUISANCE_PRESETS", "BETA_MAX",
]

#: scattering coefficient (1/m) reached at haze = 1; with the road depth of
#: pipeline.haze.road_depth this leaves t ~ 0.55 at 12 m and ~ 0.0025 at 120 m.
BETA_MAX = 0.05
_SHIFT = 4  # fractional bits of polygon vertices (sub-pixel motion)
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Nuisances:
    """Strength of each nuisance; 0 switches it off."""

    illumination: float = 0.0  #: amplitude of the global gain change (0.2 -> +-20 %)
    jitter: int = 0            #: maximum camera shake, pixels
    shadows: float = 0.0       #: shadow darkness in [0, 1]
    sway: float = 0.0          #: foliage sway amplitude at the crown top, pixels
    noise: float = 0.0         #: sensor noise standard deviation, grey levels

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ValueError(f"nuisance {f.name} must be a finite number >= 0, got {value!r}")
        if self.shadows > 1:
            raise ValueError(f"nuisance shadows must be in [0, 1], got {self.shadows}")
        if int(self.jitter) != self.jitter:
            raise ValueError(f"nuisance jitter must be a whole number of pixels, got {self.jitter}")


NUISANCE_PRESETS: dict[str, Nuisances] = {
    "none": Nuisances(),
    "mild": Nuisances(illumination=0.1, jitter=0, shadows=0.5, sway=2.0, noise=2.0),
    "hard": Nuisances(illumination=0.3, jitter=3, shadows=0.8, sway=5.0, noise=5.0),
}


@dataclass(frozen=True)
class SceneParams:
    """Everything that shapes a scene except the seed."""

    width: int = 320
    height: int = 240
    frames: int | None = 300          #: None: endless
    lanes: int = 4
    density: float = 0.06             #: chance per lane and frame that a vehicle enters
    speed: float = 1.0                #: multiplies every lane speed
    haze: float = 0.0                 #: in [0, 1]; beta = haze * BETA_MAX
    airlight: float | None = None     #: A in [0, 1]; None: drawn from the seed in [0.75, 0.95]
    horizon: float = 0.3              #: horizon row as a fraction of the height
    palette: tuple[tuple[int, int, int], ...] | None = None  #: BGR body colours; None: built-in
    nuisances: Nuisances = field(default_factory=Nuisances)
    #: "scale": each lane grows a vehicle's image scale by a constant ratio per frame (the original
    #: motion); "ground": each lane moves its vehicles at a constant speed on the ground plane
    #: (metres per frame, see :meth:`SceneGenerator.lane_speeds`), as real traffic does
    motion: str = "scale"

    def __post_init__(self):
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {', '.join(MOTIONS)}, got {self.motion!r}")
        if not (32 <= self.width <= 8192 and 32 <= self.height <= 8192):
            raise ValueError(f"size must be between 32x32 and 8192x8192, got {self.width}x{self.height}")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not 1 <= self.lanes <= 8:
            raise ValueError(f"lanes must be in 1..8, got {self.lanes}")
        if not 0 <= self.density <= 1:
            raise ValueError(f"density must be in [0, 1], got {self.density}")
        if not 0 < self.speed <= 10:
            raise ValueError(f"speed must be in (0, 10], got {self.speed}")
        if not 0 <= self.haze <= 1:
            raise ValueError(f"haze must be in [0, 1], got {self.haze}")
        if self.airlight is not None and not 0 <= self.airlight <= 1:
            raise ValueError(f"airlight must be in [0, 1], got {self.airlight}")
        if not 0.1 <= self.horizon <= 0.6:
            raise ValueError(f"horizon must be in [0.1, 0.6], got {self.horizon}")
        if self.nuisances.jitter > min(self.width, self.height) // 8:
            raise ValueError(f"jitter {self.nuisances.jitter} px is too large for {self.width}x{self.height}")


MOTIONS = ("scale", "ground")
#: ground-plane scale of the scene: depth of the picture's bottom row (as in pipeline.haze.road_depth)
#: and the width of one lane, in metres
NEAR_DEPTH_M = 3.0
LANE_WIDTH_M = 3.5
#: "ground" motion: a lane's speed in metres per frame is its scale rate times this (rates
#: 0.035..0.07 -> 0.5..1.0 m per frame, 45..91 km/h at 25 frames/s)
GROUND_SPEED_PER_RATE = 14.4

_PALETTE = (  # BGR: white, silver, black, red, blue, dark green, yellow, orange, maroon, navy
    (235, 235, 235), (190, 190, 185), (35, 35, 40), (40, 40, 200), (170, 90, 30),
    (50, 90, 40), (40, 200, 230), (30, 120, 240), (40, 30, 120), (90, 40, 30),
)
# rounded-rectangle template: four quarter circles (image y points down, so clockwise is
# top-left 180..270 deg, top-right 270..360, bottom-right 0..90, bottom-left 90..180)
_ARC_ANGLES = np.concatenate([np.linspace(a, a + math.pi / 2, 4) for a in (math.pi, 1.5 * math.pi, 0, 0.5 * math.pi)])
_ARC_COS, _ARC_SIN = np.cos(_ARC_ANGLES), np.sin(_ARC_ANGLES)
_ARC_SIDE_X = np.repeat([0, 1, 1, 0], 4)  # 0: left corner centre x0 + r, 1: right corner x1 - r
_ARC_SIDE_Y = np.repeat([0, 0, 1, 1], 4)


@dataclass
class _Lane:
    centre: float     # x offset of the lane centre at the bottom row, from the vanishing point
    width: float      # lane width at the bottom row, px
    direction: int    # +1 towards the camera (downwards), -1 away
    rate: float       # relative growth of the scale per frame
    newest: "_Vehicle | None" = None


@dataclass
class _Vehicle:
    lane: _Lane
    s: float           # scale of the base row: (y_base - horizon) / (bottom - horizon)
    width: float       # at scale 1, px
    height: float      # at scale 1, px
    colour: tuple[int, int, int]
    alive: bool = True
    id: int = 0        # 1, 2, ... in order of entry (exact identity for tracker scoring)


class SceneGenerator:
    """Deterministic traffic scene: ``frames()`` yields ``(image_bgr_uint8, truth_uint8)``.

    ``nuisances`` is a :class:`Nuisances`, a preset name (``none``, ``mild``,
    ``hard``) or a dict of its fields. Other keyword arguments are
    :class:`SceneParams` fields. Each yielded array is new (safe to keep).
    """

    def __init__(self, width: int = 320, height: int = 240, seed: int = 0, haze: float = 0.0,
                 nuisances: Nuisances | str | dict = "none", **params):
        self.params = SceneParams(width=width, height=height, haze=haze, nuisances=_as_nuisances(nuisances), **params)
        self.seed = int(seed)
        self._build()

    @classmethod
    def from_params(cls, params: SceneParams, seed: int = 0) -> "SceneGenerator":
        self = cls.__new__(cls)
        self.params, self.seed = params, int(seed)
        self._build()
        return self

    # --- construction ---------------------------------------------------------
    def _build(self) -> None:
        p, n = self.params, self.params.nuisances
        layout, traffic, illum, shake, noise, look = (
            np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(6))
        self._traffic, self._shake, self._noise_rng = traffic, shake, noise
        self.pad = int(n.jitter)
        self.canvas_h, self.canvas_w = p.height + 2 * self.pad, p.width + 2 * self.pad
        self.horizon_row = self.pad + p.horizon * p.height
        self.bottom_row = self.pad + p.height - 1
        self.span = self.bottom_row - self.horizon_row
        self.vp_x = self.pad + p.width * (0.5 + layout.uniform(-0.08, 0.08))
        self.road_half = 0.5 * p.width * layout.uniform(0.85, 1.05)
        self.airlight = float(p.airlight if p.airlight is not None else look.uniform(0.75, 0.95))
        self.beta = p.haze * BETA_MAX
        self._lanes = self._make_lanes(layout)
        self._palette = p.palette or _PALETTE
        self._static = self._draw_background(layout)
        self._static_depth = self._make_depth()
        self._trees = self._make_trees(layout)
        for tree in self._trees:  # a tree stands at the depth of its trunk base
            self._set_depth(self._static_depth, tree)
        if not n.sway:
            for tree in self._trees:
                self._paste_tree(self._static, tree, 0.0)
        # global illumination: slow sinusoid with a seed-dependent period and phase
        self._illum_period = illum.uniform(80, 200)
        self._illum_phase = illum.uniform(0, 2 * math.pi)
        self._noise_bank = self._make_noise_bank(noise) if n.noise else None
        # reusable per-frame buffers (kept off the hot path's allocator)
        self._canvas = np.empty_like(self._static)
        self._truth = np.zeros((self.canvas_h, self.canvas_w), np.uint8)
        self._shadow = np.zeros((self.canvas_h, self.canvas_w), np.uint8)
        self._static_trans = np.exp(self._static_depth * np.float32(-self.beta))  # t = exp(-beta d)
        self._trans = np.empty_like(self._static_trans)
        self._sway_cache: dict = {}
        self._last_bodies: list[tuple[np.ndarray, float]] = []  # (polygon, depth) of the last hazy frame
        self._last_window: tuple[slice, slice] | None = None
        self._vehicles: list[_Vehicle] = []
        self._next_id = 1
        self._last_objects: list[dict] = []
        self._t = 0
        for _ in range(int(3 / max(min(l.rate for l in self._lanes), 1e-3))):  # warm up: traffic already flowing
            self._step_traffic()

    def _make_lanes(self, rng) -> list[_Lane]:
        p = self.params
        lane_w = 2 * self.road_half / p.lanes
        lanes = []
        for k in range(p.lanes):
            centre = -self.road_half + (k + 0.5) * lane_w
            # right-hand traffic: left half recedes, right half approaches (one lane: random)
            direction = (1 if rng.random() < 0.5 else -1) if p.lanes == 1 else (1 if k >= p.lanes / 2 else -1)
            rate = rng.uniform(0.035, 0.07) * p.speed
            lanes.append(_Lane(centre, lane_w, direction, rate))
        return lanes

    def _draw_background(self, rng) -> np.ndarray:
        h, w, hr = self.canvas_h, self.canvas_w, self.horizon_row
        img = np.empty((h, w, 3), np.float32)
        rows = np.arange(h, dtype=np.float32)[:, None]
        # sky: brighter towards the horizon
        sky_t = np.clip(rows / max(hr, 1), 0, 1)
        sky = np.array([215, 190, 165], np.float32) * (1 - sky_t[..., None]) + np.array([235, 225, 215], np.float32) * sky_t[..., None]
        img[:] = sky
        ground = rows >= hr
        grass = np.array([60, 120, 85], np.float32) * rng.uniform(0.8, 1.1)
        img[np.broadcast_to(ground, (h, w))] = grass
        texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)
        img *= (1 + 0.08 * texture)[..., None]
        # road trapezoid with asphalt texture, edge lines and dashed lane lines
        xs = np.arange(w, dtype=np.float32)[None, :]
        scale = np.clip((rows - hr) / self.span, 0, None)
        road = (np.abs(xs - self.vp_x) <= self.road_half * 1.04 * scale) & ground
        asphalt = rng.uniform(95, 125) + 12 * cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.7)
        img[road] = np.stack([asphalt * 1.02, asphalt, asphalt * 0.97], axis=-1)[road]
        paint = np.zeros((h, w), np.uint8)
        for k in range(len(self._lanes) + 1):
            offset = -self.road_half + k * 2 * self.road_half / len(self._lanes)
            self._draw_lane_line(paint, offset, dashed=0 < k < len(self._lanes))
        img[paint > 0] = (210, 215, 215)
        # a distant tree line on the horizon
        band = int(max(2, 0.025 * self.params.height))
        r0 = int(hr) - band
        img[max(r0, 0):int(hr) + 1] *= 0.55
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw_lane_line(self, paint: np.ndarray, offset: float, dashed: bool) -> None:
        hr, span = self.horizon_row, self.span
        thickness = 0.012 * self.params.width
        # paint in ground-plane depth so dashes shorten towards the horizon
        z = np.geomspace(0.6, 25.0, 81)  # relative depth, 1 = bottom row; < 1 reaches the jitter margin
        segments = zip(z[:-1:2], z[1::2]) if dashed else zip(z[:-1], z[1:])
        for z0, z1 in segments:
            pts = []
            for zz, side in ((z0, -1), (z1, -1), (z1, 1), (z0, 1)):
                s = 1.0 / zz
                y = hr + s * span
                pts.append((self.vp_x + (offset + side * thickness / 2) * s, y))
            cv2.fillConvexPoly(paint, np.round(np.array(pts) * _ONE).astype(np.int32), 255, cv2.LINE_8, _SHIFT)

    def _make_depth(self) -> np.ndarray:
        """Road-plane depth in metres over the canvas: 3 m at the picture's bottom row."""
        h = self.canvas_h
        near_canvas_bottom = 3.0 * self.span / max(h - 1 - self.horizon_row, 1)
        return road_depth(h, self.canvas_w, horizon=self.horizon_row / h, near=near_canvas_bottom)

    def _make_trees(self, rng) -> list[dict]:
        """Foliage patches beside the road: colour, alpha mask and base position."""
        p = self.params
        trees = []
        for side in (-1, 1):
            for _ in range(int(rng.integers(1, 3))):
                s = rng.uniform(0.15, 0.55)                      # scale of the trunk base
                th = int(max(8, s * self.span * rng.uniform(0.9, 1.3)))
                tw = int(max(6, th * rng.uniform(0.5, 0.8)))
                y_base = self.horizon_row + s * self.span
                road_edge = self.vp_x + side * self.road_half * 1.1 * s
                x_left = road_edge + (rng.uniform(0.05, 0.6) * p.width * s if side > 0 else -tw - rng.uniform(0.05, 0.6) * p.width * s)
                patch = np.zeros((th, tw, 3), np.uint8)
                mask = np.zeros((th, tw), np.uint8)
                trunk_w = max(1, tw // 8)
                cv2.rectangle(mask, (tw // 2 - trunk_w, th // 2), (tw // 2 + trunk_w, th - 1), 255, -1)
                patch[mask > 0] = (30, 45, 70)
                crown = np.zeros_like(mask)
                for _ in range(6):
                    cx, cy = rng.uniform(0.25, 0.75) * tw, rng.uniform(0.2, 0.5) * th
                    ax, ay = rng.uniform(0.15, 0.3) * tw, rng.uniform(0.12, 0.25) * th
                    cv2.ellipse(crown, (int(cx), int(cy)), (max(1, int(ax)), max(1, int(ay))), 0, 0, 360, 255, -1)
                leaves = np.array([40, 100, 50], np.float32) * (0.7 + 0.5 * rng.random((th, tw, 1)))
                patch[crown > 0] = leaves.astype(np.uint8)[crown > 0]
                mask |= crown
                trees.append({"patch": patch, "mask": mask, "x": int(round(x_left)), "y": int(round(y_base)) - th,
                              "freq": rng.uniform(0.03, 0.08), "phase": rng.uniform(0, 2 * math.pi)})
        return trees

    def _set_depth(self, depth: np.ndarray, tree: dict) -> None:
        th, tw = tree["mask"].shape
        x, y = tree["x"], tree["y"]
        base = float(depth[min(max(y + th - 1, 0), self.canvas_h - 1), 0])
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + tw, self.canvas_w), min(y + th, self.canvas_h)
        if x0 < x1 and y0 < y1:
            region = depth[y0:y1, x0:x1]
            region[tree["mask"][y0 - y:y1 - y, x0 - x:x1 - x] > 0] = base

    def _make_noise_bank(self, rng) -> np.ndarray:
        margin = 16
        shape = (4, self.params.height + margin, self.params.width + margin, 3)
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(self.params.nuisances.noise))

    # --- traffic ----------------------------------------------------------------
    def _step_traffic(self) -> None:
        rng = self._traffic
        ground = self.params.motion == "ground"
        for v in self._vehicles:
            if ground:  # depth = NEAR_DEPTH_M / s shrinks (approaching) or grows by a constant step
                depth = NEAR_DEPTH_M / v.s - v.lane.direction * v.lane.rate * GROUND_SPEED_PER_RATE
                v.s = NEAR_DEPTH_M / depth if depth > 0 else 1e3
            else:
                v.s *= 1 + v.lane.direction * v.lane.rate
            top_s = v.s * (1 - v.height / self.span)
            if (v.lane.direction > 0 and top_s * self.span > self.canvas_h - self.horizon_row) or \
               (v.lane.direction < 0 and v.s < 0.05):
                v.alive = False
        self._vehicles = [v for v in self._vehicles if v.alive]
        for lane in self._lanes:
            if rng.random() < self.params.density:
                self._spawn(lane, rng)
            else:
                rng.random(4)  # keep the random stream aligned whatever happens

    def _spawn(self, lane: _Lane, rng) -> None:
        width = lane.width * rng.uniform(0.55, 0.8)
        height = min(width * rng.uniform(0.7, 1.5), 0.45 * self.span)
        colour = self._palette[int(rng.integers(len(self._palette)))]
        rng.random()
        ratio = 1 - height / self.span  # top / base scale of a vehicle; constant as it moves
        last = lane.newest if lane.newest is not None and lane.newest.alive else None
        margin = 0.9
        if lane.direction > 0:
            s = 0.06
            if last is not None and s / last.s > margin * (1 - last.height / self.span):
                return  # would overlap the previous vehicle of this lane
        else:
            s = (self.canvas_h - self.horizon_row) / self.span / ratio  # top just at the bottom edge
            if last is not None and last.s / s > margin * ratio:
                return
        vehicle = _Vehicle(lane, s, width, height, tuple(int(c) for c in colour), id=self._next_id)
        self._next_id += 1
        lane.newest = vehicle
        self._vehicles.append(vehicle)

    # --- drawing ----------------------------------------------------------------
    def _vehicle_box(self, v: _Vehicle) -> tuple[float, float, float, float]:
        y1 = self.horizon_row + v.s * self.span
        w, h = v.width * v.s, v.height * v.s
        xc = self.vp_x + v.lane.centre * v.s
        return xc - w / 2, y1 - h, xc + w / 2, y1

    @staticmethod
    def _body_polygon(x0, y0, x1, y1) -> np.ndarray:
        """Rounded rectangle, clockwise, as fixed-point vertices for cv2 (shift=_SHIFT)."""
        r = 0.18 * min(x1 - x0, y1 - y0)
        xs = x0 + r + _ARC_SIDE_X * (x1 - x0 - 2 * r) + r * _ARC_COS
        ys = y0 + r + _ARC_SIDE_Y * (y1 - y0 - 2 * r) + r * _ARC_SIN
        return np.round(np.stack((xs, ys), 1) * _ONE).astype(np.int32)

    def _draw_shadows(self, canvas, boxes) -> None:
        darkness = self.params.nuisances.shadows
        if not darkness or not boxes:
            return
        self._shadow.fill(0)
        for x0, y0, x1, y1 in boxes:
            w, h = x1 - x0, y1 - y0
            # sun from the upper left: the shadow falls to the right of the base
            quad = [(x0 + 0.2 * w, y1 - 0.35 * h), (x1 + 0.45 * w, y1 - 0.35 * h),
                    (x1 + 0.45 * w, y1 + 0.08 * h), (x0 + 0.2 * w, y1 + 0.08 * h)]
            cv2.fillConvexPoly(self._shadow, np.round(np.array(quad) * _ONE).astype(np.int32), 255, cv2.LINE_8, _SHIFT)
        top = max(int(min(b[1] for b in boxes)) - 1, 0)
        roi, mask = canvas[top:], self._shadow[top:]
        dark = cv2.convertScaleAbs(roi, alpha=1 - 0.6 * darkness)
        cv2.copyTo(dark, mask, roi)

    def _draw_vehicle(self, canvas, box, colour) -> None:
        x0, y0, x1, y1 = box
        body = self._body_polygon(*box)
        cv2.fillConvexPoly(canvas, body, colour, cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(self._truth, body, 255, cv2.LINE_8, _SHIFT)
        if self.beta:
            base_depth = float(self._static_depth[min(max(int(y1), 0), self.canvas_h - 1), 0])
            self._last_bodies.append((body, base_depth))
            cv2.fillConvexPoly(self._trans, body, math.exp(-self.beta * base_depth), cv2.LINE_8, _SHIFT)
        w, h = x1 - x0, y1 - y0
        if w < 4 or h < 4:
            return
        # windows and lights lie inside the body, so the truth is unchanged
        glass = tuple(int(c * 0.35) for c in colour)
        win = [(x0 + 0.15 * w, y0 + 0.12 * h), (x1 - 0.15 * w, y0 + 0.12 * h),
               (x1 - 0.1 * w, y0 + 0.42 * h), (x0 + 0.1 * w, y0 + 0.42 * h)]
        cv2.fillConvexPoly(canvas, np.round(np.array(win) * _ONE).astype(np.int32), glass, cv2.LINE_8, _SHIFT)
        light = (40, 40, 220) if colour[2] < 150 or colour[1] > 100 else (200, 230, 240)
        ly0, ly1 = y1 - 0.3 * h, y1 - 0.18 * h
        for lx0, lx1 in ((x0 + 0.08 * w, x0 + 0.25 * w), (x1 - 0.25 * w, x1 - 0.08 * w)):
            quad = [(lx0, ly0), (lx1, ly0), (lx1, ly1), (lx0, ly1)]
            cv2.fillConvexPoly(canvas, np.round(np.array(quad) * _ONE).astype(np.int32), light, cv2.LINE_8, _SHIFT)

    def _paste_tree(self, canvas, tree, shift: float) -> None:
        patch, mask = tree["patch"], tree["mask"]
        th, tw = mask.shape
        shift = round(shift * 4) / 4  # quarter-pixel steps, so the sheared patches can be cached
        if shift:
            key = (id(tree), shift)
            if key not in self._sway_cache:
                # shear: the crown top moves by `shift`, the trunk base stays put
                m = np.float32([[1, -shift / th, shift], [0, 1, 0]])
                self._sway_cache[key] = (
                    cv2.warpAffine(patch, m, (tw, th), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT),
                    cv2.warpAffine(mask, m, (tw, th), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT))
            patch, mask = self._sway_cache[key]
        x, y = tree["x"], tree["y"]
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + tw, self.canvas_w), min(y + th, self.canvas_h)
        if cx0 >= cx1 or cy0 >= cy1:
            return
        sub = (slice(cy0 - y, cy1 - y), slice(cx0 - x, cx1 - x))
        cv2.copyTo(patch[sub], mask[sub], canvas[cy0:cy1, cx0:cx1])

    def _render(self) -> tuple[np.ndarray, np.ndarray]:
        p, n = self.params, self.params.nuisances
        t = self._t
        canvas = self._canvas
        np.copyto(canvas, self._static)
        self._truth.fill(0)
        if self.beta:
            self._last_bodies = []
            np.copyto(self._trans, self._static_trans)
        if n.sway:
            for tree in self._trees:
                self._paste_tree(canvas, tree, n.sway * math.sin(2 * math.pi * tree["freq"] * t + tree["phase"]))
        vehicles = sorted(self._vehicles, key=lambda v: v.s)  # far first: near ones occlude them
        boxes = [self._vehicle_box(v) for v in vehicles]
        self._draw_shadows(canvas, boxes)
        for v, box in zip(vehicles, boxes):
            self._draw_vehicle(canvas, box, v.colour)
        dx, dy = (self._shake.integers(-n.jitter, n.jitter + 1, 2) if n.jitter else (0, 0))
        self._record_objects(vehicles, boxes, dx, dy)
        rows = slice(self.pad + dy, self.pad + dy + p.height)
        cols = slice(self.pad + dx, self.pad + dx + p.width)
        truth = self._truth[rows, cols].copy()
        if self.beta:
            self._last_window = (rows, cols)
        image = self._photometric(canvas[rows, cols], self._trans[rows, cols] if self.beta else None, t)
        return image, truth

    def _photometric(self, view: np.ndarray, trans: np.ndarray | None, t: int) -> np.ndarray:
        """Haze, global illumination and sensor noise in two float passes and one saturating cast.

        I = g * (J * t + A * (1 - t)) + n   (scattering model of pipeline.haze, scaled by the gain g)
        """
        n = self.params.nuisances
        gain = 1 + n.illumination * math.sin(2 * math.pi * t / self._illum_period + self._illum_phase)
        if trans is None and not n.noise and gain == 1:
            return view.copy()
        if trans is not None:
            scaled_t = trans * np.float32(gain)                               # g * t, one channel
            veil = (1 - trans) * np.float32(255 * self.airlight * gain)        # g * A * (1 - t)
            f = np.multiply(view, scaled_t[..., None], dtype=np.float32)
            f += veil[..., None]
        else:
            f = np.multiply(view, np.float32(gain), dtype=np.float32)
        if n.noise:
            k = int(self._noise_rng.integers(len(self._noise_bank)))
            oy, ox = self._noise_rng.integers(0, 16, 2)
            noise = self._noise_bank[k, oy:oy + f.shape[0], ox:ox + f.shape[1]]
            return cv2.add(f, noise, dtype=cv2.CV_8U)  # rounds and saturates to [0, 255]
        return cv2.add(f, (0.0, 0.0, 0.0, 0.0), dtype=cv2.CV_8U)

    def _record_objects(self, vehicles, boxes, dx, dy) -> None:
        ox, oy = self.pad + dx, self.pad + dy  # canvas -> picture
        p = self.params
        objects = []
        for v, (x0, y0, x1, y1) in zip(vehicles, boxes):
            bx0, by0 = max(x0 - ox, 0.0), max(y0 - oy, 0.0)
            bx1, by1 = min(x1 - ox, float(p.width)), min(y1 - oy, float(p.height))
            if bx1 <= bx0 or by1 <= by0:
                continue  # wholly outside the picture
            objects.append({"id": v.id, "box": (bx0, by0, bx1 - bx0, by1 - by0), "direction": v.lane.direction,
                            "lane": self._lanes.index(v.lane),
                            "ground": (self._lateral_m(v.lane.centre), NEAR_DEPTH_M / v.s),
                            "base": ((x0 + x1) / 2 - ox, y1 - oy)})
        self._last_objects = objects

    def _lateral_m(self, centre_px: float) -> float:
        return centre_px * LANE_WIDTH_M * self.params.lanes / (2 * self.road_half)

    # --- public ------------------------------------------------------------------
    def objects(self) -> list[dict]:
        """The vehicles of the last frame: ``id``, ``box`` (x, y, w, h, float, clipped to the picture),
        ``direction`` (+1 towards the camera, -1 away), ``lane`` (index into :meth:`lane_speeds`), ``ground`` (lateral, depth) in metres of the
        base centre, and ``base`` (x, y) its exact position in the picture (which may lie outside
        it; with ``nuisances.jitter`` the shaken picture)."""
        return list(self._last_objects)

    def lane_speeds(self, fps: float) -> list[tuple[int, float]]:
        """(direction, km/h) of each lane for ``motion="ground"`` at ``fps`` frames per second."""
        if self.params.motion != "ground":
            raise ValueError("lane speeds in km/h exist only for motion='ground'")
        return [(lane.direction, lane.rate * GROUND_SPEED_PER_RATE * fps * 3.6) for lane in self._lanes]

    def image_from_ground(self, lateral_m: float, depth_m: float) -> tuple[float, float]:
        """The picture point (x, y) of a ground point (camera at rest): the exact inverse of ``ground``."""
        s = NEAR_DEPTH_M / depth_m
        centre_px = lateral_m * 2 * self.road_half / (LANE_WIDTH_M * self.params.lanes)
        return self.vp_x + centre_px * s - self.pad, self.horizon_row + s * self.span - self.pad

    def calibration(self, depths: tuple[float, float] = (6.0, 20.0)) -> dict:
        """Four picture points on the road edges at two depths and their ground coordinates in
        metres, in the form of the analytics stage's ``calibration`` key."""
        half = LANE_WIDTH_M * self.params.lanes / 2
        ground = [(-half, depths[1]), (half, depths[1]), (half, depths[0]), (-half, depths[0])]
        image = [list(self.image_from_ground(x, z)) for x, z in ground]
        return {"image": image, "ground": [list(g) for g in ground]}

    def next_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Render the current state, then advance the traffic by one frame."""
        out = self._render()
        self._t += 1
        self._step_traffic()
        return out

    def frames(self, count: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``count`` frames (default ``params.frames``; endless when both are None)."""
        count = self.params.frames if count is None else count
        produced = 0
        while count is None or produced < count:
            yield self.next_frame()
            produced += 1

    __iter__ = frames

    def background(self, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
        """The empty scene (no vehicles, no nuisances, trees at rest, no haze), HxWx3 uint8,
        seen with the camera moved by ``shift = (dx, dy)`` pixels (|d| <= nuisances.jitter)."""
        dx, dy = shift
        if max(abs(dx), abs(dy)) > self.pad:
            raise ValueError(f"shift {shift} exceeds the jitter margin of {self.pad} px")
        canvas = self._static.copy()
        for tree in self._trees if self.params.nuisances.sway else ():
            self._paste_tree(canvas, tree, 0.0)
        pad, p = self.pad, self.params
        return canvas[pad + dy:pad + dy + p.height, pad + dx:pad + dx + p.width].copy()

    def depth(self) -> np.ndarray | None:
        """Depth in metres behind the last hazy frame (vehicles at the depth of their base), else None."""
        if not self.beta or self._last_window is None:
            return None
        depth = self._static_depth.copy()  # built on demand: the hot path only needs t
        for body, base_depth in self._last_bodies:
            cv2.fillConvexPoly(depth, body, base_depth, cv2.LINE_8, _SHIFT)
        return depth[self._last_window].copy()


def _as_nuisances(value) -> Nuisances:
    if isinstance(value, Nuisances):
        return value
    if value is None:
        return Nuisances()
    if isinstance(value, str):
        if value not in NUISANCE_PRESETS:
            raise ValueError(f"unknown nuisance preset {value!r} (valid: {', '.join(NUISANCE_PRESETS)})")
        return NUISANCE_PRESETS[value]
    if isinstance(value, dict):
        return Nuisances(**value)
    raise TypeError(f"nuisances must be a Nuisances, a preset name or a dict, got {type(value).__name__}")


def render_scene(params: SceneParams, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``params.frames`` frames of the scene as ``(image_bgr_uint8, truth_uint8)`` pairs."""
    return SceneGenerator.from_params(params, seed).frames()


# --- URI -------------------------------------------------------------------------
SCENES = ("traffic",)
_FLOAT_KEYS = {"haze", "density", "speed", "airlight", "horizon"}
_STR_KEYS = {"motion"}
_INT_KEYS = {"frames", "lanes", "seed"}
_NUISANCE_KEYS = {f.name for f in dataclasses.fields(Nuisances)}
_URI_KEYS = sorted(_FLOAT_KEYS | _INT_KEYS | _STR_KEYS | _NUISANCE_KEYS | {"size", "nuisances"})


def parse_synthetic_uri(uri: str) -> tuple[SceneParams, int]:
    """``synthetic:traffic?size=640x360&frames=300&haze=0.5&seed=1`` -> (SceneParams, seed).

    Keys: size, frames (0 = endless), lanes, density, speed, haze, airlight, horizon, seed,
    motion (scale|ground, default scale),
    nuisances (preset: none|mild|hard, default none) and the Nuisances fields
    (illumination, jitter, shadows, sway, noise) that override the preset.
    Raises SourceError naming the URI and the bad parameter.
    """
    def bad(cause: str) -> SourceError:
        return SourceError(uri, cause)

    if not uri.startswith("synthetic:"):
        raise bad("not a synthetic: URI")
    scene, _, query = uri[len("synthetic:"):].partition("?")
    if scene not in SCENES:
        raise bad(f"unknown scene {scene!r} (valid: {', '.join(SCENES)})")
    values: dict = {}
    nuisance_values: dict = {}
    preset = "none"
    seed = 0
    for key, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in _URI_KEYS:
            raise bad(f"unknown parameter {key!r} (valid: {', '.join(_URI_KEYS)})")
        try:
            if key == "size":
                w, sep, h = raw.lower().partition("x")
                if not sep:
                    raise ValueError
                values["width"], values["height"] = int(w), int(h)
            elif key == "nuisances":
                preset = raw
            elif key in _STR_KEYS:
                values[key] = raw
            elif key == "seed":
                seed = int(raw)
            elif key == "frames":
                values["frames"] = int(raw) or None
            elif key in _INT_KEYS:
                values[key] = int(raw)
            elif key == "jitter":
                nuisance_values[key] = int(raw)
            else:
                number = float(raw)
                (nuisance_values if key in _NUISANCE_KEYS else values)[key] = number
        except ValueError:
            expected = "WIDTHxHEIGHT" if key == "size" else "a whole number" if key in _INT_KEYS | {"jitter"} else "a number"
            raise bad(f"parameter {key}={raw!r} is not {expected}") from None
    try:
        base = _as_nuisances(preset)
        nuisances = dataclasses.replace(base, **nuisance_values)
        return SceneParams(nuisances=nuisances, **values), seed
    except ValueError as e:
        raise bad(str(e)) from None


class SyntheticSource(Source):
    """Generated traffic scene; ``Frame.truth`` is the exact 0/255 mask, pts = (index-1)/fps."""

    def __init__(self, uri: str, name: str | None = None, fps: float = 25.0):
        self.params, self.seed = parse_synthetic_uri(str(uri))
        if fps <= 0:
            raise SourceError(str(uri), f"fps must be > 0, got {fps}")
        self.fps = fps
        super().__init__(uri, name)

    def default_name(self) -> str:
        scene = self.uri[len("synthetic:"):].partition("?")[0]
        return safe_stream_name(f"synthetic-{scene}-seed{self.seed}")

    def _generate(self) -> Iterator[Frame]:
        gen = SceneGenerator.from_params(self.params, self.seed)
        for i, (image, truth) in enumerate(gen.frames(), start=1):
            yield Frame(self.name, i, (i - 1) / self.fps, image, truth)
