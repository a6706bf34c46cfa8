"""Training pairs for RI-GAN: paired folders and haze synthesised on clear images.

Synthesis follows the atmospheric scattering model (Koschmieder; He et al. 2009
eq. 1), through ``pipeline.haze``:  I = J·t + A·(1 − t),  t = exp(−β·d).
What the model never sees a ground truth for is the depth ``d``, so each clear
image gets a *plausible* depth map drawn from one of several families:

- road and street scenes: a ground plane that recedes to a horizon, sky above,
  upright objects (vehicles, buildings) standing on the ground at the depth of
  their foot row;
- generic scenes: smooth random fields, tilted planes, indoor-like rooms (floor,
  ceiling, side walls and a back wall seen in perspective) with box furniture;
- the one clear photo with measured depth (skimage's Middlebury motorcycle,
  depth = 1 / disparity);
- rendered rooms (``training.data.rooms``, config entry ``{rooms: true}``): the
  picture is made with its exact depth, textured with patches of the other sources.

Depth edges are snapped to image edges with a guided filter (guide = the clear
image) so haze changes where objects change, as it does in real scenes. On top
of that: random β and airlight A (grey to tinted), non-homogeneous haze (β times
a smooth random field), sensor noise and JPEG artefacts. A few pairs are left
clear (β = 0) so the model learns to leave clear images alone.

Sky: in a real hazy photograph the sky is already the light the haze scatters; it
has no "clear" version to recover, and the right output keeps it as it is, whatever
its gradient or glow. Our clear sources are mostly road footage with little sky, and
A was drawn independently of the picture, so the model learned to put A above bright
skies and, with the low transmission of a far region, painted dark blotches into real
skies (docs/models.md). ``composite_sky`` replaces the part of some pictures above a
random skyline with an overcast sky (gradient, glow, faint clouds) that the haze
leaves unchanged (t = 1 there), and takes A from the sky's brightest colour, so the
ground just below the skyline fades into the sky as it does in real haze.

Everything is deterministic given the seed: item ``i`` of epoch ``e`` draws from
``numpy.random.default_rng([seed, e, i])``.

Images are BGR uint8 as read by OpenCV; tensors are 3 x H x W float32 in [0, 1]
(BGR), the pipeline's order.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline import imageio
from pipeline.errors import SourceError, SourceNotFoundError
from pipeline.guided import guided_filter
from pipeline.haze import apply_haze, road_depth, transmission
from training.data.rooms import render_room

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")
MIN_SIDE = 16  # smaller images cannot carry a useful training crop or a network pass


# --------------------------------------------------------------------------- reading
def to_bgr8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """HxWx3 uint8 BGR by the pipeline's one conversion rule (``pipeline.imageio``);
    pictures under ``MIN_SIDE`` pixels are refused."""
    return imageio.to_bgr8(image, name, min_side=MIN_SIDE)


def read_image(path: str | Path) -> np.ndarray:
    """Read a file as HxWx3 uint8 BGR; one-line SourceError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(str(path), "file not found")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SourceError(str(path), "cannot decode image (corrupt or unsupported format)")
    return to_bgr8(image, str(path))


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceNotFoundError(str(folder), "folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def paired_files(hazy_dir: str | Path, clear_dir: str | Path) -> list[tuple[Path, Path]]:
    """(hazy, clear) paths matched by identical file name; a folder without pairs is an error."""
    clear = {p.name: p for p in image_files(clear_dir)}
    pairs = [(h, clear[h.name]) for h in image_files(hazy_dir) if h.name in clear]
    if not pairs:
        raise SourceError(str(hazy_dir), f"no file name in common with {clear_dir}")
    return pairs


def read_pair(hazy_path: Path, clear_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Both images as BGR uint8; sizes must match (a mismatch names both files)."""
    hazy, clear = read_image(hazy_path), read_image(clear_path)
    if hazy.shape != clear.shape:
        raise SourceError(
            str(hazy_path), f"size {hazy.shape[1]}x{hazy.shape[0]} differs from {clear_path} "
            f"({clear.shape[1]}x{clear.shape[0]})"
        )
    return hazy, clear


# --------------------------------------------------------------------------- clear sources
@dataclass
class ClearImage:
    """A clear picture, the depth family it suits, and a measured depth when one exists."""

    image: np.ndarray | None     # HxWx3 uint8 BGR; None for "room" (rendered per pair)
    kind: str                    # "road" | "street" | "generic" | "room"
    source: str
    depth: np.ndarray | None = None
    group: int = 0               # index of the config entry it came from (sampling is balanced over groups)


def video_frames(path: str | Path, every: int, limit: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(str(path), "cannot open video")
    frames, i = [], 0
    try:
        while limit is None or len(frames) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if i % every == 0:
                frames.append(to_bgr8(frame, str(path)))
            i += 1
    finally:
        cap.release()
    return frames


def skimage_photos() -> list[ClearImage]:
    """skimage's bundled colour photographs (no download), plus the stereo motorcycle with depth."""
    import skimage.data as sd

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "cat"):
        try:
            rgb = getattr(sd, name)()
        except Exception:  # a missing optional file is not worth failing training for
            continue
        out.append(ClearImage(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "generic", f"skimage.{name}"))
    try:
        left, _, disp = sd.stereo_motorcycle()
        disp = np.where(np.isfinite(disp) & (disp > 1), disp, np.nan).astype(np.float32)
        disp = np.where(np.isnan(disp), np.nanmin(disp), disp)
        out.append(ClearImage(cv2.cvtColor(left, cv2.COLOR_RGB2BGR), "generic", "skimage.stereo_motorcycle",
                              depth=(1.0 / disp).astype(np.float32)))
    except Exception:
        pass
    return out


def clear_pool(sources: list[dict]) -> list[ClearImage]:
    """Load the clear sources named in the config.

    Each entry: ``{path: GLOB, kind: road|street|generic, every: N, limit: M}`` for
    videos or image folders, ``{skimage: true}``, or ``{rooms: true}`` (rooms rendered
    per pair, textured with the other entries' pictures). Missing paths are skipped
    (the shared data is absent on fresh clones); an empty pool is an error.
    """
    pool: list[ClearImage] = []
    for group, src in enumerate(sources):
        start = len(pool)
        if src.get("skimage"):
            pool.extend(skimage_photos())
        elif src.get("rooms"):
            pool.append(ClearImage(None, "room", "rendered rooms"))
        else:
            pool.extend(_load_source(src))
        for item in pool[start:]:
            item.group = group
    if not any(item.image is not None for item in pool):
        raise SourceError("data.clear", "no clear images found in any configured source")
    return pool


def _load_source(src: dict) -> list[ClearImage]:
    kind, every, limit = src.get("kind", "generic"), int(src.get("every", 1)), src.get("limit")
    pool: list[ClearImage] = []
    for path in sorted(glob.glob(os.path.expanduser(str(src["path"])))):
        p = Path(path)
        if p.is_dir():
            files = image_files(p)[::every][: limit or None]
            pool.extend(ClearImage(read_image(f), kind, str(f)) for f in files)
        elif p.suffix.lower() in IMAGE_EXTS:
            pool.append(ClearImage(read_image(p), kind, str(p)))
        else:
            pool.extend(ClearImage(f, kind, str(p)) for f in video_frames(p, every, limit))
    return pool


# --------------------------------------------------------------------------- depth families
def smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse grid of uniform noise, bicubically enlarged."""
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    grid = rng.random((gh, gw)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def plane_depth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A tilted plane: depth grows linearly along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    ramp -= ramp.min()
    return ramp / max(float(ramp.max()), 1e-6)


def room_depth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Indoor-like box room seen from inside: nearest of floor, ceiling, two side walls, back wall.

    A pinhole camera at the room's centre: a plane at distance D from the
    optical axis shows at image offset u with depth D / |u| (in focal units),
    so each plane is 1/|offset| from the vanishing point; the back wall caps it.
    Box furniture is added in front.
    """
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.3, 0.7) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = float(max(h, w))
    dy, dx = (yy - cy) / f, (xx - cx) / f
    eps = 1e-3
    floor = rng.uniform(0.8, 1.5) / np.maximum(dy, eps)
    ceiling = rng.uniform(0.8, 1.5) / np.maximum(-dy, eps)
    left = rng.uniform(1.0, 2.5) / np.maximum(-dx, eps)
    right = rng.uniform(1.0, 2.5) / np.maximum(dx, eps)
    back = rng.uniform(3.0, 8.0)
    depth = np.minimum.reduce([floor, ceiling, left, right, np.full_like(floor, back)])
    add_boxes(depth, rng, count=int(rng.integers(0, 5)), near=0.6, far=back)
    return depth


def road_scene_depth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Road or street: ground plane + sky (pipeline.haze.road_depth) + upright objects on the ground."""
    horizon = rng.uniform(0.15, 0.55)
    far = rng.uniform(60.0, 200.0)
    depth = road_depth(h, w, horizon=horizon, near=rng.uniform(2.0, 8.0), far=far, sky=far * 1.5)
    # upright objects: their depth is the ground depth at their foot row (constant over the object)
    hr = int(horizon * h)
    for _ in range(int(rng.integers(0, 7))):
        foot = int(rng.integers(min(hr + 2, h - 1), h))
        d = float(depth[foot, 0])
        # pinhole camera ~3 m above the road: an object of height H metres spans
        # (foot - horizon) * H / 3 rows, independent of the focal length
        height = max(2, int((foot - hr) * rng.uniform(0.4, 2.0)))
        width = max(2, int(height * rng.uniform(0.5, 3.0)))
        x0 = int(rng.integers(0, max(1, w - width)))
        top = max(0, foot - height)
        np.minimum(depth[top:foot, x0:x0 + width], d, out=depth[top:foot, x0:x0 + width])
    # buildings or trees along the sides reaching above the horizon
    if rng.random() < 0.5:
        side = int(rng.uniform(0.05, 0.35) * w)
        xs = slice(0, side) if rng.random() < 0.5 else slice(w - side, w)
        np.minimum(depth[:, xs], rng.uniform(10.0, 60.0), out=depth[:, xs])
    return depth


def add_boxes(depth: np.ndarray, rng: np.random.Generator, count: int, near: float, far: float) -> None:
    h, w = depth.shape
    for _ in range(count):
        bh, bw = int(rng.uniform(0.1, 0.6) * h), int(rng.uniform(0.1, 0.5) * w)
        y0, x0 = int(rng.integers(0, max(1, h - bh))), int(rng.integers(0, max(1, w - bw)))
        d = rng.uniform(near, far)
        np.minimum(depth[y0:y0 + bh, x0:x0 + bw], d, out=depth[y0:y0 + bh, x0:x0 + bw])


def generic_depth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One of: smooth random field, tilted plane, room; boxes may be added in front."""
    choice = rng.random()
    if choice < 0.35:
        depth = smooth_noise(h, w, rng, cells=int(rng.integers(2, 8)))
    elif choice < 0.6:
        depth = plane_depth(h, w, rng) * 0.8 + 0.2 * smooth_noise(h, w, rng, cells=4)
    else:
        return room_depth(h, w, rng)
    depth = depth.astype(np.float32)
    add_boxes(depth, rng, count=int(rng.integers(0, 4)), near=0.0, far=0.8)
    return depth


def normalised(depth: np.ndarray) -> np.ndarray:
    """Depth rescaled to [0, 1] by its own 1st..99th percentile range (relative depth)."""
    lo, hi = np.percentile(depth, (1, 99))
    return np.clip((depth - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def snap_to_edges(depth: np.ndarray, clear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Guided filter with the clear image as guide: depth edges follow image edges."""
    guide = cv2.cvtColor(clear, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    radius = max(2, int(min(depth.shape) * rng.uniform(0.02, 0.06)))
    return guided_filter(guide, depth, radius, float(rng.uniform(1e-3, 1e-2)))


def scene_depth(item: ClearImage, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative depth in [0, 1] for ``image`` (the resized picture of ``item``)."""
    h, w = image.shape[:2]
    if item.depth is not None and rng.random() < 0.7:
        depth = cv2.resize(item.depth, (w, h), interpolation=cv2.INTER_LINEAR)
    elif item.kind in ("road", "street") and rng.random() < 0.75:
        depth = road_scene_depth(h, w, rng)
    else:
        depth = generic_depth(h, w, rng)
    if rng.random() < 0.5:
        depth = np.log1p(depth - depth.min())  # compress far range: farther detail survives
    depth = normalised(depth)
    if rng.random() < 0.7:
        depth = snap_to_edges(depth, image, rng)
    return depth


# --------------------------------------------------------------------------- haze synthesis
@dataclass(frozen=True)
class HazeParams:
    """Ranges of the synthesis; defaults cover light mist to the dense haze of SOTS."""

    beta: tuple[float, float] = (0.3, 2.8)           # β·d at the farthest point (t_far = e^-β >= 0.06)
    near: tuple[float, float] = (0.0, 0.8)            # relative depth of the nearest pixel (high = dense haze up close)
    airlight: tuple[float, float] = (0.65, 1.0)       # grey level of A
    tint: float = 0.08                                # largest per-channel deviation of A (colour cast)
    tint_prob: float = 0.5
    nonhomogeneous_prob: float = 0.4                  # β multiplied by a smooth field
    nonhomogeneous_amount: float = 0.5
    noise_prob: float = 0.4
    noise_sigma: tuple[float, float] = (0.002, 0.02)
    jpeg_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (35, 95)
    clear_prob: float = 0.05                          # pairs left haze-free
    sky_prob: float = 0.0                             # pictures given a composited sky that sets A
    sky_level: tuple[float, float] = (0.6, 1.0)       # sky brightness at the horizon
    sky_line: tuple[float, float] = (0.08, 0.5)       # mean skyline height, fraction of the picture from the top


def synthesize(clear: np.ndarray, depth: np.ndarray, rng: np.random.Generator,
               params: HazeParams = HazeParams(), airlight: np.ndarray | None = None,
               keep: np.ndarray | None = None) -> np.ndarray:
    """Hazy BGR uint8 version of ``clear`` given relative ``depth`` in [0, 1].

    ``airlight`` (3 values in [0, 1], BGR) fixes A instead of drawing it; pixels where
    the HxW bool ``keep`` is set are left unhazed (t = 1: a composited sky).
    """
    h, w = clear.shape[:2]
    if rng.random() < params.clear_prob:
        hazy = clear.copy()
    else:
        near = rng.uniform(*params.near)
        d = near + (1.0 - near) * depth
        beta = rng.uniform(*params.beta)
        if rng.random() < params.nonhomogeneous_prob:
            field = smooth_noise(h, w, rng, cells=int(rng.integers(2, 6)))
            d = d * (1.0 + params.nonhomogeneous_amount * (2.0 * field - 1.0))
        # t >= 0.05: below that the scene is gone and a pair teaches only the airlight
        t = np.maximum(transmission(np.maximum(d, 0.0), beta), 0.05)
        a = np.full(3, rng.uniform(*params.airlight), np.float32)
        if rng.random() < params.tint_prob:
            a = np.clip(a + rng.uniform(-params.tint, params.tint, 3).astype(np.float32), 0.3, 1.0)
        if airlight is not None:
            a = np.asarray(airlight, np.float32)
        if keep is not None:
            t[keep] = 1.0
        hazy = apply_haze(clear, t, a)
    if rng.random() < params.noise_prob:
        noise = rng.normal(0.0, rng.uniform(*params.noise_sigma) * 255.0, hazy.shape)
        hazy = np.clip(hazy + noise, 0, 255).astype(np.uint8)
    if rng.random() < params.jpeg_prob:
        q = int(rng.integers(*params.jpeg_quality))
        ok, buf = cv2.imencode(".jpg", hazy, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            hazy = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return hazy


def composite_sky(image: np.ndarray, rng: np.random.Generator,
                  params: HazeParams = HazeParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint an overcast sky above a random skyline: (image, HxW bool sky mask, airlight BGR).

    The skyline is smooth hills or a stepped roofline; the sky is brightest at the
    skyline and darkens upwards by up to 25 %, half the time with a glow (a broad
    bright patch, as round the hidden sun) and always with faint clouds. Its
    brightest colour, times 0.98-1.02, is the airlight. The caller leaves the sky
    unhazed (``synthesize(keep=mask)``).
    """
    h, w = image.shape[:2]
    knots = int(rng.integers(2, 14))
    heights = rng.uniform(-0.12, 0.12, knots + 1) * h + rng.uniform(*params.sky_line) * h
    xs = np.linspace(0, w - 1, knots + 1)
    cols = np.arange(w, dtype=np.float32)
    if rng.random() < 0.5:   # roofline: flat steps
        line = heights[np.minimum((cols * knots / w).astype(int), knots)]
    else:                    # hills / tree line
        line = np.interp(cols, xs, heights)
    line = np.clip(line, 2, h - 2)
    rows = np.arange(h, dtype=np.float32)[:, None]
    mask = rows < line[None, :]
    level = rng.uniform(*params.sky_level)
    tint = rng.uniform(-0.05, 0.05, 3) if rng.random() < params.tint_prob else np.zeros(3)  # hazy skies are near grey
    colour = np.clip(level + tint, 0.3, 1.0).astype(np.float32)
    fall = rng.uniform(0.0, 0.25)
    shade = 1.0 - fall * (1.0 - rows / max(float(line.max()), 1.0))             # darker towards the top
    shade = shade * (1.0 + rng.uniform(0.0, 0.05) * (smooth_noise(h, w, rng, int(rng.integers(2, 8))) - 0.5))
    if rng.random() < 0.5:   # glow round a hidden sun
        gy, gx = rng.uniform(0.0, 1.0) * float(line.max()), rng.uniform(0.0, w)
        radius = rng.uniform(0.2, 0.6) * w
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = shade + rng.uniform(0.05, 0.2) * np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * radius ** 2))
    sky = np.clip(colour[None, None, :] * shade[:, :, None], 0.0, 1.0)
    out = np.where(mask[:, :, None], (sky * 255.0 + 0.5).astype(np.uint8), image)
    brightest = sky[mask].max(axis=0) if mask.any() else colour
    airlight = np.clip(brightest * rng.uniform(0.98, 1.02), 0.0, 1.0).astype(np.float32)
    return np.ascontiguousarray(out), mask, airlight


def recolour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour augmentation of the clear picture (both sides of the pair see it).

    Traffic footage is mostly grey; swapping channels and scaling saturation
    widens the colours the model has seen without changing the haze physics.
    """
    if rng.random() < 0.3:
        image = np.ascontiguousarray(image[:, :, rng.permutation(3)])
    if rng.random() < 0.4:
        grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        s = float(rng.uniform(0.6, 1.6))
        image = cv2.addWeighted(image, s, grey, 1.0 - s, 0.0)
    return image


def to_tensor_layout(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32 in [0, 1]."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) * (1.0 / 255.0)


class SynthHazeDataset:
    """Random crops of clear images hazed on the fly; a torch-style map dataset.

    The picture is rescaled so its short side lies in ``short_side``, the depth
    and haze are made for the whole rescaled picture (so a road crop still sees
    the road's geometry) and a ``patch`` crop is cut, flipped at random.
    """

    def __init__(self, pool: list[ClearImage], patch: int = 128, length: int = 1000, seed: int = 0,
                 short_side: tuple[int, int] = (160, 320), params: HazeParams = HazeParams()):
        if patch > short_side[0]:
            raise ValueError(f"patch {patch} larger than the smallest short side {short_side[0]}")
        self.pool, self.patch, self.length, self.seed = pool, patch, length, seed
        self.short_side, self.params = short_side, params
        self.epoch = 0
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(pool):
            groups.setdefault(item.group, []).append(i)
        self.groups = list(groups.values())
        self.textures = [item.image for item in pool if item.image is not None]

    def __len__(self) -> int:
        return self.length

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(hazy, clear) crops as BGR uint8, deterministic in (seed, epoch, index)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        members = self.groups[int(rng.integers(len(self.groups)))]
        item = self.pool[members[int(rng.integers(len(members)))]]
        if item.kind == "room":
            return self.room_pair(rng)
        h, w = item.image.shape[:2]
        scale = rng.uniform(*self.short_side) / min(h, w)
        size = (max(self.patch, int(round(w * scale))), max(self.patch, int(round(h * scale))))
        image = cv2.resize(item.image, size, interpolation=cv2.INTER_AREA)
        image = recolour(image, rng)
        airlight = sky = None
        if self.params.sky_prob > 0 and rng.random() < self.params.sky_prob:  # no draw at 0: old seeds keep their pairs
            image, sky, airlight = composite_sky(image, rng, self.params)
        depth = scene_depth(item, image, rng)
        hazy = synthesize(image, depth, rng, self.params, airlight=airlight, keep=sky)
        y0 = int(rng.integers(0, image.shape[0] - self.patch + 1))
        x0 = int(rng.integers(0, image.shape[1] - self.patch + 1))
        crop = (slice(y0, y0 + self.patch), slice(x0, x0 + self.patch))
        hazy, clear = hazy[crop], image[crop]
        if rng.random() < 0.5:
            hazy, clear = hazy[:, ::-1], clear[:, ::-1]
        return hazy, clear

    def room_pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A crop of a rendered 4:3 room picture; depth relative to the room's farthest corner."""
        short = rng.uniform(*self.short_side)
        full = (int(short), int(short * 4 / 3))
        offset = (int(rng.integers(0, full[0] - self.patch + 1)), int(rng.integers(0, full[1] - self.patch + 1)))
        clear, depth, farthest = render_room(self.patch, self.patch, rng, self.textures, full, offset)
        hazy = synthesize(clear, np.clip(depth / farthest, 0.0, 1.0), rng, self.params)
        return hazy, clear

    def __getitem__(self, index: int):
        import torch

        hazy, clear = self.pair(index)
        return torch.from_numpy(to_tensor_layout(hazy)), torch.from_numpy(to_tensor_layout(clear))


class PairedFolderDataset:
    """Real pairs from ``hazy/`` and ``clear/`` folders matched by name, as full images (batch 1)."""

    def __init__(self, hazy_dir: str | Path, clear_dir: str | Path, limit: int | None = None):
        self.pairs = paired_files(hazy_dir, clear_dir)[: limit or None]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        import torch

        hazy, clear = read_pair(*self.pairs[index])
        return torch.from_numpy(to_tensor_layout(hazy)), torch.from_numpy(to_tensor_layout(clear))
