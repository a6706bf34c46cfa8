"""The stage interface: declared ports, setup / process / close.

A stage reads the ports named in ``inputs`` from each frame (``image`` is the
decoded picture, anything else is a key of ``Frame.data``) and writes the ports
named in ``outputs`` into ``Frame.data``. The graph checks before the first
frame that every input port is produced by the source or an earlier stage.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

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
