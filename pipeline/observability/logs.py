"""Log lines on stderr: one line per event, text or JSON, credentials masked.

Every logger of the project lives under ``hazeflow`` (``hazeflow.graph``,
``hazeflow.sources``, ``hazeflow.sinks``, ...). A record may carry ``stream``
(the stream name) and ``event`` (``stall``, ``reconnect``, ``drop``, ...) as
``extra``; both formats show them. Whatever a message holds, a URL with a
password is masked before it is written (``rtsp://user:***@host``), so a
log line can never leak a camera's password even when a caller forgot to mask.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys

from pipeline.sources.base import mask_credentials

LOG_FORMATS = ("text", "json")
ROOT_LOGGER = "hazeflow"
#: record attributes that are not "extra" fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _timestamp(record: logging.LogRecord) -> str:
    t = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``2026-12-02T02:15:00.123Z WARNING hazeflow.graph [cam1] stall: cam1: stalled: ...``"""

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        stream = extras.get("stream")
        event = extras.get("event")
        head = f"{_timestamp(record)} {record.levelname} {record.name}"
        if stream:
            head += f" [{stream}]"
        line = f"{head} {event + ': ' if event else ''}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_credentials(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, stream, event, message and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _timestamp(record), "level": record.levelname, "logger": record.name}
        extras = _extras(record)
        out["stream"] = extras.pop("stream", None)
        out["event"] = extras.pop("event", None)
        out["message"] = record.getMessage()
        out.update(extras)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return mask_credentials(json.dumps(out, default=str))


class _HazeflowHandler(logging.StreamHandler):
    """The handler ``configure_logging`` installed (a second call replaces it). Without a stream
    of its own it writes to whatever ``sys.stderr`` is at the time of the record, so a test or a
    caller that swaps stderr never leaves it writing to a closed file."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self._own = stream  # StreamHandler put sys.stderr of this moment there; None means "of each record"

    @property
    def stream(self):
        return self._own if self._own is not None else sys.stderr

    @stream.setter
    def stream(self, value):
        self._own = value


def configure_logging(fmt: str = "text", verbose: bool = False, stream=None, quiet: bool = False) -> logging.Logger:
    """Send the ``hazeflow`` loggers to ``stream`` (default: stderr) as ``fmt`` lines; INFO (WARNING
    if ``quiet``), or DEBUG if ``verbose``.

    Idempotent: a second call replaces the handler of the first (tests call it
    more than once in one process). Records still propagate to the root logger,
    which has no handler of its own in the command line.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _HazeflowHandler)]:
        logger.removeHandler(handler)
    handler = _HazeflowHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    return logger
