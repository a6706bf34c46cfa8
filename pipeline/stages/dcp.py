"""Dark-channel-prior dehazing (He, Sun & Tang, CVPR 2009) and the haze score.

Haze model (He et al. eq. 1): I = J·t + A·(1 − t). In a haze-free outdoor
patch at least one colour channel is near zero (the dark channel prior), so
the dark channel of I/A estimates 1 − t (eq. 11, with ω keeping a little
haze for depth cues). The coarse transmission is refined with the guided
filter (He et al. 2010) instead of the paper's soft matting, which is what
makes the method real-time. Everything but the final recovery (eq. 22) runs
at a reduced size; the transmission is smooth, so upsampling it loses little.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.guided import guided_filter
from pipeline.stages.base import Stage

#: the haze score is computed on a copy about this wide, so its value hardly depends on resolution
_SCORE_WIDTH = 80
_SCORE_KERNEL = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))


def channel_min(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel minimum over the three channels (cv2.min is ~50x faster than np.min(axis=2))."""
    b, g, r = cv2.split(image)
    out = cv2.min(b, g, dst=out)
    return cv2.min(out, r, dst=out)


def haze_score(image: np.ndarray) -> float:
    """Mean dark channel of a small copy of ``image``, in [0, 1].

    Near 0 for clear outdoor scenes (the prior), rising towards 1 as haze
    lifts every channel towards the airlight. Computed on a copy about 80
    pixels wide (3x3 window there, roughly the paper's 15 px patch at 640x360)
    so a threshold means the same at every resolution. The copy is shrunk by an
    integer factor of a cropped view, OpenCV's fast INTER_AREA path (~0.3 ms at
    640x360; a non-integer factor costs three times that).
    """
    h, w = image.shape[:2]
    f = max(1, round(w / _SCORE_WIDTH))
    sw, sh = max(1, w // f), max(1, h // f)
    small = cv2.resize(image[: sh * f, : sw * f], (sw, sh), interpolation=cv2.INTER_AREA)
    dark = cv2.erode(channel_min(small), _SCORE_KERNEL)
    return float(cv2.mean(dark)[0]) / 255.0


def _odd(n: float) -> int:
    n = max(1, int(round(n)))
    return n if n % 2 else n + 1


class DarkChannelDehazer:
    """Dehazes frames of one stream; keeps its work buffers and a smoothed airlight.

    Buffers are reallocated only when the frame size changes. The airlight is
    smoothed over frames (``airlight_momentum``) so a car's headlight does not
    make the brightness of a whole video flicker.
    """

    def __init__(self, config: "DcpStage.Config"):
        self.config = config
        self._shape: tuple[int, ...] | None = None
        self.airlight: np.ndarray | None = None

    def _allocate(self, image: np.ndarray) -> None:
        c = self.config
        h, w = image.shape[:2]
        self._shape = image.shape
        self._small_size = (max(8, int(round(w * c.scale))), max(8, int(round(h * c.scale))))
        sw, sh = self._small_size
        patch = _odd(c.patch * sw / w)
        self._kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
        self._radius = max(1, int(round(c.guided_radius * sw / w)))
        self._small = np.empty((sh, sw, 3), np.uint8)
        self._small_f = np.empty((sh, sw, 3), np.float32)
        self._dark = np.empty((sh, sw), np.uint8)
        self._dark_f = np.empty((sh, sw), np.float32)
        self._grey = np.empty((sh, sw), np.float32)
        self._t_full = np.empty((h, w), np.float32)
        self._image_f = np.empty((h, w, 3), np.float32)
        self._t3 = np.empty((h, w, 3), np.float32)
        self.airlight = None

    def _estimate_airlight(self, small: np.ndarray, dark: np.ndarray) -> np.ndarray:
        """Mean colour of the pixels with the brightest 0.1% dark channel (He et al. sec. 4.4)."""
        flat = dark.reshape(-1)
        k = max(1, int(flat.size * self.config.airlight_fraction))
        brightest = np.argpartition(flat, flat.size - k)[-k:]
        a = small.reshape(-1, 3)[brightest].mean(axis=0)
        return np.maximum(a, 1.0).astype(np.float32)

    def transmission(self, image: np.ndarray) -> np.ndarray:
        """Refined transmission at full size, already floored at ``t0``."""
        c = self.config
        if image.shape != self._shape:
            self._allocate(image)
        small = cv2.resize(image, self._small_size, dst=self._small, interpolation=cv2.INTER_AREA)
        dark = cv2.erode(channel_min(small, self._dark), self._kernel, dst=self._dark)
        a = self._estimate_airlight(small, dark)
        if self.airlight is None or c.airlight_momentum <= 0:
            self.airlight = a
        else:
            m = c.airlight_momentum
            self.airlight = (m * self.airlight + (1 - m) * a).astype(np.float32)
        # dark channel of I/A (eq. 9-11): normalise each channel by its airlight first
        np.multiply(small, 1.0 / self.airlight, out=self._small_f, casting="unsafe")
        norm_dark = cv2.erode(channel_min(self._small_f, self._dark_f), self._kernel, dst=self._dark_f)
        t = cv2.addWeighted(norm_dark, -c.omega, norm_dark, 0.0, 1.0, dst=self._dark_f)  # 1 - ω·dark
        grey = cv2.cvtColor(self._small, cv2.COLOR_BGR2GRAY)
        grey = np.multiply(grey, 1.0 / 255.0, out=self._grey, casting="unsafe")
        t = guided_filter(grey, t, self._radius, c.guided_eps)
        h, w = image.shape[:2]
        t = cv2.resize(t, (w, h), dst=self._t_full, interpolation=cv2.INTER_LINEAR)
        return cv2.max(t, c.t0, dst=self._t_full)

    def dehaze(self, image: np.ndarray) -> np.ndarray:
        """Scene radiance J = (I − A) / max(t, t0) + A (eq. 22), as a new uint8 BGR image."""
        t = self.transmission(image)
        a = self.airlight
        f = np.subtract(image, a, out=self._image_f, casting="unsafe")
        cv2.merge((t, t, t), dst=self._t3)
        cv2.divide(f, self._t3, dst=f)
        f += a
        return cv2.convertScaleAbs(np.clip(f, 0, 255, out=f))


def dehaze_dcp(image: np.ndarray, config: "DcpStage.Config | None" = None) -> np.ndarray:
    """Dehaze one BGR uint8 image with the dark channel prior (no state kept)."""
    return DarkChannelDehazer(config or DcpStage.Config(airlight_momentum=0.0)).dehaze(image)


class DcpStage(Stage):
    """Dark-channel-prior dehazing; writes ``dehazed`` and ``haze_score``."""

    name = "dcp"
    inputs = ("image",)
    outputs = ("dehazed", "haze_score")
    max_batch = 1

    @dataclass(frozen=True)
    class Config:
        scale: float = 0.5            # transmission estimated at this fraction of the frame size
        patch: int = 15               # dark-channel window at full size, pixels (paper: 15)
        omega: float = 0.95           # haze kept for depth perception (paper: 0.95)
        t0: float = 0.1               # transmission floor (paper: 0.1)
        guided_radius: int = 40       # guided-filter radius at full size, pixels
        guided_eps: float = 1e-3      # guided-filter regularisation (paper 2010: 1e-3)
        airlight_fraction: float = 0.001  # brightest share of the dark channel used for A
        airlight_momentum: float = 0.9    # smoothing of A across frames of one stream (0 = none)

        def __post_init__(self):
            _check(self)

    def __init__(self, config: "DcpStage.Config | None" = None):
        self.config = config or self.Config()
        self._dehazers: dict[str, DarkChannelDehazer] = {}

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        for frame in frames:
            dehazer = self._dehazers.get(frame.stream)
            if dehazer is None:
                dehazer = self._dehazers[frame.stream] = DarkChannelDehazer(self.config)
            frame.data["haze_score"] = haze_score(frame.image)
            frame.data["dehazed"] = dehazer.dehaze(frame.image)
        return frames

    def reset_stream(self, stream: str) -> None:
        self._dehazers.pop(stream, None)


def _check(c: DcpStage.Config) -> None:
    rules = {
        "scale": 0 < c.scale <= 1,
        "patch": c.patch >= 1,
        "omega": 0 < c.omega <= 1,
        "t0": 0 < c.t0 < 1,
        "guided_radius": c.guided_radius >= 1,
        "guided_eps": c.guided_eps > 0,
        "airlight_fraction": 0 < c.airlight_fraction <= 1,
        "airlight_momentum": 0 <= c.airlight_momentum < 1,
    }
    for key, ok in rules.items():
        if not ok:
            raise ConfigError(f"stages.dcp.{key}", f"invalid value {getattr(c, key)!r}")
