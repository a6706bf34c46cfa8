"""Errors the pipeline raises on purpose.

Every one of them ends up on stderr as ``hazeflow: error: <input>: <cause>``.
Subclasses also inherit the matching built-in so callers can catch either.
"""
from __future__ import annotations


class PipelineError(Exception):
    """Base of all expected failures; ``input`` names what was wrong."""

    def __init__(self, input: str, cause: str):
        super().__init__(f"{input}: {cause}")
        self.input = str(input)
        self.cause = cause


class ConfigError(PipelineError, ValueError):
    """A configuration file or value is invalid."""


class SourceNotFoundError(PipelineError, FileNotFoundError):
    """An input path does not exist."""


class SourceError(PipelineError, IOError):
    """An input could not be opened or decoded (corrupt, truncated, unreachable)."""


class WeightsError(PipelineError, ValueError):
    """Weights or engine files are missing, corrupt or do not match their manifest."""


class StageError(PipelineError, RuntimeError):
    """A stage failed while processing frames."""
