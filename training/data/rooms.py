"""Rendered indoor rooms with exact depth, as clear training pictures for RI-GAN.

The clear sources here are road footage and a few photos, and the depth the synthesis
gives them is guessed; the validation set (SOTS-indoor) is rooms, where haze thickens
exactly at the edge of a cupboard in front of a wall. This module ray-casts a box room
seen from inside by a pinhole camera (random field of view, height, pitch and yaw):
floor, ceiling and four walls, box furniture standing on the floor and flat pictures or
windows on the walls. Each surface is either painted (a plain colour with faint
blotches) or covered with a patch cut from one of the clear photographs, mirrored to
tile it. Shading is ambient plus one directional light. The depth of every pixel is the
ray length to the surface it shows, so depth edges are the picture's edges.

Everything is deterministic in the ``numpy.random.Generator`` it is given. The picture
is rendered at twice the size and reduced (INTER_AREA) so edges are anti-aliased like a
photograph's.
"""
from __future__ import annotations

import cv2
import numpy as np

#: painted surfaces: BGR ranges of wall, floor and ceiling paints (whites, beiges, greys, wood)
_PAINTS = {
    "wall": ((0.55, 0.55, 0.55), (0.98, 0.98, 0.98)),
    "floor": ((0.15, 0.2, 0.25), (0.7, 0.75, 0.8)),
    "ceiling": ((0.75, 0.75, 0.75), (1.0, 1.0, 1.0)),
    "thing": ((0.05, 0.05, 0.05), (0.95, 0.95, 0.95)),
}


def _rotation(pitch: float, yaw: float) -> np.ndarray:
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    tilt = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], np.float32)   # about x: look down for pitch > 0
    turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], np.float32)    # about y
    return turn @ tilt


def _rays(h: int, w: int, rng: np.random.Generator, full: tuple[int, int], offset: tuple[float, float],
          scale: int) -> np.ndarray:
    """Unit ray directions HxWx3 (x right, y up, z forward) of a randomly posed pinhole camera.

    The camera's picture is ``full`` (h, w) pixels; the rays are those of the h x w window
    at ``offset`` (y, x) in it, sampled ``scale`` times more densely.
    """
    fh, fw = full
    fov = np.deg2rad(rng.uniform(50.0, 75.0))
    f = 0.5 * fw / np.tan(0.5 * fov)
    cx, cy = fw * rng.uniform(0.45, 0.55), fh * rng.uniform(0.45, 0.55)
    yy, xx = np.mgrid[0:h * scale, 0:w * scale].astype(np.float32)
    yy = (yy + 0.5) / scale + offset[0]
    xx = (xx + 0.5) / scale + offset[1]
    d = np.stack([(xx - cx) / f, -(yy - cy) / f, np.ones_like(xx)], axis=-1)
    d = d @ _rotation(np.deg2rad(rng.uniform(-5.0, 25.0)), np.deg2rad(rng.uniform(-35.0, 35.0))).T
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _surface(kind: str, textures: list[np.ndarray], rng: np.random.Generator, plain_prob: float):
    """A surface description: a texture patch (float BGR) and how many metres it spans."""
    if not textures or rng.random() < plain_prob:
        lo, hi = _PAINTS[kind]
        base = rng.uniform(lo, hi).astype(np.float32)
        if rng.random() < 0.6:  # near-neutral paint: keep the channels close
            base = np.full(3, base.mean(), np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        size = 64
        cells = rng.random((4, 4)).astype(np.float32)
        blotch = cv2.resize(cells, (size, size), interpolation=cv2.INTER_CUBIC)
        patch = np.clip(base[None, None, :] * (1.0 + 0.06 * (blotch[:, :, None] - 0.5)), 0.0, 1.0)
        return patch.astype(np.float32), rng.uniform(2.0, 6.0)
    src = textures[int(rng.integers(len(textures)))]
    h, w = src.shape[:2]
    side = int(min(h, w) * rng.uniform(0.25, 0.8))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = src[y0:y0 + side, x0:x0 + side].astype(np.float32) / 255.0
    return patch, rng.uniform(0.6, 3.0)


def _paint(out: np.ndarray, mask: np.ndarray, u: np.ndarray, v: np.ndarray, surface) -> None:
    """Write ``surface`` into ``out`` where ``mask``, at surface coordinates (u, v) in metres."""
    patch, span = surface
    ph, pw = patch.shape[:2]
    rows = np.flatnonzero(mask.any(axis=1))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1       # remap the rows the mask touches (maps must be 2-D)
    u, v, mask = u[r0:r1], v[r0:r1], mask[r0:r1]
    mx = (u / span * pw).astype(np.float32)
    my = (v / span * ph).astype(np.float32)
    # BORDER_REFLECT_101 folds coordinates any distance outside the patch: mirrored tiling
    sampled = cv2.remap(patch, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out[r0:r1][mask] = sampled[mask]


def _pick(index: np.ndarray, planes: list[np.ndarray]) -> np.ndarray:
    return np.where(index == 0, planes[0], np.where(index == 1, planes[1], planes[2]))


def _argmin3(planes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(index, value) of the smallest of three HxW planes, element-wise (first wins ties)."""
    m = np.minimum(planes[0], planes[1])
    index = np.where(planes[1] < planes[0], 1, 0)
    index = np.where(planes[2] < m, 2, index)
    return index, np.minimum(m, planes[2])


def _argmax3(planes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    index, value = _argmin3([-p for p in planes])
    return index, -value


def render_room(h: int, w: int, rng: np.random.Generator, textures: list[np.ndarray] = (),
                full: tuple[int, int] | None = None,
                offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray, float]:
    """(BGR uint8 HxW picture, HxW float32 depth in metres, farthest distance in the room).

    ``full`` (h, w) is the camera's whole picture when only the h x w window at ``offset``
    is wanted (a training crop costs the crop's pixels, not the picture's).
    """
    scale = 2
    H, W = scale * h, scale * w
    rays = _rays(h, w, rng, full or (h, w), offset, scale)
    d = [np.ascontiguousarray(rays[..., a]) for a in range(3)]
    d = [np.where(np.abs(c) < 1e-7, np.float32(1e-7), c) for c in d]   # no ray exactly parallel to a wall
    inv = [1.0 / c for c in d]
    light = rng.normal(size=3).astype(np.float32)
    light[1] = -abs(light[1]) - 0.5                   # from above
    light /= np.linalg.norm(light)
    # room: x in [x0, x0 + width], y from the floor to the ceiling, z from behind the camera to the
    # back wall; coordinates relative to the camera
    width, length, height = rng.uniform(2.5, 7.0), rng.uniform(3.0, 10.0), rng.uniform(2.4, 3.4)
    eye = rng.uniform(0.9, min(1.8, height - 0.3))
    x0 = -rng.uniform(0.4, width - 0.4)
    lo = np.array([x0, -eye, -rng.uniform(0.3, 1.5)], np.float32)
    hi = np.array([x0 + width, height - eye, length], np.float32)
    farthest = float(np.linalg.norm(np.maximum(np.abs(lo), np.abs(hi))))
    exits = [np.where(d[a] > 0, hi[a] * inv[a], lo[a] * inv[a]) for a in range(3)]  # to each axis' wall
    axis, depth = _argmin3(exits)
    forward = _pick(axis, [c > 0 for c in d])
    face = axis * 2 + forward                         # 0..5: -x, +x, -y (floor), +y, -z, +z (back wall)
    # n . light of the surface: the normal points back along the ray's component on the hit axis
    ndl = np.where(forward, -1.0, 1.0) * light[axis]

    # furniture: boxes standing on the floor (slab test)
    item = np.full((H, W), -1, np.int32)
    boxes = []
    for k in range(int(rng.integers(0, 7))):
        bw, bd, bh = rng.uniform(0.3, 2.0), rng.uniform(0.3, 1.5), rng.uniform(0.3, 2.2)
        bx = rng.uniform(lo[0], hi[0] - bw)
        bz = rng.uniform(max(0.8, lo[2] + 0.2), max(1.0, hi[2] - bd))
        blo = (bx, lo[1], bz)
        bhi = (bx + bw, lo[1] + min(bh, height - 0.2), bz + bd)
        t1 = [blo[a] * inv[a] for a in range(3)]
        t2 = [bhi[a] * inv[a] for a in range(3)]
        tmin = [np.minimum(t1[a], t2[a]) for a in range(3)]
        far = np.minimum(np.minimum(np.maximum(t1[0], t2[0]), np.maximum(t1[1], t2[1])), np.maximum(t1[2], t2[2]))
        hax, near = _argmax3(tmin)
        hit = (near <= far) & (near > 0.05) & (near < depth)
        if not hit.any():
            continue
        depth = np.where(hit, near, depth)
        hforward = _pick(hax, [c > 0 for c in d])
        hndl = np.where(hforward, -1.0, 1.0) * light[hax]
        ndl = np.where(hit, hndl, ndl)
        face = np.where(hit, 6 + hax, face)
        item[hit] = len(boxes)
        boxes.append(k)

    world = rays * depth[..., None] - lo              # hit points from the room's corner, metres
    image = np.zeros((H, W, 3), np.float32)
    kinds = {0: "wall", 1: "wall", 2: "floor", 3: "ceiling", 4: "wall", 5: "wall"}
    uv = {0: (2, 1), 1: (2, 1), 2: (0, 2), 3: (0, 2), 4: (0, 1), 5: (0, 1)}   # face -> surface axes
    for f in range(6):
        mask = (face == f) & (item < 0)
        if mask.any():
            plain = {"wall": 0.6, "floor": 0.3, "ceiling": 0.9}[kinds[f]]
            a, b = uv[f]
            _paint(image, mask, world[..., a], world[..., b], _surface(kinds[f], textures, rng, plain))
    for i in range(len(boxes)):
        surface = _surface("thing", textures, rng, 0.35)
        for ax in range(3):
            mask = (item == i) & (face == 6 + ax)
            if mask.any():
                a, b = [(2, 1), (0, 2), (0, 1)][ax]
                _paint(image, mask, world[..., a], world[..., b], surface)
    # pictures and windows on the walls: rectangles in the wall's own coordinates
    for _ in range(int(rng.integers(0, 4))):
        f = int(rng.choice([0, 1, 5]))
        a, b = uv[f]
        ua, va = world[..., a], world[..., b]
        span_a = float(hi[a] - lo[a])
        cw, ch = rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.4)
        ca, cb = rng.uniform(0, max(0.1, span_a - cw)), rng.uniform(0.6, max(0.7, height - ch - 0.2))
        mask = (face == f) & (item < 0) & (ua >= ca) & (ua < ca + cw) & (va >= cb) & (va < cb + ch)
        if not mask.any():
            continue
        if rng.random() < 0.3:   # window: bright, nearly flat
            level = rng.uniform(0.85, 1.0)
            image[mask] = np.clip(level + rng.uniform(-0.03, 0.03, 3), 0, 1).astype(np.float32)
        else:
            surface = _surface("thing", textures, rng, 0.2)
            _paint(image, mask, ua - ca, va - cb, (surface[0], max(cw, ch)))

    ambient = rng.uniform(0.45, 0.75)
    shade = ambient + (1.0 - ambient) * np.clip(-ndl, 0.0, 1.0)
    falloff = 1.0 / (1.0 + (depth / rng.uniform(6.0, 15.0)) ** 2)       # lamps light the near room more
    image *= (shade * (0.75 + 0.25 * falloff) * rng.uniform(0.9, 1.15))[..., None]
    picture = cv2.resize(np.clip(image, 0.0, 1.0), (w, h), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(depth.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return (picture * 255.0 + 0.5).astype(np.uint8), depth, farthest
