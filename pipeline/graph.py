"""The streaming graph: readers -> stage workers -> sink worker, joined by bounded queues.

::

    source A ─┐                                              ┌─ <out>/A/...
    source B ─┼─► q0 ─► [stage 1] ─► q1 ─► ... ─► [sinks] ───┼─ <out>/B/...
    source C ─┘      (batch of up to N frames, any streams)  └─ <out>/C/...

One reader thread per source, one worker thread per stage, one sink thread.
Threads are enough: decoding (PyAV), OpenCV and ONNX Runtime release the GIL.
Each queue applies its policy per frame: frames of file streams block (lossless
backpressure), frames of live streams drop the oldest when the queue is full
and the drop is counted per stream and reason.

Shutdown, in every case the outputs of processed frames are finalised and
renamed and ``summary.json`` is written:

* end of input: readers close the first queue, every worker drains and closes
  the next one, the sink thread finalises the files;
* ``stop()`` (Ctrl-C): readers stop reading, what is in flight is drained;
* a stage error: that stage abandons its input queue (upstream frames are
  discarded and counted), frames already past it are still written;
* a source fault: frames before it are processed, the error is recorded and the
  other streams go on.

Frame accounting holds per stream: ``in == processed + dropped`` once the run
is over, where ``dropped`` says why (queue full, stage error, shutdown).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pipeline.errors import ConfigError, PipelineError, SourceError, StageError
from pipeline.frame import Frame
from pipeline.gpu import HostSide
from pipeline.memory import release_free_heap
from pipeline.observability import Observer, RunReport
from pipeline.observability.stats import REASON_SHUTDOWN, REASON_STAGE_ERROR
from pipeline.queues import EndOfStream, FrameQueue
from pipeline.sinks import StreamOutputs, safe_name

log = logging.getLogger("hazeflow.graph")

#: ports every source provides
SOURCE_PORTS = ("image",)
#: how long a stopped reader may take before the graph stops waiting for it
READER_GRACE_S = 5.0



@dataclass
class StageNode:
    """A stage instance plus the graph's batching settings for it."""

    stage: object
    name: str
    batch: int = 1
    batch_timeout_ms: float = 5.0


class CudaLink:
    """One CUDA stream per GPU stage, and events so the next stage waits without a host sync.

    Used only for a stage that asks for it (``wants_cuda_stream = True`` and
    ``device == "cuda"`` on the stage or its Config). The graph creates the
    stream in the stage's worker thread and hands it to
    ``stage.use_cuda_stream(stream)`` before ``setup``; after each call it
    records an event on that stream into ``frame.data["cuda_event"]``; a later
    GPU stage makes its own stream wait on those events. A host stage or the
    sink thread waits on the host, then downloads the frame's device tensors
    once (``pipeline.gpu.HostSide``), so nothing on the host ever reads a torch
    tensor (DESIGN.md, "Data flow"). torch is imported only here, only for such
    stages.
    """

    def __init__(self, stage):
        import torch

        self.torch = torch
        # a stage kept set up across graphs (hazeflow batch) built its runner on the stream it was handed
        # first: keep using that one, or the events recorded here would not cover the runner's work
        self.stream = getattr(stage, "_stream", None) or torch.cuda.Stream()
        stage.use_cuda_stream(self.stream)

    @staticmethod
    def wanted(stage) -> bool:
        device = getattr(stage, "device", None) or getattr(getattr(stage, "config", None), "device", None)
        return bool(getattr(stage, "wants_cuda_stream", False)) and device == "cuda"

    def before(self, frames) -> None:
        seen = set()
        for f in frames:
            event = f.data.get("cuda_event")
            if event is not None and id(event) not in seen:
                seen.add(id(event))
                self.stream.wait_event(event)

    def after(self, frames) -> None:
        event = self.torch.cuda.Event()
        event.record(self.stream)
        for f in frames:
            f.data["cuda_event"] = event


def build_stages(specs) -> list[StageNode]:
    """Instantiate the stages of ``config.stages`` (a sequence of ``StageSpec``)."""
    from pipeline.stages import stage_class

    nodes = []
    for spec in specs:
        cls = stage_class(spec.name)
        stage = cls(spec.config) if spec.config is not None else cls()
        limit = int(getattr(stage, "max_batch", 1) or 1)
        if spec.batch > limit:
            raise ConfigError(f"stages.{spec.name}.batch",
                              f"{spec.batch} is more than this stage takes in one call (max_batch {limit})")
        nodes.append(StageNode(stage, spec.name, spec.batch, spec.batch_timeout_ms))
    return nodes


def check_ports(nodes: Sequence[StageNode], source_ports: Sequence[str] = SOURCE_PORTS) -> None:
    """Every input port of a stage must come from the source or an earlier stage."""
    available = list(source_ports)
    for node in nodes:
        for port in getattr(node.stage, "inputs", ()):
            if port not in available:
                raise ConfigError(f"stages.{node.name}",
                                  f"input port {port!r} is not produced by the source or an earlier stage "
                                  f"(available: {', '.join(available)}); put the stage that makes it first")
        available.extend(p for p in getattr(node.stage, "outputs", ()) if p not in available)


class Graph:
    """Runs stages over sources and writes the outputs.

    ``nodes``: the stages in order (see ``build_stages``). ``outputs``: the
    ``OutputsConfig``. ``policy``: ``auto`` (live sources drop, files block),
    ``block`` or ``drop_oldest`` for every stream. ``live`` maps a stream name
    to True/False to override the source's own ``is_live``; ``stall_timeout_s``
    maps a stream name to the seconds a live camera may send nothing before it
    counts as stalled (default 10). What happens is reported to ``observer``
    (``pipeline.observability.Observer``), which keeps the numbers, writes
    ``summary.json`` and feeds the metrics endpoint.
    """

    def __init__(self, nodes: Sequence[StageNode], output: str | Path, outputs, *, queue_size: int = 8,
                 policy: str = "auto", max_frames: int | None = None, live: dict | None = None,
                 summary_interval_s: float = 0.0, stall_timeout_s: dict | None = None):
        check_ports(nodes)
        if queue_size < 1:
            raise ConfigError("runtime.queue_size", f"must be >= 1, got {queue_size}")
        self.nodes = list(nodes)
        self.output = Path(output)
        self.outputs_config = outputs
        self.queue_size = queue_size
        self.policy = policy
        self.max_frames = max_frames
        self.live_override = live or {}
        self.stall_timeout_s = stall_timeout_s or {}
        self.summary_interval_s = summary_interval_s
        self.observer = Observer(self.output, [n.name for n in self.nodes])
        self._outputs: dict = {}
        self._stop = threading.Event()
        self._hard_stop = threading.Event()
        self._sources: list = []
        self._queues: list[FrameQueue] = []
        self._sink_host = HostSide()  # the sink thread's waits and downloads (GPU stages only)

    @property
    def streams(self) -> dict:
        return self.observer.streams

    @property
    def errors(self) -> list:
        return self.observer.errors

    @property
    def interrupted(self) -> bool:
        return self.observer.interrupted

    @property
    def _first_error(self) -> PipelineError | None:
        return self.observer.first_error

    # ------------------------------------------------------------ public
    def stop(self, reason: str = "interrupted") -> None:
        """Stop reading; what is in flight is processed and written. Thread-safe."""
        if reason == "interrupted":
            self.observer.interrupted = True
        if self._stop.is_set():
            return
        self._stop.set()
        for source in self._sources:
            stop = getattr(source, "stop", None)  # lets a source blocked on the network return early
            if callable(stop):
                try:
                    stop()
                except Exception:  # stopping is best effort; the reader closes it properly
                    log.debug("source stop failed", exc_info=True)

    def abort(self) -> None:
        """Second interrupt: drop what is queued, finalise what was written."""
        self.stop()
        self._hard_stop.set()
        for q in self._queues:
            self._discard(q.abandon(), REASON_SHUTDOWN)

    def progress(self) -> dict:
        """Totals for a progress bar: frames in, processed, dropped, frames/s."""
        return self.observer.progress()

    def run(self, sources: Sequence, on_progress: Callable[[dict], None] | None = None,
            progress_interval_s: float = 0.25) -> RunReport:
        """Process every source to its end (or until ``stop``); returns the report.

        Sources are iterable context managers of Frames (``name``, ``is_live``,
        ``uri_masked``); the graph closes them. KeyboardInterrupt in the calling
        thread stops the run cleanly (a second one aborts the queues).
        """
        self._sources = list(sources)
        self._register_streams()
        self.observer.start()
        live = {s.name for s in self.streams.values() if s.live}
        names = [n.name for n in self.nodes] + ["sinks"]
        self._queues = [FrameQueue(self.queue_size, name=n, live_streams=live) for n in names]
        # segments follow the input (RTSP or `live: true`), not the queue policy
        live_inputs = {s.name: self._input_is_live(s) for s in self._sources}
        outputs = {name: StreamOutputs(self.output, name, self.outputs_config, s.fps_hint, live=live_inputs[name])
                   for name, s in self.streams.items()}
        self._outputs = outputs
        self.observer.watch(self._queues, outputs)

        ready = [threading.Event() for _ in self.nodes]
        workers = [threading.Thread(target=self._stage_worker, name=f"stage-{n.name}",
                                    args=(n, self._queues[i], self._queues[i + 1], ready[i]), daemon=True)
                   for i, n in enumerate(self.nodes)]
        workers.append(threading.Thread(target=self._sink_worker, name="sinks",
                                        args=(self._queues[-1], outputs), daemon=True))
        for t in workers:
            t.start()
        readers = []
        try:
            if self._wait_ready(ready):
                readers = self._start_readers(self._queues[0])
            else:
                self._queues[0].close()
                for source in self._sources:
                    _close_quietly(source)
            self._join(readers, workers, on_progress, progress_interval_s)
        except KeyboardInterrupt:
            self.stop()
            try:
                self._join(readers, workers, on_progress, progress_interval_s)
            except KeyboardInterrupt:
                self.abort()
                self._join(readers, workers, None, progress_interval_s)
        return self._finish(outputs)

    # ------------------------------------------------------------ set-up
    def _register_streams(self) -> None:
        seen = set()
        for source in self._sources:
            name = safe_name(getattr(source, "name", None) or "stream")
            base, k = name, 2
            while name in seen:  # two inputs with the same name must not share a folder
                name, k = f"{base}-{k}", k + 1
            seen.add(name)
            source.name = name
            live = self._input_is_live(source)
            if self.policy == "block":
                live = False
            elif self.policy == "drop_oldest":
                live = True
            fps = getattr(source, "fps", None) or 25.0
            self.observer.add_stream(name, getattr(source, "uri_masked", name), live, float(fps), source,
                                     self._input_setting(source, "stall_timeout_s", self.stall_timeout_s))

    def _input_setting(self, source, key: str, by_name: dict):
        """A per-input setting: the one the source carries (``commands.run.open_sources`` puts it there,
        so it follows the input when the graph renames a duplicate name), else ``by_name[stream]``."""
        value = getattr(source, key, None)
        return by_name.get(source.name) if value is None else value

    def _input_is_live(self, source) -> bool:
        live = self._input_setting(source, "live_override", self.live_override)
        return bool(getattr(source, "is_live", False)) if live is None else bool(live)

    def _wait_ready(self, ready) -> bool:
        """Wait until every stage's setup ran; False if one failed (the error is recorded)."""
        for event in ready:
            while not event.wait(0.1):
                if self._first_error is not None:
                    return False
        return self._first_error is None

    def _start_readers(self, q0: FrameQueue) -> list[threading.Thread]:
        remaining = [len(self._sources)]
        lock = threading.Lock()

        def done():
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    q0.close()

        readers = [threading.Thread(target=self._reader, name=f"read-{s.name}", args=(s, q0, done), daemon=True)
                   for s in self._sources]
        for t in readers:
            t.start()
        if not readers:
            q0.close()
        return readers

    # ------------------------------------------------------------ threads
    def _reader(self, source, q0: FrameQueue, done: Callable[[], None]) -> None:
        stats = self.streams[source.name]
        limit = self.max_frames
        failed = False
        try:
            with source:
                for frame in source:
                    if self._stop.is_set():
                        break
                    if frame.stream != source.name:
                        frame.stream = source.name  # the graph's (deduplicated) name wins
                    now = time.monotonic()
                    frame.data["_t_in"] = now
                    read = self.observer.frame_in(source.name, now)
                    if not q0.put(frame, self._stop):
                        self._count_discard(q0, frame.stream)
                    if limit is not None and read >= limit:
                        break
        except PipelineError as e:
            failed = True
            self._record(e, stream=source.name, fatal=False)
        except Exception as e:  # a decoder fault we did not map: still one line, naming the input
            failed = True
            self._record(SourceError(stats.input, f"{type(e).__name__}: {e}"), stream=source.name, fatal=False)
        finally:
            self.observer.source_done(source.name, failed)
            q0.put(EndOfStream(source.name))
            done()

    def _stage_worker(self, node: StageNode, q_in: FrameQueue, q_out: FrameQueue, ready: threading.Event):
        stage = node.stage
        timeout_s = node.batch_timeout_ms / 1000.0
        try:
            try:
                cuda = CudaLink(stage) if CudaLink.wanted(stage) else None
                host = HostSide() if cuda is None else None
                stage.setup()
                self.observer.stage_ready(node.name, getattr(stage, "engine_info", None))
            except Exception as e:
                self._record(_as_stage_error(node.name, e, "setup"))
                self._discard(q_in.abandon(), REASON_STAGE_ERROR)
                return
            finally:
                ready.set()
            while True:
                batch = q_in.get_batch(node.batch, timeout_s)
                if batch is None:
                    break
                if not isinstance(batch[0], Frame):
                    q_out.put(batch[0])
                    continue
                try:
                    if cuda is not None:
                        cuda.before(batch)
                    else:
                        host.frames_to_host(batch)  # after GPU stages: wait, download once
                    done = self._process(node, batch)
                    if cuda is not None:
                        cuda.after(done)
                except Exception as e:
                    self._record(_as_stage_error(node.name, e))
                    self._discard(batch, REASON_STAGE_ERROR)
                    self._discard(q_in.abandon(), REASON_STAGE_ERROR)
                    break
                for frame in done:
                    if not q_out.put(frame, self._hard_stop):
                        self._count_discard(q_out, frame.stream)
        finally:
            try:
                stage.close()
            except Exception as e:
                self._record(_as_stage_error(node.name, e, "close"))
            q_out.close()

    def _process(self, node: StageNode, batch: list) -> list:
        """Run the stage on ``batch``, split where a stream restarts (reset before its frame)."""
        out = []
        start = 0
        for i in range(len(batch) + 1):
            reset = i < len(batch) and batch[i].data.get("stream_reset")
            if i == len(batch) or (reset and i > start):
                out.extend(self._call(node, batch[start:i]))
                start = i
            if reset:
                node.stage.reset_stream(batch[i].stream)
        return out

    def _call(self, node: StageNode, frames: list) -> Sequence[Frame]:
        t = time.perf_counter()
        result = node.stage.process(frames)
        seconds = time.perf_counter() - t
        engine = getattr(node.stage, "engine_info", None)
        # only a learned stage's calls say which streams ran on its engine (the others skip the list)
        self.observer.stage_call(node.name, seconds, len(frames), [f.stream for f in frames] if engine else (), engine)
        return frames if result is None else result

    def _sink_worker(self, q_in: FrameQueue, outputs: dict) -> None:
        try:
            while True:
                batch = q_in.get_batch(16, 0.0)
                if batch is None:
                    break
                for i, item in enumerate(batch):
                    if not isinstance(item, Frame):
                        self._finalise(outputs[item.stream])
                        continue
                    try:
                        self._write(item, outputs[item.stream])
                    except Exception:
                        self._discard([f for f in batch[i:] if isinstance(f, Frame)], REASON_STAGE_ERROR)
                        raise
        except Exception as e:
            self._record(e if isinstance(e, PipelineError) else StageError("sinks", f"{type(e).__name__}: {e}"))
            self._discard(q_in.abandon(), REASON_STAGE_ERROR)
        finally:
            for out in outputs.values():
                self._finalise(out)

    def _write(self, frame: Frame, out: StreamOutputs) -> None:
        # GPU stages ran asynchronously: wait for them, then download their device tensors
        self._sink_host.frame_to_host(frame)
        t = time.perf_counter()
        out.write(frame)
        self.observer.frame_written(frame, time.perf_counter() - t, time.monotonic())

    def _finalise(self, out: StreamOutputs) -> None:
        if not self.observer.stream_ended(out.stream):
            return
        try:
            out.close()
        except Exception as e:
            self._record(StageError(f"{out.stream}/outputs", f"cannot finalise: {type(e).__name__}: {e}"),
                         stream=out.stream)

    # ------------------------------------------------------------ bookkeeping
    def _record(self, error: Exception, stream: str | None = None, fatal: bool = True) -> None:
        """Remember an error; a fatal one (stage, sink) stops the whole run."""
        if not isinstance(error, PipelineError):
            error = StageError("graph", f"{type(error).__name__}: {error}")
        self.observer.error(error, stream)
        if fatal:
            self.stop(reason="error")

    def _discard(self, frames, reason: str) -> None:
        for f in frames:
            self.observer.dropped(f.stream, reason)

    def _count_discard(self, q: FrameQueue, stream: str) -> None:
        """A put was refused at shutdown or after an error (drop_oldest counts its own drops)."""
        reason = REASON_STAGE_ERROR if self._first_error is not None else REASON_SHUTDOWN
        self.observer.dropped(stream, reason)

    def _join(self, readers, workers, on_progress, interval) -> None:
        stopped_at = None
        next_summary = time.monotonic() + self.summary_interval_s if self.summary_interval_s > 0 else None
        while True:
            alive_readers = [t for t in readers if t.is_alive()]
            alive = alive_readers + [t for t in workers if t.is_alive()]
            if not alive:
                break
            if self._stop.is_set() and alive_readers:
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > READER_GRACE_S:
                    # a source stuck in a blocking read: give up on it, let the rest drain
                    for t in alive_readers:
                        name = t.name.removeprefix("read-")
                        self._record(SourceError(self.streams[name].input, "did not stop within "
                                                 f"{READER_GRACE_S:.0f} s; abandoned"), stream=name, fatal=False)
                    self._queues[0].close()
                    readers = []
            alive[0].join(interval)
            self._watch()
            if on_progress is not None:
                on_progress(self.progress())
            if next_summary is not None and time.monotonic() >= next_summary:
                self.observer.write_summaries(self._outputs, final=False)
                release_free_heap()  # a long run keeps no burst's high-water mark as resident memory
                next_summary = time.monotonic() + self.summary_interval_s

    def _watch(self) -> None:
        """Stalls (a live camera silent for its stall timeout: reconnect it) and rate-limited drop lines."""
        if self._stop.is_set():  # stopping: silent cameras are being closed, not stalled
            self.observer.log_drops()
            return
        for name in self.observer.check_stalls():
            source = next((s for s in self._sources if s.name == name), None)
            reconnect = getattr(source, "request_reconnect", None)
            if callable(reconnect):
                reconnect("stall")
        self.observer.log_drops()

    # ------------------------------------------------------------ summary
    def _finish(self, outputs: dict) -> RunReport:
        self.observer.collect_queue_drops()
        self.observer.log_drops(force=True)
        return self.observer.write_summaries(outputs, final=True)


def _as_stage_error(name: str, e: Exception, when: str = "") -> PipelineError:
    if isinstance(e, PipelineError):
        return e
    prefix = f"{when}: " if when else ""
    return StageError(f"stages.{name}", f"{prefix}{type(e).__name__}: {e}")


def _close_quietly(source) -> None:
    try:
        source.close()
    except Exception:
        log.debug("closing %r failed", source, exc_info=True)
