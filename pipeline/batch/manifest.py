"""``DIR/batch.jsonl``: the append-only record of a batch, one JSON line per state change.

States of an input: ``queued``; ``running`` (with ``worker`` and ``attempt``);
``done`` (``frames``, ``seconds``); ``failed`` (``error``, the one-line cause).
Only the driver writes, one line at a time, flushed and fsynced, so a killed
driver loses at most the line it was writing; a torn last line is ignored when
the manifest is read back. Nothing is ever rewritten: the state of an input is
the last line that names it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.sources import mask_credentials

MANIFEST_NAME = "batch.jsonl"
STATES = ("queued", "running", "done", "failed")


@dataclass
class History:
    """What the manifest says about one input."""

    name: str
    state: str = "queued"
    failures: int = 0          # attempts that ended in ``failed``
    attempts: int = 0          # attempts started (``running`` lines)
    last: dict | None = None   # the last line


class Manifest:
    """Appends state lines to ``path``; ``history()`` replays what is already there."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")
        self._end_torn_line()

    def _end_torn_line(self) -> None:
        """A driver killed mid-line left no newline: close that line so the next one stands alone."""
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() == 0:
            return
        self._file.seek(-1, os.SEEK_END)
        if self._file.read(1) != b"\n":
            self._file.write(b"\n")
            self._sync()

    def append(self, state: str, input: str, name: str, **fields) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "state": state,
                "input": mask_credentials(input), "name": name}
        line.update({k: v for k, v in fields.items() if v is not None})
        self._file.write((json.dumps(line, sort_keys=False) + "\n").encode("utf-8"))
        self._sync()
        return line

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_history(path: str | Path) -> dict[str, History]:
    """input -> History, from the lines of an existing manifest (none when it does not exist)."""
    path = Path(path)
    out: dict[str, History] = {}
    if not path.exists():
        return out
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = json.loads(raw)
                state, uri, name = line["state"], line["input"], line["name"]
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a killed driver
            h = out.setdefault(uri, History(name))
            h.name, h.state, h.last = name, state, line
            if state == "running":
                h.attempts += 1
            elif state == "failed":
                h.failures += 1
    return out
