"""Classical foreground baselines: OpenCV's MOG2 and KNN background subtractors.

MOG2: adaptive Gaussian mixture per pixel (Zivkovic 2004, Zivkovic & van der
Heijden 2006). KNN: non-parametric k-nearest-neighbour model (Zivkovic & van
der Heijden 2006). Both keep one model per stream. They read the dehazed image
when an earlier stage produced one, so haze removal helps them as it helps
MSFgNet. With shadow detection on, pixels OpenCV marks as shadow (127) count
as background, as CDnet scores them.

Camera motion (``stabilize: auto``, pipeline.stabilize): OpenCV's models live in
fixed pixel coordinates, so each frame is registered (on a grey copy at most
320 pixels wide) and warped into the coordinates of the frame the model started at; the
mask is warped back and pixels the model has never seen are background. A pan
that leaves less than 60 % of the model's frame in view starts the model
afresh; after a scene cut or a lost registration the model carries on as it
would without compensation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2

from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.stabilize import EST_WIDTH, ModelFrame, Registrations, check_mode, stabilize_mode
from pipeline.stages.base import Stage
from pipeline.stages.msfgnet import grey_small, working_size

#: OpenCV marks shadow pixels 127 and foreground 255; anything above this is foreground
_SHADOW_LEVEL = 127


class _SubtractorStage(Stage):
    """One OpenCV background subtractor per stream, plus shadow removal and an opening."""

    inputs = ("image",)  # reads data["dehazed"] instead when an earlier stage wrote it
    outputs = ("mask",)
    max_batch = 8

    def __init__(self, config):
        self.config = config
        self._models: dict[str, Any] = {}
        k = config.open_kernel
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)) if k > 1 else None
        self._registrations = Registrations() if stabilize_mode(config.stabilize) == "auto" else None
        self._frames: dict[str, ModelFrame] = {}

    def _new_model(self):
        raise NotImplementedError

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        for frame in frames:
            model = self._models.get(frame.stream)
            if model is None:
                model = self._models[frame.stream] = self._new_model()
            image = frame.data.get("dehazed", frame.image)
            if self._registrations is not None:
                image, model = self._into_model(frame, image, model)
            raw = model.apply(image, learningRate=self.config.learning_rate)
            if self._registrations is not None:
                raw = self._frames[frame.stream].from_model(raw)
            mask = cv2.threshold(raw, _SHADOW_LEVEL, 255, cv2.THRESH_BINARY)[1]
            if self._kernel is not None:
                mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel, dst=mask)
            frame.data["mask"] = mask
        return frames

    def _into_model(self, frame: Frame, image, model):
        """Register the frame; the image in the model's coordinates (and a fresh model when needed)."""
        h, w = image.shape[:2]
        small = grey_small(image, working_size(w, h, min(1.0, EST_WIDTH / w)))  # as MSFgNet registers
        motion = self._registrations.update(frame.stream, small)
        where = self._frames.get(frame.stream)
        if where is None:
            where = self._frames[frame.stream] = ModelFrame()
        warped, fresh = where.to_model(image, motion, w / small.shape[1])
        if fresh and model is not None:
            model = self._models[frame.stream] = self._new_model()
        record = motion.record(w / small.shape[1])
        record["model_restarted"] = fresh
        frame.data["stabilize"] = record
        return warped, model

    def reset_stream(self, stream: str) -> None:
        self._models.pop(stream, None)
        self._frames.pop(stream, None)
        if self._registrations is not None:
            self._registrations.reset(stream)

    def close(self) -> None:
        self._models.clear()
        self._frames.clear()
        if self._registrations is not None:
            self._registrations.clear()


class Mog2Stage(_SubtractorStage):
    """Gaussian-mixture background subtraction (cv2.createBackgroundSubtractorMOG2)."""

    name = "mog2"

    @dataclass(frozen=True)
    class Config:
        history: int = 500            # frames that shape the model (~20 s at 25 frames/s)
        var_threshold: float = 25.0   # squared Mahalanobis distance for "matches the background"
        # OpenCV's shadow test (darker, same chromaticity) also takes grey and dark cars on grey
        # asphalt for shadows and drops them, so it is off by default for traffic cameras
        detect_shadows: bool = False
        learning_rate: float = -1.0   # < 0: OpenCV picks 1/min(frames seen, history)
        open_kernel: int = 3          # morphological opening against speckle; 0 or 1 = off
        stabilize: str | bool = "auto"  # auto | off: camera-motion compensation (pipeline.stabilize)

        def __post_init__(self):
            _check(self, "mog2")

    def __init__(self, config: "Mog2Stage.Config | None" = None):
        super().__init__(config or self.Config())

    def _new_model(self):
        c = self.config
        return cv2.createBackgroundSubtractorMOG2(
            history=c.history, varThreshold=c.var_threshold, detectShadows=c.detect_shadows)


class KnnStage(_SubtractorStage):
    """K-nearest-neighbour background subtraction (cv2.createBackgroundSubtractorKNN)."""

    name = "knn"

    @dataclass(frozen=True)
    class Config:
        history: int = 500
        dist2_threshold: float = 400.0  # squared distance to count a sample as a neighbour
        detect_shadows: bool = False    # off for the same reason as in MOG2
        learning_rate: float = -1.0
        open_kernel: int = 3
        stabilize: str | bool = "auto"

        def __post_init__(self):
            _check(self, "knn")

    def __init__(self, config: "KnnStage.Config | None" = None):
        super().__init__(config or self.Config())

    def _new_model(self):
        c = self.config
        return cv2.createBackgroundSubtractorKNN(
            history=c.history, dist2Threshold=c.dist2_threshold, detectShadows=c.detect_shadows)


def _check(c, stage: str) -> None:
    if c.history < 1:
        raise ConfigError(f"stages.{stage}.history", f"must be >= 1, got {c.history}")
    if not (c.learning_rate < 0 or 0 <= c.learning_rate <= 1):
        raise ConfigError(f"stages.{stage}.learning_rate",
                          f"must be in [0, 1] or negative (automatic), got {c.learning_rate}")
    if c.open_kernel < 0:
        raise ConfigError(f"stages.{stage}.open_kernel", f"must be >= 0, got {c.open_kernel}")
    check_mode(f"stages.{stage}", c.stabilize)
