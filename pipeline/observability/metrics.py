"""Prometheus metrics, ``/healthz`` and ``/readyz`` on one port (``runtime.metrics``).

The numbers are the :class:`~pipeline.observability.stats.Observer`'s own, read
when Prometheus scrapes (a custom collector), so the frame path never touches
prometheus-client. Labels are stream, stage, queue and reason names: stream
names never hold credentials (sources build them without the user info) and
``input`` is the masked URL.

* ``/metrics``: the Prometheus text format (every other path too, as prometheus-client does)
* ``/healthz``: 200 while the process serves
* ``/readyz``: 200 while every stream produced a frame within its stall timeout, else 503 and
  the streams that did not, one per line
"""
from __future__ import annotations

import logging
import socketserver
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pipeline.errors import ConfigError
from pipeline.sources.base import mask_credentials

log = logging.getLogger("hazeflow.metrics")

PREFIX = "hazeflow"


class ObserverCollector:
    """A prometheus-client collector over one Observer."""

    def __init__(self, observer):
        self.observer = observer

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        ob = self.observer
        now = time.monotonic()
        pending = ob.pending_queue_drops()
        frames_in = CounterMetricFamily(f"{PREFIX}_frames_in", "Frames read from the input", labels=["stream"])
        processed = CounterMetricFamily(f"{PREFIX}_frames_processed", "Frames through every stage and written",
                                        labels=["stream"])
        dropped = CounterMetricFamily(f"{PREFIX}_frames_dropped", "Frames dropped, by reason",
                                      labels=["stream", "reason"])
        reconnects = CounterMetricFamily(f"{PREFIX}_reconnects", "Reconnections of a live input", labels=["stream"])
        stalls = CounterMetricFamily(f"{PREFIX}_stalls", "Times a live input sent nothing for its stall timeout",
                                     labels=["stream"])
        segments = CounterMetricFamily(f"{PREFIX}_segments", "Output segments started (video, preview and events "
                                       "files of one time span)", labels=["stream"])
        since = GaugeMetricFamily(f"{PREFIX}_seconds_since_last_frame", "Seconds since the input's last frame",
                                  labels=["stream"])
        stalled = GaugeMetricFamily(f"{PREFIX}_stream_stalled", "1 while the input is stalled", labels=["stream"])
        gate = GaugeMetricFamily(f"{PREFIX}_dehaze_active", "1 when the haze gate ran dehazing on the last frame",
                                 labels=["stream"])
        score = GaugeMetricFamily(f"{PREFIX}_haze_score", "Haze score of the last frame", labels=["stream"])
        info = GaugeMetricFamily(f"{PREFIX}_stream_info", "The stream's input (URL masked) and policy",
                                 labels=["stream", "input", "policy"])
        with ob.lock:
            streams = list(ob.streams.values())
            rows = [(s.name, s.input, s.live, s.frames_in, s.processed, dict(s.dropped), s.stalls,
                     s.stalled_since is not None, ob.segments(s.name), s.dehaze_applied, s.haze_score,
                     s.t_last_in) for s in streams]
        for (name, input_, live, fin, done, drops, n_stalls, is_stalled, segs, applied, hscore, last) in rows:
            frames_in.add_metric([name], fin)
            processed.add_metric([name], done)
            for (stream, reason), n in pending.items():
                if stream == name:
                    drops[reason] = drops.get(reason, 0) + n
            for reason, n in drops.items():
                dropped.add_metric([name, reason], n)
            source = ob.sources.get(name)
            reconnects.add_metric([name], getattr(source, "reconnects", 0) or 0)
            stalls.add_metric([name], n_stalls)
            stalled.add_metric([name], 1.0 if is_stalled else 0.0)
            segments.add_metric([name], segs)
            ref = last if last is not None else ob.t0
            if ref is not None:
                since.add_metric([name], now - ref)
            if applied is not None:
                gate.add_metric([name], 1.0 if applied else 0.0)
            if hscore is not None:
                score.add_metric([name], hscore)
            info.add_metric([name, mask_credentials(input_), "drop_oldest" if live else "block"], 1.0)
        yield from (frames_in, processed, dropped, reconnects, stalls, segments, since, stalled, gate, score, info)

        latency = HistogramMetricFamily(f"{PREFIX}_stage_latency_seconds",
                                        "Duration of the stage call each frame was in", labels=["stage"])
        for stats in list(ob.stages.values()) + [ob.sinks]:
            latency.add_metric([stats.name], stats.histogram.cumulative(), stats.histogram.sum)
        yield latency

        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Frames waiting in front of a stage", labels=["queue"])
        capacity = GaugeMetricFamily(f"{PREFIX}_queue_capacity", "Queue size", labels=["queue"])
        blocked = CounterMetricFamily(f"{PREFIX}_queue_blocked_puts",
                                      "Lossless puts that waited for room (backpressure)", labels=["queue"])
        blocked_s = CounterMetricFamily(f"{PREFIX}_queue_blocked_seconds", "Time lossless puts waited for room",
                                        labels=["queue"])
        for name, q in ob.queue_stats().items():
            depth.add_metric([name], q["depth"])
            capacity.add_metric([name], q["capacity"])
            blocked.add_metric([name], q["blocked_puts"])
            blocked_s.add_metric([name], q["blocked_s"])
        yield from (depth, capacity, blocked, blocked_s)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # scrapes every few seconds would flood stderr
        pass


class MetricsServer:
    """Serves one Observer on ``host:port`` from a daemon thread; ``port=0`` takes a free port.

    A context manager: ``close()`` stops serving and frees the port.
    """

    def __init__(self, observer, port: int, host: str = "127.0.0.1"):
        from prometheus_client import CollectorRegistry, make_wsgi_app

        self.observer = observer
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ObserverCollector(observer))
        self._metrics_app = make_wsgi_app(registry)
        try:
            self._httpd = make_server(host, port, self._app, _Server, handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError("runtime.metrics", f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, self.port,
                 extra={"event": "metrics"})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _plain(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            bad = self.observer.readiness()
            if bad:
                return _plain(start_response, "503 Service Unavailable",
                              "".join(f"{name}: {why}\n" for name, why in sorted(bad.items())))
            return _plain(start_response, "200 OK", "ready\n")
        return self._metrics_app(environ, start_response)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _plain(start_response, status: str, body: str):
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


def serve_metrics(config, observer) -> MetricsServer | None:
    """Start the endpoint of ``runtime.metrics`` (None: no endpoint)."""
    if config is None:
        return None
    return MetricsServer(observer, config.port, config.host)
