"""Observability: what a run counts, the summaries written from it, metrics, health and logs.

The graph reports events to one :class:`Observer` (frames read, stage calls,
frames written, drops with their reason, errors, stalls); the observer keeps
the numbers and writes ``summary.json``. Prometheus (``metrics``) and logging
(``logs``) are views of it: the graph knows neither.

* :mod:`~pipeline.observability.stats`: ``Observer``, ``StreamStats``, ``StageStats``, ``RunReport``
* :mod:`~pipeline.observability.metrics`: ``/metrics``, ``/healthz``, ``/readyz`` (prometheus-client)
* :mod:`~pipeline.observability.logs`: ``configure_logging`` (text or JSON lines on stderr, URLs masked)
"""
from __future__ import annotations

from pipeline.observability.stats import (DEFAULT_STALL_TIMEOUT_S, Observer, RunReport, StageStats,
                                          StreamStats)

__all__ = ["Observer", "RunReport", "StageStats", "StreamStats", "DEFAULT_STALL_TIMEOUT_S"]
