"""int8 post-training quantisation with ONNX Runtime: a QDQ graph calibrated on real frames.

The QDQ (QuantizeLinear/DequantizeLinear) form is what both ONNX Runtime's CPU
int8 kernels and TensorRT's explicit quantisation read, so one calibrated file
serves both (TensorRT 11 accepts int8 only this way). Activations are quantised
per tensor (uint8, asymmetric), weights per output channel (int8, symmetric),
with min/max ranges or percentiles gathered from the calibration frames.

Frames are BGR uint8 HxWx3 (OpenCV order). ``feeds_from_frames`` turns them into
model inputs: RGB, float32 in [0, 1], NCHW; an input with 3·T channels takes T
consecutive frames stacked along channels (MSFgNet's short frame stack).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np


def frame_to_chw(frame: np.ndarray, size: tuple[int, int] | None = None, colour: str = "rgb") -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 CxHxW in [0, 1] (RGB: C=3, grey: C=1), resized to ``size`` = (W, H)."""
    import cv2

    if size is not None and (frame.shape[1], frame.shape[0]) != tuple(size):
        frame = cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA)
    if colour == "grey":
        chw = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[None]
    else:
        chw = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32) * np.float32(1 / 255)


def feeds_from_frames(
    frames: Sequence[np.ndarray],
    input_shapes: Mapping[str, tuple],
    size: tuple[int, int] | None = None,
    batch: int = 1,
    colour: str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Model feeds (one dict per batch) built from consecutive real frames.

    ``input_shapes``: name -> NCHW shape with None/str for dynamic axes; the
    channel count decides how many consecutive frames one sample stacks: 3·T
    channels = T RGB frames, else C grey frames (MSFgNet's (N, T, H, W) stream).
    ``colour`` forces "rgb" or "grey". ``size`` = (W, H) for dynamic spatial axes
    (defaults to the frame size).
    """
    if not frames:
        raise ValueError("no frames for calibration/parity")
    specs = {}
    for name, shape in input_shapes.items():
        if len(shape) != 4 or not isinstance(shape[1], int):
            raise ValueError(f"input {name!r}: shape {shape} is not NCHW with a fixed channel count")
        mode = colour or ("rgb" if shape[1] % 3 == 0 else "grey")
        h, w = shape[2], shape[3]
        want = (w, h) if isinstance(h, int) and isinstance(w, int) else size
        specs[name] = (shape[1] // 3 if mode == "rgb" else shape[1], want, mode)
    depth = max(t for t, _, _ in specs.values())
    samples = []
    for end in range(depth, len(frames) + 1):
        sample = {}
        for name, (t, want, mode) in specs.items():
            chw = [frame_to_chw(f, want, mode) for f in frames[end - t:end]]
            sample[name] = np.concatenate(chw, axis=0)
        samples.append(sample)
        if len(samples) == batch:
            yield {n: np.stack([s[n] for s in samples]) for n in input_shapes}
            samples = []
    if samples:
        yield {n: np.stack([s[n] for s in samples]) for n in input_shapes}


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, tuple]:
    """Input name -> shape (int or symbolic name per axis) of an ONNX graph, initializers excluded."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        shapes[inp.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)
    return shapes


def _reader(feeds: Iterable[Mapping[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class FrameReader(CalibrationDataReader):
        """Hands ONNX Runtime's calibrator one feed at a time (it calls get_next until None)."""

        def __init__(self):
            self._it = iter(feeds)
            self.count = 0

        def get_next(self):
            feed = next(self._it, None)
            if feed is not None:
                self.count += 1
                return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()}
            return None

    return FrameReader()


def quantize_qdq(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    per_channel: bool = True,
    symmetric: bool = False,
) -> Path:
    """Write an int8 QDQ copy of ``onnx_path`` calibrated on ``calibration`` feeds.

    ``method``: "minmax" (robust for small calibration sets), "entropy" or
    "percentile" (clip outliers; need more frames). ``symmetric`` quantises
    activations to int8 with zero point 0 and leaves biases in float, which
    TensorRT requires; the default
    (uint8, asymmetric) is ONNX Runtime CPU's fastest form. Returns ``out_path``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method {method!r}; choose one of {sorted(methods)}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    reader = _reader(calibration)
    quantize_static(
        str(onnx_path), str(tmp), reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        # 7-bit weights: ONNX Runtime's u8s8 kernels on CPUs without VNNI (AVX2/AVX-512F) multiply
        # with VPMADDUBSW, whose int16 sums saturate with full-range weights; a graph made on one
        # CPU must stay within parity on any other, so the range is always reduced.
        reduce_range=not symmetric,
        calibrate_method=methods[method],
        # TensorRT reads int8 Q/DQ only: biases stay float (ORT would make them int32 Q/DQ pairs)
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
    )
    if reader.count == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{onnx_path}: calibration gave no frames")
    tmp.replace(out_path)
    return out_path
