"""TensorRT engine build and cache (Polygraphy-style steps: ``engine_from_onnx``, ``save_engine``).

Engine files are not portable: one built by another TensorRT version, for
another GPU architecture, from another ONNX file or with other builder settings
is invalid or slow. The cache key therefore holds all four; each engine has a
JSON sidecar recording them, and a lookup that finds a stale engine rebuilds it
and says which of the four changed.

Precision across TensorRT versions:
- TensorRT 10.x (JetPack 6) still has weak typing: fp16 sets ``BuilderFlag.FP16``;
  int8 sets ``BuilderFlag.INT8`` with an entropy calibrator fed real frames
  (``engines.tensorrt.calibrator``), or reads Q/DQ nodes if the ONNX has them.
- TensorRT 11.x removed those flags and calibrators (strong typing only): the
  network takes its precision from the ONNX graph. int8 needs a Q/DQ ONNX
  (``engines.quantize.quantize_qdq(..., symmetric=True)``, calibration frames) and
  fp16 an fp16 ONNX: ``typed_source`` writes one (``engines.fp16.onnx_fp16``) and
  the cache builds from it. ``engine_from_onnx`` itself refuses an fp32 graph for
  fp16 instead of building a silent fp32 engine.

Each engine's sidecar records the ONNX sha256, the builder settings (with the
optimisation profiles), the TensorRT version, the GPU, the engine's own sha256
and, once checked, the parity report. A lookup re-hashes the engine file, so a
file changed or corrupted since it was built is rebuilt (and says why) instead
of deserialized. One cache slot per (model, precision, profile): two callers
with different profiles no longer overwrite each other's engine.

Only this module and the runner import ``tensorrt``, and only inside functions.
Where ``tensorrt`` does not import but TensorRT for RTX (``tensorrt_rtx``) does,
``engine_from_onnx`` builds with it: TensorRT-RTX compiles ahead of time without
a GPU, which lets a CPU machine check that a graph parses and the cache logic
works. Its engines run only on RTX GPUs with the RTX runtime, not in TrtRunner.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from engines.weights import sha256_of

log = logging.getLogger("hazeflow.engines")

from engines.constants import DEFAULT_PROFILE, SUPPORTED

PRECISIONS = SUPPORTED[("tensorrt", "cuda")]


class EngineBuildError(RuntimeError):
    def __init__(self, input, cause: str):
        super().__init__(f"{input}: {cause}")
        self.input = str(input)
        self.cause = cause


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: input name -> (min, opt, max) shapes."""

    shapes: tuple[tuple[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]], ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[Sequence[int]]]) -> "Profile":
        return cls(tuple(sorted((name, tuple(tuple(int(v) for v in s) for s in mmo)) for name, mmo in d.items())))

    def as_dict(self) -> dict:
        return {name: [list(s) for s in mmo] for name, mmo in self.shapes}


@dataclass(frozen=True)
class BuildSettings:
    """Everything about a build that changes the engine; part of the cache key."""

    precision: str = "fp16"
    workspace: int = 1 << 30           # bytes of scratch memory the tactics may use
    profiles: tuple[Profile, ...] = ()
    dla_core: int | None = None        # Jetson Xavier/Orin: run on this DLA core, GPU fallback
    optimization_level: int = 3        # TensorRT default; 5 searches longer for faster tactics
    calibration: str = ""              # identity of the calibration frames (int8), e.g. a sha256

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}; choose one of {PRECISIONS}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["profiles"] = [p.as_dict() for p in self.profiles]
        return d


def default_profiles(input_shapes: Mapping[str, Sequence], limits: Mapping[str, tuple] = DEFAULT_PROFILE) -> tuple[Profile, ...]:
    """One profile covering the dynamic axes of NCHW inputs (fixed axes keep their size)."""
    shapes = {}
    for name, shape in input_shapes.items():
        if len(shape) != 4:
            dims = [int(d) if isinstance(d, int) and d > 0 else 1 for d in shape]
            shapes[name] = (dims, dims, dims)
            continue
        axes = []
        for axis, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                axes.append((d, d, d))
            elif axis == 1:
                raise ValueError(f"input {name!r}: the channel axis must be fixed, got {shape}")
            else:
                axes.append(limits[("batch", None, "height", "width")[axis]])
        shapes[name] = tuple(tuple(a[i] for a in axes) for i in range(3))
    return (Profile.from_dict(shapes),)


# --- environment -------------------------------------------------------------
def trt_module():
    """``tensorrt``, else ``tensorrt_rtx`` (ahead-of-time builds only), else the import error of the first."""
    try:
        import tensorrt

        return tensorrt
    except Exception as first:
        try:
            import tensorrt_rtx

            return tensorrt_rtx
        except Exception:
            raise first from None


def is_rtx(trt) -> bool:
    return trt.__name__.startswith("tensorrt_rtx")


def tensorrt_version() -> str:
    trt = trt_module()
    return f"{trt.__name__}-{trt.__version__}"


def compute_capability(device: int = 0) -> str:
    """``"8.7"`` etc. of the GPU the engine is for (torch owns the CUDA context).

    TensorRT-RTX on a machine without CUDA builds for its default targets: "aot".
    """
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return f"{major}.{minor}"
    except ImportError:
        pass
    if is_rtx(trt_module()):
        return "aot"
    raise EngineBuildError("cuda", "no CUDA device to build a TensorRT engine for")


# --- cache key and sidecar -----------------------------------------------------
def cache_record(onnx_sha256: str, settings: BuildSettings, trt_version: str, capability: str) -> dict:
    """What an engine was built from; stored next to it as JSON."""
    record = {
        "onnx_sha256": onnx_sha256,
        "settings": settings.to_json(),
        "tensorrt_version": trt_version,
        "compute_capability": capability,
    }
    record["key"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def rebuild_reasons(stored: Mapping | None, wanted: Mapping) -> list[str]:
    """Why an engine with sidecar ``stored`` cannot serve ``wanted``; empty list = reuse it."""
    if stored is None:
        return ["no cached engine"]
    reasons = []
    if stored.get("engine_sha256_actual") not in (None, stored.get("engine_sha256")):
        reasons.append(f"engine file changed since it was built (sha256 {str(stored['engine_sha256_actual'])[:12]}… "
                       f"is not the {str(stored.get('engine_sha256'))[:12]}… its sidecar records)")
    if stored.get("onnx_sha256") != wanted["onnx_sha256"]:
        reasons.append(f"ONNX changed (sha256 {str(stored.get('onnx_sha256'))[:12]}… -> {wanted['onnx_sha256'][:12]}…)")
    if stored.get("tensorrt_version") != wanted["tensorrt_version"]:
        reasons.append(f"TensorRT version {stored.get('tensorrt_version')} -> {wanted['tensorrt_version']}")
    if stored.get("compute_capability") != wanted["compute_capability"]:
        reasons.append(f"GPU compute capability {stored.get('compute_capability')} -> {wanted['compute_capability']}")
    old, new = stored.get("settings") or {}, wanted["settings"]
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            reasons.append(f"builder setting {k}: {old.get(k)!r} -> {new.get(k)!r}")
    return reasons


def profiles_key(profiles: Sequence[Profile]) -> str:
    """Short hash of the optimisation profiles: part of an engine's file name."""
    blob = json.dumps([p.as_dict() for p in profiles], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def engine_paths(cache_dir: str | Path, onnx_path: str | Path, precision: str,
                 profiles: Sequence[Profile] = ()) -> tuple[Path, Path]:
    """One cache slot per (ONNX file name, precision, profiles): ``<stem>.<precision>.<profiles>.engine`` + ``.json``."""
    stem = Path(onnx_path).stem
    base = Path(cache_dir) / f"{stem}.{precision}.{profiles_key(profiles) if profiles else 'default'}"
    return Path(f"{base}.engine"), Path(f"{base}.json")


def read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save_engine(serialized, path: str | Path, sidecar: Mapping | None = None) -> Path:
    """Write engine bytes (and its sidecar) under temporary names, then rename: no half files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(path)
    if sidecar is not None:
        side = Path(str(path)[: -len(path.suffix)] + ".json")
        stmp = side.with_name(side.name + ".tmp")
        stmp.write_text(json.dumps(dict(sidecar), indent=2, sort_keys=True) + "\n")
        stmp.replace(side)
    return path


# --- build ---------------------------------------------------------------------
def _has_flag(trt, name: str) -> bool:
    return hasattr(trt.BuilderFlag, name)


def _onnx_has_qdq(network) -> bool:
    for i in range(network.num_layers):
        if network.get_layer(i).type.name in ("QUANTIZE", "DEQUANTIZE"):
            return True
    return False


def _set_precision(trt, config, network, precision: str, calibrator, onnx_path) -> None:
    weak = _has_flag(trt, "FP16")  # TensorRT <= 10: weak typing still exists
    if precision == "fp32":
        return
    if precision == "fp16":
        if weak:
            config.set_flag(trt.BuilderFlag.FP16)
            return
        if not _network_has_half(trt, network):
            raise EngineBuildError(onnx_path, f"{trt.__name__} {trt.__version__} has no FP16 builder flag (strong typing only): "
                                   "convert the ONNX to mixed precision first (NVIDIA ModelOpt AutoCast) and build that")
        return
    # int8
    has_qdq = _onnx_has_qdq(network)
    if weak:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers int8 cannot run fall back to fp16, not fp32
        if not has_qdq:
            if calibrator is None:
                raise EngineBuildError(onnx_path, "int8 needs a calibrator fed with real frames (--calibration URI) or a Q/DQ ONNX")
            config.int8_calibrator = calibrator
        return
    if not has_qdq:
        raise EngineBuildError(onnx_path, f"{trt.__name__} {trt.__version__} builds int8 only from Q/DQ ONNX: run "
                               "engines.quantize.quantize_qdq(..., symmetric=True) on real frames first")


def _network_has_half(trt, network) -> bool:
    for i in range(network.num_inputs):
        if network.get_input(i).dtype == trt.DataType.HALF:
            return True
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.DataType.HALF:
                return True
    return False


def engine_from_onnx(
    onnx_path: str | Path,
    precision: str = "fp16",
    calibrator=None,
    profiles: Sequence[Profile] | Sequence[Mapping] | None = None,
    workspace: int = 1 << 30,
    timing_cache: str | Path | None = None,
    dla_core: int | None = None,
    optimization_level: int = 3,
):
    """Parse ``onnx_path`` and build a serialized engine (``IHostMemory``).

    ``profiles``: optimisation profiles (``Profile`` or name -> (min, opt, max));
    by default one profile over the dynamic batch/H/W axes. ``timing_cache``:
    file read before and written after the build, so rebuilds skip tactic timing.
    """
    trt = trt_module()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(onnx_path, "ONNX file not found")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(onnx_path, f"TensorRT cannot parse the ONNX: {errors[:500]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    config.builder_optimization_level = int(optimization_level)
    _set_precision(trt, config, network, precision, calibrator, onnx_path)

    if not profiles:
        inputs = {network.get_input(i).name: tuple(d if d >= 0 else None for d in network.get_input(i).shape)
                  for i in range(network.num_inputs)}
        profiles = default_profiles(inputs)
    for p in profiles:
        p = p if isinstance(p, Profile) else Profile.from_dict(p)
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in p.shapes:
            profile.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(profile)
        if calibrator is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)

    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU

    cache_path = Path(timing_cache) if timing_cache and not is_rtx(trt) else None  # RTX: timing cache is a no-op
    if cache_path:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(onnx_path, f"{trt.__name__} {trt.__version__} failed to build a {precision} engine (see its log above)")
    log.info("built %s engine from %s in %.1f s", precision, onnx_path.name, time.perf_counter() - started)
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        tmp.replace(cache_path)
    return serialized


class EngineCache:
    """Engines under ``root`` keyed by ONNX sha256, settings, TensorRT version and GPU.

    ``get(onnx, settings, calibrator)`` returns ``(engine_path, reasons)``:
    ``reasons`` is empty on a cache hit, else says why the engine was (re)built.
    """

    def __init__(self, root: str | Path, device: int = 0):
        self.root = Path(root)
        self.device = device
        self.timing_cache = self.root / "timing.cache"

    def wanted(self, onnx_path: str | Path, settings: BuildSettings) -> dict:
        return cache_record(sha256_of(onnx_path), settings, tensorrt_version(), compute_capability(self.device))

    def lookup(self, onnx_path: str | Path, settings: BuildSettings) -> tuple[Path, dict, list[str]]:
        engine, side = engine_paths(self.root, onnx_path, settings.precision, settings.profiles)
        wanted = self.wanted(onnx_path, settings)
        stored = read_sidecar(side) if engine.is_file() else None
        if stored is not None:  # the engine's bytes, checked before anyone deserializes them
            stored = {**stored, "engine_sha256_actual": sha256_of(engine)}
        return engine, wanted, rebuild_reasons(stored, wanted)

    def get(self, onnx_path: str | Path, settings: BuildSettings, calibrator=None) -> tuple[Path, list[str]]:
        engine, wanted, reasons = self.lookup(onnx_path, settings)
        if not reasons:
            log.info("engine cache hit: %s", engine)
            return engine, []
        log.warning("building %s: %s", engine.name, "; ".join(reasons))
        source = typed_source(onnx_path, settings.precision, self.root)
        serialized = engine_from_onnx(
            source, settings.precision, calibrator=calibrator, profiles=settings.profiles or None,
            workspace=settings.workspace, timing_cache=self.timing_cache, dla_core=settings.dla_core,
            optimization_level=settings.optimization_level,
        )
        blob = bytes(serialized)
        save_engine(blob, engine, {**wanted, "engine_sha256": hashlib.sha256(blob).hexdigest(),
                                   "built_from": Path(source).name, "gpu": gpu_name(self.device),
                                   "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return engine, reasons


def sidecar_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return Path(str(engine)[: -len(engine.suffix)] + ".json")


def verified_engine(engine: str | Path) -> Path:
    """``engine`` if its bytes hash to the sha256 its sidecar records; else an EngineBuildError saying why."""
    engine = Path(engine)
    if not engine.is_file():
        raise EngineBuildError(engine, "engine file not found")
    stored = read_sidecar(sidecar_path(engine))
    if stored is None or "engine_sha256" not in stored:
        raise EngineBuildError(engine, "no sidecar with the engine's sha256 next to it; refusing an unverified engine "
                                       "(build it with `hazeflow build-engine`)")
    actual = sha256_of(engine)
    if actual != stored["engine_sha256"]:
        raise EngineBuildError(engine, f"sha256 {actual[:12]}… does not match its sidecar's "
                                       f"{stored['engine_sha256'][:12]}… (corrupt or replaced file)")
    return engine


def gpu_name(device: int = 0) -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device)
    except ImportError:
        pass
    return "none (ahead-of-time build)"


def strongly_typed(trt=None) -> bool:
    """TensorRT 11 and TensorRT-RTX: no FP16/INT8 builder flags, precision comes from the graph."""
    trt = trt or trt_module()
    return not _has_flag(trt, "FP16")


def typed_source(onnx_path: str | Path, precision: str, cache_dir: str | Path) -> Path:
    """The graph to build for ``precision``: for fp16 under strong typing an fp16 copy of the ONNX
    (written once into the cache, next to the engines), else the ONNX itself."""
    onnx_path = Path(onnx_path)
    if precision != "fp16" or not strongly_typed():
        return onnx_path
    from engines.fp16 import onnx_fp16

    out = Path(cache_dir) / f"{onnx_path.stem}.{sha256_of(onnx_path)[:12]}.fp16.onnx"
    if not out.is_file():
        onnx_fp16(onnx_path, out)
    return out


def gated_engine(onnx: Path, precision: str, profile, cache_dir: Path, *, device: str, reference, model: str,
                 frames=None, calibration_frames=None, workspace: int = 1 << 30,
                 dla_core: int | None = None) -> tuple[Path, dict]:
    """Build or reuse the engine of ``onnx`` for ``profile`` (engines.gate.InputProfile) and gate it.

    int8: a symmetric Q/DQ graph calibrated on the calibration part of the frames (the demo clip
    by default; engines.frames.split_frames), and the gate scores the held-out part. A failed gate
    deletes the engine and its sidecar.
    """
    from engines.frames import DEMO_CLIP, read_frames, split_frames
    from engines.gate import gate
    from engines.quantize import feeds_from_frames, onnx_input_shapes, quantize_qdq
    from engines.tensorrt.runner import TrtRunner

    cache_dir = Path(cache_dir)
    dev = int(device.split(":", 1)[1]) if ":" in device else 0
    source, calib = Path(onnx), ""
    if precision == "int8":
        calibration = calibration_frames
        if calibration is None:
            calibration = split_frames(read_frames(DEMO_CLIP, count=48, stride=3))[0]
        feeds = list(feeds_from_frames(calibration, onnx_input_shapes(onnx), size=profile.opt))
        from engines.tensorrt.calibrator import calibration_id

        calib = calibration_id(feeds)
        source = cache_dir / f"{onnx.stem}.{calib[:12]}.qdq.onnx"
        if not source.is_file():
            quantize_qdq(onnx, source, feeds, symmetric=True)
    settings = BuildSettings(precision=precision, calibration=calib, workspace=workspace, dla_core=dla_core,
                             profiles=default_profiles(onnx_input_shapes(onnx), profile.trt_limits()))
    cache = EngineCache(cache_dir, device=dev)
    engine, reasons = cache.get(source, settings)
    how = {"engine": str(engine), "engine_built": "; ".join(reasons) if reasons else "cache hit"}
    if precision == "fp32":
        return engine, how
    side = sidecar_path(engine)
    identity = {k: v for k, v in (read_sidecar(side) or {}).items() if k not in ("parity", "checked_at", "gate_key")}
    gate(TrtRunner(engine, device=device, name=engine.name), reference, model=model, precision=precision,
         size=profile.opt, record=side, identity=identity, artefacts=[engine], frames=frames)
    how["parity"] = ((read_sidecar(side) or {}).get("parity") or {}).get("summary", "")
    return engine, how
