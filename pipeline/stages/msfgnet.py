"""Learned foreground: MSFgNet (Patil & Murala, IEEE T-ITS 2018) through a Runner.

Per stream the stage keeps the last ``(T - 1) * stride + 1`` frames, grey and
downscaled to the network's working size, in a :class:`FrameBuffer`; each new
frame is scored against T of them sampled ``stride`` frames apart (the paper's
"small video stream", current frame last). The probability map is upsampled to
the input resolution and thresholded into the mask.

Short streams: until ``(T - 1) * stride + 1`` frames have been seen, the window
is padded by repeating the oldest frame held. On the first frame of a stream all
T frames are the same picture, so nothing has moved and the mask is (nearly)
empty; detection starts as soon as an object has moved relative to the oldest
frame held. A change of resolution starts a fresh window (FrameBuffer reallocates).

The default backend is ONNX Runtime on the CPU (no torch in the runtime), fp32
or int8 (the QDQ graph ``<weights stem>.int8.onnx``); the PyTorch backend
(``engines.torch.runner.TorchRunner``) loads the state_dict into
``training.models.msfgnet`` by name, for CUDA (fp32 or fp16) or for checking
parity; TensorRT builds (or reuses from the engine cache) an engine from the
verified ONNX graph. ``backend: auto`` follows ``engines.load.choose_backend``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from pipeline.errors import ConfigError, WeightsError
from pipeline.frame import Frame
from pipeline.framebuffer import FrameBuffer
from pipeline.stages.base import Stage
from pipeline.stages.weights import (check_precision, int8_graph, onnxruntime_runner, resolve_backend,
                                     resolve_path, tensorrt_runner, verified_weights)

STRIDE = 4                      # H and W of the network input must be multiples of this
INPUT_NAME, OUTPUT_NAME = "frames", "fg_prob"
TORCH_FACTORY = "training.models.msfgnet:build"
BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
TRT_SIZES = ((32, 32), (640, 360), (1920, 1088))  # frame (w, h) a TensorRT engine is built for: min, opt, max


def working_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(w, h) the network runs at: ``scale`` times the input, rounded to multiples of STRIDE."""
    def side(n: int) -> int:
        return max(STRIDE, int(round(n * scale / STRIDE)) * STRIDE)
    return side(width), side(height)


def grey_small(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """BGR (or grey) uint8 -> grey uint8 at ``size`` (w, h); INTER_AREA averages, so it also denoises."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    if grey.shape[1] == size[0] and grey.shape[0] == size[1]:
        return grey
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def window_indices(held: int, frames: int, stride: int) -> np.ndarray:
    """Which of ``held`` buffered frames (oldest = 0) form the window; clamped to the oldest when short."""
    newest = held - 1
    return np.maximum(newest - (frames - 1 - np.arange(frames)) * stride, 0)


class MsfgnetStage(Stage):
    """Foreground probability and mask from MSFgNet."""

    name = "msfgnet"
    inputs = ("image",)  # reads data["dehazed"] instead when an earlier stage wrote it
    outputs = ("fg_prob", "mask")
    max_batch = 8

    @dataclass(frozen=True)
    class Config:
        weights: str = "weights/msfgnet.onnx"      # ONNX graph (onnxruntime, tensorrt backends)
        torch_weights: str = "weights/msfgnet.pt"  # state_dict (torch backend)
        threshold: float = 0.5                     # fg_prob above this is foreground
        backend: str = "auto"                      # auto | onnxruntime | torch | tensorrt
        device: str = "cpu"                        # cpu | cuda (torch, tensorrt)
        precision: str = "fp32"                    # onnxruntime: fp32 | int8; torch: fp32 | fp16 (cuda); tensorrt: any
        manifest: str | None = None                # sha256 list of the weights (None = weights/manifest.json)
        threads: int = 2                           # CPU threads of the runner; 0 = all cores
        scale: float = 0.5                         # working size / input size
        stride: int = 10                           # frames between two frames of the window

    def __init__(self, config: "MsfgnetStage.Config | None" = None):
        self.config = config or self.Config()
        self._backend: str | None = None
        self._check()
        self.runner = None
        self.frames_in_window = 0
        self.buffer: FrameBuffer | None = None
        self._inputs: dict[tuple[int, int], np.ndarray] = {}  # reused network inputs by working size

    def _check(self) -> None:
        c = self.config
        if not 0 < c.threshold < 1:
            raise ConfigError("stages.msfgnet.threshold", f"must be in (0, 1), got {c.threshold}")
        if c.backend not in BACKENDS:
            raise ConfigError("stages.msfgnet.backend", f"must be one of {', '.join(BACKENDS)}, got {c.backend!r}")
        if c.device not in ("cpu", "cuda"):
            raise ConfigError("stages.msfgnet.device", f"must be cpu or cuda, got {c.device!r}")
        check_precision("stages.msfgnet", c.backend, self.backend, c.device, c.precision)
        if not 0.05 <= c.scale <= 2:
            raise ConfigError("stages.msfgnet.scale", f"must be in [0.05, 2], got {c.scale}")
        if c.stride < 1:
            raise ConfigError("stages.msfgnet.stride", f"must be >= 1, got {c.stride}")
        if c.threads < 0:
            raise ConfigError("stages.msfgnet.threads", f"must be >= 0, got {c.threads}")

    # --- lifecycle -------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend that runs: ``auto`` resolved as engines.load.choose_backend does (once)."""
        if self._backend is None:
            self._backend = resolve_backend(self.config.backend, self.config.device)
        return self._backend

    def setup(self) -> None:
        if self.runner is not None:
            return
        make = {"onnxruntime": self._onnxruntime_runner, "torch": self._torch_runner,
                "tensorrt": self._tensorrt_runner}[self.backend]
        self.runner = make()
        self.buffer = FrameBuffer((self.frames_in_window - 1) * self.config.stride + 1)

    def _onnxruntime_runner(self):
        c = self.config
        path = verified_weights(c.weights, c.manifest)
        if c.precision == "int8":
            path = int8_graph(path, c.manifest)
        return self._frames_input(path, onnxruntime_runner(path, threads=c.threads or None, name="msfgnet"))

    def _tensorrt_runner(self):
        c = self.config
        path = verified_weights(c.weights, c.manifest)
        sizes = tuple(working_size(w, h, c.scale) for w, h in TRT_SIZES)
        runner = tensorrt_runner(path, section="stages.msfgnet", device=c.device, precision=c.precision,
                                 batch=self.max_batch, sizes=sizes, name=f"msfgnet.{c.precision}.engine")
        return self._frames_input(path, runner)

    def _frames_input(self, path, runner):
        """Checks that the graph takes one (N, T, H, W) stream of frames; T is the window length."""
        specs = runner.input_specs()
        if len(specs) != 1 or len(specs[0].shape) != 4 or not isinstance(specs[0].shape[1], int):
            runner.deactivate()
            shapes = [s.shape for s in specs]
            raise WeightsError(str(path), f"expects inputs {shapes}, not one (N, T, H, W) stream of frames")
        self.frames_in_window = specs[0].shape[1]
        self._input_name = specs[0].name
        return runner

    def _torch_runner(self):
        try:
            from engines.torch.runner import RunnerError, TorchRunner
        except ImportError as e:
            raise ConfigError("stages.msfgnet.backend", f"torch backend unavailable ({e})") from None
        c = self.config
        path = verified_weights(c.torch_weights, c.manifest)
        # fp16 casts weights and inputs to half; infer() still takes and returns float32 numpy
        runner = TorchRunner(TORCH_FACTORY, weights=path, device=c.device, threads=c.threads or None,
                             fp16=c.precision == "fp16", channels_last=c.device == "cuda",
                             input_names=(INPUT_NAME,), output_names=(OUTPUT_NAME,),
                             **({} if c.manifest is None else {"manifest": resolve_path(c.manifest)}))
        try:
            runner.activate()
        except RunnerError as e:
            raise WeightsError(str(path), " ".join(str(e).split())[:240]) from None
        except ModuleNotFoundError as e:
            raise ConfigError("stages.msfgnet.backend", f"torch backend needs {e.name} (the [train] extra)") from None
        self.frames_in_window = runner.module.spec.frames
        self._input_name = INPUT_NAME
        return runner

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None
        self.buffer = None
        self._inputs.clear()

    def reset_stream(self, stream: str) -> None:
        if self.buffer is not None:
            self.buffer.reset(stream)

    # --- frames ----------------------------------------------------------------
    def window(self, frame: Frame, out: np.ndarray | None = None) -> np.ndarray:
        """Push ``frame`` into its stream's buffer; the (T, h, w) float32 network input for it.

        ``out`` (T, h, w) float32 is filled and returned when given (a reused buffer).
        """
        image = frame.data.get("dehazed", frame.image)
        h, w = image.shape[:2]
        small = grey_small(image, working_size(w, h, self.config.scale))
        self.buffer.push(frame.stream, small)
        held = self.buffer.window(frame.stream)
        picked = held[window_indices(len(held), self.frames_in_window, self.config.stride)]
        if out is None or out.shape != picked.shape:
            out = np.empty(picked.shape, np.float32)
        return np.multiply(picked, np.float32(1 / 255), out=out, dtype=np.float32)

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        if self.runner is None:
            self.setup()
        if len(frames) == 1:  # the common case: one reused input buffer per working size
            self._process_one(frames[0])
            return frames
        windows = [self.window(f) for f in frames]  # in order: a stream's frames may share a batch
        groups: dict[tuple, list[int]] = {}
        for i, win in enumerate(windows):
            groups.setdefault(win.shape, []).append(i)
        for members in groups.values():
            batch = np.stack([windows[i] for i in members])
            prob = self.runner.infer({self._input_name: batch})[OUTPUT_NAME]
            for k, i in enumerate(members):
                self._write(frames[i], prob[k, 0])
        return frames

    def _process_one(self, frame: Frame) -> None:
        image = frame.data.get("dehazed", frame.image)
        w, h = working_size(image.shape[1], image.shape[0], self.config.scale)
        batch = self._inputs.get((h, w))
        if batch is None:
            batch = self._inputs[(h, w)] = np.empty((1, self.frames_in_window, h, w), np.float32)
        self.window(frame, out=batch[0])
        prob = self.runner.infer({self._input_name: batch})[OUTPUT_NAME]
        self._write(frame, prob[0, 0])

    def _write(self, frame: Frame, prob: np.ndarray) -> None:
        image = frame.data.get("dehazed", frame.image)
        h, w = image.shape[:2]
        full = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) if prob.shape != (h, w) else prob.copy()
        frame.data["fg_prob"] = full
        frame.data["mask"] = cv2.threshold(full, self.config.threshold, 255, cv2.THRESH_BINARY)[1].astype(np.uint8)
