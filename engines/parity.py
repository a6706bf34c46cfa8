"""Parity gate: a backend/precision is accepted only if it matches the fp32 PyTorch model.

Both runners see the same inputs (real frames in practice); every output is
compared element-wise and the worst max-abs and mean-abs errors over all inputs
are measured. A candidate over its tolerance is refused with the measured error
in the message, so a broken fp16/int8 engine never reaches the pipeline.

Tolerances are per model and precision. Outputs are in [0, 1] for both models
(MSFgNet: foreground probability; RI-GAN: RGB image), so an absolute error is
comparable across them: 1/255 is one grey level.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    max_abs: float
    mean_abs: float


#: (model, precision) -> tolerance; "default" applies to models without their own row.
#: fp32: accumulation order only (ORT/TensorRT fuse and reorder) -> well under a grey level.
#: fp16: 10-bit mantissa through ~20 conv layers -> a few grey levels at worst, <1 on average.
#: int8: activation quantisation; judged by the mean (~1-2 grey levels), the max is loose
#: because saturating pixels of a probability map can flip near 0.5.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("default", "fp32"): Tolerance(max_abs=1e-3, mean_abs=1e-4),
    ("default", "fp16"): Tolerance(max_abs=2e-2, mean_abs=2e-3),
    ("default", "int8"): Tolerance(max_abs=0.25, mean_abs=0.02),
    ("msfgnet", "fp32"): Tolerance(max_abs=1e-3, mean_abs=1e-4),
    ("msfgnet", "fp16"): Tolerance(max_abs=3e-2, mean_abs=2e-3),
    ("msfgnet", "int8"): Tolerance(max_abs=0.35, mean_abs=0.02),
    ("rigan", "fp32"): Tolerance(max_abs=2e-3, mean_abs=1e-4),
    ("rigan", "fp16"): Tolerance(max_abs=2e-2, mean_abs=2e-3),   # ~5 / 0.5 grey levels
    ("rigan", "int8"): Tolerance(max_abs=0.2, mean_abs=0.015),   # ~4 grey levels on average
}


def tolerance_for(model: str, precision: str) -> Tolerance:
    key = (model, precision)
    if key in TOLERANCES:
        return TOLERANCES[key]
    if ("default", precision) in TOLERANCES:
        return TOLERANCES[("default", precision)]
    raise KeyError(f"no parity tolerance for precision {precision!r}")


class ParityError(ValueError):
    """A candidate runner is refused; ``report`` holds the measured errors."""

    def __init__(self, report: "ParityReport"):
        self.report = report
        self.input = report.candidate
        self.cause = report.summary()
        super().__init__(f"{self.input}: {self.cause}")


@dataclass
class ParityReport:
    model: str
    precision: str
    reference: str
    candidate: str
    tolerance: Tolerance
    samples: int = 0
    max_abs: float = 0.0
    mean_abs: float = 0.0
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tolerance.max_abs and self.mean_abs <= self.tolerance.mean_abs

    def summary(self) -> str:
        verdict = "passes" if self.passed else "REFUSED"
        return (f"{verdict} parity against {self.reference} ({self.model}, {self.precision}, {self.samples} inputs): "
                f"max abs error {self.max_abs:.3g} (limit {self.tolerance.max_abs:g}), "
                f"mean abs error {self.mean_abs:.3g} (limit {self.tolerance.mean_abs:g})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per output name: (max abs, mean abs) error. Shapes and names must agree."""
    if set(reference) != set(candidate):
        raise ValueError(f"outputs differ: reference {sorted(reference)}, candidate {sorted(candidate)}")
    errors = {}
    for name, ref in reference.items():
        got = np.asarray(candidate[name], dtype=np.float32)
        ref = np.asarray(ref, dtype=np.float32)
        if got.shape != ref.shape:
            raise ValueError(f"output {name!r}: shape {got.shape}, reference {ref.shape}")
        diff = np.abs(got - ref)
        if not np.all(np.isfinite(diff)):
            errors[name] = (float("inf"), float("inf"))
        else:
            errors[name] = (float(diff.max()), float(diff.mean()))
    return errors


def check_parity(
    reference_runner,
    candidate_runner,
    inputs: Iterable[Mapping[str, np.ndarray]],
    model: str = "default",
    precision: str = "fp32",
    tolerance: Tolerance | None = None,
    refuse: bool = True,
) -> "ParityReport":
    """Run both (active) runners on each feed of ``inputs`` and measure the errors.

    Raises :class:`ParityError` when the candidate is over tolerance and
    ``refuse`` is true; otherwise returns the report.
    """
    tol = tolerance or tolerance_for(model, precision)
    report = ParityReport(model, precision, _label(reference_runner), _label(candidate_runner), tol)
    sums: dict[str, float] = {}
    for feed in inputs:
        errors = compare_outputs(reference_runner.infer(feed), candidate_runner.infer(feed))
        report.samples += 1
        for name, (mx, mean) in errors.items():
            entry = report.per_output.setdefault(name, {"max_abs": 0.0, "mean_abs": 0.0})
            entry["max_abs"] = max(entry["max_abs"], mx)
            sums[name] = sums.get(name, 0.0) + mean
    if report.samples == 0:
        raise ValueError("check_parity needs at least one input")
    for name, entry in report.per_output.items():
        entry["mean_abs"] = sums[name] / report.samples
    report.max_abs = max(e["max_abs"] for e in report.per_output.values())
    report.mean_abs = max(e["mean_abs"] for e in report.per_output.values())
    if refuse and not report.passed:
        raise ParityError(report)
    return report


def _label(runner) -> str:
    return f"{getattr(runner, 'backend', '') or type(runner).__name__}:{getattr(runner, 'name', '')}"
