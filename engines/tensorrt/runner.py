"""TensorRT backend: a deserialized engine run with torch CUDA tensors as bindings.

torch owns the CUDA context (no pycuda): inputs and outputs are torch tensors
whose ``data_ptr()`` is handed to ``set_tensor_address``, and the engine is
enqueued with ``execute_async_v3`` on the stage's stream. ``infer_tensors`` never
synchronises; only the numpy ``infer`` waits, because it must return host data.
Output shapes are resolved once per input shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from engines.base import Runner, RunnerError, TensorSpec


def _torch_dtype(trt, torch, dt):
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT8: torch.int8, trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}
    if hasattr(trt.DataType, "UINT8"):
        table[trt.DataType.UINT8] = torch.uint8
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    return table[dt]


class TrtRunner(Runner):
    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str = "cuda", stream=None, profile: int = 0, name: str = ""):
        super().__init__(name or Path(engine_path).name)
        self.engine_path = Path(engine_path)
        self.device = device
        self.stream = stream
        self.profile = profile
        self._engine = self._context = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._specs: list[TensorSpec] = []
        self._out_buffers: dict = {}
        self._out_shapes: dict = {}
        self._bound_shapes: tuple | None = None

    def activate_impl(self) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise RunnerError(f"{self.name}: TensorRT needs a CUDA device")
        if not self.engine_path.is_file():
            raise RunnerError(f"{self.engine_path}: engine file not found")
        self._trt, self._torch = trt, torch
        torch.cuda.init()  # torch creates the primary context TensorRT will use
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise RunnerError(f"{self.engine_path}: TensorRT {trt.__version__} cannot deserialize it "
                              "(built by another TensorRT version or for another GPU; rebuild it)")
        self._context = self._engine.create_execution_context()
        if self.stream is None:
            self.stream = torch.cuda.current_stream(self.device)
        if self.profile:
            self._context.set_optimization_profile_async(self.profile, self.stream.cuda_stream)
        self._inputs, self._outputs, self._specs = [], [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
                shape = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
                dtype = _torch_dtype(trt, torch, self._engine.get_tensor_dtype(name))
                self._specs.append(TensorSpec(name, np.dtype(str(dtype).removeprefix("torch.")), shape))
            else:
                self._outputs.append(name)

    def deactivate_impl(self) -> None:
        self._out_buffers.clear()
        self._bound_shapes = None
        self._context = None
        self._engine = None
        self._runtime = None

    def input_specs(self) -> list[TensorSpec]:
        if self._engine is None:
            raise RunnerError(f"{self.name}: activate() first")
        return self._specs

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    def _bind(self, tensors: Mapping[str, object]) -> None:
        trt, torch, ctx = self._trt, self._torch, self._context
        shapes = tuple(tuple(tensors[n].shape) for n in self._inputs)
        for name in self._inputs:
            t = tensors[name]
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise RunnerError(f"{self.name}: input {name!r} shape {tuple(t.shape)} is outside the engine's "
                                  "optimisation profile (rebuild with a larger --max-size/--max-batch)")
            ctx.set_tensor_address(name, int(t.data_ptr()))
        if shapes != self._bound_shapes:
            self._out_shapes = {}
            for name in self._outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RunnerError(f"{self.name}: output {name!r} shape {shape} unresolved for inputs {shapes}")
                self._out_shapes[name] = (shape, _torch_dtype(trt, torch, self._engine.get_tensor_dtype(name)))
            self._bound_shapes = shapes
        # fresh outputs per call (cheap with torch's caching allocator): a consumer on another
        # stream may still be reading the previous ones
        with torch.cuda.stream(self.stream):
            self._out_buffers = {n: torch.empty(s, dtype=d, device=self.device) for n, (s, d) in self._out_shapes.items()}
        for name, buf in self._out_buffers.items():
            ctx.set_tensor_address(name, int(buf.data_ptr()))

    def infer_tensors(self, inputs: Mapping[str, object]) -> dict:
        """Device tensors in, device tensors out, enqueued on ``self.stream``; no host sync.

        Inputs are cast to the engine's dtypes on the stream; outputs are new
        tensors allocated on the stream (shapes are resolved once per input shape).
        """
        if not self.is_active:
            raise RunnerError(f"{self.name}: infer_tensors() called before activate()")
        self._check_inputs(inputs)
        ready = {}
        with self._torch.cuda.stream(self.stream):  # any cast/copy is ordered on the stage's stream
            for name in self._inputs:
                dtype = _torch_dtype(self._trt, self._torch, self._engine.get_tensor_dtype(name))
                ready[name] = inputs[name].to(self.device, dtype=dtype, non_blocking=True).contiguous()
        self._bind(ready)
        if not self._context.execute_async_v3(self.stream.cuda_stream):
            raise RunnerError(f"{self.name}: execute_async_v3 failed")
        # keep the input tensors alive until the stream has consumed them
        for t in ready.values():
            t.record_stream(self.stream)
        return dict(self._out_buffers)

    def infer_impl(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            dev = {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=False) for n, a in inputs.items()}
            out = self.infer_tensors(dev)
            host = {n: t.float().cpu() for n, t in out.items()}  # .cpu() waits for this stream
        return {n: t.numpy() for n, t in host.items()}
