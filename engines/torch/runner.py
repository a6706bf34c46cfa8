"""PyTorch backend: the fp32 reference for every parity check, and a CUDA runner.

The runtime never imports ``training``: the model is either an ``nn.Module``
handed in, or a ``"package.module:callable"`` factory string resolved with
importlib when the runner is activated, plus a state_dict whose sha256 is
checked against the weights manifest before ``torch.load(weights_only=True)``.

On CUDA the runner works on the caller's stream and never synchronises inside
``infer_tensors``: the graph owns one stream per stage and passes it in. Only
the numpy ``infer`` (host in, host out) waits, because it must return host data.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from engines.base import Runner, RunnerError, TensorSpec
from engines.weights import MANIFEST, verified_path


def resolve_factory(spec: str) -> Callable:
    """``"pkg.mod:Name"`` -> the callable ``Name`` of ``pkg.mod``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RunnerError(f"{spec}: factory must be 'package.module:callable'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise RunnerError(f"{spec}: cannot import {module_name} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RunnerError(f"{spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


class TorchRunner(Runner):
    """Runs an ``nn.Module`` on the CPU or one CUDA device.

    ``fp16`` casts weights and inputs to half (outputs come back as float32),
    ``channels_last`` uses NHWC memory for 4-D inputs (faster convolutions on
    tensor cores), ``cuda_graph`` captures one CUDA graph per input shape and
    replays it (fixed shapes only; a new shape captures a new graph).
    ``input_shapes`` maps each input name to its shape with ``None`` for dynamic
    axes; by default each input is 4-D NCHW with every axis dynamic.
    """

    backend = "torch"

    def __init__(
        self,
        module_or_factory,
        weights: str | Path | None = None,
        device: str = "cpu",
        fp16: bool = False,
        channels_last: bool = False,
        cuda_graph: bool = False,
        stream=None,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        input_shapes: Mapping[str, tuple] | None = None,
        manifest: str | Path = MANIFEST,
        threads: int | None = None,
        name: str = "",
    ):
        label = module_or_factory if isinstance(module_or_factory, str) else type(module_or_factory).__name__
        super().__init__(name or str(label))
        self.module_or_factory = module_or_factory
        self.weights = weights
        self.device = device
        self.fp16 = fp16
        self.channels_last = channels_last
        self.cuda_graph = cuda_graph
        self.stream = stream
        self._input_names = tuple(input_names) if input_names else None
        self._output_names = tuple(output_names) if output_names else None
        self._input_shapes = dict(input_shapes or {})
        self.manifest = manifest
        self.threads = threads
        self.module = None
        self._graphs: dict = {}

    # --- model ---------------------------------------------------------------
    def _build_module(self):
        import torch

        m, state, path = self.module_or_factory, None, None
        if self.weights is not None:
            path = verified_path(self.weights, self.manifest)
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
        if isinstance(m, str):
            factory = resolve_factory(m)
            # a factory with a ``state_dict`` parameter sizes the module from the file (width, blocks...)
            takes_state = state is not None and "state_dict" in inspect.signature(factory).parameters
            m = factory(state_dict=state) if takes_state else factory()
        if not isinstance(m, torch.nn.Module):
            raise RunnerError(f"{self.name}: factory returned {type(m).__name__}, not an nn.Module")
        if state is not None:
            try:
                m.load_state_dict(state)
            except RuntimeError as e:
                raise RunnerError(f"{path}: state_dict does not fit {type(m).__name__}: {str(e)[:300]}") from e
        return m

    def activate_impl(self) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerError(f"{self.name}: device {self.device!r} asked for but CUDA is not available")
        if self.fp16 and self.device == "cpu":
            raise RunnerError(f"{self.name}: fp16 needs a CUDA device (CPU half convolutions are slow and inexact)")
        if self.threads:
            torch.set_num_threads(self.threads)
        m = self._build_module().eval().to(self.device)
        if self.fp16:
            m = m.half()
        if self.channels_last:
            m = m.to(memory_format=torch.channels_last)
        for p in m.parameters():
            p.requires_grad_(False)
        self.module = m
        self._dtype = torch.float16 if self.fp16 else torch.float32
        if self._input_names is None:
            self._input_names = tuple(getattr(m, "input_names", ("input",)))
        if self._output_names is None:
            self._output_names = tuple(getattr(m, "output_names", ("output",)))
        if self.device.startswith("cuda") and self.stream is None:
            self.stream = torch.cuda.current_stream(self.device)

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self.module = None

    def input_specs(self) -> list[TensorSpec]:
        if self._input_names is None:
            raise RunnerError(f"{self.name}: activate() first (input names come from the module)")
        return [TensorSpec(n, np.dtype(np.float32), tuple(self._input_shapes.get(n, (None,) * 4)))
                for n in self._input_names]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names or ()

    # --- inference -----------------------------------------------------------
    def _prepare(self, x):
        import torch

        x = x.to(self.device, dtype=self._dtype, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _forward(self, tensors: list) -> dict:
        out = self.module(*tensors)
        if isinstance(out, Mapping):
            return {k: out[k] for k in self._output_names}
        if not isinstance(out, (tuple, list)):
            out = (out,)
        if len(out) != len(self._output_names):
            raise RunnerError(f"{self.name}: module returned {len(out)} outputs, expected {self._output_names}")
        return dict(zip(self._output_names, out))

    def _run(self, tensors: list) -> dict:
        if self.cuda_graph and self.device.startswith("cuda"):
            return self._replay(tensors)
        return self._forward(tensors)

    def _replay(self, tensors: list) -> dict:
        """Capture once per input shape, then copy into the static inputs and replay."""
        import torch

        key = tuple(tuple(t.shape) for t in tensors)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = [t.clone() for t in tensors]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(self.stream)
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up lets cuDNN pick its algorithms outside the capture
                    self._forward(static_in)
            self.stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                static_out = self._forward(static_in)
            self.stream.wait_stream(side)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        with torch.cuda.stream(self.stream):
            for dst, src in zip(static_in, tensors):
                dst.copy_(src, non_blocking=True)
            graph.replay()
            # the graph's outputs are overwritten by the next replay; a consumer on another stream gets a copy
            return {k: v.clone() for k, v in static_out.items()}

    def infer_tensors(self, inputs: Mapping[str, object]) -> dict:
        """Device in, device out, on ``self.stream``; no host synchronisation.

        Outputs keep the model's dtype (half with ``fp16``).
        """
        import torch

        if not self.is_active:
            raise RunnerError(f"{self.name}: infer_tensors() called before activate()")
        self._check_inputs(inputs)
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else _nullcontext()
        with torch.inference_mode(), ctx:
            tensors = [self._prepare(inputs[n]) for n in self._input_names]
            return self._run(tensors)

    def infer_impl(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ctx = torch.cuda.stream(self.stream) if self.stream is not None else _nullcontext()
        with torch.inference_mode(), ctx:
            tensors = [self._prepare(torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=np.float32)))
                       for n in self._input_names]
            out = self._run(tensors)
            host = {k: v.float().to("cpu", non_blocking=False) for k, v in out.items()}
        return {k: v.numpy() for k, v in host.items()}


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
