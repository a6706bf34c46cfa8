"""The stage interface: declared ports, setup / process / close.

A stage reads the ports named in ``inputs`` from each frame (``image`` is the
decoded picture, anything else is a key of ``Frame.data``) and writes the ports
named in ``outputs`` into ``Frame.data``. The graph checks before the first
frame that every input port is produced by the source or an earlier stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

from pipeline.errors import ConfigError, PipelineError, WeightsError
from pipeline.frame import Frame


class Stage:
    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ("image",)
    outputs: ClassVar[tuple[str, ...]] = ()
    #: most frames (from any streams) handed to one ``process`` call
    max_batch: int = 1
    #: a stage with a device path says so (read by pipeline.graph.CudaLink, which then hands it a stream)
    wants_cuda_stream: bool = False
    _stream = None

    def use_cuda_stream(self, stream) -> None:
        """The CUDA stream this stage's GPU work runs on (the graph's); called before ``setup``."""
        self._stream = stream

    @property
    def on_device(self) -> bool:
        """Frames stay on the GPU only once a stream owner (the graph) handed this stage its stream;
        called directly without one, a stage keeps the host contract (numpy in, numpy out)."""
        return self._stream is not None and self.wants_cuda_stream

    def setup(self) -> None:
        """Acquire resources (models, sessions). Called once in the worker."""

    def process(self, frames: Sequence[Frame]) -> Sequence[Frame]:
        """Fill this stage's output ports of each frame and return the frames."""
        raise NotImplementedError

    def reset_stream(self, stream: str) -> None:
        """Forget per-stream state (reconnect, resolution change)."""

    def close(self) -> None:
        """Release resources. Called once, also after an error."""

    def __enter__(self):
        self.setup()
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class LearnedStage(Stage):
    """A stage that runs a network: one set of rules and one load path for ``dehaze`` and ``msfgnet``.

    The stage's ``Config`` has ``backend``, ``precision``, ``device``, ``weights`` (ONNX),
    ``torch_weights``, ``manifest`` and ``threads``; the subclass gives ``network_size(w, h)``,
    the network input size for a w x h frame. ``check_engine_config`` refuses a combination the
    backend cannot run, naming the key; ``acquire_runner`` gets the runner through
    ``engines.load.runner_for`` (manifest checks, the backend choice, the parity gate) and turns
    its errors into the pipeline's one-line errors. ``engine_info`` says what was loaded and why.
    """

    torch_factory: ClassVar[str | None] = None   # default factory string for backend: torch
    engine_info: dict | None = None
    _backend: str | None = None

    @property
    def section(self) -> str:
        return f"stages.{self.name}"

    @property
    def backend(self) -> str:
        """The backend the rules are checked for: ``auto`` resolved as engines.load.choose_backend does (once).

        On the CPU, ``auto`` may still load OpenVINO instead of ONNX Runtime when it is faster and passes
        parity (``engine_info["backend"]`` says which ran)."""
        if self._backend is None:
            from engines.load import choose_backend

            c = self.config
            self._backend = choose_backend(c.backend, c.device, c.precision)
        return self._backend

    @property
    def wants_cuda_stream(self) -> bool:
        """Read by pipeline.graph.CudaLink: the device path exists (torch backend on cuda)."""
        return self.config.device == "cuda" and self.backend == "torch"

    def network_size(self, width: int, height: int) -> tuple[int, int]:
        raise NotImplementedError

    def check_engine_config(self, runs: bool = True) -> None:
        """Backend, device and precision keys; ``runs=False`` (the network never runs) checks only the names."""
        from engines.constants import BACKENDS, DEVICES, PRECISIONS, SUPPORTED
        from engines.load import combination_error

        c = self.config
        for key, value, allowed in (("backend", c.backend, BACKENDS), ("device", c.device, DEVICES),
                                    ("precision", c.precision, PRECISIONS)):
            if value not in allowed:
                raise ConfigError(f"{self.section}.{key}", f"must be one of {', '.join(allowed)}, got {value!r}")
        if not runs:
            return
        why = combination_error(self.backend, c.precision, c.device)
        if why:
            key = "backend" if (self.backend, c.device) not in SUPPORTED else "precision"
            if c.backend == "auto":
                why = why.replace(f"backend {self.backend} ", f"backend auto (chose {self.backend} on {c.device}) ")
            raise ConfigError(f"{self.section}.{key}", why)

    def input_profile(self, batch: int = 1):
        """The network input sizes for the frame sizes a stage serves (engines.constants.FRAME_SIZES)."""
        from engines.constants import FRAME_SIZES
        from engines.gate import InputProfile

        return InputProfile(tuple(self.network_size(w, h) for w, h in FRAME_SIZES), batch)

    def weight_files(self) -> tuple[Path, Path, Path]:
        """(ONNX graph, state_dict, manifest) the config names.

        ``weights`` may name a folder, as ``hazeflow adapt`` writes one: it holds
        ``<stem>.onnx`` and ``<stem>.pt`` (stem of the default weights) and their own
        ``manifest.json``, checked like the shipped files; an explicit ``manifest`` wins.
        """
        from engines import weights

        c = self.config
        onnx, pt = resolve_path(c.weights), resolve_path(c.torch_weights)
        manifest = resolve_path(c.manifest) if c.manifest else None
        if onnx.is_dir():
            stem = Path(type(c).weights).stem
            onnx, pt, manifest = onnx / f"{stem}.onnx", onnx / f"{stem}.pt", manifest or onnx / "manifest.json"
        return onnx, pt, manifest or weights.MANIFEST

    def acquire_runner(self, batch: int = 1, factory: str | None = None):
        """The activated runner for this stage's config, through engines.load.runner_for."""
        from engines.base import RunnerError
        from engines.load import runner_for

        c = self.config
        backend = c.backend
        self._check_backend_imports()
        onnx, pt, manifest = self.weight_files()
        try:
            runner = runner_for(onnx, backend=backend, precision=c.precision, device=c.device,
                                profile=self.input_profile(batch), threads=c.threads or None, manifest=manifest,
                                torch_weights=pt, torch_factory=factory or self.torch_factory,
                                stream=self._stream, name=self.name)
            runner.activate()
        except PipelineError:
            raise
        except ModuleNotFoundError as e:
            raise ConfigError(f"{self.section}.backend", f"backend {self.backend} needs {e.name} "
                                                         "(torch: the [train] extra)") from None
        except Exception as e:
            if isinstance(e, RunnerError) and "bf16 refused" in str(e):
                raise ConfigError(f"{self.section}.precision", str(getattr(e, "cause", e))) from None
            raise load_error(e, getattr(e, "input", None) or (pt if self.backend == "torch" else onnx)) from None
        self.engine_info = dict(getattr(runner, "load_info", {}) or {})
        return runner

    def _check_backend_imports(self) -> None:
        """A backend that does not import here is a config error that says what to install."""
        if self.backend == "tensorrt":
            from engines.load import tensorrt_available

            if not tensorrt_available():
                raise ConfigError(f"{self.section}.backend", TENSORRT_MISSING)
        if self.backend == "openvino":
            from engines.openvino.runner import openvino_import_error

            why = openvino_import_error()
            if why:
                raise ConfigError(f"{self.section}.backend", f"OpenVINO does not import ({why}); "
                                                             "`pip install openvino`, or use backend: onnxruntime")


def load_error(e: Exception, where) -> WeightsError:
    """The one-line WeightsError for a runner that could not be made or activated from ``where``."""
    from engines.base import RunnerError

    cause = getattr(e, "cause", None) or " ".join(str(e).split())
    if not hasattr(e, "cause") and isinstance(e, RunnerError):
        cause = f"cannot load it ({cause[:240]})"
    return WeightsError(str(where), " ".join(str(cause).split())[:400])


TENSORRT_MISSING = ("TensorRT is not installed (`import tensorrt` fails); install it with `pip install .[trt]` "
                    "on an NVIDIA machine, or use backend: torch")
ROOT = Path(__file__).resolve().parent.parent.parent


def resolve_path(path: str | Path) -> Path:
    """Relative paths are tried from the working directory, then from the project root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return ROOT / path
