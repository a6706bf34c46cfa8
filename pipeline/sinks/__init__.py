"""Sinks: what a run leaves on disk, per stream, under ``<output>/<stream-name>/``.

``dehazed.mp4``, ``masks/binNNNNNN.png``, ``preview.mp4``, ``events.jsonl`` and
``summary.json``. Every file is written under a hidden partial name and renamed
when complete (``pipeline.sinks.atomic``).
"""
from __future__ import annotations

from pathlib import Path


from pipeline.gpu import data_to_host
from pipeline.sinks.analytics import AnalyticsSink
from pipeline.sinks.atomic import inside, safe_name
from pipeline.sinks.events import EventsSink
from pipeline.sinks.masks import MaskSink
from pipeline.sinks.preview import PreviewSink
from pipeline.sinks.summary import write_json_atomic
from pipeline.sinks.video import DehazedVideoSink

__all__ = ["StreamOutputs", "safe_name", "inside", "write_json_atomic"]


class StreamOutputs:
    """The sinks of one stream, opened from the ``outputs`` section of the config.

    Sinks are opened lazily on the first frame (a stream that never delivers a
    frame leaves only its summary). ``close`` finalises every sink even when one
    fails and re-raises the first failure.
    """

    def __init__(self, root: Path, stream: str, outputs, fps: float = 25.0):
        self.stream = stream
        self.folder = inside(root, safe_name(stream))
        self.outputs = outputs
        self.fps = fps
        self.sinks: list = []
        self.frames = 0
        self._opened = False

    def _open(self) -> None:
        o = self.outputs
        self.folder.mkdir(parents=True, exist_ok=True)
        if o.dehazed_video:
            self.sinks.append(DehazedVideoSink(self.folder, o.codec, o.crf, self.fps))
        if o.masks:
            self.sinks.append(MaskSink(self.folder))
        if o.preview:
            self.sinks.append(PreviewSink(self.folder, o.codec, o.crf, self.fps, o.preview_scale))
        if o.events:
            self.sinks.append(EventsSink(self.folder))
        self.sinks.append(AnalyticsSink(self.folder, self.stream))  # writes only when the analytics stage ran
        self._opened = True

    def write(self, frame) -> None:
        if not self._opened:
            self._open()
        data_to_host(frame.data)  # a no-op after the graph's HostSide; here for callers outside the graph
        for sink in self.sinks:
            sink.write(frame)
        self.frames += 1

    def close(self) -> None:
        first = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # finalise the others before reporting
                first = first or e
        if first is not None:
            raise first

    def summaries(self) -> dict:
        """Sections sinks add to this stream's summary.json (``analytics``)."""
        out = {}
        for sink in self.sinks:
            if hasattr(sink, "summary"):
                out.update(sink.summary())
        return out

    def paths(self) -> list[Path]:
        out = []
        for sink in self.sinks:
            out.extend(sink.paths)
        return out
