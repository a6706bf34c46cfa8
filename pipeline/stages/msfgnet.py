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

Camera motion (``stabilize: auto``, pipeline.stabilize): each working-size grey
frame is registered against its stream's reference and the window's past
frames are warped into the current one (``FrameBuffer.aligned``; where a past frame
has no pixel its edge is replicated) before the network sees them, and
``data["stabilize"]`` carries the frame's motion and confidence (events.jsonl).
``stabilize: off`` feeds the frames as seen. The device path below does not
compensate yet.

Edges (``refine``): the probability is upsampled to the input's size, then ``guided``
filters it with the frame's grey (the mask's outline follows the picture's), and
``learned`` (the default) corrects that at full size with a small trained head
(training.models.refine; inputs pipeline.refine.FEATURES: both probabilities, the colour
frame and the window's change maps), run with ONNX Runtime on the rectangle around the
probable foreground; its graph (``refine_weights``) is checked against the manifest like the
network's. ``off`` thresholds the bilinear upsampling. The device path runs the same head in
PyTorch (its ``.pt`` beside the graph) on the whole frame.

On the CPU ``auto`` runs ONNX Runtime or OpenVINO, whichever is faster here (no torch in the runtime), fp32
or int8 (the QDQ graph ``<weights stem>.int8.onnx``); the PyTorch backend
(``engines.torch.runner.TorchRunner``) loads the state_dict into
``training.models.msfgnet`` by name, for CUDA (fp32 or fp16) or for checking
parity; TensorRT builds (or reuses from the engine cache) an engine from the
verified ONNX graph; ``backend: openvino`` runs the same graphs. Every runner comes from
``engines.load.runner_for`` (``LearnedStage.acquire_runner``), which also picks ``auto`` and gates
reduced precisions.

Device path (``backend: torch``, ``device: cuda``, and a CUDA stream handed in
with ``use_cuda_stream`` before ``setup``, as the graph does): on that stream the input (``dehazed`` as a CUDA tensor, or a numpy image
uploaded once) is made grey and resized on the GPU with OpenCV's arithmetic
(pipeline.guided_torch), each stream's window lives in a
:class:`pipeline.gpu.DeviceFrameBuffer` (same slots and indices as the host's
FrameBuffer), and the probability is upsampled and thresholded there.
``fg_prob`` and ``mask`` are CUDA tensors that the graph downloads once before
a host stage or the sinks read them (pipeline.gpu.data_to_host).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from pipeline.errors import ConfigError, PipelineError, WeightsError
from pipeline.frame import Frame
from pipeline.framebuffer import FrameBuffer
from pipeline.guided import guided_filter
from pipeline.refine import FEATURES, change_maps, refine_inputs, refine_inputs_torch
from pipeline.stabilize import DEAD_BAND, EST_WIDTH, Registrations, check_mode, stabilize_mode
from pipeline.stages.base import LearnedStage

STRIDE = 4                      # H and W of the network input must be multiples of this
INPUT_NAME, OUTPUT_NAME = "frames", "fg_prob"
TORCH_FACTORY = "training.models.msfgnet:build"
REFINE_INPUT, REFINE_OUTPUT = "features", "fg_logit"   # the learned edge (training.models.refine)
REFINE_FACTORY = "training.models.refine:build"


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


def registration_grey(image: np.ndarray, small: np.ndarray) -> np.ndarray:
    """The grey frame camera-motion registration runs on: ``small`` (the working-size grey of
    ``image``) when it is at least EST_WIDTH wide or the full width, else the full-size grey;
    registration wants up to EST_WIDTH pixels across, finer than the working size on small inputs."""
    h, w = image.shape[:2]
    return small if small.shape[1] >= min(w, EST_WIDTH) else grey_small(image, (w, h))


#: guided filter (He, Sun & Tang, TPAMI 2013) of the upsampled probability with the frame's grey as
#: guide: the network works at half size, and the filter puts the mask's edges back on the
#: picture's edges. Radius and eps chosen on issue 12's validation data (docs/models.md).
REFINE_RADIUS, REFINE_EPS = 3, 1e-4
#: the filter runs on the rectangle around probabilities above this, grown by its reach
REFINE_FLOOR = 0.05


def refine_mode(value) -> str:
    """``learned``, ``guided`` or ``off`` as written; YAML 1.1 reads a bare ``off`` as false (and ``on`` as
    true, taken as ``guided``)."""
    return "off" if value is False else "guided" if value is True else value


def refine_rect(full: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the rectangle around every pixel of ``full`` above REFINE_FLOOR, grown by three
    guided-filter radii (so the filter inside is what the whole frame would give); None when empty."""
    x, y, w, h = cv2.boundingRect(cv2.compare(full, REFINE_FLOOR, cv2.CMP_GT))
    if not w:
        return None
    m = 3 * REFINE_RADIUS + 2
    return max(x - m, 0), max(y - m, 0), min(x + w + m, full.shape[1]), min(y + h + m, full.shape[0])


def refine_guided(full: np.ndarray, image: np.ndarray, rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``full`` (HxW float32 probability at the frame's size) guided-filtered with the grey of
    ``image`` on ``rect`` (default: refine_rect); elsewhere it is left as it was."""
    rect = rect or refine_rect(full)
    if rect is None:
        return full
    x0, y0, x1, y1 = rect
    grey = image[y0:y1, x0:x1]
    if grey.ndim == 3:
        grey = cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY)
    out = full.copy()
    out[y0:y1, x0:x1] = guided_filter(grey.astype(np.float32) * (1.0 / 255.0), full[y0:y1, x0:x1],
                                      REFINE_RADIUS, REFINE_EPS)
    return out


def window_indices(held: int, frames: int, stride: int) -> np.ndarray:
    """Which of ``held`` buffered frames (oldest = 0) form the window; clamped to the oldest when short."""
    newest = held - 1
    return np.maximum(newest - (frames - 1 - np.arange(frames)) * stride, 0)


class MsfgnetStage(LearnedStage):
    """Foreground probability and mask from MSFgNet."""

    name = "msfgnet"
    inputs = ("image",)  # reads data["dehazed"] instead when an earlier stage wrote it
    outputs = ("fg_prob", "mask")
    max_batch = 8
    torch_factory = TORCH_FACTORY

    @dataclass(frozen=True)
    class Config:
        weights: str = "weights/msfgnet.onnx"      # ONNX graph (onnxruntime, tensorrt backends), or a `hazeflow adapt` folder
        torch_weights: str = "weights/msfgnet.pt"  # state_dict (torch backend)
        threshold: float = 0.5                     # fg_prob above this is foreground
        backend: str = "auto"                      # auto | onnxruntime | openvino | torch | tensorrt
        device: str = "cpu"                        # cpu | cuda (torch, tensorrt)
        precision: str = "fp32"                    # fp32 | fp16 | bf16 | int8, as engines.constants.SUPPORTED allows
        manifest: str | None = None                # sha256 list of the weights (None = weights/manifest.json)
        threads: int = 2                           # CPU threads of the runner; 0 = all cores
        scale: float = 0.5                         # working size / input size
        stride: int = 10                           # frames between two frames of the window
        stabilize: str | bool = "auto"             # auto | off: camera-motion compensation (pipeline.stabilize)
        refine: str | bool = "learned"             # learned | guided | off: edges of the upsampled probability
        refine_weights: str = "weights/msfgnet_refine.onnx"  # the learned edge's ONNX graph (refine: learned)

    def __init__(self, config: "MsfgnetStage.Config | None" = None):
        self.config = config or self.Config()
        self._backend: str | None = None
        self._check()
        self.runner = None
        self.frames_in_window = 0
        self.buffer: FrameBuffer | None = None
        self._inputs: dict[tuple[int, int], np.ndarray] = {}  # reused network inputs by working size
        self._stream = None          # CUDA stream from the graph (device path)
        self._device_buffer = None   # DeviceFrameBuffer (device path)
        self._uploader = None
        self._registrations = Registrations() if stabilize_mode(self.config.stabilize) == "auto" else None
        self._refine = refine_mode(self.config.refine)
        self._refiner = None         # ONNX Runtime session of the learned edge
        self._features: np.ndarray | None = None

    def _check(self) -> None:
        c = self.config
        if not 0 < c.threshold < 1:
            raise ConfigError("stages.msfgnet.threshold", f"must be in (0, 1), got {c.threshold}")
        self.check_engine_config()
        if not 0.05 <= c.scale <= 2:
            raise ConfigError("stages.msfgnet.scale", f"must be in [0.05, 2], got {c.scale}")
        if c.stride < 1:
            raise ConfigError("stages.msfgnet.stride", f"must be >= 1, got {c.stride}")
        if c.threads < 0:
            raise ConfigError("stages.msfgnet.threads", f"must be >= 0, got {c.threads}")
        check_mode("stages.msfgnet", c.stabilize)
        if refine_mode(c.refine) not in ("learned", "guided", "off"):
            raise ConfigError("stages.msfgnet.refine", f"must be learned, guided or off, got {c.refine!r}")

    # --- lifecycle -------------------------------------------------------------
    def network_size(self, w: int, h: int) -> tuple[int, int]:
        return working_size(w, h, self.config.scale)

    def setup(self) -> None:
        if self.runner is not None:
            return
        self.runner = self.acquire_runner(self.max_batch)
        if self.backend == "torch":
            self.frames_in_window, self._input_name = self.runner.module.spec.frames, INPUT_NAME
        else:
            self._frames_input(self.runner.name if not hasattr(self.runner, "model_path") else self.runner.model_path,
                               self.runner)
        self.buffer = FrameBuffer((self.frames_in_window - 1) * self.config.stride + 1)
        if self.on_device:
            from pipeline.gpu import DeviceFrameBuffer

            self._device_buffer = DeviceFrameBuffer(self.buffer.T)
            if self._registrations is not None:
                logging.getLogger("hazeflow.stages").warning(
                    "stages.msfgnet: stabilize: auto does not compensate camera motion on the device path yet")
            if self._refine == "learned":
                self._refiner = self._refine_runner(device=True)
        elif self._refine == "learned":
            self._refiner = self._refine_runner()

    def _refine_runner(self, device: bool = False):
        """The learned edge's runner, checked against the manifest (the stage's ``manifest``, else the
        shipped weights'): its ONNX graph (``refine_weights``) in ONNX Runtime on the host, or with
        ``device`` its state_dict (the ``.pt`` beside it) in PyTorch on the stage's device and stream."""
        from engines.weights import MANIFEST
        from pipeline.stages.base import load_error, resolve_path

        path = resolve_path(self.config.refine_weights)
        manifest = resolve_path(self.config.manifest) if self.config.manifest else MANIFEST
        try:
            if device:
                from engines.torch.runner import TorchRunner

                path = path.with_suffix(".pt")
                runner = TorchRunner(REFINE_FACTORY, weights=path, device=self.config.device, stream=self._stream,
                                     input_names=(REFINE_INPUT,), output_names=(REFINE_OUTPUT,), manifest=manifest,
                                     name="msfgnet refine")
            else:
                from engines.load import runner_for

                runner = runner_for(path, backend="onnxruntime", threads=self.config.threads or None,
                                    manifest=manifest, name="msfgnet refine")
            runner.activate()
        except PipelineError:
            raise
        except Exception as e:
            raise load_error(e, path) from None
        if device:
            return runner
        specs = runner.input_specs()
        names = [spec.name for spec in specs]
        if names != [REFINE_INPUT] or len(specs[0].shape) != 4 or specs[0].shape[1] != len(FEATURES):
            runner.deactivate()
            raise WeightsError(str(path), f"expects inputs {names}, not one (N, {len(FEATURES)}, H, W) "
                                          f"'{REFINE_INPUT}' tensor (pipeline.refine.FEATURES)")
        return runner

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

    def close(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
            self.runner = None
        if self._refiner is not None:
            self._refiner.deactivate()
            self._refiner = None
        self.buffer = None
        self._device_buffer = None
        self._uploader = None
        self._inputs.clear()
        if self._registrations is not None:
            self._registrations.clear()

    def reset_stream(self, stream: str) -> None:
        if self.buffer is not None:
            self.buffer.reset(stream)
        if self._device_buffer is not None:
            self._device_buffer.reset(stream)
        if self._registrations is not None:
            self._registrations.reset(stream)

    # --- frames ----------------------------------------------------------------
    def window(self, frame: Frame, out: np.ndarray | None = None) -> np.ndarray:
        """Push ``frame`` into its stream's buffer; the (T, h, w) float32 network input for it.

        ``out`` (T, h, w) float32 is filled and returned when given (a reused buffer).
        """
        image = frame.data.get("dehazed", frame.image)
        h, w = image.shape[:2]
        small = grey_small(image, working_size(w, h, self.config.scale))
        if self._registrations is None:
            self.buffer.push(frame.stream, small)
            held = self.buffer.window(frame.stream)
            picked = held[window_indices(len(held), self.frames_in_window, self.config.stride)]
        else:
            picked = self._aligned(frame, small)
        if out is None or out.shape != picked.shape:
            out = np.empty(picked.shape, np.float32)
        return np.multiply(picked, np.float32(1 / 255), out=out, dtype=np.float32)

    def _aligned(self, frame: Frame, small: np.ndarray) -> np.ndarray:
        """Register the frame, push ``small`` with its pose; the window's frames warped into it."""
        image = frame.data.get("dehazed", frame.image)
        w = image.shape[1]
        grey = registration_grey(image, small)
        motion = self._registrations.update(frame.stream, grey)
        self.buffer.push(frame.stream, small, motion.pose_at(small.shape[1] / grey.shape[1]), motion.epoch)
        picks = window_indices(self.buffer.count(frame.stream), self.frames_in_window, self.config.stride)
        picked, unknown = self.buffer.aligned(frame.stream, picks, DEAD_BAND * small.shape[1] / grey.shape[1])
        record = motion.record(w / grey.shape[1])
        record["unknown"] = 0.0 if unknown is None else round(float(unknown.mean()), 4)
        frame.data["stabilize"] = record
        return picked

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        if self.runner is None:
            self.setup()
        if self._device_buffer is not None:
            self._process_device(frames)
            return frames
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
                self._write(frames[i], prob[k, 0], batch[k])
        return frames

    def _process_one(self, frame: Frame) -> None:
        image = frame.data.get("dehazed", frame.image)
        w, h = working_size(image.shape[1], image.shape[0], self.config.scale)
        batch = self._inputs.get((h, w))
        if batch is None:
            batch = self._inputs[(h, w)] = np.empty((1, self.frames_in_window, h, w), np.float32)
        self.window(frame, out=batch[0])
        prob = self.runner.infer({self._input_name: batch})[OUTPUT_NAME]
        self._write(frame, prob[0, 0], batch[0])

    def _write(self, frame: Frame, prob: np.ndarray, window: np.ndarray) -> None:
        """fg_prob and mask at the frame's size from the network's ``prob``; ``window`` is its input."""
        image = frame.data.get("dehazed", frame.image)
        h, w = image.shape[:2]
        full = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) if prob.shape != (h, w) else prob.copy()
        rect = refine_rect(full) if self._refine != "off" else None
        if rect is not None:
            guided = refine_guided(full, image, rect)
            if self._refine == "learned":
                self._features = refine_inputs(full, guided, image, change_maps(window), rect, self._features)
                logit = self._refiner.infer({REFINE_INPUT: self._features})[REFINE_OUTPUT][0, 0]
                x0, y0, x1, y1 = rect
                # the head's logit -> probability (sigmoid; clipped so exp cannot overflow)
                guided[y0:y1, x0:x1] = 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))
            full = guided
        frame.data["fg_prob"] = full
        frame.data["mask"] = cv2.threshold(full, self.config.threshold, 255, cv2.THRESH_BINARY)[1].astype(np.uint8)

    # --- device path -------------------------------------------------------------
    def _process_device(self, frames: Sequence[Frame]) -> None:
        """process() on the GPU, asynchronous on the runner's stream; ports left as CUDA tensors."""
        import torch

        stream = self.runner.stream
        with torch.inference_mode(), torch.cuda.stream(stream):
            windows, sizes, images = [], [], []
            for f in frames:  # in order: a stream's frames may share a batch
                image = self._device_image(f.data.get("dehazed", f.image), stream)
                h, w = image.shape[:2]
                sizes.append((h, w))
                images.append(image)
                # a float copy now: the ring's view changes with the next push (a stream's frames may share a batch)
                windows.append(self._device_window(f.stream, image, working_size(w, h, self.config.scale)).float())
            groups: dict[tuple, list[int]] = {}
            for i, win in enumerate(windows):
                groups.setdefault(tuple(win.shape), []).append(i)
            for members in groups.values():
                batch = windows[members[0]][None] if len(members) == 1 else torch.stack([windows[i] for i in members])
                prob = self.runner.infer_tensors({self._input_name: batch.mul_(1 / 255)})[OUTPUT_NAME]
                for k, i in enumerate(members):
                    self._write_device(frames[i], prob[k:k + 1].float(), sizes[i], images[i], batch[k])

    def _device_image(self, image, stream):
        """The stage input as a device uint8 tensor: uploaded once if it is still numpy."""
        if isinstance(image, np.ndarray):
            if self._uploader is None:
                from pipeline.gpu import PinnedUploader

                self._uploader = PinnedUploader(self.config.device)
            return self._uploader.upload(image, stream)
        if image.is_cuda:
            image.record_stream(stream)  # written on the producer's stream, read on ours
        return image

    def _device_window(self, stream_name: str, image, size: tuple[int, int]):
        """grey_small + FrameBuffer push + window_indices pick, on the GPU: (T, h, w) uint8."""
        from pipeline import guided_torch as gt

        grey = gt.grey_u8(image)
        w, h = size
        if tuple(grey.shape) != (h, w):
            grey = gt.resize_area(grey[None, None].float(), (h, w), quantise=True)[0, 0].to(grey.dtype)
        self._device_buffer.push(stream_name, grey)
        return self._device_buffer.window(stream_name, self.frames_in_window, self.config.stride)

    def _write_device(self, frame: Frame, prob, size: tuple[int, int], image, window) -> None:
        """_write on the GPU: 1x1xhxw float probability -> full-size fg_prob and the 0/255 mask;
        ``image`` is the stage's input on the device (the guide of the refinement), ``window`` the
        network's input (T, h, w) in [0, 1]. The device refines the whole frame, not a rectangle."""
        import torch

        from pipeline import guided_torch as gt

        full = gt.resize_linear(prob, size)
        if self._refine != "off":
            guide = gt.grey_u8(image).to(torch.float32).mul_(1.0 / 255.0)[None, None]
            a, b = gt.guided_coefficients(guide, full, REFINE_RADIUS, REFINE_EPS)
            guided = a.mul_(guide).add_(b)
            if self._refine == "learned":
                x = refine_inputs_torch(full, guided, image, window)
                guided = torch.sigmoid(self._refiner.infer_tensors({REFINE_INPUT: x})[REFINE_OUTPUT].float())
            full = guided
        full = full[0, 0]
        frame.data["fg_prob"] = full
        frame.data["mask"] = (full > self.config.threshold).to(torch.uint8).mul_(255)
