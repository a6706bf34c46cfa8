"""Sinks: what a run leaves on disk, per stream, under ``<output>/<stream-name>/``.

``dehazed.mp4``, ``masks/binNNNNNN.png``, ``preview.mp4``, ``events.jsonl`` and
``summary.json``. Every file is written under a hidden partial name and renamed
when complete (``pipeline.sinks.atomic``).

With ``outputs.segment_s > 0`` (the default for live streams) the same outputs
are cut into segments named by their UTC start, ``dehazed/<stem>.mp4``,
``preview/<stem>.mp4``, ``events/<stem>.jsonl``, ``analytics/<stem>.csv`` and
``masks/<stem>/``; the open
one carries ``.open`` in its name (``pipeline.sinks.segments``).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path


from pipeline.gpu import data_to_host
from pipeline.sinks.analytics import AnalyticsSink, AnalyticsTotals
from pipeline.sinks.atomic import inside, safe_name
from pipeline.sinks.events import EventsSink
from pipeline.sinks.masks import MaskSink
from pipeline.sinks.preview import PreviewSink
from pipeline.sinks.segments import (CUT_GRACE_S, Retention, Segment, SegmentClock, leftover_open_files,
                                     segment_length, writer_ended, writer_started)
from pipeline.sinks.summary import write_json_atomic
from pipeline.sinks.video import DehazedVideoSink

log = logging.getLogger("hazeflow.sinks")

__all__ = ["StreamOutputs", "safe_name", "inside", "write_json_atomic"]


class StreamOutputs:
    """The sinks of one stream, opened from the ``outputs`` section of the config.

    Sinks are opened lazily on the first frame (a stream that never delivers a
    frame leaves only its summary). ``close`` finalises every sink even when one
    fails and re-raises the first failure.

    ``live`` picks the default of ``outputs.segment_s`` (300 s for live
    streams, one file per input otherwise) and the segment clock (wall clock
    for live streams, the frames' pts for files). In segment mode every sink is
    closed and reopened together at a cut, so a closed segment's video holds
    exactly the frames its events file lists; a change of picture size (a
    camera reconfigured) also starts a new segment, at the new size. A live
    segment whose cut time passes without a frame is closed by a timer thread
    (``segments.CUT_GRACE_S`` after it); a lock keeps that apart from ``write``.
    """

    def __init__(self, root: Path, stream: str, outputs, fps: float = 25.0, live: bool = False):
        self.stream = stream
        self.folder = inside(root, safe_name(stream))
        self.outputs = outputs
        self.fps = fps
        self.sinks: list = []
        self.frames = 0
        self._opened = False
        self.segment_s = segment_length(outputs, live)
        self.segment: Segment | None = None  # the open one
        self.segments = 0  # opened so far
        self._segment_frames = 0
        self._size = None  # (h, w) of the open segment's frames
        self._clock = SegmentClock(self.segment_s, live) if self.segment_s > 0 else None
        self._analytics_totals = AnalyticsTotals()
        self._retention = Retention.shared(Path(root), getattr(outputs, "keep_hours", None),
                                           getattr(outputs, "max_disk_gb", None))
        self._lock = threading.RLock()  # write and close (sink thread) vs the cut timer
        self._timer: threading.Timer | None = None
        self._cut_error: Exception | None = None  # a close that failed in the timer, raised by close()
        self._ended = False  # close() ran (retention no longer keeps room for this stream)

    def _open(self, segment: Segment | None = None) -> None:
        o = self.outputs
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sinks = []
        if o.dehazed_video:
            self.sinks.append(DehazedVideoSink(self.folder, o.codec, o.crf, self.fps, segment=segment))
        if o.masks:
            self.sinks.append(MaskSink(self.folder, segment=segment))
        if o.preview:
            self.sinks.append(PreviewSink(self.folder, o.codec, o.crf, self.fps, o.preview_scale, segment=segment))
        if o.events:
            self.sinks.append(EventsSink(self.folder, segment=segment))
        # writes only when the analytics stage ran; in segments one CSV per segment, summary.json the whole run
        self.sinks.append(AnalyticsSink(self.folder, self.stream, segment=segment,
                                        totals=self._analytics_totals if segment is not None else None))
        self._opened = True

    def write(self, frame) -> None:
        with self._lock:
            self._write(frame)

    def _write(self, frame) -> None:
        if self._clock is not None:
            due = self._clock.due(self._segment_time(frame))
            # a new picture size starts a new segment: an MP4 track keeps one size; the timer may have
            # closed the last one (no frame came by its cut time)
            if due or self.segment is None or frame.image.shape[:2] != self._size:
                self._size = frame.image.shape[:2]
                self._rotate()
        elif not self._opened:
            self._open()
        data_to_host(frame.data)  # a no-op after the graph's HostSide; here for callers outside the graph
        for sink in self.sinks:
            sink.write(frame)
        self.frames += 1
        self._segment_frames += 1

    def _segment_time(self, frame) -> float:
        if self._clock.live:
            return time.time()
        return frame.pts if frame.pts is not None else self.frames / self.fps

    def _rotate(self) -> None:
        """Close the open segment (its files get their final names) and open the next one."""
        self._close_sinks()
        if self.segments == 0:
            writer_started(self.folder, self.segment_s if self._clock.live else None)
            for path in leftover_open_files(self.folder):
                log.warning("%s: %s was left open by a run that did not finish; it plays up to its last "
                            "fragment and keeps its name", self.stream, path.relative_to(self.folder))
        segment = Segment.new(self.folder, time.time())
        segment.mark_open()
        self.segment = segment
        self.segments += 1
        self._segment_frames = 0
        self._retention.request()
        self._open(segment)
        log.info("%s: segment %s opened", self.stream, segment.stem)
        if self._clock.live:
            self._arm_cut(segment)

    def _arm_cut(self, segment: Segment) -> None:
        """Close ``segment`` on time even when no frame comes after its cut (a stalled camera)."""
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self._clock.end - time.time()) + CUT_GRACE_S
        self._timer = threading.Timer(delay, self._cut_idle, args=(segment,))
        self._timer.name = f"cut-{self.stream}"
        self._timer.daemon = True
        self._timer.start()

    def _cut_idle(self, segment: Segment) -> None:
        with self._lock:
            if self.segment is not segment:  # a frame rotated it, or the stream closed
                return
            if time.time() < self._clock.end:  # woke early (the wall clock was set back): wait again
                self._arm_cut(segment)
                return
            log.info("%s: no frame since the cut time of segment %s; closing it on time", self.stream, segment.stem,
                     extra={"stream": self.stream, "event": "segment_cut_idle"})
            try:
                self._close_sinks()
            except Exception as e:  # kept for close(), which the graph reports as the stream's error
                self._cut_error = self._cut_error or e
                log.warning("%s: closing segment %s failed: %s", self.stream, segment.stem, e)

    def close(self) -> None:
        try:
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                try:
                    self._close_sinks()
                finally:
                    if self.segments and not self._ended:
                        self._ended = True
                        writer_ended(self.folder)
                if self._cut_error is not None:
                    error, self._cut_error = self._cut_error, None
                    raise error
        finally:
            self._retention.join(timeout=60)  # a sweep still deleting is finished, not cut short by the exit

    def _close_sinks(self) -> None:
        first = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # finalise the others before reporting
                first = first or e
        if self.segment is not None:
            self.segment.mark_closed()
            log.info("%s: segment %s closed, %d frames", self.stream, self.segment.stem, self._segment_frames)
            self.segment = None
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
        """Files written (one file per input), or the folders of the segments."""
        if self._clock is not None:
            return [self.folder / sink.kind for sink in self.sinks if (self.folder / sink.kind).exists()]
        out = []
        for sink in self.sinks:
            out.extend(sink.paths)
        return out
