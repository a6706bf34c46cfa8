"""Camera-motion compensation for the background models (``stabilize: auto | off``).

A shaking pole camera or a slow pan moves the whole picture, and every
background model then sees the static scene as motion. Here each frame is
registered against a *reference* of its stream and the other frames are warped
into it before the background model compares them:

* **Registration** (:class:`Stabilizer`, one per stream): corners of a
  reference frame (Shi-Tomasi, ``cv2.goodFeaturesToTrack``) are followed into
  each new frame with pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``,
  started from the previous frame's estimate so a slow drift stays small), and
  a similarity (shift, rotation, uniform scale) is fitted to the tracks with
  RANSAC (``cv2.estimateAffinePartial2D``), so corners on moving vehicles are
  outliers. It runs on a grey copy at most 320 pixels wide. In a scene with
  little texture the largest consistent group of corners can be vehicles
  (issue 12), so: when enough corners are still exactly where the last
  estimate puts them the camera has not moved and that estimate is kept;
  otherwise the two largest groups of tracks and the plain shift of each are
  candidates, and the one that brings the reference nearest the frame (fewest
  differing pixels) wins. A renewal registers the frame directly against the
  epoch's first reference and goes back to it when it still registers well,
  so a still or shaking camera accumulates no error over renewals.
* **Pose**: each frame gets ``pose``, the 3x3 map from the coordinates of its
  *epoch* (the first reference of an unbroken run of registrations) to its own
  pixels. Two frames of one epoch are related by ``pose_t @ inv(pose_i)``; the
  reference may be renewed inside an epoch (when its corners wear out or the
  camera has drifted far), poses stay comparable.
* **Confidence** = RANSAC inliers / corners of the reference. Below
  ``min_confidence`` (or fewer than ``min_inliers`` tracks, or an implausible
  rotation/zoom) the frame has no pose: ``status`` is ``unreliable`` and the
  models treat it exactly as without compensation (identity). After
  ``lost_after`` unreliable frames in a row (a scene cut, a camera moved to a
  new preset), the next frame with enough texture starts a new epoch
  (``status: reanchored``); frames of an older epoch are never warped.
* **Dead band**: a relation that moves no corner of the frame by more than
  ``DEAD_BAND`` pixels (of the registered frame; a still camera's estimates
  wander by 0.1-0.4 there) is not applied, so a still camera gives exactly the
  same masks as ``stabilize: off``.

How each model uses it:

* MSFgNet (``FrameBuffer.aligned``): the buffer keeps every frame as it was
  seen, with its pose; the frames picked for the window are warped into the
  current frame. Pixels a past frame has no data for are filled with the
  current frame (no change there); where most past frames have none they are
  *unknown* and the stage forces its probability and mask to 0 there. A warp that does not bring the past frame
  nearer the current one is dropped (never worse than no compensation).
* MOG2 / KNN (:class:`ModelFrame`): OpenCV's models live in fixed pixel
  coordinates, so the roles are reversed: each frame is warped into the
  coordinates of the frame the model started at, onto a canvas (that frame
  plus a margin) that keeps the last values where the current frame has none,
  and the mask is warped back; pixels that fall outside the canvas are unknown
  (mask 0). The
  model is started afresh when the camera has drifted so far that less than
  ``MIN_OVERLAP`` of the model's frame is still seen; at a new epoch it carries
  on from the new reference as it would without compensation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import ConfigError

MODES = ("auto", "off")
EST_WIDTH = 320          # registration runs on a grey copy at most this wide
DEAD_BAND = 1.0          # registered pixels: a relation moving no frame corner further is not applied
MIN_OVERLAP = 0.6        # MOG2/KNN: model restarted when less of its frame is seen
MARGIN = 0.05            # MOG2/KNN: the model's canvas extends this share of the width beyond its frame
MISFIT_GREY = 12         # grey levels: a registered pixel differing more from the reference misfits
STAY_SHARE = 0.75        # corners still where the last estimate puts them, as a share of the best fit's: no move
SNAP = 0.25              # registered pixels: a fit moving no frame corner further from the last estimate keeps it
LK_WINDOW, LK_LEVELS = (11, 11), 2   # 2 levels follow ~20 px per frame from the last estimate


def stabilize_mode(value) -> str:
    """``auto`` or ``off`` as written; YAML 1.1 (``yaml.safe_load``) reads a bare ``off`` as false
    and ``on`` as true, so those mean off and auto."""
    if value is False:
        return "off"
    if value is True:
        return "auto"
    return value


def check_mode(section: str, value) -> None:
    if stabilize_mode(value) not in MODES:
        raise ConfigError(f"{section}.stabilize", f"must be one of {', '.join(MODES)}, got {value!r}")


@dataclass(frozen=True)
class StabilizerSettings:
    corners: int = 150             # reference corners followed
    min_inliers: int = 12          # fewer RANSAC inliers: unreliable
    min_confidence: float = 0.15   # inliers / corners below this: unreliable
    renew_below: float = 0.3       # confidence below this (but reliable): renew the reference
    renew_shift: float = 0.15      # renew when the reference has moved by this fraction of the width
    max_zoom: float = 0.15         # |scale - 1| beyond this is implausible for one frame
    max_rotation: float = 8.0      # degrees; beyond this is implausible
    max_zoom_step: float = 0.03    # |scale - 1| since the last estimate: a zoom lens changes slowly
    max_rotation_step: float = 3.0  # degrees since the last estimate
    lost_after: int = 3            # unreliable frames in a row before a new epoch starts
    ransac_px: float = 1.0         # RANSAC reprojection threshold at registration size


@dataclass
class Motion:
    """Registration of one frame. ``pose`` (3x3, pixels of the grey frame given to ``update``) maps
    the epoch's coordinates to this frame; None when unreliable."""

    pose: np.ndarray | None
    epoch: int
    confidence: float
    status: str            # anchor | ok | renewed | unreliable | reanchored
    size: tuple[int, int]  # (w, h) of the registered grey frame

    def pose_at(self, s: float) -> np.ndarray | None:
        """The pose on a grid ``s`` times finer than the registered frame (None stays None)."""
        return None if self.pose is None else rescaled(self.pose, s)

    def record(self, scale: float = 1.0) -> dict:
        """The events.jsonl entry: how far the picture's centre has moved since the epoch began
        (dx, dy in pixels of a frame ``scale`` times the registered one), rotation (degrees), zoom,
        confidence, status, epoch."""
        out = {"status": self.status, "confidence": round(float(self.confidence), 3), "epoch": self.epoch}
        if self.pose is not None:
            m = self.pose
            cx, cy = self.size[0] / 2, self.size[1] / 2
            out["dx"] = round(float(m[0, 0] * cx + m[0, 1] * cy + m[0, 2] - cx) * scale, 2)
            out["dy"] = round(float(m[1, 0] * cx + m[1, 1] * cy + m[1, 2] - cy) * scale, 2)
            out["rotation"] = round(math.degrees(math.atan2(m[1, 0], m[0, 0])), 3)
            out["zoom"] = round(math.hypot(m[0, 0], m[1, 0]), 4)
        return out


def _as3(m2x3: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[:2] = m2x3
    return m


def rescaled(m: np.ndarray, s: float) -> np.ndarray:
    """A 3x3 pixel map expressed on a grid ``s`` times finer: S m S^-1."""
    if s == 1:
        return m
    out = m.copy()
    out[:2, 2] *= s
    out[2, :2] /= s
    return out


def displacement(m: np.ndarray, size: tuple[int, int]) -> float:
    """Largest distance (pixels) a corner of a ``size`` (w, h) frame is moved by ``m``."""
    w, h = size
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T
    moved = m @ corners
    return float(np.abs(moved[:2] / moved[2] - corners[:2]).max())


class Stabilizer:
    """Registration of one stream's frames (see the module doc). ``update`` once per frame, in order."""

    def __init__(self, settings: StabilizerSettings = StabilizerSettings()):
        self.s = settings
        self.epoch = -1
        self._anchor = None          # grey reference at registration size
        self._points = None          # (N, 1, 2) float32 corners of the reference
        self._anchor_pose = None     # 3x3 epoch -> reference, registration pixels
        self._root = None            # (image, corners) of the epoch's first reference (pose identity)
        self._guess = np.eye(3)      # reference -> last reliable frame (LK's starting point)
        self._fails = 0
        self._k = 1.0                # registration pixels per input pixel
        self._shape = None
        self._size = (0, 0)

    def reset(self) -> None:
        self.__init__(self.s)

    def update(self, grey: np.ndarray) -> Motion:
        """Register ``grey`` (HxW uint8); the returned pose is in ``grey``'s pixels."""
        if grey.shape != self._shape:
            self.reset()
            self._shape = grey.shape
            self._size = (grey.shape[1], grey.shape[0])
            self._k = min(1.0, EST_WIDTH / grey.shape[1])
        small = grey if self._k == 1 else cv2.resize(
            grey, (max(8, round(grey.shape[1] * self._k)), max(8, round(grey.shape[0] * self._k))),
            interpolation=cv2.INTER_AREA)
        if self._anchor is None or self._fails >= self.s.lost_after:
            return self._start_epoch(small)
        m, confidence = self._fit(self._anchor, self._points, self._guess, small)
        if m is None:
            self._fails += 1
            return Motion(None, self.epoch, confidence, "unreliable", self._size)
        self._fails = 0
        self._guess = m
        pose = m @ self._anchor_pose
        status = "ok"
        if confidence < self.s.renew_below or displacement(m, small.shape[::-1]) > \
                self.s.renew_shift * small.shape[1]:
            pose = self._renew(small, pose)
            status = "renewed"
        return Motion(rescaled(pose, 1 / self._k), self.epoch, confidence, status, self._size)

    # --- internals -------------------------------------------------------------
    def _start_epoch(self, small: np.ndarray) -> Motion:
        if not self._set_anchor(small, np.eye(3)):  # too little texture to follow: try the next frame
            self._anchor = None
            return Motion(None, self.epoch, 0.0, "unreliable", self._size)
        self.epoch += 1
        self._fails = 0
        self._root = (self._anchor, self._points)
        return Motion(np.eye(3), self.epoch, 1.0, "anchor" if self.epoch == 0 else "reanchored", self._size)

    def _renew(self, small: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """The reference's corners wore out or the camera drifted from it. Registered directly against
        the epoch's first reference (not through the chain of references since), the frame's pose has
        no accumulated error; if that reference still registers well it becomes the reference again
        (a still or shaking camera keeps its first reference for good), else this frame does, with
        the direct pose when there is one. Returns the frame's pose."""
        root_image, root_points = self._root
        if root_image is not self._anchor:
            m, confidence = self._fit(root_image, root_points, pose, small)
            if m is not None:
                pose = m
                if confidence >= self.s.renew_below:
                    self._anchor, self._points, self._anchor_pose, self._guess = root_image, root_points, np.eye(3), m
                    return pose
        if self._set_anchor(small, pose):
            self._guess = np.eye(3)
        return pose

    def _set_anchor(self, small: np.ndarray, pose: np.ndarray) -> bool:
        h, w = small.shape
        pts = cv2.goodFeaturesToTrack(small, maxCorners=self.s.corners, qualityLevel=0.01,
                                      minDistance=max(3.0, w / 40), blockSize=3)
        if pts is None or len(pts) < self.s.min_inliers:
            return False
        self._anchor = small.copy()
        self._points = pts.astype(np.float32)
        self._anchor_pose = pose.copy()
        self._guess = np.eye(3)
        return True

    def _fit(self, anchor: np.ndarray, pts: np.ndarray, g: np.ndarray,
             small: np.ndarray) -> tuple[np.ndarray | None, float]:
        """The map ``anchor`` -> ``small`` (3x3) from the corners ``pts`` followed from where the
        estimate ``g`` puts them, and its confidence; (None, confidence) when unreliable."""
        start = (pts.reshape(-1, 2) @ g[:2, :2].T + g[:2, 2]).astype(np.float32).reshape(-1, 1, 2)
        moved, found, _ = cv2.calcOpticalFlowPyrLK(
            anchor, small, pts, start.copy(), winSize=LK_WINDOW, maxLevel=LK_LEVELS,
            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 10, 0.03),
            flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
        found = found.reshape(-1).astype(bool)
        if found.sum() < self.s.min_inliers:
            return None, 0.0
        src, dst = pts[found], moved[found]
        near = np.linalg.norm(dst.reshape(-1, 2) - start[found].reshape(-1, 2), axis=1)
        stayed = int((near <= self.s.ransac_px / 2).sum())   # tracks the last estimate still explains
        candidates: list[tuple[np.ndarray, int]] = []
        for _ in range(2):   # the largest consistent group, then the largest among the rest
            if len(src) < self.s.min_inliers:
                break
            m, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                     ransacReprojThreshold=self.s.ransac_px,
                                                     maxIters=500, confidence=0.995, refineIters=10)
            if m is None:
                break
            inliers = inliers.reshape(-1).astype(bool)
            for m, n in ((_as3(m), int(inliers.sum())), self._shift(src, dst, inliers)):
                if n < self.s.min_inliers or not self._plausible(m, g):
                    continue
                if displacement(m @ np.linalg.inv(g), small.shape[::-1]) <= SNAP:
                    m = g   # within the noise of the last estimate: keep it, so renewals do not chain noise
                candidates.append((m, n))
            src, dst = src[~inliers], dst[~inliers]
        most = max((n for _, n in candidates), default=0)
        if stayed >= max(self.s.min_inliers, STAY_SHARE * most):
            # enough corners are exactly where the last estimate puts them: the camera has not moved
            # since (a real move, even of one pixel, moves every scene corner away). Whatever else
            # moved is vehicles: in a scene with little texture they can form the largest
            # consistent group of tracks (oncoming vehicles fit a zoom)
            return g, stayed / len(pts)
        if not candidates:
            return None, most / len(pts)
        best, best_n = candidates[0]
        if len(candidates) > 1:   # the one that brings more of the reference onto the frame
            best, best_n = min(candidates, key=lambda c: _misfit(anchor, small, c[0]))
        confidence = best_n / len(pts)
        if confidence < self.s.min_confidence:
            return None, confidence
        return best, confidence

    def _shift(self, src: np.ndarray, dst: np.ndarray, inliers: np.ndarray) -> tuple[np.ndarray, int]:
        """The plain shift of a group of tracks, and how many tracks it explains: a few corners on
        swaying trees or vehicles can tilt a similarity fit by a fraction of a degree and a percent
        of zoom, which moves the frame's corners by pixels."""
        d = (dst - src).reshape(-1, 2)
        t = np.median(d[inliers], axis=0)
        close = np.linalg.norm(d - t, axis=1) <= self.s.ransac_px
        shift = np.eye(3)
        shift[:2, 2] = d[close].mean(axis=0) if close.any() else t
        return shift, int(close.sum())

    def _plausible(self, m: np.ndarray, g: np.ndarray) -> bool:
        """Zoom and roll within the limits, against the reference and since the last estimate."""
        step = m @ np.linalg.inv(g)
        for a, zoom_limit, angle_limit in ((m, self.s.max_zoom, self.s.max_rotation),
                                           (step, self.s.max_zoom_step, self.s.max_rotation_step)):
            zoom = math.hypot(a[0, 0], a[1, 0])
            angle = abs(math.degrees(math.atan2(a[1, 0], a[0, 0])))
            if abs(zoom - 1) > zoom_limit or angle > angle_limit:
                return False
        return True


def _misfit(reference: np.ndarray, small: np.ndarray, m: np.ndarray) -> float:
    """Fraction of the pixels that ``m`` (3x3) brings from ``reference`` which differ from ``small`` by
    more than ``MISFIT_GREY`` grey levels after matching the mean brightness (a count, so a few large
    differences on vehicles weigh no more than the many small ones of a misplaced background, and a
    global change of light is no misfit). Every other row and column."""
    h, w = small.shape
    half = np.diag([0.5, 0.5, 1.0]) @ m   # the warp sampled at the even pixels of ``small``
    size = ((w + 1) // 2, (h + 1) // 2)
    warped = cv2.warpAffine(reference, half[:2], size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    seen = cv2.warpAffine(np.ones_like(reference), half[:2], size, flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    if not seen.any():
        return math.inf
    a, b = warped[seen].astype(np.float32), small[::2, ::2][seen].astype(np.float32)
    a *= b.mean() / max(float(a.mean()), 1.0)
    return float((np.abs(a - b) > MISFIT_GREY).mean())


def relation(pose_to: np.ndarray, pose_from: np.ndarray) -> np.ndarray:
    """3x3 map from the pixels of the frame with ``pose_from`` to those of the frame with ``pose_to``."""
    return pose_to @ np.linalg.inv(pose_from)


def warp_into(src: np.ndarray, m: np.ndarray, dst: np.ndarray) -> None:
    """Warp ``src`` by ``m`` (3x3 affine) onto ``dst`` in place; pixels with no source keep ``dst``."""
    h, w = dst.shape[:2]
    cv2.warpAffine(src, m[:2], (w, h), dst=dst, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)


def coverage(m: np.ndarray, src_size: tuple[int, int], dst_shape: tuple[int, int], out: np.ndarray) -> np.ndarray:
    """``out`` (uint8, ``dst_shape``) = 1 where ``m`` brings a pixel of a ``src_size`` (w, h) frame, else 0."""
    w, h = src_size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64).T
    quad = (m @ corners)[:2].T
    out[:] = 0
    cv2.fillConvexPoly(out, np.round(quad * 16).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
    return out


class ModelFrame:
    """MOG2/KNN of one stream in the coordinates of the frame the model started at.

    ``to_model(image, motion, k)`` returns the image to feed the model (a canvas
    reused between frames) and whether the model must be started afresh;
    ``from_model(mask)`` brings its mask back to the frame, 0 where unknown.
    ``k``: input pixels per registered pixel.

    The canvas is the model's frame plus a margin of ``MARGIN`` times the width on
    every side (first filled by repeating the edge of the model's first frame), so a
    shaken frame still lands inside it and its edge pixels get a mask: without the
    margin every pixel that the shake had moved out of the model's frame came back as
    background, and on the synthetic `jitter` family (up to 8 px between two frames)
    MOG2 lost more true foreground along the edges than compensation gained inside.
    """

    def __init__(self):
        self._epoch = None
        self._origin = None     # pose of the model's first frame (registration pixels)
        self._last = None       # frame -> model map of the last reliable frame (input pixels)
        self._canvas = None
        self._pad = 0           # margin of the canvas, input pixels
        self._shape = None      # shape of the input frames
        self._inverse = None    # canvas -> frame map of the current frame, None = the canvas's centre
        self._mask = None

    def to_model(self, image: np.ndarray, motion: Motion, k: float) -> tuple[np.ndarray, bool]:
        h, w = image.shape[:2]
        fresh = self._canvas is None or self._shape != image.shape
        if not fresh and motion.pose is not None:
            if motion.epoch != self._epoch:
                # registration was lost and found again: no relation to the old frames is known, so
                # the model carries on as without compensation (identity) from this frame's coordinates
                self._epoch, self._origin, self._last = motion.epoch, motion.pose, np.eye(3)
            else:
                m = rescaled(relation(self._origin, motion.pose), k)
                # far from the model's frame (a pan): start again where the camera looks now
                if displacement(m, (w, h)) > 0.05 * w and \
                        coverage(m, (w, h), (h, w), self._cover(h, w)).mean() < MIN_OVERLAP:
                    fresh = True
                else:
                    self._last = m
        p = self._pad
        if fresh:
            self._epoch = motion.epoch if motion.pose is not None else None
            self._origin = motion.pose
            self._last = np.eye(3)
            self._shape = image.shape
            p = self._pad = max(1, round(MARGIN * w))
            self._canvas = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_REPLICATE)
            self._inverse = None
            return self._canvas, True
        m = self._last
        if displacement(m, (w, h)) <= DEAD_BAND * k:
            np.copyto(self._canvas[p:p + h, p:p + w], image)
            self._inverse = None
        else:
            into = m.copy()
            into[:2, 2] += p   # the model's frame sits at (p, p) in the canvas
            warp_into(image, into, self._canvas)
            self._inverse = np.linalg.inv(into)
        return self._canvas, False

    def from_model(self, mask: np.ndarray) -> np.ndarray:
        h, w = self._shape[:2]
        p = self._pad
        if self._inverse is None:
            return mask[p:p + h, p:p + w]
        return cv2.warpAffine(mask, self._inverse[:2], (w, h), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _cover(self, h: int, w: int) -> np.ndarray:
        if self._mask is None or self._mask.shape != (h, w):
            self._mask = np.empty((h, w), np.uint8)
        return self._mask


class Registrations:
    """One :class:`Stabilizer` per stream, as a stage holds them."""

    def __init__(self, settings: StabilizerSettings = StabilizerSettings()):
        self.settings = settings
        self._streams: dict[str, Stabilizer] = {}

    def update(self, stream: str, grey: np.ndarray) -> Motion:
        s = self._streams.get(stream)
        if s is None:
            s = self._streams[stream] = Stabilizer(self.settings)
        return s.update(grey)

    def reset(self, stream: str) -> None:
        self._streams.pop(stream, None)

    def clear(self) -> None:
        self._streams.clear()
