"""int8 entropy calibrator for TensorRT 10.x (weak typing), fed with real frames.

TensorRT asks for calibration batches through ``get_batch(names)`` and wants
device pointers back. The batches live in torch CUDA tensors (torch owns the
CUDA context; no pycuda). The calibration table is cached to a file next to the
engine so a rebuild with the same frames does not recalibrate.

TensorRT 11 removed calibrators: there the same frames go through
``engines.quantize.quantize_qdq`` into a Q/DQ ONNX instead (see build.py).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np


def calibration_id(feeds: list[Mapping[str, np.ndarray]]) -> str:
    """sha256 over the calibration feeds: part of the engine cache key for int8."""
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            h.update(name.encode())
            h.update(np.ascontiguousarray(feed[name]).tobytes())
    return h.hexdigest()


def entropy_calibrator(feeds: Iterable[Mapping[str, np.ndarray]], cache_file: str | Path | None = None, device: str = "cuda"):
    """An ``IInt8EntropyCalibrator2`` over ``feeds`` (dicts of NCHW float32 batches, all the same batch size)."""
    import tensorrt as trt
    import torch

    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise RuntimeError(f"TensorRT {trt.__version__} has no int8 calibrators; quantise the ONNX with "
                           "engines.quantize.quantize_qdq(..., symmetric=True) instead")

    class FrameEntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()  # the pybind11 base must be initialised explicitly
            self._feeds = iter(feeds)
            self._first = next(self._feeds, None)
            if self._first is None:
                raise ValueError("int8 calibration needs at least one batch of frames")
            self._batch = int(next(iter(self._first.values())).shape[0])
            self._device_buffers: dict[str, torch.Tensor] = {}
            self._cache = Path(cache_file) if cache_file else None
            self.batches = 0

        def get_batch_size(self) -> int:
            return self._batch

        def get_batch(self, names):
            feed, self._first = (self._first, None) if self._first is not None else (next(self._feeds, None), None)
            if feed is None:
                return None  # tells TensorRT the calibration data is exhausted
            pointers = []
            for name in names:
                host = torch.from_numpy(np.ascontiguousarray(feed[name], dtype=np.float32))
                buf = self._device_buffers.get(name)
                if buf is None or buf.shape != host.shape:
                    buf = self._device_buffers[name] = torch.empty(host.shape, dtype=torch.float32, device=device)
                buf.copy_(host)  # synchronous: TensorRT reads the pointer right after we return
                pointers.append(int(buf.data_ptr()))
            self.batches += 1
            return pointers

        def read_calibration_cache(self):
            if self._cache is not None and self._cache.is_file():
                return self._cache.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if self._cache is not None:
                self._cache.parent.mkdir(parents=True, exist_ok=True)
                self._cache.write_bytes(bytes(cache))

    return FrameEntropyCalibrator()
