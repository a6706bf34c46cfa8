"""OpenVINO backend on the CPU: fp32, bf16 (where the CPU has bf16 instructions) and int8 from a QDQ graph.

OpenVINO reads the shipped ONNX graphs directly (no conversion step, no torch).
Precision is a compile-time hint of the CPU plugin: ``bf16`` runs the
convolutions in bfloat16 on CPUs with AVX-512 BF16 or AMX, and is refused
elsewhere rather than silently run in fp32 (the plugin would fall back to f32).
``int8`` is the same QDQ graph ONNX Runtime runs (``<stem>.int8.onnx``): OpenVINO
turns its Quantize/Dequantize pairs into its own int8 kernels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from engines.base import Runner, RunnerError, TensorSpec

#: precision -> the CPU plugin's inference precision hint
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 comes from the graph's Q/DQ, the rest in f32


def openvino_import_error() -> str | None:
    """None when ``openvino`` imports, else why not."""
    try:
        import openvino  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's optimisation capabilities (``FP32``, ``INT8``, ``BF16`` where the CPU has it...)."""
    import openvino as ov

    return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_unavailable() -> str | None:
    """None when this CPU runs bf16 in OpenVINO, else the reason (for errors and test skips)."""
    why = openvino_import_error()
    if why:
        return f"openvino does not import ({why})"
    caps = cpu_capabilities()
    if "BF16" not in caps:
        return f"this CPU has no bf16 instructions (avx512_bf16/amx); OpenVINO's CPU capabilities: {', '.join(caps)}"
    return None


def cpu_name() -> str:
    try:
        import openvino as ov

        return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME")).strip()
    except Exception:
        return "unknown CPU"


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, model_path: str | Path, precision: str = "fp32", threads: int | None = None, name: str = ""):
        super().__init__(name or Path(model_path).name)
        if precision not in _HINTS:
            raise RunnerError(f"{self.name}: OpenVINO on the CPU runs {', '.join(_HINTS)}, not {precision}")
        self.model_path = str(model_path)
        self.precision = precision
        self.threads = threads
        self._compiled = None
        self._request = None
        self._specs: list[TensorSpec] | None = None
        self._outputs: list[str] = []

    def activate_impl(self) -> None:
        import openvino as ov

        if self.precision == "bf16":
            why = bf16_unavailable()
            if why:
                raise RunnerError.at(self.model_path, f"bf16 refused: {why}")
        core = ov.Core()
        try:
            model = core.read_model(self.model_path)
        except Exception as e:
            raise RunnerError.at(self.model_path, f"OpenVINO cannot read it ({' '.join(str(e).split())[:200]})") from None
        config = {
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
            "INFERENCE_NUM_THREADS": int(self.threads or os.cpu_count() or 1),
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all threads on it
            "ENABLE_CPU_PINNING": False,     # several stages share a few cores: do not pin threads
        }
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._specs = []
        for port in self._compiled.inputs:
            shape = tuple(int(d.get_length()) if d.is_static else None for d in port.get_partial_shape())
            self._specs.append(TensorSpec(port.get_any_name(), np.dtype(np.float32), shape))
        self._outputs = [port.get_any_name() for port in self._compiled.outputs]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    @property
    def inference_precision(self) -> str:
        """What the plugin actually runs (``f32``/``bf16``), read back from the compiled model."""
        if self._compiled is None:
            raise RunnerError(f"{self.name}: activate() first")
        value = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        # an ov.Type (whose str() is "<Type: 'bfloat16'>" in newer releases) or already its name
        return (value.get_type_name() if hasattr(value, "get_type_name") else str(value)).lower()

    def input_specs(self) -> list[TensorSpec]:
        if self._specs is None:
            raise RunnerError(f"{self.name}: activate() first")
        return self._specs

    def infer_impl(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in inputs.items()}
        result = self._request.infer(feed)  # outputs are copied out of the request's buffers
        return {port.get_any_name(): np.asarray(value) for port, value in result.items()}

    def deactivate_impl(self) -> None:
        self._request = None
        self._compiled = None
