"""ONNX Runtime backend: the CPU default."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from engines.base import Runner, RunnerError, TensorSpec

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    #: graph optimisation levels by the names used in configs
    OPTIMIZATION = ("disable", "basic", "extended", "all")

    def __init__(self, model_path: str | Path, threads: int | None = None, name: str = "",
                 optimization: str = "all"):
        super().__init__(name or Path(model_path).name)
        if optimization not in self.OPTIMIZATION:
            raise ValueError(f"optimization must be one of {self.OPTIMIZATION}, not {optimization!r}")
        self.model_path = str(model_path)
        self.threads = threads
        self.optimization = optimization
        self._session = None
        self._specs: list[TensorSpec] | None = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        opts.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Idle intra-op threads would otherwise spin for a while after each run and take the
        # cores from the next stage's session: several sessions share a few cores here.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(self.model_path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # wrong opset, not ONNX at all, unsupported op
            cause = " ".join(str(e).split())[:160]
            raise RunnerError.at(self.model_path, f"ONNX Runtime cannot load it ({type(e).__name__}: {cause})") from None
        self._specs = [
            TensorSpec(i.name, np.dtype(_ORT_DTYPES.get(i.type, np.float32)),
                       tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self._session.get_inputs()
        ]

    def input_specs(self) -> list[TensorSpec]:
        if self._specs is None:
            raise RuntimeError(f"{self.name}: activate() first")
        return self._specs

    def infer_impl(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        outs = self._session.run(names, dict(inputs))
        return dict(zip(names, outs))

    def deactivate_impl(self) -> None:
        self._session = None
