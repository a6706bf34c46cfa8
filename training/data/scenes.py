"""Training windows for MSFgNet: CDnet crops, synthetic traffic and moving sprites, with nuisances.

A *window* is what the network sees: T grey frames of one stream, sampled with
a temporal stride and ending at the current frame, plus the foreground target
and a weight mask of the current frame (0 where CDnet says "ignore").

Three sources, mixed in configurable proportions (``mix`` in the config):

* ``cdnet``: crops of real CDnet sequences (labels by the CDnet rules);
* ``traffic``: sequences of :mod:`pipeline.sources.synthetic` (exact truth,
  shadows, swaying trees, camera jitter, illumination change, noise, haze),
  rendered once at start-up;
* ``sprites``: shapes textured with crops of natural photographs moving in
  straight lines over another photograph, with cast shadows and swaying or
  flickering background regions; rendered per window, so every batch is new.
  They teach the network motion rather than "what a car on that road looks like".

Every window then goes through the same nuisance augmentation: scale, flips,
gain/bias/gamma, illumination change inside the window, camera jitter of the
past frames, haze (I = J t + A (1 - t), :mod:`pipeline.haze`), sensor noise.
Everything is drawn from one ``numpy.random.Generator``: deterministic given a seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.haze import apply_haze
from training.data.cdnet import CdnetSequence, labels_to_targets, window_numbers
from training.data.jitter import Shake, jitter_image, jitter_labels, shake_trajectory

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Augment:
    """Ranges of the nuisance augmentation (probabilities are per window)."""

    crop: int = 96                      # window side at the network's resolution
    scale: tuple[float, float] = (0.4, 0.9)   # network pixels per source pixel
    stride: tuple[int, int] = (3, 10)   # temporal stride between the T frames
    hflip: float = 0.5
    vflip: float = 0.1
    gain: tuple[float, float] = (0.6, 1.4)
    bias: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.4)
    illumination: float = 0.3           # chance of a gain ramp/step across the window
    illumination_amount: float = 0.25
    jitter: float = 0.2                 # chance of camera shake of the past frames
    jitter_px: int = 2                  # at the network's resolution
    haze: float = 0.3
    noise: tuple[float, float] = (0.0, 0.03)
    blur: float = 0.1
    # nuisances of unseen cameras (issue 12); 0 = off, so older configs train as before
    shake: float = 0.0                  # chance of a real-camera shake of the whole window and its labels
    shake_px: float = 15.0              # its largest shift, pixels of a 320-wide frame (roll up to 1 degree)
    rain: float = 0.0                   # chance of rain or snow streaks, new in every frame (background)
    flicker: float = 0.0                # chance of per-frame light flicker (lamps, clouds, auto-exposure)
    night: float = 0.0                  # chance of a dark, noisy picture


@dataclass
class Window:
    frames: np.ndarray    # (T, c, c) float32 in [0, 1], oldest first
    target: np.ndarray    # (c, c) float32 foreground fraction in [0, 1]
    weight: np.ndarray    # (c, c) float32, 0 = ignored


# --- synthetic traffic ---------------------------------------------------------------
def traffic_sequences(count: int, frames: int, size: tuple[int, int], seed: int) -> list[CdnetSequence]:
    """Render ``count`` synthetic traffic sequences as CDnet-like sequences (grey, labels 0/255)."""
    from pipeline.sources.synthetic import Nuisances, SceneGenerator

    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        hard = rng.random() < 0.5
        nuisances = Nuisances(
            illumination=float(rng.uniform(0, 0.3 if hard else 0.1)),
            jitter=int(rng.integers(0, 3)) if hard else 0,
            shadows=float(rng.uniform(0.3, 0.9)) if rng.random() < 0.6 else 0.0,
            sway=float(rng.uniform(1, 6)) if rng.random() < 0.6 else 0.0,
            noise=float(rng.uniform(0, 6)),
        )
        gen = SceneGenerator(size[0], size[1], seed=int(rng.integers(1 << 31)),
                             haze=float(rng.uniform(0, 0.7)) if rng.random() < 0.5 else 0.0,
                             nuisances=nuisances, lanes=int(rng.integers(2, 7)),
                             density=float(rng.uniform(0.03, 0.12)), speed=float(rng.uniform(0.5, 1.8)),
                             horizon=float(rng.uniform(0.15, 0.5)), frames=frames)
        grey, labels = [], []
        for image, truth in gen.frames():
            grey.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
            labels.append(truth)
        out.append(CdnetSequence(f"traffic{k}", Path(f"synthetic:traffic#{k}"), 1, np.stack(grey),
                                 np.stack(labels), None, (1, frames)))
    return out


# --- moving sprites on photographs -----------------------------------------------------
def load_textures(folders: list[str | Path], limit: int = 64) -> list[np.ndarray]:
    """Grey photographs used as backgrounds and sprite textures (folders that do not exist are skipped)."""
    images = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and len(images) < limit:
                grey = cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
                if grey is not None and min(grey.shape) >= 128:
                    images.append(grey)
    return images


def _random_crop(rng, image: np.ndarray, size: int) -> np.ndarray:
    scale = rng.uniform(0.3, 1.0) * min(image.shape) / size
    side = max(int(size * scale), size // 2)
    side = min(side, min(image.shape))
    y = int(rng.integers(0, image.shape[0] - side + 1))
    x = int(rng.integers(0, image.shape[1] - side + 1))
    return cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)


def _sprite_mask(rng, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    kind = rng.integers(3)
    if kind == 0:
        cv2.ellipse(mask, (w // 2, h // 2), (max(w // 2 - 1, 1), max(h // 2 - 1, 1)), 0, 0, 360, 255, -1)
    elif kind == 1:
        r = max(1, int(min(h, w) * rng.uniform(0.05, 0.3)))
        cv2.rectangle(mask, (0, r), (w - 1, h - 1 - r), 255, -1)
        cv2.rectangle(mask, (r, 0), (w - 1 - r, h - 1), 255, -1)
        for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
            cv2.circle(mask, (cx, cy), r, 255, -1)
    else:  # a walker: head + body + legs
        cv2.circle(mask, (w // 2, max(h // 8, 1)), max(h // 8, 1), 255, -1)
        cv2.ellipse(mask, (w // 2, int(h * 0.42)), (max(w // 2 - 1, 1), max(int(h * 0.24), 1)), 0, 0, 360, 255, -1)
        cv2.rectangle(mask, (w // 4, int(h * 0.6)), (w // 2 - 1, h - 1), 255, -1)
        cv2.rectangle(mask, (w // 2 + 1, int(h * 0.6)), (3 * w // 4, h - 1), 255, -1)
    return mask


def _paste(canvas: np.ndarray, truth: np.ndarray | None, patch: np.ndarray, mask: np.ndarray, x: float, y: float):
    h, w = mask.shape
    x0, y0 = int(round(x)), int(round(y))
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if cx0 >= cx1 or cy0 >= cy1:
        return
    sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    m = mask[sub] > 0
    canvas[cy0:cy1, cx0:cx1][m] = patch[sub][m]
    if truth is not None:
        truth[cy0:cy1, cx0:cx1][m] = 255


def sprite_window(rng, textures: list[np.ndarray], frames: int, stride: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """T uint8 frames (size x size) of sprites moving over a photograph, and the current truth (0/255)."""
    background = _random_crop(rng, textures[int(rng.integers(len(textures)))], size).astype(np.float32)
    times = [-(frames - 1 - i) * stride for i in range(frames)]
    sprites = []
    for _ in range(int(rng.integers(0, 4))):
        h = int(rng.integers(4, size // 2))
        w = int(np.clip(h * rng.uniform(0.3, 2.5), 3, size - 2))
        mask = _sprite_mask(rng, h, w)
        texture = _random_crop(rng, textures[int(rng.integers(len(textures)))], max(h, w))[:h, :w].astype(np.float32)
        texture = np.clip(texture * rng.uniform(0.4, 1.6) + rng.uniform(-60, 60), 0, 255)
        speed = rng.uniform(0.15, 3.0)
        angle = rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(angle), np.sin(angle)])
        start = rng.uniform([-w / 2, -h / 2], [size - w / 2, size - h / 2])
        shadow = rng.uniform(0.4, 0.8) if rng.random() < 0.3 else None
        sprites.append((mask, texture, velocity, start, shadow, rng.uniform(-0.6, 0.6, 2)))
    sway = None
    if rng.random() < 0.3:   # a swaying / flickering patch of background (foliage, water): background
        region = np.zeros((size, size), np.float32)
        cv2.ellipse(region, (int(rng.integers(size)), int(rng.integers(size))),
                    (int(rng.integers(8, size // 2)), int(rng.integers(8, size // 2))), 0, 0, 360, 1.0, -1)
        sway = (cv2.GaussianBlur(region, (0, 0), 3), rng.uniform(0.5, 2.5), rng.uniform(0.05, 0.3), rng.uniform(0, 10))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((frames, size, size), np.uint8)
    truth = np.zeros((size, size), np.uint8)
    for i, t in enumerate(times):
        canvas = background.copy()
        if sway is not None:
            region, amplitude, freq, phase = sway
            dx = region * amplitude * np.sin(freq * t + phase + ys * 0.3)
            moved = cv2.remap(background, xs + dx, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            flicker = region * rng.normal(0, 6, (size, size)).astype(np.float32)
            canvas = canvas * (1 - region) + (moved + flicker) * region
        for mask, texture, velocity, start, shadow, offset in sprites:
            x, y = start + velocity * t
            if shadow is not None:  # cast shadow: darker, soft, offset; background in the truth
                h, w = mask.shape
                shade = np.zeros_like(canvas)
                _paste(shade, None, np.ones_like(texture), mask, x + offset[0] * w, y + offset[1] * h)
                shade = cv2.GaussianBlur(shade, (0, 0), 1.5)
                canvas *= 1 - (1 - shadow) * shade
            _paste(canvas, truth if t == 0 else None, texture, mask, x, y)
        out[i] = np.clip(canvas, 0, 255)
    return out, truth


def _streaks(rng, shape: tuple[int, int, int]) -> np.ndarray:
    """(T, h, w) float32 additive rain (bright slanted streaks) or snow (dots), new in every frame."""
    T, h, w = shape
    snow = rng.random() < 0.3
    angle = rng.uniform(-0.35, 0.35)
    length = 1.0 if snow else rng.uniform(3, 10)
    count = int(rng.uniform(0.002, 0.012) * h * w / length)
    out = np.zeros(shape, np.float32)
    for i in range(T):
        x0, y0 = rng.uniform(0, w, count), rng.uniform(0, h, count)
        x1, y1 = x0 + length * np.sin(angle), y0 + length * np.cos(angle)
        level = rng.uniform(0.1, 0.35, count)
        for k in range(count):
            cv2.line(out[i], (int(x0[k]), int(y0[k])), (int(x1[k]), int(y1[k])), float(level[k]),
                     2 if snow else 1, cv2.LINE_AA)
    return out


# --- sampling --------------------------------------------------------------------------
@dataclass
class WindowSampler:
    """Draws augmented training windows from the sources in the proportions of ``mix``."""

    frames: int
    augment: Augment
    cdnet: list[tuple[CdnetSequence, tuple[int, int]]] = field(default_factory=list)  # (sequence, target frame range)
    traffic: list[CdnetSequence] = field(default_factory=list)
    textures: list[np.ndarray] = field(default_factory=list)
    mix: dict[str, float] = field(default_factory=lambda: {"cdnet": 0.5, "traffic": 0.25, "sprites": 0.25})

    def __post_init__(self):
        available = {"cdnet": bool(self.cdnet), "traffic": bool(self.traffic), "sprites": bool(self.textures)}
        names = [k for k, v in self.mix.items() if v > 0 and available.get(k)]
        if not names:
            raise ValueError(f"no training source available for mix {self.mix}")
        weights = np.array([self.mix[k] for k in names], np.float64)
        self._names, self._p = names, weights / weights.sum()

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        windows = [self.sample(rng) for _ in range(size)]
        return (np.stack([w.frames for w in windows]), np.stack([w.target for w in windows])[:, None],
                np.stack([w.weight for w in windows])[:, None])

    def sample(self, rng: np.random.Generator) -> Window:
        a = self.augment
        stride = int(rng.integers(a.stride[0], a.stride[1] + 1))
        source = self._names[int(rng.choice(len(self._names), p=self._p))]
        if source == "sprites":
            grey, truth = sprite_window(rng, self.textures, self.frames, stride, a.crop)
            fg, valid = truth > 0, np.ones_like(truth, bool)
            frames = grey.astype(np.float32) / 255.0
            target, weight = fg.astype(np.float32), valid.astype(np.float32)
        else:
            if source == "cdnet":
                seq, (lo, hi) = self.cdnet[int(rng.integers(len(self.cdnet)))]
            else:
                seq = self.traffic[int(rng.integers(len(self.traffic)))]
                lo, hi = seq.first + 10, seq.last
            frames, target, weight = self._crop(rng, seq, int(rng.integers(lo, hi + 1)), stride)
        frames = self._photometric(rng, frames)
        return self._flip(rng, Window(frames, target, weight))

    def _crop(self, rng, seq: CdnetSequence, current: int, stride: int):
        a, c = self.augment, self.augment.crop
        h, w = seq.grey.shape[1:]
        lo = max(a.scale[0], c / min(h, w))
        scale = rng.uniform(lo, max(lo, a.scale[1]))
        side = int(round(c / scale))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        shake = a.jitter_px / scale if rng.random() < a.jitter else 0
        frames = np.empty((self.frames, c, c), np.float32)
        numbers = window_numbers(current, self.frames, stride)
        path = self._shake_path(rng, stride) if a.shake and rng.random() < a.shake else None
        for i, n in enumerate(numbers):
            dy = dx = 0
            if shake and i < self.frames - 1:   # the current frame stays aligned with its truth
                dy, dx = (int(v) for v in np.clip(rng.integers(-shake, shake + 1, 2), [-y, -x], [h - side - y, w - side - x]))
            full = seq.frame(n) if path is None else jitter_image(seq.frame(n), path[i])
            patch = full[y + dy:y + dy + side, x + dx:x + dx + side]
            frames[i] = cv2.resize(patch, (c, c), interpolation=cv2.INTER_AREA) * np.float32(1 / 255)
        if path is None:
            fg, valid = seq.targets(current)
        else:  # the labels move with the current frame; where no label came from is ignored
            fg, valid = labels_to_targets(jitter_labels(seq.labels[current - seq.first], path[-1], seq.roi))
        fg, valid = fg[y:y + side, x:x + side], valid[y:y + side, x:x + side]
        valid_area = cv2.resize(valid.astype(np.float32), (c, c), interpolation=cv2.INTER_AREA)
        fg_area = cv2.resize((fg & valid).astype(np.float32), (c, c), interpolation=cv2.INTER_AREA)
        target = fg_area / np.maximum(valid_area, 1e-6)
        weight = (valid_area > 0.5).astype(np.float32)
        return frames, np.clip(target, 0, 1), weight

    def _shake_path(self, rng, stride: int) -> np.ndarray:
        """(T, 3) offsets (dx, dy, roll) of the window's frames on one camera-shake trajectory."""
        bound = float(rng.uniform(2.0, self.augment.shake_px))
        shake = Shake(max_shift=bound, max_rotation=float(rng.uniform(0, 1)), walk_step=bound / 10, sway=bound / 2)
        path = shake_trajectory((self.frames - 1) * stride + 1, int(rng.integers(1 << 31)), shake)
        return path[::stride]

    def _photometric(self, rng, frames: np.ndarray) -> np.ndarray:
        a = self.augment
        T = len(frames)
        if a.rain and rng.random() < a.rain:
            frames = frames + _streaks(rng, frames.shape)
        if rng.random() < a.haze:
            t = rng.uniform(0.3, 0.9)
            if rng.random() < 0.5:  # thicker towards the top of the picture (farther away)
                t = np.linspace(t * rng.uniform(0.3, 1.0), t, frames.shape[1], dtype=np.float32)[:, None]
            frames = apply_haze(frames.transpose(1, 2, 0), np.broadcast_to(np.float32(t), frames.shape[1:]),
                                airlight=rng.uniform(0.6, 1.0)).transpose(2, 0, 1)
        frames = np.power(np.clip(frames, 0, 1), np.float32(rng.uniform(*a.gamma)))
        gain = np.full(T, rng.uniform(*a.gain), np.float32)
        if rng.random() < a.illumination:   # light changes during the window: ramp or sudden step
            change = rng.uniform(-a.illumination_amount, a.illumination_amount)
            if rng.random() < 0.5:
                gain *= 1 + np.linspace(0, change, T, dtype=np.float32)
            else:
                gain[int(rng.integers(1, T)):] *= 1 + change
        if a.flicker and rng.random() < a.flicker:
            gain *= 1 + rng.normal(0, rng.uniform(0.03, 0.12), T).astype(np.float32)
        if a.night and rng.random() < a.night:
            gain *= np.float32(rng.uniform(0.12, 0.35))
        frames = frames * gain[:, None, None] + np.float32(rng.uniform(-a.bias, a.bias))
        if rng.random() < a.blur:
            sigma = rng.uniform(0.5, 1.2)
            frames = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])
        sigma = rng.uniform(*a.noise)
        if sigma > 0:
            frames = frames + rng.normal(0, sigma, frames.shape).astype(np.float32)
        return np.clip(frames, 0, 1).astype(np.float32)

    def _flip(self, rng, w: Window) -> Window:
        if rng.random() < self.augment.hflip:
            w = Window(w.frames[:, :, ::-1], w.target[:, ::-1], w.weight[:, ::-1])
        if rng.random() < self.augment.vflip:
            w = Window(w.frames[:, ::-1], w.target[::-1], w.weight[::-1])
        return Window(np.ascontiguousarray(w.frames), np.ascontiguousarray(w.target), np.ascontiguousarray(w.weight))

