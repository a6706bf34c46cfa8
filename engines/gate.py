"""The parity gate inside the load path, and the records that let a later load skip it.

The first time a reduced-precision artefact is used for a profile (a TensorRT
fp16/int8 engine, an int8 QDQ graph, an OpenVINO bf16/int8 compiled model) its
every output is compared with the fp32 reference on real frames held out from
calibration (``engines.frames.split_frames``), with the written tolerance per
model, output and precision (``engines.parity.TOLERANCES``). A pass is written
to a record (for TensorRT, the engine's sidecar) keyed by everything that would
change the answer, so the next load with the same key trusts it; any failure
deletes the record and the artefact, and is one error with the measured error.

Reference: the fp32 PyTorch model (``weights/<model>.pt`` through the torch
backend) where torch and ``training`` import. The runtime does not need torch;
where it is absent the reference is the manifest-verified fp32 ONNX graph run
by ONNX Runtime, which the tests keep equal to the PyTorch model within the
fp32 tolerance (tests/test_runners.py). The record names which one was used.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from engines.base import Runner
from engines.parity import ParityError, ParityReport, check_parity

log = logging.getLogger("hazeflow.engines")

CACHE_ENV = "HAZEFLOW_CACHE"
#: held-out parity samples per check: enough frames to see a broken layer, few enough for a start-up
PARITY_SAMPLES = 4


def default_cache_dir() -> Path:
    """Gate records and auto choices: ``$HAZEFLOW_CACHE`` or ``~/.cache/hazeflow``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hazeflow")


def torch_importable() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("training") is not None


@dataclass(frozen=True)
class InputProfile:
    """The network input sizes (w, h) a runner must serve: min, opt, max, and the largest batch.

    TensorRT builds its optimisation profile from it; the gate checks parity at ``opt``.
    """

    sizes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((16, 16), (320, 180), (960, 544))
    batch: int = 1

    @property
    def opt(self) -> tuple[int, int]:
        return self.sizes[1]

    def key(self) -> str:
        return f"b{self.batch}-" + "-".join(f"{w}x{h}" for w, h in self.sizes)

    def trt_limits(self) -> dict:
        (w0, h0), (w1, h1), (w2, h2) = self.sizes
        return {"batch": (1, 1, self.batch), "height": (h0, h1, h2), "width": (w0, w1, w2)}


def identity_key(identity: Mapping) -> str:
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True, default=str).encode()).hexdigest()


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(path: Path, record: Mapping) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may gate at once
    tmp.write_text(json.dumps(dict(record), indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def gate_passed(record: Mapping | None, identity: Mapping) -> bool:
    """A record that vouches for ``identity``: same key, and its parity check passed."""
    return (bool(record) and record.get("gate_key") == identity_key(identity)
            and bool((record.get("parity") or {}).get("passed")))


def parity_feeds(runner: Runner, size: tuple[int, int], frames: Sequence[np.ndarray] | None = None,
                 limit: int = PARITY_SAMPLES) -> list[dict[str, np.ndarray]]:
    """Model inputs at ``size`` (w, h) built from held-out real frames (default: the demo clip's)."""
    from engines.frames import parity_frames
    from engines.quantize import feeds_from_frames

    shapes = {s.name: s.shape for s in runner.input_specs()}
    return list(feeds_from_frames(list(frames) if frames is not None else parity_frames(), shapes, size=size))[:limit]


def gate(
    candidate: Runner,
    reference: Callable[[], Runner],
    *,
    model: str,
    precision: str,
    size: tuple[int, int],
    record: Path,
    identity: Mapping,
    artefacts: Iterable[Path] = (),
    frames: Sequence[np.ndarray] | None = None,
    extra: Mapping | None = None,
) -> ParityReport | None:
    """Check ``candidate`` (activated here) against ``reference()`` once per ``identity``.

    Returns None when ``record`` already vouches for ``identity``, else the passing report (written
    to ``record`` with ``identity`` and ``extra``). Anything that goes wrong on the way (refused
    parity, outputs that differ, a runner that fails) deletes ``record`` and ``artefacts``.
    """
    if gate_passed(read_record(record), identity):
        log.debug("parity gate: %s vouches for %s", record, candidate.name)
        return None
    artefacts = list(artefacts)
    try:
        candidate.activate()
        ref = reference().activate()
        try:
            report = check_parity(ref, candidate, parity_feeds(candidate, size, frames), model=model,
                                  precision=precision)
        finally:
            ref.deactivate()
    except BaseException as e:
        if isinstance(e, ParityError):  # name the artefact refused, not the runner's label
            e.input = str(getattr(candidate, "model_path", None) or getattr(candidate, "engine_path", None) or e.input)
        candidate.deactivate()
        for path in [Path(record), *artefacts]:
            path.unlink(missing_ok=True)
        raise
    write_record(record, {**dict(extra or {}), **dict(identity), "gate_key": identity_key(identity),
                          "parity": report.to_dict(), "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log.info("parity gate: %s: %s", candidate.name, report.summary())
    return report


__all__ = ["InputProfile", "ParityError", "default_cache_dir", "gate", "gate_passed", "parity_feeds"]
