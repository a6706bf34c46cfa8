"""Dehazing stage: RI-GAN (Dudhane et al., CVPR-W 2019) or DCP, gated by the haze score.

Gate (``when: auto``): by default (``score: auto`` with RI-GAN) the network's own
mean haze density 1 - t on a copy ``score_width`` pixels wide (a few ms, once every
``score_every`` = 8 frames, reused in between), which finds far more real hazy
scenes than the dark channel (docs/models.md, tools/gate_study.py); or, with
``score: dark_channel`` (what ``auto`` means for ``method: dcp`` and for ``when:
always | never``, where the score gates nothing and only goes to events.jsonl), the
haze score of pipeline.stages.dcp (mean dark channel of a 96x54 copy, He et al.
2009, < 1 ms). A stream
switches dehazing on after ``hold_frames`` consecutive frames at or above
``threshold`` and off after ``hold_frames`` consecutive frames below
``threshold - hysteresis``, so a score hovering near the threshold does not make
the output flicker. The first frame of a stream decides at once. Clear frames
cost only the score and pass the input image through (no copy).

RI-GAN runs at ``internal_scale`` of the frame size (sides rounded to the
network stride, 4). Its graph also returns the transmission t and airlight A of
its scattering-model head, so the full-size result is J = (I − A)/t + A with t
carried to full size by the fast guided filter (He & Sun 2015): t ≈ α·grey + β
is fitted in small windows at the internal size, α and β are enlarged and
applied to the full-size grey frame, so t keeps the frame's edges. A graph
without those outputs falls back to fitting dehazed ≈ a·hazy + b per channel
the same way. At ``internal_scale: 1`` the frame is reflect-padded to the
stride and cropped back.

Reuse across frames (``internal_scale`` < 1, host and device paths): a fixed camera's haze
changes over seconds, not frames, so RI-GAN runs on every ``refresh_every``-th
dehazed frame of a stream, or sooner when a small grey thumbnail moved by
``refresh_change`` since the last run (a cut, a camera move, a fog bank); the
frames between keep its t and A and only redo the cheap part, the guided fit on
their own grey image and J = (I − A)/t + A. ``refresh_every: 1`` runs the network
on every frame. The values were chosen on synthetic validation seeds against
RI-GAN on every frame (tools/realtime_dehaze.py, docs/models.md).

Ports: ``dehazed`` (uint8 BGR, the input array itself when not applied),
``haze_score`` (float), ``dehaze_applied`` (bool). The runtime needs no torch:
ONNX Runtime or OpenVINO on the CPU, whichever ``auto`` finds faster here (fp32, or int8 from the QDQ graph
``<weights stem>.int8.onnx``); ``backend: torch`` uses engines.torch (fp16 on
cuda); ``backend: tensorrt`` builds or reuses an engine of the verified ONNX
graph through the engine cache; ``backend: openvino`` runs the same graphs (fp32, bf16 where the CPU
has it, int8). Every runner comes from engines.load.runner_for (LearnedStage.acquire_runner), which
also picks ``auto`` and runs the parity gate.

Device path (``backend: torch``, ``device: cuda``, and a CUDA stream handed in
with ``use_cuda_stream``, as the graph does): the stage runs on that stream. The haze score and the gate
stay on the host (they read the numpy frame); a frame that is dehazed is
uploaded once (pinned, async), downscaled, run through RI-GAN and carried to
full size on the GPU by the same maths (pipeline.guided_torch), so ``dehazed``
is an HxWx3 uint8 CUDA tensor; the graph downloads it once, before a host
stage or the sinks (pipeline.gpu.data_to_host). No host synchronisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np

from pipeline.errors import ConfigError, StageError
from pipeline.frame import Frame
from pipeline.guided import guided_coefficients
from pipeline.imageio import to_bgr8
from pipeline.stages.base import LearnedStage
from pipeline.stages.dcp import DarkChannelDehazer, DcpStage, haze_score

STRIDE = 4  # training.models.rigan.STRIDE (not imported: the runtime never imports training)


#: score -> (default threshold, default hysteresis). density: chosen on synthetic frames (held-out
#: seed 99) by tools/gate_study.py, then checked on real photographs (docs/models.md)
DEFAULT_THRESHOLDS = {"dark_channel": (0.5, 0.04), "density": (0.12, 0.02)}


class _Gate:
    """Per-stream on/off state with hysteresis and a hold count."""

    __slots__ = ("active", "count", "started")

    def __init__(self):
        self.active, self.count, self.started = False, 0, False

    def update(self, score: float, enter: float, leave: float, hold: int) -> bool:
        if not self.started:
            self.started, self.active = True, score >= enter
            return self.active
        crossing = score < leave if self.active else score >= enter
        self.count = self.count + 1 if crossing else 0
        if self.count >= hold:
            self.active, self.count = not self.active, 0
        return self.active


class GuidedUpsampler:
    """Carries a low-resolution dehazing result to full resolution through local affine maps.

    Buffers are kept per (low, full) shape pair; a new shape reallocates once.
    """

    def __init__(self, radius: int = 4, eps: float = 1e-3):
        self.radius, self.eps = radius, eps
        self._shape = None

    def __call__(self, hazy_low: np.ndarray, out_low: np.ndarray, hazy_full: np.ndarray) -> np.ndarray:
        """``hazy_low``/``out_low``: hxwx3 float32 in [0, 1]; ``hazy_full``: HxWx3 uint8. Returns uint8."""
        a, b = guided_coefficients(hazy_low, out_low, self.radius, self.eps)
        h, w = hazy_full.shape[:2]
        if self._shape != (h, w):
            self._shape = (h, w)
            self._full = np.empty((h, w, 3), np.float32)
        a = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
        b = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
        f = np.multiply(hazy_full, np.float32(1.0 / 255.0), out=self._full, casting="unsafe")
        cv2.multiply(f, a, dst=f)
        cv2.add(f, b, dst=f)
        np.clip(f, 0.0, 1.0, out=f)
        return cv2.convertScaleAbs(f, alpha=255.0)


class TransmissionUpsampler:
    """Full-size transmission from a low-resolution one, guided by the full-size grey frame,
    then the scattering model inverted at full size: J = (I − A) / t + A."""

    def __init__(self, radius: int = 4, eps: float = 1e-3, t_min: float = 0.05):
        self.radius, self.eps, self.t_min = radius, eps, t_min

    def __call__(self, t_low: np.ndarray, airlight: np.ndarray, grey_low: np.ndarray,
                 image: np.ndarray) -> np.ndarray:
        """``t_low``, ``grey_low``: hxw float32; ``airlight``: 3 floats in [0, 1]; ``image``: HxWx3 uint8."""
        alpha, beta = guided_coefficients(grey_low, t_low, self.radius, self.eps)
        h, w = image.shape[:2]
        t = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        t = cv2.multiply(t, grey, dst=t, scale=1.0 / 255.0, dtype=cv2.CV_32F)
        cv2.add(t, cv2.resize(beta, (w, h), interpolation=cv2.INTER_LINEAR), dst=t)
        cv2.max(t, self.t_min, dst=t)
        r = cv2.divide(1.0, t, dst=t)    # 1/t
        s = cv2.subtract(1.0, r)         # 1 - 1/t
        # J = (I - A)/t + A = I/t + A (1 - 1/t), one plane at a time: OpenCV does not broadcast a
        # single-channel map over three channels, and per plane it is three passes, no 3-channel copies
        planes = []
        for c, plane in enumerate(cv2.split(image)):
            f = cv2.multiply(plane, r, dtype=cv2.CV_32F)
            f = cv2.scaleAdd(s, float(airlight[c]) * 255.0, f, dst=f)
            planes.append(cv2.add(f, 0.0, dtype=cv2.CV_8U))  # rounds and saturates to [0, 255]
        return cv2.merge(planes)


class HazeMemory:
    """One stream's last RI-GAN transmission (internal size) and airlight, and how old they are.

    Stale after ``every`` frames, or at once when the scene changed: the median absolute difference of
    a 32 px wide grey thumbnail against the one at the refresh is at least ``change``. The median
    ignores vehicles moving through the picture (they cover less than half of it; a mean over a
    filling road grew as much as at a cut on synthetic traffic) but not a cut, a camera move or fog
    that thickens over the whole picture; the thumbnail averages sensor noise away.
    """

    THUMB_W = 32

    __slots__ = ("t_low", "airlight", "thumb", "age")

    def __init__(self, t_low, airlight, grey_low: np.ndarray):
        """``t_low``/``airlight``: the caller's own copies (numpy, or device tensors on the device path;
        a runner may reuse its output buffers); ``grey_low``: the host grey image at the internal size."""
        self.t_low, self.airlight = t_low, airlight
        self.thumb = self.thumbnail(grey_low)
        self.age = 0

    @classmethod
    def thumbnail(cls, grey: np.ndarray) -> np.ndarray:
        h, w = grey.shape[:2]
        tw = min(cls.THUMB_W, w)
        return cv2.resize(grey, (tw, max(1, round(h * tw / w))), interpolation=cv2.INTER_AREA)

    def change(self, grey_low: np.ndarray) -> float:
        thumb = self.thumbnail(grey_low)
        if thumb.shape != self.thumb.shape:
            return 1.0
        return float(np.median(cv2.absdiff(thumb, self.thumb)))

    def stale(self, grey_low: np.ndarray, every: int, change: float) -> bool:
        return (self.age >= every or tuple(self.t_low.shape[-2:]) != grey_low.shape
                or self.change(grey_low) >= change)


def resolve_score(c) -> str:
    """The gate's score: ``auto`` is RI-GAN's density where it gates RI-GAN (``when: auto``); elsewhere the
    score only informs (events.jsonl), and the dark channel's costs almost nothing."""
    if c.score != "auto":
        return c.score
    return "density" if c.method == "rigan" and c.when == "auto" else "dark_channel"


class DehazeStage(LearnedStage):
    """Gated dehazing; writes ``dehazed``, ``haze_score`` and ``dehaze_applied``."""

    name = "dehaze"
    inputs = ("image",)
    outputs = ("dehazed", "haze_score", "dehaze_applied")
    max_batch = 1

    @dataclass(frozen=True)
    class Config:
        when: Literal["always", "never", "auto"] = "auto"
        method: Literal["rigan", "dcp"] = "rigan"
        score: Literal["auto", "dark_channel", "density"] = "auto"  # gate's haze score (density: RI-GAN's 1 - t;
                                      # auto: density for RI-GAN with when: auto, else dark_channel)
        threshold: float | None = None   # score that switches dehazing on (auto); None: 0.5 dark_channel, 0.12 density
        hysteresis: float | None = None  # switches off below threshold - hysteresis; None: 0.04 / 0.02
        score_width: int = 160        # density: width in pixels of the copy the network scores
        score_every: int = 8          # score every Nth frame of a stream, reuse it in between
        hold_frames: int = 5          # consecutive frames beyond a threshold before switching
        backend: Literal["auto", "onnxruntime", "openvino", "torch", "tensorrt"] = "auto"
        precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"  # engines.constants.SUPPORTED
        weights: str = "weights/rigan.onnx"             # ONNX Runtime graph (sha256 in weights/manifest.json)
        torch_weights: str = "weights/rigan.pt"         # state_dict for backend: torch
        torch_factory: str = "training.models.rigan:RIGeneratorPorts"  # must match torch_weights' width
        device: Literal["cpu", "cuda"] = "cpu"          # backend: torch, tensorrt
        manifest: str = "weights/manifest.json"         # sha256 list the weights are checked against
        internal_scale: float = 0.5   # network input size as a fraction of the frame (1 = full size)
        guided_radius: int = 4        # window radius of the guided upsampling at the internal size
        guided_eps: float = 1e-3
        threads: int | None = None    # ONNX Runtime intra-op threads (None = all cores)
        refresh_every: int = 4        # RI-GAN every Nth dehazed frame of a stream, its t and A reused
                                      # between (1 = every frame)
        refresh_change: float = 0.01  # ... or sooner when the scene changes by this much (median |grey diff|, [0, 1])

    def __init__(self, config: "DehazeStage.Config | None" = None):
        self.config = config or self.Config()
        _check(self.config)
        c = self.config  # the network runs in these cases
        self.check_engine_config(runs=c.method == "rigan" and (c.when != "never" or resolve_score(c) == "density"))
        self._runner = None
        self._device_capable = None  # resolved once (auto may probe TensorRT)
        self._stream = None      # CUDA stream from the graph (device path)
        self._uploader = None
        self._gates: dict[str, _Gate] = {}
        self._dcp: dict[str, DarkChannelDehazer] = {}
        c = self.config
        self.score = resolve_score(c)
        self.threshold = DEFAULT_THRESHOLDS[self.score][0] if c.threshold is None else c.threshold
        self.hysteresis = DEFAULT_THRESHOLDS[self.score][1] if c.hysteresis is None else c.hysteresis
        self._haze: dict[str, HazeMemory] = {}  # stream -> t and A of its last RI-GAN run
        self.network_runs = 0  # RI-GAN calls on the frames (the density score's calls not included)
        self._scores: dict[str, tuple[int, float]] = {}  # stream -> (frames since scored, score)
        self._upsampler = GuidedUpsampler(self.config.guided_radius, self.config.guided_eps)
        self._t_upsampler = TransmissionUpsampler(self.config.guided_radius, self.config.guided_eps)
        self._input = None

    # --- device path ---------------------------------------------------------
    @property
    def wants_cuda_stream(self) -> bool:
        """Read by pipeline.graph.CudaLink: the device path exists (RI-GAN, torch backend on cuda)."""
        if self._device_capable is None:
            c = self.config
            self._device_capable = (c.device == "cuda" and c.method == "rigan" and c.when != "never"
                                    and self.backend == "torch")
        return self._device_capable


    # --- lifecycle -----------------------------------------------------------
    def setup(self) -> None:
        c = self.config
        if c.method != "rigan" or self._runner is not None or (c.when == "never" and self.score != "density"):
            return
        self._runner = self.acquire_runner(self.max_batch, factory=c.torch_factory)

    def network_size(self, w: int, h: int) -> tuple[int, int]:
        return self._network_size(w, h)

    def close(self) -> None:
        self._uploader = None
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def reset_stream(self, stream: str) -> None:
        self._gates.pop(stream, None)
        self._dcp.pop(stream, None)
        self._scores.pop(stream, None)
        self._haze.pop(stream, None)

    # --- per frame -------------------------------------------------------------
    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        c = self.config
        for frame in frames:
            where = f"{frame.stream}#{frame.index}"
            image = frame.image
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3 and min(image.shape[:2]) >= STRIDE):
                image = to_bgr8(image, where, min_side=STRIDE, error=StageError)
            score = self._score(image, frame.stream)
            if c.when == "always":
                apply = True
            elif c.when == "never":
                apply = False
            else:
                gate = self._gates.get(frame.stream)
                if gate is None:
                    gate = self._gates[frame.stream] = _Gate()
                apply = gate.update(score, self.threshold, self.threshold - self.hysteresis, c.hold_frames)
            frame.data["haze_score"] = score
            frame.data["dehaze_applied"] = apply
            if not apply:
                frame.data["dehazed"] = image
                self._haze.pop(frame.stream, None)  # t and A from before a clear spell are not reused after it
            elif self.on_device:
                frame.data["dehazed"] = self._rigan_device(image, frame.stream)
            else:
                frame.data["dehazed"] = self.dehaze(image, frame.stream)
        return frames

    def _score(self, image: np.ndarray, stream: str) -> float:
        """The gate's haze score, recomputed every ``score_every`` frames of a stream."""
        since, score = self._scores.get(stream, (self.config.score_every, 0.0))
        if since >= self.config.score_every:
            since, score = 0, haze_score(image) if self.score == "dark_channel" else self.density(image)
        self._scores[stream] = (since + 1, score)
        return score

    def density(self, image: np.ndarray) -> float:
        """Mean haze density 1 - t that RI-GAN estimates on a copy ``score_width`` pixels wide, in [0, 1]."""
        if self._runner is None:
            self.setup()
        h, w = image.shape[:2]
        sw = max(STRIDE, min(self.config.score_width, w) // STRIDE * STRIDE)
        sh = max(STRIDE, int(round(h * sw / w / STRIDE)) * STRIDE)
        small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32)
        small *= np.float32(1.0 / 255.0)
        try:
            outs = self._runner.infer({"hazy": np.ascontiguousarray(small.transpose(2, 0, 1))[None]})
        except Exception as e:
            raise StageError("dehaze", f"RI-GAN haze density failed on a {sw}x{sh} copy: {e}") from e
        if "transmission" not in outs:
            raise ConfigError("stages.dehaze.score", f"density needs a graph with a 'transmission' output; "
                                                     f"{self.config.weights} has only {sorted(outs)}")
        return float(1.0 - np.asarray(outs["transmission"], np.float32).mean())

    def dehaze(self, image: np.ndarray, stream: str = "") -> np.ndarray:
        """Dehaze one HxWx3 uint8 BGR image (any size) with the configured method."""
        if self.config.method == "dcp":
            dehazer = self._dcp.get(stream)
            if dehazer is None:
                dehazer = self._dcp[stream] = DarkChannelDehazer(DcpStage.Config())
            return dehazer.dehaze(image)
        if self._runner is None:
            self.setup()
        return self._rigan(image, stream)

    def _network_size(self, w: int, h: int) -> tuple[int, int]:
        """(w, h) of the network input for a w x h frame (as _network_input makes it)."""
        s = self.config.internal_scale
        if s < 1.0:
            return max(STRIDE, int(round(w * s / STRIDE)) * STRIDE), max(STRIDE, int(round(h * s / STRIDE)) * STRIDE)
        return w + (-w) % STRIDE, h + (-h) % STRIDE

    def _network_input(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low-res HxWx3 float image, 1x3xhxw network input) at the internal size, padded to the stride."""
        h, w = image.shape[:2]
        if self.config.internal_scale < 1.0:
            small = cv2.resize(image, self._network_size(w, h), interpolation=cv2.INTER_AREA)
        else:
            ph, pw = (-h) % STRIDE, (-w) % STRIDE
            border = cv2.BORDER_REFLECT_101 if min(h, w) > max(ph, pw) else cv2.BORDER_REPLICATE
            small = cv2.copyMakeBorder(image, 0, ph, 0, pw, border) if (ph or pw) else image
        low = small.astype(np.float32)
        low *= np.float32(1.0 / 255.0)
        return low, _nchw(low)

    def _rigan(self, image: np.ndarray, stream: str = "") -> np.ndarray:
        if self.config.internal_scale < 1.0 and self.config.refresh_every > 1:
            return self._rigan_reusing(image, stream)
        low, x = self._network_input(image)
        outs = self._infer(image, x)
        h, w = image.shape[:2]
        if self.config.internal_scale >= 1.0:
            out = np.ascontiguousarray(outs["dehazed"][0].transpose(1, 2, 0)[:h, :w])
            return cv2.convertScaleAbs(np.clip(out, 0.0, 1.0, out=out), alpha=255.0)
        if "transmission" in outs and "airlight" in outs:
            grey_low = cv2.cvtColor(low, cv2.COLOR_BGR2GRAY)
            return self._t_upsampler(outs["transmission"][0, 0], outs["airlight"].reshape(3), grey_low, image)
        out_low = np.ascontiguousarray(outs["dehazed"][0].transpose(1, 2, 0))
        return self._upsampler(low, out_low, image)

    def _rigan_reusing(self, image: np.ndarray, stream: str) -> np.ndarray:
        """RI-GAN every ``refresh_every`` frames (or at a scene change); the frames between reuse its t and A.

        A fixed camera's haze changes over seconds, so the transmission and airlight of a recent frame
        still describe this one; each frame is recovered with the scattering model J = (I - A)/t + A
        (He et al. 2009, eq. 22), t carried to full size by the guided filter fitted on *this* frame's
        grey image, so edges of objects that moved since the refresh follow the current frame.
        """
        c = self.config
        low, grey_low = self._low(image)
        memory = self._haze.get(stream)
        if memory is None or memory.stale(grey_low, c.refresh_every, c.refresh_change):
            outs = self._infer(image, _nchw(low))
            if "transmission" not in outs or "airlight" not in outs:  # a graph without the scattering head
                return self._upsampler(low, np.ascontiguousarray(outs["dehazed"][0].transpose(1, 2, 0)), image)
            memory = self._haze[stream] = HazeMemory(np.array(outs["transmission"][0, 0], np.float32),
                                                     np.array(outs["airlight"], np.float32).reshape(3), grey_low)
        memory.age += 1
        return self._t_upsampler(memory.t_low, memory.airlight, grey_low, image)

    def _low(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hxwx3 float image, hxw grey) at the internal size (< 1), as the network and HazeMemory see it."""
        h, w = image.shape[:2]
        low = cv2.resize(image, self._network_size(w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        low *= np.float32(1.0 / 255.0)
        return low, cv2.cvtColor(low, cv2.COLOR_BGR2GRAY)

    def _infer(self, image: np.ndarray, x, tensors: bool = False) -> dict:
        self.network_runs += 1
        try:
            return self._runner.infer_tensors({"hazy": x}) if tensors else self._runner.infer({"hazy": x})
        except Exception as e:
            raise StageError("dehaze", f"RI-GAN inference failed on a {image.shape[1]}x{image.shape[0]} frame: {e}") from e

    def _rigan_device(self, image: np.ndarray, stream_name: str = ""):
        """The host path's _rigan on the GPU: HxWx3 uint8 numpy in, HxWx3 uint8 CUDA tensor out (async).

        t and A are reused across frames as on the host (HazeMemory; the tensors stay on the device);
        whether RI-GAN runs is decided on the host from the numpy frame, by the same rule and numbers."""
        import torch

        from pipeline import guided_torch as gt
        from pipeline.gpu import PinnedUploader

        if self._runner is None:
            self.setup()
        c = self.config
        stream = self._runner.stream
        if self._uploader is None:
            self._uploader = PinnedUploader(c.device)
        h, w = image.shape[:2]
        reuse = c.internal_scale < 1.0 and c.refresh_every > 1
        with torch.inference_mode(), torch.cuda.stream(stream):
            frame = self._uploader.upload(image, stream)
            # BGR, as the host feeds it
            low = gt.network_input(frame, self._network_size(w, h), STRIDE, c.internal_scale < 1.0)
            if reuse:
                grey_host = self._low(image)[1]
                memory = self._haze.get(stream_name)
                if memory is None or memory.stale(grey_host, c.refresh_every, c.refresh_change):
                    outs = self._infer(image, low, tensors=True)
                    if "transmission" not in outs or "airlight" not in outs:
                        return gt.guided_upsample(low, outs["dehazed"].float(), frame, c.guided_radius, c.guided_eps)
                    memory = self._haze[stream_name] = HazeMemory(
                        outs["transmission"].float().clone(), outs["airlight"].float().clone(), grey_host)
                memory.age += 1
                return gt.transmission_upsample(memory.t_low, memory.airlight, gt.grey_float(low), frame,
                                                c.guided_radius, c.guided_eps, self._t_upsampler.t_min)
            outs = self._infer(image, low, tensors=True)
            if c.internal_scale >= 1.0:
                return gt.dehazed_full(outs["dehazed"], h, w)
            if "transmission" in outs and "airlight" in outs:
                return gt.transmission_upsample(outs["transmission"].float(), outs["airlight"].float(),
                                                gt.grey_float(low), frame, c.guided_radius, c.guided_eps,
                                                self._t_upsampler.t_min)
            return gt.guided_upsample(low, outs["dehazed"].float(), frame, c.guided_radius, c.guided_eps)


def _nchw(low: np.ndarray) -> np.ndarray:
    """hxwx3 float image -> the network's 1x3xhxw input."""
    return np.ascontiguousarray(low.transpose(2, 0, 1))[None]


def _check(c: DehazeStage.Config) -> None:
    rules = {
        "when": c.when in ("always", "never", "auto"),
        "method": c.method in ("rigan", "dcp"),
        "score": c.score == "auto" or c.score in DEFAULT_THRESHOLDS,
        "threshold": c.threshold is None or 0.0 <= c.threshold <= 1.0,
        "hysteresis": c.hysteresis is None or 0.0 <= c.hysteresis <= (
            DEFAULT_THRESHOLDS.get(resolve_score(c), (1.0,))[0] if c.threshold is None else c.threshold),
        "score_width": isinstance(c.score_width, int) and c.score_width >= 16,
        "score_every": isinstance(c.score_every, int) and c.score_every >= 1,
        "hold_frames": isinstance(c.hold_frames, int) and c.hold_frames >= 1,
        "internal_scale": 0.05 <= c.internal_scale <= 1.0,
        "guided_radius": c.guided_radius >= 1,
        "guided_eps": c.guided_eps > 0,
        "threads": c.threads is None or c.threads >= 1,
        "refresh_every": isinstance(c.refresh_every, int) and c.refresh_every >= 1,
        "refresh_change": 0.0 <= c.refresh_change <= 1.0,
    }
    for key, ok in rules.items():
        if not ok:
            raise ConfigError(f"stages.dehaze.{key}", f"invalid value {getattr(c, key)!r}")
    if c.score == "density" and c.method != "rigan":
        raise ConfigError("stages.dehaze.score", "density is RI-GAN's estimate; it needs method: rigan")
