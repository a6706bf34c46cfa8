"""``hazeflow run [CONFIG] [--input URI ...] [--output DIR] ...``: run the graph.

Loads the config (``configs/default.yaml`` when none is given), applies the
command-line overrides, opens every input, builds the stages and runs the
graph. Exit status: 0 when every input was processed to its end, 130 after
Ctrl-C (outputs of the processed frames are still finalised), otherwise the
first error is raised as a one-line ``PipelineError`` after ``summary.json``
has recorded it. An input that cannot be opened (missing, unreadable) does not
stop the others: they run to their end, then each failed input gets its own
``hazeflow: error: <input>: <cause>`` line and the exit status is non-zero
(``summary.json`` lists them under ``failed_inputs``).
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from pipeline.config import load_config, with_overrides
from pipeline.errors import ConfigError, PipelineError, SourceError, SourceNotFoundError
from pipeline.graph import Graph, build_stages
from pipeline.observability.metrics import serve_metrics


def open_sources(config, failed: list | None = None) -> list:
    """Open every input, before any thread starts.

    Each source carries its input's ``stall_timeout_s`` and ``live`` (``Graph`` reads them there, so
    they follow the input when two inputs share a name and the graph renames one). Without
    ``failed`` the first input that cannot be opened raises (nothing is left open); with a list,
    an input that is missing or unreadable (``SourceError``, ``SourceNotFoundError``) is appended to
    it and the others are still opened. A ``ConfigError`` (a bad option) always raises.
    """
    from pipeline.sources import open_source

    sources = []
    try:
        for item in config.inputs:
            try:
                source = open_source(item.uri, name=item.name, **dict(item.options))
            except (SourceError, SourceNotFoundError) as e:
                if failed is None:
                    raise
                failed.append(e)
                continue
            source.stall_timeout_s = item.stall_timeout_s
            source.live_override = item.live
            sources.append(source)
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


class Progress:
    """tqdm bar over processed frames (total known for files), with frames/s and drops."""

    def __init__(self, sources, enabled: bool, max_frames: int | None = None):
        self.bar = None
        if not enabled:
            return
        from tqdm import tqdm

        totals = [_frame_count(s) for s in sources]
        if max_frames is not None:
            totals = [max_frames if t is None else min(t, max_frames) for t in totals]
        total = sum(totals) if all(t is not None for t in totals) else None
        self.bar = tqdm(total=total, unit="frame", dynamic_ncols=True, leave=True, file=sys.stderr)

    def __call__(self, p: dict) -> None:
        if self.bar is None:
            return
        self.bar.n = p["processed"]
        self.bar.set_postfix(fps=f"{p['fps']:.1f}", dropped=p["dropped"], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _frame_count(source):
    for attr in ("declared_frames", "frame_count", "total_frames"):
        n = getattr(source, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    try:
        n = len(source)
        return n if n > 0 else None
    except TypeError:
        return None


def graph_for(config, nodes, sources) -> Graph:
    """The graph ``config`` describes over ``nodes``; closes ``sources`` when it cannot be built.

    ``hazeflow batch`` calls this for every input with the same (already set up) nodes.
    """
    try:
        return Graph(nodes, config.output, config.outputs, queue_size=config.runtime.queue_size,
                     policy=config.runtime.policy, max_frames=config.runtime.max_frames,
                     summary_interval_s=config.runtime.summary_interval_s)  # live, stall_timeout_s: on the sources
    except BaseException:
        for s in sources:
            s.close()
        raise


def main(args) -> int:
    config = load_config(args.config)
    config = with_overrides(config, inputs=args.input, output=args.output, backend=args.backend,
                            device=args.device, max_frames=args.max_frames)
    if not config.inputs:
        raise ConfigError("inputs", "no input: give --input URI or list `inputs:` in the config")
    nodes = build_stages(config.stages)
    failed: list = []  # inputs that cannot be opened: the others still run, each gets its error line
    sources = open_sources(config, failed)
    if not sources:
        _print_failures(failed[:-1])
        raise failed[-1]
    graph = graph_for(config, nodes, sources)
    for error in failed:
        graph.observer.input_failed(error)
    try:
        metrics = serve_metrics(config.runtime.metrics, graph.observer)
    except BaseException:
        for s in sources:
            s.close()
        raise
    show = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    progress = Progress(sources, show, config.runtime.max_frames)
    restore = _sigterm_as_interrupt()
    try:
        report = graph.run(sources, on_progress=progress if show else None)
    finally:
        if show:
            progress(graph.progress())
        progress.close()
        restore()
        if metrics is not None:
            metrics.close()
    _print_outputs(report, Path(config.output))
    if report.interrupted:
        _print_failures(failed)
        print("hazeflow: interrupted; outputs of the processed frames were kept", file=sys.stderr)
        return 130
    if report.error is None and not failed:
        return 0
    # one line per failed input: those that could not be opened, then those that broke while read (a
    # stage or sink error is one line of its own: the run's first error); cli prints the raised one last
    last = report.error if report.error is not None else failed[-1]
    lines = [(e.input, e.cause) for e in failed]
    lines += [(x["where"], x["error"]) for x in report.errors
              if x not in report.failed_inputs and x["type"] in _INPUT_ERRORS]
    if (last.input, last.cause) in lines:
        lines.remove((last.input, last.cause))
    _print_failures(lines)
    raise last


_INPUT_ERRORS = (SourceError.__name__, SourceNotFoundError.__name__)


def _print_failures(errors) -> None:
    """``hazeflow: error: <input>: <cause>`` per failure (``PipelineError`` or ``(input, cause)``)."""
    for e in errors:
        where, cause = (e.input, e.cause) if isinstance(e, PipelineError) else e
        print(f"hazeflow: error: {where}: {cause}", file=sys.stderr)


def _sigterm_as_interrupt():
    """SIGTERM (a service manager stopping us) shuts down like Ctrl-C: outputs are finalised."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _print_outputs(report, root: Path) -> None:
    for name, stream in report.streams.items():
        f = stream["frames"]
        fps = f"{stream['fps']:.1f} frames/s" if stream["fps"] else "-"
        drops = f", {f['dropped']} dropped" if f["dropped"] else ""
        print(f"{name}: {f['processed']}/{f['in']} frames{drops}, {fps} -> {root / name}/")
        for path in stream["outputs"]:
            print(f"  {root / name / path}")
        print(f"  {root / name / 'summary.json'}")
