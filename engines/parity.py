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
    #: limit on the 99.9th percentile of the error, for outputs where a few elements may flip whole
    p999_abs: float | None = None


#: (model, output, precision) -> tolerance; "*" is any output, "default" any model without its own rows.
#: fp32: accumulation order only (ORT/OpenVINO/TensorRT fuse and reorder) -> well under a grey level.
#: fp16: 10-bit mantissa through ~20 conv layers -> a few grey levels at worst, <1 on average.
#: bf16: 7-bit mantissa, eight times fp16's rounding step -> limits about 2-3x fp16's (the errors
#:   partly cancel over a convolution's sum); RI-GAN's measured max 0.009 on real frames (issue 16,
#:   an AVX-512 BF16 CPU) sits well inside. MSFgNet's probability crosses 0.5 steeply, so its max is loose.
#: int8: activation quantisation; judged by the mean (~1-2 grey levels), the max is loose
#:   because saturating pixels of a probability map can flip near 0.5.
#: RI-GAN's airlight is three numbers from a global pooling: averaged, so tighter than the image.
TOLERANCES: dict[tuple[str, str, str], Tolerance] = {
    ("default", "*", "fp32"): Tolerance(max_abs=1e-3, mean_abs=1e-4),
    ("default", "*", "fp16"): Tolerance(max_abs=2e-2, mean_abs=2e-3),
    ("default", "*", "bf16"): Tolerance(max_abs=6e-2, mean_abs=6e-3),
    ("default", "*", "int8"): Tolerance(max_abs=0.25, mean_abs=0.02),
    ("msfgnet", "*", "fp32"): Tolerance(max_abs=1e-3, mean_abs=1e-4),
    ("msfgnet", "*", "fp16"): Tolerance(max_abs=3e-2, mean_abs=2e-3),
    ("msfgnet", "*", "bf16"): Tolerance(max_abs=0.15, mean_abs=6e-3),
    ("msfgnet", "*", "int8"): Tolerance(max_abs=0.35, mean_abs=0.02),
    ("rigan", "*", "fp32"): Tolerance(max_abs=2e-3, mean_abs=1e-4),
    ("rigan", "*", "fp16"): Tolerance(max_abs=2e-2, mean_abs=2e-3),    # ~5 / 0.5 grey levels
    ("rigan", "*", "bf16"): Tolerance(max_abs=5e-2, mean_abs=6e-3),    # ~13 / 1.5 grey levels
    ("rigan", "*", "int8"): Tolerance(max_abs=0.2, mean_abs=0.015),    # ~4 grey levels on average
    ("rigan", "airlight", "fp16"): Tolerance(max_abs=1e-2, mean_abs=5e-3),
    ("rigan", "airlight", "bf16"): Tolerance(max_abs=2e-2, mean_abs=1e-2),
    ("rigan", "airlight", "int8"): Tolerance(max_abs=5e-2, mean_abs=3e-2),
}
#: the light generator shares RI-GAN's outputs and ranges
FAMILY = {"rigan_light": "rigan"}


def tolerance_for(model: str, precision: str, output: str = "*") -> Tolerance:
    model = FAMILY.get(model, model)
    for key in ((model, output, precision), (model, "*", precision), ("default", "*", precision)):
        if key in TOLERANCES:
            return TOLERANCES[key]
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
    #: output -> {"max_abs", "mean_abs", "limit_max_abs", "limit_mean_abs", "passed"}
    per_output: dict[str, dict] = field(default_factory=dict)
    problem: str = ""   # outputs that cannot be compared at all (names or shapes differ)

    @property
    def passed(self) -> bool:
        return not self.problem and self.samples > 0 and all(e["passed"] for e in self.per_output.values())

    def summary(self) -> str:
        verdict = "passes" if self.passed else "REFUSED"
        head = f"{verdict} parity against {self.reference} ({self.model}, {self.precision}, {self.samples} inputs)"
        if self.problem:
            return f"{head}: {self.problem}"
        parts = [f"{name} max abs error {e['max_abs']:.3g} (limit {e['limit_max_abs']:g}), "
                 f"mean {e['mean_abs']:.3g} (limit {e['limit_mean_abs']:g})"
                 + (f", 99.9th percentile {e['p999_abs']:.3g} (limit {e['limit_p999_abs']:g})"
                    if e.get("limit_p999_abs") is not None else "")
                 for name, e in sorted(self.per_output.items(), key=lambda kv: kv[1]["passed"])]
        return f"{head}: " + "; ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["summary"] = self.summary()
        return d


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float, float]]:
    """Per output name: (max abs, mean abs, 99.9th percentile abs) error. Shapes and names must agree."""
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
            errors[name] = (float("inf"), float("inf"), float("inf"))
        else:
            errors[name] = (float(diff.max()), float(diff.mean()), float(np.percentile(diff, 99.9)))
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
    """Run both (active) runners on each feed of ``inputs`` and measure the errors of every output.

    Each output is judged against its own tolerance (``tolerance_for(model, precision, output)``,
    or ``tolerance`` for all of them). Raises :class:`ParityError` when any output is over its
    limit, or the outputs differ in names or shapes, and ``refuse`` is true; else returns the report.
    """
    tol = tolerance or tolerance_for(model, precision)
    report = ParityReport(model, precision, _label(reference_runner), _label(candidate_runner), tol)
    sums: dict[str, float] = {}
    for feed in inputs:
        try:
            errors = compare_outputs(reference_runner.infer(feed), candidate_runner.infer(feed))
        except ValueError as e:
            report.problem = str(e)
            break
        report.samples += 1
        for name, (mx, mean, p999) in errors.items():
            entry = report.per_output.setdefault(name, {"max_abs": 0.0, "mean_abs": 0.0, "p999_abs": 0.0})
            entry["max_abs"] = max(entry["max_abs"], mx)
            entry["p999_abs"] = max(entry["p999_abs"], p999)
            sums[name] = sums.get(name, 0.0) + mean
    if report.samples == 0 and not report.problem:
        raise ValueError("check_parity needs at least one input")
    for name, entry in report.per_output.items():
        entry["mean_abs"] = sums[name] / report.samples
        limit = tolerance or tolerance_for(model, precision, name)
        entry["limit_max_abs"], entry["limit_mean_abs"] = limit.max_abs, limit.mean_abs
        entry["limit_p999_abs"] = limit.p999_abs
        entry["passed"] = (entry["max_abs"] <= limit.max_abs and entry["mean_abs"] <= limit.mean_abs
                           and (limit.p999_abs is None or entry["p999_abs"] <= limit.p999_abs))
    if report.per_output:
        report.max_abs = max(e["max_abs"] for e in report.per_output.values())
        report.mean_abs = max(e["mean_abs"] for e in report.per_output.values())
    if refuse and not report.passed:
        raise ParityError(report)
    return report


def _label(runner) -> str:
    return f"{getattr(runner, 'backend', '') or type(runner).__name__}:{getattr(runner, 'name', '')}"
