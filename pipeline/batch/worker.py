"""One batch worker: the stages set up once, then one input after the other through ``hazeflow run``'s graph.

A work unit runs entirely inside the worker: decode, models, encode and the
output files. Only a small result (state, frames, seconds, the one-line cause
of a failure) goes back to the driver, so frames never cross a process or
machine boundary.

Outputs of one input are written to ``DIR/.batch-tmp/<name>.<worker>.<attempt>/``
and, once ``check_output_set`` confirms them, renamed to ``DIR/<name>/`` in one
``os.rename``. A worker that dies mid-file leaves only the hidden temporary
folder; a rename onto an existing folder fails, so two attempts of one input
can never both publish.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import time
from pathlib import Path

from pipeline.config import InputConfig
from pipeline.errors import PipelineError, SourceError, StageError
from pipeline.graph import CudaLink, StageNode, build_stages
from pipeline.sinks import inside, safe_name
from pipeline.sinks.segments import OPEN_TAG

#: hidden folder under DIR that holds outputs still being written
TMP_DIR = ".batch-tmp"


class ResidentStage:
    """A stage that stays set up across inputs.

    The graph calls ``setup`` (a no-op once the stage holds its runner) and
    ``close`` for every input; here ``close`` only forgets the per-stream state
    of the input that just ended, and the models stay loaded. Everything else
    is the wrapped stage's own.
    """

    def __init__(self, stage, stream: str):
        self._stage = stage
        self._stream_name = stream

    def __getattr__(self, name):
        return getattr(self._stage, name)

    def close(self) -> None:
        self._stage.reset_stream(self._stream_name)


class BatchWorker:
    """Builds the stages of ``config`` once and processes work units with them.

    Stages without a CUDA stream are set up here, so a missing or corrupt
    weights file fails the worker before any input is taken; a GPU stage is set
    up by the first graph, in its worker thread with its CUDA stream (the graph
    reuses that stream for later inputs).
    """

    def __init__(self, config, root: str | Path):
        self.config = config
        self.root = Path(root)
        self.label = f"{socket.gethostname()}:{os.getpid()}"
        self.nodes = build_stages(config.stages)
        try:
            for node in self.nodes:
                if not CudaLink.wanted(node.stage):
                    node.stage.setup()
        except BaseException:
            self.close()
            raise

    def info(self) -> dict:
        return {"worker": self.label}

    def process(self, unit: dict) -> dict:
        """Run one input to its published output folder; never raises for a bad input."""
        t0 = time.monotonic()
        uri, name, attempt = unit["input"], unit["name"], int(unit.get("attempt", 1))
        result = {"worker": self.label, "attempt": attempt}
        tmp = inside(self.root, TMP_DIR, f"{safe_name(name)}.{os.getpid()}.{attempt}")
        try:
            final = inside(self.root, safe_name(name))
            frames = self._run(uri, name, tmp)
            published = publish(tmp / safe_name(name), final)
            result.update(state="done", frames=frames, seconds=round(time.monotonic() - t0, 3))
            if not published:
                result["note"] = "another attempt had already published this input; kept that one"
        except PipelineError as e:
            result.update(state="failed", error=one_line(f"{e.input}: {e.cause}"))
        except Exception as e:  # anything unexpected is still one line about this input
            result.update(state="failed", error=one_line(f"{unit.get('masked', name)}: {type(e).__name__}: {e}"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result.setdefault("seconds", round(time.monotonic() - t0, 3))
        return result

    def _run(self, uri: str, name: str, tmp: Path) -> int:
        from pipeline.commands.run import graph_for, open_sources

        shutil.rmtree(tmp, ignore_errors=True)
        config = dataclasses.replace(self.config, inputs=(InputConfig(uri=uri, name=name),), output=str(tmp))
        nodes = [StageNode(ResidentStage(n.stage, safe_name(name)), n.name, n.batch, n.batch_timeout_ms)
                 for n in self.nodes]
        sources = open_sources(config)
        report = graph_for(config, nodes, sources).run(sources)
        if report.error is not None:
            raise report.error
        if report.interrupted:
            raise StageError(uri, "interrupted")
        return check_output_set(tmp / safe_name(name))

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.stage.close()
            except Exception:  # closing is best effort at worker exit
                pass


def publish(folder: Path, final: Path) -> bool:
    """Rename a checked output folder to its final name; False if that name is taken already."""
    try:
        os.rename(folder, final)
        return True
    except OSError:
        if final.is_dir():  # another attempt of the same input won the race: keep one set
            check_output_set(final)
            return False
        raise


def check_output_set(folder: Path) -> int:
    """Frames processed if ``folder`` holds a complete output set, else SourceError naming what is off.

    Complete: ``summary.json`` is final, has no errors, every frame read was
    processed, every output it lists exists, each video holds as many frames as
    were processed, ``masks/`` as many files and ``events.jsonl`` as many lines
    (segments of an output counted together); no partial or open file is left.
    """
    where = str(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        frames = summary["frames"]
        processed = int(frames["processed"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(where, f"no readable summary.json ({type(e).__name__})") from None
    if summary.get("running") or summary.get("interrupted"):
        raise SourceError(where, "summary.json is not final (the run was stopped)")
    if summary.get("errors"):
        first = summary["errors"][0]
        raise SourceError(where, f"the run recorded an error: {first.get('where')}: {first.get('error')}")
    if processed < 1:
        raise SourceError(where, "no frame was decoded")
    if int(frames.get("in", -1)) != processed or int(frames.get("dropped", 0)) != 0:
        raise SourceError(where, f"{frames.get('in')} frames read but {processed} processed")
    for kind, n in _frames_per_output(folder, summary.get("outputs", [])).items():
        if n != processed:
            raise SourceError(str(folder / kind), f"holds {n} frames, summary.json says {processed}")
    unfinished = next((p for p in folder.rglob("*") if p.name.endswith(".partial") or OPEN_TAG in p.name), None)
    if unfinished is not None:
        raise SourceError(where, f"unfinished file left: {unfinished.name}")
    return processed


def _frames_per_output(folder: Path, outputs: list[str]) -> dict[str, int]:
    """Frames each output holds: video frames, mask files, event lines.

    An output is one file (``dehazed.mp4``) or, with ``outputs.segment_s``, a folder of segments
    (``dehazed/<start>.mp4``, ``masks/<start>/``); the segments of one output add up.
    """
    totals: dict[str, int] = {}
    for rel in outputs:
        path = inside(folder, rel)
        if not path.exists():
            raise SourceError(str(path), "listed in summary.json but missing")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        kind = Path(Path(rel).parts[0]).stem  # dehazed.mp4 and dehazed/ are both "dehazed"
        for f in files:
            if f.suffix == ".mp4":
                n = video_frames(f)
            elif f.suffix == ".png":
                n = 1
            elif f.suffix == ".jsonl":
                with open(f, "rb") as lines:
                    n = sum(1 for _ in lines)
            else:
                continue
            totals[kind] = totals.get(kind, 0) + n
    return totals


def video_frames(path: Path) -> int:
    """Frames in a video the sinks wrote: the count the container declares, else decoded."""
    import av

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for _ in c.decode(stream))
    except Exception as e:  # a file that does not open is not complete
        raise SourceError(str(path), f"cannot read back ({type(e).__name__})") from None


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
