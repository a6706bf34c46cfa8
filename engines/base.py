"""One runner interface for every backend (modelled on Polygraphy's BaseRunner).

Public ``activate / infer / deactivate`` do the bookkeeping and input checks and
call the backend's ``*_impl`` hooks. Runners are context managers; close them
explicitly rather than relying on garbage collection to free native memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one input; ``None`` in ``shape`` is a dynamic axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


class RunnerError(RuntimeError):
    """A runner cannot be made or run. ``at(input, cause)`` names the file or setting at fault."""

    @classmethod
    def at(cls, input, cause: str) -> "RunnerError":
        e = cls(f"{input}: {cause}")
        e.input, e.cause = str(input), cause
        return e


class Runner:
    """Base class; subclasses implement the ``*_impl`` hooks and ``input_specs``."""

    backend: str = ""

    def __init__(self, name: str = ""):
        self.name = name
        self.is_active = False

    # --- hooks -------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def input_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    # --- public ------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RunnerError(f"{self.name}: infer() called before activate()")
        self._check_inputs(inputs)
        return self.infer_impl(inputs)

    def _check_inputs(self, inputs: Mapping[str, object]) -> None:
        specs = {s.name: s for s in self.input_specs()}
        missing = set(specs) - set(inputs)
        extra = set(inputs) - set(specs)
        if missing or extra:
            raise RunnerError(
                f"{self.name}: inputs {sorted(inputs)} do not match the model's {sorted(specs)}"
            )
        for name, spec in specs.items():
            shape = tuple(inputs[name].shape)
            if len(shape) != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(spec.shape, shape)
            ):
                raise RunnerError(f"{self.name}: input {name!r} has shape {shape}, expected {spec.shape}")

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> bool:
        self.deactivate()
        return False
