"""``runner_for``: the one way stages, command lines and tools get a runner.

It resolves a model name or file to manifest-verified weights, applies the
backend x precision x device rules (``engines.constants.SUPPORTED``), picks a
backend for ``auto``, builds or reuses the artefact (TensorRT engine, int8 QDQ
graph, OpenVINO compiled model) for the caller's input profile, and runs the
parity gate (``engines.gate``) the first time a reduced-precision artefact
serves that profile.

``auto``: on cuda, TensorRT when it imports, else PyTorch. On the CPU, the
fastest of OpenVINO and ONNX Runtime (timed at the profile's opt size on this
machine) that passes parity against the reference; the choice is logged, kept in
the cache (``engines.gate.default_cache_dir``) with its timings, and handed back
on the runner as ``load_info``. ONNX Runtime is the portable fallback: it is
used when OpenVINO does not import.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.base import Runner, RunnerError
from engines.constants import BACKENDS, DEVICES, PRECISIONS, SUPPORTED
from engines.gate import InputProfile, default_cache_dir, gate, identity_key, read_record, write_record
from engines import weights as _weights
from engines.weights import MANIFEST, WEIGHTS_DIR, WeightsError, sha256_of


def verified_path(path, manifest=MANIFEST):
    """engines.weights.verified_path, looked up when called (tests point it at a manifest of their own)."""
    return _weights.verified_path(path, manifest)

log = logging.getLogger("hazeflow.engines")


@dataclass(frozen=True)
class ModelEntry:
    """Where a named model's code and files are. ``factory`` is imported only for the torch backend."""

    factory: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    colour: str = "rgb"   # how frames become inputs: "rgb" (3 channels a frame) or "grey" (1)


_RIGAN = ModelEntry("engines.torch.factories:rigan_generator", ("hazy",), ("dehazed", "transmission", "airlight"))
#: factories live in `training` (torch); the runtime reaches them only through these strings
MODELS: dict[str, ModelEntry] = {
    # (N, T, H, W) grey frames, oldest first -> (N, 1, H, W) probability
    "msfgnet": ModelEntry("training.models.msfgnet:build", ("frames",), ("fg_prob",), "grey"),
    # (N, 3, H, W) RGB in [0, 1] -> dehazed (N, 3, H, W), transmission (N, 1, H, W), airlight (N, 3, 1, 1)
    "rigan": _RIGAN,
    "rigan_light": _RIGAN,
}


# --- rules ----------------------------------------------------------------------------------
def combination_error(backend: str, precision: str, device: str) -> str | None:
    """Why ``backend`` cannot run ``precision`` on ``device`` (a resolved backend), or None."""
    if precision not in PRECISIONS:
        return f"must be one of {', '.join(PRECISIONS)}, got {precision!r}"
    if (backend, device) not in SUPPORTED:
        need = sorted({d for b, d in SUPPORTED if b == backend})
        return f"{backend} needs device: {' or '.join(need)}, got device: {device}"
    runs = SUPPORTED[(backend, device)]
    if precision in runs:
        return None
    hint = {"fp16": "fp16 needs device: cuda with backend torch or tensorrt",
            "bf16": "bf16 runs on backend openvino on a CPU with bf16 instructions",
            "int8": "int8 runs on backend onnxruntime or openvino (CPU, QDQ graph) or tensorrt (cuda)"}.get(precision, "")
    if backend == "torch" and device == "cpu" and precision == "fp16":
        hint = "half convolutions on the CPU are slow and inexact; on the CPU use fp32, or int8 with backend onnxruntime"
        return f"fp16 with backend torch needs device: cuda ({hint})"
    return f"backend {backend} runs {' or '.join(runs)} on {device}, not {precision}" + (f"; {hint}" if hint else "")


def tensorrt_available() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def openvino_available() -> bool:
    from engines.openvino.runner import openvino_import_error

    return openvino_import_error() is None


def choose_backend(backend: str, device: str, precision: str = "fp32") -> str:
    """``auto`` resolved without timing: the cuda rule, or on the CPU the backend ``runner_for`` starts from.

    On the CPU ``runner_for`` may still pick OpenVINO over ONNX Runtime by timing (both run the
    same graphs with the same precisions except bf16); this answer is what the rules are checked
    against, so a configuration is valid or not the same way on every machine.
    """
    if backend not in BACKENDS:
        raise RunnerError(f"backend {backend!r}; choose one of {BACKENDS}")
    if device not in DEVICES:
        raise RunnerError(f"device {device!r}; choose one of {DEVICES}")
    if backend != "auto":
        return backend
    if device.startswith("cuda"):
        return "tensorrt" if tensorrt_available() else "torch"
    return "openvino" if precision == "bf16" else "onnxruntime"


# --- files ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFiles:
    """A model's verified files: ``family`` picks the tolerances and the torch factory."""

    family: str
    onnx: Path | None
    pt: Path | None
    manifest: Path
    factory: str | None

    @property
    def stem(self) -> str:
        return (self.onnx or self.pt).name.split(".")[0]


def model_files(model: str | Path, weights_dir: str | Path = WEIGHTS_DIR, manifest: str | Path = MANIFEST,
                torch_weights: str | Path | None = None, torch_factory: str | None = None) -> ModelFiles:
    """A name in MODELS (-> ``weights_dir/<name>.onnx`` / ``.pt``) or a path to an .onnx/.pt file."""
    manifest = Path(manifest)
    named = str(model) in MODELS
    path = Path(weights_dir) / f"{model}.onnx" if named else Path(model)
    family = str(model) if named else path.name.split(".")[0]
    entry = MODELS.get(family)
    onnx = path if path.suffix == ".onnx" else None
    pt = Path(torch_weights) if torch_weights else (path if path.suffix == ".pt" else None)
    if pt is None and entry is not None:
        pt = path.with_name(f"{family}.pt")
    factory = torch_factory or (entry.factory if entry else None)
    return ModelFiles(family if entry else "default", onnx, pt, manifest, factory)


def _verified(path: Path | None, manifest: Path, what: str) -> Path:
    if path is None:
        raise WeightsError(what, "no file for this backend")
    return verified_path(path, manifest)


def int8_graph_path(onnx: Path) -> Path:
    return onnx.with_name(onnx.stem + ".int8.onnx")


def int8_graph(onnx: Path, manifest: Path) -> Path:
    """The verified int8 QDQ copy ``<stem>.int8.onnx`` of ``onnx``; a missing one names the command that makes it."""
    qdq = int8_graph_path(onnx)
    if not qdq.is_file():
        raise WeightsError(qdq, "int8 QDQ graph not found; make it from real frames and list it in the "
                                f"manifest with: {quantize_command(onnx, qdq, manifest)}")
    return verified_path(qdq, manifest)


def quantize_command(onnx: Path, qdq: Path, manifest: Path | None = None) -> str:
    import shlex

    parts = ["hazeflow", "quantize", shlex.quote(str(onnx)), "--calibration", "VIDEO_OR_IMAGE_FOLDER"]
    if qdq != int8_graph_path(onnx):
        parts += ["--out", shlex.quote(str(qdq))]
    if manifest is not None and Path(manifest).resolve() != MANIFEST.resolve():
        parts += ["--manifest", shlex.quote(str(manifest))]
    return " ".join(parts)


# --- runners --------------------------------------------------------------------------------
def reference_runner(files: ModelFiles, threads: int | None = None, torch: bool = True) -> Runner:
    """The fp32 reference, activated: PyTorch where it imports and the .pt loads, else the fp32 ONNX graph
    through ONNX Runtime (the runtime needs no torch; engines.gate says why this stands in)."""
    from engines.gate import torch_importable
    from engines.onnxruntime.runner import OnnxRuntimeRunner

    if torch and files.factory and files.pt is not None and files.pt.is_file() and torch_importable():
        from engines.torch.runner import TorchRunner

        entry = MODELS.get(files.family)
        try:
            pt = verified_path(files.pt, files.manifest)
            return TorchRunner(files.factory, weights=pt, manifest=files.manifest, threads=threads,
                               input_names=entry.input_names if entry else None,
                               output_names=entry.output_names if entry else None, name=f"{pt.name} (fp32)").activate()
        except Exception as e:  # a state_dict that does not fit, a factory that does not import
            log.warning("fp32 PyTorch reference unavailable (%s); using the fp32 ONNX graph", " ".join(str(e).split())[:200])
    onnx = _verified(files.onnx, files.manifest, files.stem)
    return OnnxRuntimeRunner(onnx, threads=threads, name=f"{onnx.name} (fp32)").activate()


def _cpu_runner(backend: str, files: ModelFiles, precision: str, threads: int | None, name: str) -> Runner:
    onnx = _verified(files.onnx, files.manifest, files.stem)
    graph = int8_graph(onnx, files.manifest) if precision == "int8" else onnx
    if backend == "onnxruntime":
        from engines.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(graph, threads=threads, name=name or graph.name)
    from engines.openvino.runner import OpenVinoRunner

    return OpenVinoRunner(graph, precision=precision, threads=threads, name=name or f"{graph.name} (openvino {precision})")


def _backend_version(backend: str) -> str:
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}[backend]
    try:
        return f"{module}-{importlib.import_module(module).__version__}"
    except Exception:
        return f"{module}-?"


def _cpu_identity(backend: str, graph: Path, precision: str, profile: InputProfile) -> dict:
    from engines.openvino.runner import cpu_name

    return {"graph": graph.name, "graph_sha256": sha256_of(graph), "backend": backend,
            "backend_version": _backend_version(backend), "precision": precision, "profile": profile.key(),
            "cpu": cpu_name() if backend == "openvino" else _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _gate_cpu(runner: Runner, backend: str, files: ModelFiles, precision: str, profile: InputProfile,
              cache_dir: Path, threads: int | None, frames) -> dict:
    """Gate a reduced-precision CPU runner once per identity; returns what the record says."""
    graph = Path(runner.model_path)
    identity = _cpu_identity(backend, graph, precision, profile)
    record = cache_dir / "parity" / f"{files.stem}.{backend}.{precision}.{identity_key(identity)[:16]}.json"
    report = gate(runner, lambda: reference_runner(files, threads), model=files.family, precision=precision,
                  size=profile.opt, record=record, identity=identity, frames=frames)
    stored = read_record(record) or {}
    return {"parity": (report.summary() if report else stored.get("parity", {}).get("summary", "")) or
            f"passed earlier ({record.name})", "parity_record": str(record)}


def _time_runner(runner: Runner, feed: dict, repeats: int = 5) -> float:
    runner.infer(feed)  # warm-up: first call allocates and picks kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner.infer(feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def choose_cpu_backend(files: ModelFiles, precision: str, profile: InputProfile, threads: int | None,
                       cache_dir: Path, frames=None) -> tuple[str, dict]:
    """The fastest CPU backend that passes parity for this model, precision and profile on this machine.

    Timed once (median of 5 calls at the profile's opt size after a warm-up) and kept in the cache
    keyed by the graph, the precision, the profile, the CPU and both libraries' versions. The check
    here is against the verified fp32 graph in ONNX Runtime, so a default run never imports torch;
    a reduced precision still passes the PyTorch gate afterwards (runner_for).
    """
    from engines.frames import parity_frames
    from engines.gate import parity_feeds
    from engines.parity import check_parity

    candidates = [b for b in ("openvino", "onnxruntime") if precision in SUPPORTED[(b, "cpu")]]
    if "openvino" in candidates and not openvino_available():
        candidates.remove("openvino")
    if precision == "bf16" and "openvino" in candidates:
        from engines.openvino.runner import bf16_unavailable

        why = bf16_unavailable()
        if why:
            raise RunnerError(f"{files.stem}: bf16 refused: {why}")
    if not candidates:
        raise RunnerError(f"{files.stem}: no CPU backend here runs {precision} (OpenVINO does not import)")
    if len(candidates) == 1:
        return candidates[0], {"chosen_by": "auto (the only CPU backend here for this precision)"}
    onnx = _verified(files.onnx, files.manifest, files.stem)
    identity = {"choice": "cpu", "graph_sha256": sha256_of(onnx), "precision": precision, "profile": profile.key(),
                "cpu": _cpu_model(), "threads": threads, "versions": [_backend_version(b) for b in candidates]}
    record = cache_dir / "auto" / f"{files.stem}.{precision}.{identity_key(identity)[:16]}.json"
    stored = read_record(record)
    if stored and stored.get("key") == identity_key(identity) and stored.get("backend") in candidates:
        return stored["backend"], {"chosen_by": "auto (timed earlier on this machine)", "timings_ms": stored["timings_ms"]}
    frames = frames if frames is not None else parity_frames()
    timings, refused = {}, {}
    ref = reference_runner(files, threads, torch=False)
    try:
        for backend in candidates:
            runner = _cpu_runner(backend, files, precision, threads, "")
            try:
                runner.activate()
            except RunnerError as e:  # e.g. a graph one library reads and the other does not
                refused[backend] = str(e)
                continue
            with runner:
                try:
                    feeds = parity_feeds(runner, profile.opt, frames)
                except ValueError as e:  # inputs that are not frames (N, C, H, W): nothing to time or compare
                    return "onnxruntime", {"chosen_by": f"auto (portable fallback: {e})"}
                report = check_parity(ref, runner, feeds, model=files.family, precision=precision, refuse=False)
                if not report.passed:
                    refused[backend] = report.summary()
                    continue
                timings[backend] = round(_time_runner(runner, feeds[0]), 2)
    finally:
        ref.deactivate()
    if not timings:
        raise RunnerError(f"{files.stem}: no CPU backend passes parity at {precision}: " + "; ".join(
            f"{b}: {why}" for b, why in refused.items()))
    chosen = min(timings, key=timings.get)
    write_record(record, {**identity, "key": identity_key(identity), "backend": chosen, "timings_ms": timings,
                          "refused": refused})
    return chosen, {"chosen_by": "auto (fastest that passes parity, timed now)", "timings_ms": timings}


def runner_for(
    model: str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    profile: InputProfile | None = None,
    *,
    threads: int | None = None,
    weights_dir: str | Path = WEIGHTS_DIR,
    manifest: str | Path = MANIFEST,
    torch_weights: str | Path | None = None,
    torch_factory: str | None = None,
    engine_cache: str | Path | None = None,
    cache_dir: str | Path | None = None,
    stream=None,
    frames=None,
    name: str = "",
) -> Runner:
    """A runner for ``model`` ("msfgnet", "rigan", "rigan_light", or an .onnx/.pt/.engine path).

    Reduced-precision artefacts are gated before this returns (the runner is then already
    active; ``activate()`` again is a no-op). ``profile``: the network input sizes the caller
    will feed (TensorRT's optimisation profile, the gate's check size). ``frames``: held-out
    real BGR frames for the gate (default: the demo clip's). ``runner.load_info`` says what was
    chosen and why.
    """
    profile = profile or InputProfile()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    requested = backend
    resolved = choose_backend(backend, device, precision)
    why = combination_error(resolved, precision, device)
    if why:
        raise RunnerError(f"{model}: {why}")
    files = model_files(model, weights_dir, manifest, torch_weights, torch_factory)
    info = {"backend": resolved, "precision": precision, "device": device, "profile": profile.key(),
            "chosen_by": "configured" if requested != "auto" else "auto"}
    if requested == "auto" and device == "cpu" and Path(str(model)).suffix not in (".engine", ".plan"):
        resolved, how = choose_cpu_backend(files, precision, profile, threads, cache_dir, frames)
        info.update(how, backend=resolved)
        log.info("engines: auto picked %s %s for %s (%s%s)", resolved, precision, files.stem, info["chosen_by"],
                 "".join(f"; {b} {ms} ms a call" for b, ms in info.get("timings_ms", {}).items()))
    if resolved in ("onnxruntime", "openvino"):
        runner = _cpu_runner(resolved, files, precision, threads, name)
        if precision != "fp32":
            info.update(_gate_cpu(runner, resolved, files, precision, profile, cache_dir, threads, frames))
    elif resolved == "torch":
        runner = _torch_runner(files, precision, device, threads, stream, name)
    else:
        runner = _tensorrt_runner(model, files, precision, device, profile, engine_cache, stream, threads, frames,
                                  name, info)
    runner.load_info = info
    return runner


def _torch_runner(files: ModelFiles, precision: str, device: str, threads, stream, name: str) -> Runner:
    if files.factory is None:
        raise RunnerError(f"{files.stem}: the torch backend needs a model name ({', '.join(MODELS)}) or a factory")
    from engines.torch.runner import TorchRunner

    pt = _verified(files.pt, files.manifest, files.stem)
    entry = MODELS.get(files.family)
    return TorchRunner(files.factory, weights=pt, device=device, fp16=precision == "fp16",
                       channels_last=device.startswith("cuda"), stream=stream,
                       input_names=entry.input_names if entry else None,
                       output_names=entry.output_names if entry else None,
                       manifest=files.manifest, threads=threads, name=name or pt.name)


def _tensorrt_runner(model, files: ModelFiles, precision: str, device: str, profile: InputProfile, engine_cache,
                     stream, threads, frames, name: str, info: dict) -> Runner:
    if not tensorrt_available():
        raise RunnerError(f"{model}: TensorRT does not import; install it with `pip install .[trt]` on an NVIDIA machine")
    from engines.tensorrt.build import gated_engine
    from engines.tensorrt.runner import TrtRunner

    path = Path(str(model))
    if path.suffix in (".engine", ".plan"):
        from engines.tensorrt.build import verified_engine

        return TrtRunner(verified_engine(path), device=device, stream=stream, name=name or path.name)
    onnx = _verified(files.onnx, files.manifest, files.stem)
    cache = Path(engine_cache) if engine_cache else onnx.parent / "engines"
    engine, how = gated_engine(onnx, precision, profile, cache, device=device,
                               reference=lambda: reference_runner(files, threads), model=files.family, frames=frames)
    info.update(how)
    runner = TrtRunner(engine, device=device, stream=stream, name=name or engine.name)
    return runner
