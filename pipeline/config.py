"""YAML configuration -> frozen dataclasses.

Top-level keys of a config file::

    inputs:  [URI, ...]  or  [{uri: URI, name: NAME, live: BOOL, options: {...}, stall_timeout_s: S}, ...]
    output:  DIR
    runtime: {backend, device, max_frames, queue_size, policy, summary_interval_s, metrics: {port, host}}
    stages:  [{STAGE_NAME: {stage keys..., batch: N, batch_timeout_ms: MS}}, ...]
    outputs: {dehazed_video, masks, preview, events, codec, crf, preview_scale,
              segment_s, keep_hours, max_disk_gb}

Relative paths (inputs, output) are relative to the current directory, as on
the command line; the shipped configs assume the repository root.

Every section is checked against the dataclass it becomes: an unknown key names
``section.key`` and lists the valid keys, a wrong type names the key, what was
given and what was expected. Stage sections are checked against the nested
``Config`` dataclass of the stage class (``pipeline.stages.stage_class``); the
keys ``batch`` and ``batch_timeout_ms`` belong to the graph, not the stage.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import ConfigError

#: where ``hazeflow run`` looks when no config is given (repo checkout or editable install)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

#: keys of a stage section that the graph consumes (batching), not the stage
GRAPH_STAGE_KEYS = ("batch", "batch_timeout_ms")


@dataclass(frozen=True)
class InputConfig:
    uri: str
    name: str | None = None
    #: None = ask the source (``is_live``); True/False forces the queue policy
    live: bool | None = None
    #: passed to ``pipeline.sources.open_source(uri, name, **options)``
    options: dict = field(default_factory=dict)
    #: a live input that sends no frame for this long is stalled: counted, logged, reconnected
    stall_timeout_s: float = 10.0

    def __post_init__(self):
        if not self.stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0 seconds, got {self.stall_timeout_s}")


@dataclass(frozen=True)
class MetricsConfig:
    """``runtime.metrics``: Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` on one port."""

    port: int
    host: str = "127.0.0.1"

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError("runtime.metrics.port", f"must be in [0, 65535] (0 = any free port), got {self.port}")
        if not self.host.strip():
            raise ConfigError("runtime.metrics.host", "must not be empty")


@dataclass(frozen=True)
class RuntimeConfig:
    backend: Literal["auto", "onnxruntime", "openvino", "torch", "tensorrt"] = "auto"  # engines.constants.BACKENDS
    device: Literal["cpu", "cuda"] = "cpu"
    #: stop each stream after this many frames
    max_frames: int | None = None
    #: capacity of each queue between two workers
    queue_size: int = 8
    #: auto: files block (lossless), live inputs drop the oldest frame
    policy: Literal["auto", "block", "drop_oldest"] = "auto"
    #: rewrite summary.json this often while running (0 = only at the end); a camera that runs for
    #: days, or a process that is killed, still leaves current numbers behind
    summary_interval_s: float = 30.0
    #: ``{port, host}``: serve metrics and health checks (None: no endpoint)
    metrics: MetricsConfig | None = None

    def __post_init__(self):
        if self.summary_interval_s < 0:
            raise ConfigError("runtime.summary_interval_s", f"must be >= 0 (0 = only at the end), got {self.summary_interval_s}")
        if self.queue_size < 1:
            raise ConfigError("runtime.queue_size", f"must be >= 1, got {self.queue_size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError("runtime.max_frames", f"must be >= 1 or null, got {self.max_frames}")


@dataclass(frozen=True)
class OutputsConfig:
    dehazed_video: bool = True
    masks: bool = True
    preview: bool = True
    events: bool = True
    #: auto = libx264 when PyAV has it, else mpeg4
    codec: Literal["auto", "libx264", "mpeg4"] = "auto"
    crf: int = 23
    #: preview.mp4 is three panels side by side; scale them down by this factor
    preview_scale: float = 1.0
    #: seconds per segment file (pipeline/sinks/segments.py); null = 300 for live inputs, 0 for files;
    #: 0 = one file per input (dehazed.mp4, preview.mp4, events.jsonl)
    segment_s: float | None = None
    #: delete segments older than this many hours (null = keep all)
    keep_hours: float | None = None
    #: delete the oldest segments while the segments under the output folder exceed this (null = no limit)
    max_disk_gb: float | None = None

    def __post_init__(self):
        if not 0 < self.preview_scale <= 1:
            raise ConfigError("outputs.preview_scale", f"must be in (0, 1], got {self.preview_scale}")
        if self.segment_s is not None and not (self.segment_s == 0 or 1 <= self.segment_s < float("inf")):
            raise ConfigError("outputs.segment_s", f"must be 0 (one file per input) or >= 1 seconds, got {self.segment_s}")
        for key in ("keep_hours", "max_disk_gb"):
            value = getattr(self, key)
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"outputs.{key}", f"must be > 0 or null (no limit), got {value}")
        if not 0 <= self.crf <= 51:
            raise ConfigError("outputs.crf", f"must be in [0, 51], got {self.crf}")


@dataclass(frozen=True)
class StageSpec:
    """One entry of ``stages:``: the stage name, its own Config, and graph keys."""

    name: str
    config: Any
    batch: int = 1
    batch_timeout_ms: float = 5.0


@dataclass(frozen=True)
class Config:
    inputs: tuple[InputConfig, ...] = ()
    output: str = "out/run"
    runtime: RuntimeConfig = RuntimeConfig()
    stages: tuple[StageSpec, ...] = ()
    outputs: OutputsConfig = OutputsConfig()
    #: the file it came from (for messages), None when built in code
    source: str | None = None


TOP_KEYS = ("inputs", "output", "runtime", "stages", "outputs")


# ---------------------------------------------------------------- type checks
def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))


def _coerce(value, hint):
    """Return ``value`` converted to ``hint`` or raise TypeError.

    Only lossless conversions: int -> float, list -> tuple. ``bool`` is not an
    int here (``history: yes`` is a mistake, not 1).
    """
    if hint is Any or hint is typing.Any:
        return value
    origin = typing.get_origin(hint)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(hint)):
            return value
        raise TypeError
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = typing.get_args(hint)
        if args and args[-1] is not Ellipsis and len(args) != len(value) and origin is tuple:
            raise TypeError
        if args:
            item_hints = [args[0]] * len(value) if (origin is list or args[-1] is Ellipsis) else list(args)
            value = [_coerce(v, h) for v, h in zip(value, item_hints)]
        return tuple(value) if (origin is tuple or hint is tuple) else list(value)
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    return value  # a type we do not know how to check: trust the stage


def _describe(value) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"


def build_dataclass(cls, values, where: str, source: str | None = None):
    """``cls(**values)`` with every key and type checked; ``where`` is the section path."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(where, f"expected a mapping of keys, got {_describe(values)}{_in(source)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotation: fall back to not checking types
        hints = {}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            valid = ", ".join(fields) or "(none)"
            raise ConfigError(f"{where}.{key}", f"unknown key{_in(source)}; valid keys: {valid}")
        hint = hints.get(key, Any)
        nested = _dataclass_in(hint)
        if nested is not None and value is not None:  # a section inside a section
            kwargs[key] = build_dataclass(nested, value, f"{where}.{key}", source)
            continue
        try:
            kwargs[key] = _coerce(value, hint)
        except TypeError:
            raise ConfigError(f"{where}.{key}",
                              f"expected {_type_name(hint)}, got {_describe(value)}{_in(source)}") from None
    missing = [name for name, f in fields.items() if name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}", f"required key missing{_in(source)}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a Config.__post_init__ that names the key itself
        raise ConfigError(e.input, f"{e.cause}{_in(source)}") from None
    except (TypeError, ValueError) as e:  # a Config.__post_init__ may reject a value
        raise ConfigError(where, f"{e}{_in(source)}") from None


def _dataclass_in(hint):
    """The dataclass a field holds (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _in(source: str | None) -> str:
    return f" (in {source})" if source else ""


# ---------------------------------------------------------------- sections
def _inputs(raw, source) -> tuple[InputConfig, ...]:
    if raw is None:
        return ()
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError("inputs", f"expected a list of URIs, got {_describe(raw)}{_in(source)}")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            out.append(InputConfig(uri=item))
        else:
            out.append(build_dataclass(InputConfig, item, f"inputs[{i}]", source))
    return tuple(out)


def stage_spec(name: str, values, where: str, source: str | None = None) -> StageSpec:
    """Build one stage entry: graph keys are split off, the rest goes to ``Stage.Config``."""
    from pipeline.stages import stage_class

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(where, f"expected a mapping of keys, got {_describe(values)}{_in(source)}")
    try:
        cls = stage_class(name)
    except ConfigError as e:
        raise ConfigError(where, f"{e.cause}{_in(source)}") from None
    except ImportError as e:
        raise ConfigError(where, f"stage {name!r} is not available ({e}){_in(source)}") from None
    stage_values = {k: v for k, v in values.items() if k not in GRAPH_STAGE_KEYS}
    conf_cls = getattr(cls, "Config", None)
    if conf_cls is None or not dataclasses.is_dataclass(conf_cls):
        if stage_values:
            key = next(iter(stage_values))
            raise ConfigError(f"{where}.{key}", f"unknown key{_in(source)}; valid keys: "
                              + ", ".join(GRAPH_STAGE_KEYS))
        stage_conf = None
    else:
        try:
            stage_conf = build_dataclass(conf_cls, stage_values, where, source)
        except ConfigError as e:
            if e.cause.startswith("unknown key") and "valid keys:" in e.cause:
                raise ConfigError(e.input, e.cause + ", " + ", ".join(GRAPH_STAGE_KEYS)) from None
            raise
    batch = _coerce_key(values, "batch", int, 1, where, source)
    timeout = _coerce_key(values, "batch_timeout_ms", float, 5.0, where, source)
    if batch < 1:
        raise ConfigError(f"{where}.batch", f"must be >= 1, got {batch}{_in(source)}")
    if timeout < 0:
        raise ConfigError(f"{where}.batch_timeout_ms", f"must be >= 0, got {timeout}{_in(source)}")
    return StageSpec(name=name, config=stage_conf, batch=batch, batch_timeout_ms=timeout)


def _coerce_key(values, key, hint, default, where, source):
    if key not in values:
        return default
    try:
        return _coerce(values[key], hint)
    except TypeError:
        raise ConfigError(f"{where}.{key}",
                          f"expected {_type_name(hint)}, got {_describe(values[key])}{_in(source)}") from None


def _stages(raw, source) -> tuple[StageSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("stages", "expected a list of single-key mappings like `- mog2: {history: 500}`, "
                          f"got {_describe(raw)}{_in(source)}")
    specs, seen = [], set()
    for i, item in enumerate(raw):
        if isinstance(item, str):  # `- dcp` with no options
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"stages[{i}]", "expected a single-key mapping like `- mog2: {history: 500}`, "
                              f"got {_describe(item)}{_in(source)}")
        (name, values), = item.items()
        if name in seen:
            raise ConfigError(f"stages.{name}", f"stage listed twice{_in(source)}")
        seen.add(name)
        specs.append(stage_spec(str(name), values, f"stages.{name}", source))
    return tuple(specs)


def config_from_dict(raw: dict | None, source: str | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source or "config", f"expected a mapping with keys {', '.join(TOP_KEYS)}, "
                          f"got {_describe(raw)}")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(str(key), f"unknown key{_in(source)}; valid keys: {', '.join(TOP_KEYS)}")
    output = raw.get("output", Config.output)
    if not isinstance(output, str):
        raise ConfigError("output", f"expected str, got {_describe(output)}{_in(source)}")
    return Config(
        inputs=_inputs(raw.get("inputs"), source),
        output=output,
        runtime=build_dataclass(RuntimeConfig, raw.get("runtime"), "runtime", source),
        stages=_stages(raw.get("stages"), source),
        outputs=build_dataclass(OutputsConfig, raw.get("outputs"), "outputs", source),
        source=source,
    )


def load_config(path: str | Path | None = None) -> Config:
    """Read a YAML config (``yaml.safe_load``); None means ``configs/default.yaml``."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(str(path), "config file not found" if not path.exists() else "not a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(str(path), f"invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), f"cannot read: {e}") from None
    return config_from_dict(raw, source=str(path))


def with_overrides(config: Config, *, inputs=None, output=None, backend=None, device=None,
                   max_frames=None) -> Config:
    """Apply command-line overrides (None = keep the file's value)."""
    runtime = config.runtime
    changes = {k: v for k, v in (("backend", backend), ("device", device), ("max_frames", max_frames))
               if v is not None}
    if max_frames is not None and max_frames < 1:
        raise ConfigError("--max-frames", f"must be >= 1, got {max_frames}")
    if changes:
        runtime = dataclasses.replace(runtime, **changes)
    new_inputs = config.inputs if not inputs else tuple(InputConfig(uri=u) for u in inputs)
    stages = tuple(_with_runtime(s, runtime) for s in config.stages)
    return dataclasses.replace(config, inputs=new_inputs, output=output or config.output,
                               runtime=runtime, stages=stages)


def _with_runtime(spec: StageSpec, runtime: RuntimeConfig) -> StageSpec:
    """Hand ``runtime.backend``/``device`` to stages whose Config has those fields.

    A stage section that sets them itself keeps its own value unless the runtime
    value differs from the default (the command line asked for it explicitly).
    """
    conf = spec.config
    if conf is None or not dataclasses.is_dataclass(conf):
        return spec
    names = {f.name for f in dataclasses.fields(conf)}
    changes = {}
    for key in ("backend", "device"):
        value = getattr(runtime, key)
        if key in names and value != getattr(RuntimeConfig, key):
            changes[key] = value
    if not changes:
        return spec
    try:
        return dataclasses.replace(spec, config=dataclasses.replace(conf, **changes))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"stages.{spec.name}", str(e)) from None
