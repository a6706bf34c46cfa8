"""Observability: metrics and health endpoint, log lines, stalls, queue reset markers and isolation.

Real graph, real queues, real HTTP server on 127.0.0.1; in-memory sources from
tests/test_graph.py pace frames like a camera.
"""
from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import OutputsConfig, config_from_dict
from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.graph import StageNode
from pipeline.observability.logs import configure_logging
from pipeline.observability.metrics import MetricsServer
from pipeline.queues import DROP_OLDEST, FrameQueue
from tests.test_graph import ListSource, MaskStage, graph

NO_VIDEO = OutputsConfig(dehazed_video=False, preview=False, masks=False)


class PausingSource(ListSource):
    """A live camera that goes silent for ``pause_s`` after frame ``pause_at``."""

    def __init__(self, name, n, interval, pause_at, pause_s):
        super().__init__(name, n, live=True, interval=interval)
        self.pause_at, self.pause_s = pause_at, pause_s
        self.uri_masked = f"rtsp://admin:***@127.0.0.1:1/{name}"
        self.reconnect_requests = []

    def request_reconnect(self, reason):
        self.reconnect_requests.append((time.monotonic(), reason))

    def __iter__(self):
        for frame in super().__iter__():
            if frame.index == self.pause_at:
                time.sleep(self.pause_s)
            yield frame


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} of a Prometheus text page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


@pytest.fixture
def log_lines():
    buffer = io.StringIO()
    configure_logging("json", stream=buffer)
    yield lambda: [json.loads(x) for x in buffer.getvalue().splitlines()]
    configure_logging("text")


def test_stall_is_detected_counted_logged_and_served_by_readyz(tmp_path, log_lines):
    source = PausingSource("cam", 70, interval=0.01, pause_at=30, pause_s=1.2)
    g = graph(tmp_path, [StageNode(MaskStage(), "testmask")], outputs=NO_VIDEO, stall_timeout_s={"cam": 0.5})
    seen = {"ready": [], "metrics": None}
    with MetricsServer(g.observer, port=0) as server:
        t = threading.Thread(target=g.run, args=([source],))
        t.start()
        while t.is_alive():
            seen["ready"].append((time.monotonic(), *get(server.url + "/readyz")))
            status, text = get(server.url + "/metrics")
            if status == 200 and "hazeflow_frames_in_total" in text:
                seen["metrics"] = text
            time.sleep(0.05)
        t.join()
        assert get(server.url + "/healthz")[0] == 200
    final = json.loads((tmp_path / "out" / "cam" / "summary.json").read_text())
    assert final["stalls"] == 1 and final["frames"]["processed"] == 70
    codes = [code for _, code, _ in seen["ready"]]
    first_200 = codes.index(200)  # before the first frame: 503, "no frame yet"
    stalled = next(i for i, c in enumerate(codes) if i > first_200 and c == 503)
    assert seen["ready"][stalled][2].startswith("cam: no frame for")
    assert 200 in codes[stalled:], "never ready again after the camera came back"
    # the watchdog asked the source to reconnect, about stall_timeout_s after the last frame
    assert [r for _, r in source.reconnect_requests] == ["stall"]
    events = log_lines()
    stall = [e for e in events if e["event"] == "stall"]
    assert len(stall) == 1 and stall[0]["stream"] == "cam" and stall[0]["level"] == "WARNING"
    end = [e for e in events if e["event"] == "stall_end"]
    assert len(end) == 1 and 1.0 <= end[0]["stalled_s"] <= 2.0
    m = samples(seen["metrics"])
    assert m[("hazeflow_frames_in_total", frozenset({("stream", "cam")}))] > 0
    assert ("hazeflow_stage_latency_seconds_bucket", frozenset({("stage", "testmask"), ("le", "+Inf")})) in m
    assert "***" in seen["metrics"] and "admin:" in seen["metrics"]  # the masked input, never a password


def test_metrics_count_frames_drops_and_queues_while_running(tmp_path):
    stage = MaskStage(delay=0.03)  # ~33 frames/s against a 200 frames/s camera: drops
    source = ListSource("cam", 120, live=True, interval=0.005)
    g = graph(tmp_path, [StageNode(stage, "testmask")], queue_size=2, outputs=NO_VIDEO)
    pages = []
    with MetricsServer(g.observer, port=0) as server:
        t = threading.Thread(target=g.run, args=([source],))
        t.start()
        while t.is_alive():
            pages.append(samples(get(server.url + "/metrics")[1]))
            time.sleep(0.1)
        t.join()
        last = samples(get(server.url + "/metrics")[1])
    cam = frozenset({("stream", "cam")})
    assert last[("hazeflow_frames_in_total", cam)] == 120
    drops = sum(v for (name, labels), v in last.items() if name == "hazeflow_frames_dropped_total")
    assert drops == 120 - last[("hazeflow_frames_processed_total", cam)] > 0
    # while running: drops already visible, queue depth never above capacity
    assert any(v > 0 for p in pages for (n, _), v in p.items() if n == "hazeflow_frames_dropped_total")
    depths = [v for p in pages for (n, _), v in p.items() if n == "hazeflow_queue_depth"]
    assert depths and max(depths) <= 2
    count = last[("hazeflow_stage_latency_seconds_count", frozenset({("stage", "testmask")}))]
    assert count == stage_frames(stage) and last[("hazeflow_seconds_since_last_frame", cam)] >= 0


def stage_frames(stage) -> int:
    return sum(len(b) for b in stage.batches)


def test_metrics_port_in_use_is_one_config_error(tmp_path):
    g = graph(tmp_path, [StageNode(MaskStage(), "testmask")])
    with MetricsServer(g.observer, port=0) as first:
        with pytest.raises(ConfigError) as info:
            MetricsServer(g.observer, port=first.port)
    assert info.value.input == "runtime.metrics" and str(first.port) in info.value.cause


def test_metrics_config_is_checked_by_key():
    config = config_from_dict({"runtime": {"metrics": {"port": 9464}}})
    assert config.runtime.metrics.port == 9464 and config.runtime.metrics.host == "127.0.0.1"
    for raw, key in (({"port": "x"}, "runtime.metrics.port"), ({"port": 70000}, "runtime.metrics.port"),
                     ({}, "runtime.metrics.port"), ({"port": 1, "hots": "a"}, "runtime.metrics.hots"),
                     (9464, "runtime.metrics")):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"runtime": {"metrics": raw}})
        assert info.value.input == key, (raw, info.value)
    with pytest.raises(ConfigError, match="stall_timeout_s must be > 0"):
        config_from_dict({"inputs": [{"uri": "a.mp4", "stall_timeout_s": 0}]})


def test_text_log_lines_name_the_stream_and_mask_passwords():
    buffer = io.StringIO()
    configure_logging("text", stream=buffer)
    try:
        log = logging.getLogger("hazeflow.sources")
        log.warning("cam1: connect failed: rtsp://admin:hunter2@10.0.0.9/live", extra={"stream": "cam1",
                                                                                        "event": "connect_failed"})
        log.debug("not shown without --verbose")
        configure_logging("json", verbose=True, stream=buffer)
        log.debug("cam2: %s", "rtsp://u:p4ss@h/x", extra={"stream": "cam2", "event": "probe"})
    finally:
        configure_logging("text")
    text, js = buffer.getvalue().splitlines()
    assert "WARNING hazeflow.sources [cam1] connect_failed: cam1: connect failed: rtsp://admin:***@10.0.0.9/live" in text
    assert "hunter2" not in buffer.getvalue() and "p4ss" not in buffer.getvalue()
    record = json.loads(js)
    assert record["stream"] == "cam2" and record["event"] == "probe" and record["level"] == "DEBUG"
    assert record["message"] == "cam2: rtsp://u:***@h/x"


# ------------------------------------------------------------------ queues: reset markers, isolation, backpressure
def frame(stream, i, reset=None):
    f = Frame(stream, i, None, np.zeros((1, 1, 3), np.uint8))
    if reset:
        f.data["stream_reset"] = reset
    return f


def test_drop_oldest_never_loses_a_reset_marker():
    q = FrameQueue(2, name="x", policy=DROP_OLDEST)
    q.put(frame("a", 1, reset="reconnect"))
    q.put(frame("a", 2))
    q.put(frame("a", 3))  # drops a1; its marker moves to a2
    got = q.get_batch(8)
    assert [f.index for f in got] == [2, 3] and got[0].data["stream_reset"] == "reconnect"
    # the marker frame is the only one of its stream: another stream's frame goes instead
    q.put(frame("b", 1, reset="resolution_change"))
    q.put(frame("c", 1))
    q.put(frame("c", 2))
    got = q.get_batch(8)
    assert [(f.stream, f.index) for f in got] == [("b", 1), ("c", 2)]
    assert got[0].data["stream_reset"] == "resolution_change" and q.drops == {("a", "queue full before x"): 1,
                                                                               ("c", "queue full before x"): 1}
    # nothing else to drop and the newcomer carries a marker: kept, one over capacity
    q.put(frame("d", 1, reset="reconnect"))
    q.put(frame("e", 1, reset="reconnect"))
    q.put(frame("f", 1, reset="reconnect"))
    assert [f.stream for f in q.get_batch(8)] == ["d", "e", "f"]


def test_a_flooding_stream_drops_its_own_frames_not_its_neighbours():
    q = FrameQueue(4, name="x", policy=DROP_OLDEST)
    taken = []
    for i in range(1, 201):  # the consumer takes one frame per four of the flood
        q.put(frame("flood", i))
        if i % 10 == 0:
            q.put(frame("calm", i // 10))
        if i % 4 == 0:
            taken += q.get_batch(1)
    taken += q.get_batch(8)
    assert [f.index for f in taken if f.stream == "calm"] == list(range(1, 21))  # every calm frame kept
    assert set(q.drops) == {("flood", "queue full before x")}
    assert len(taken) + q.dropped_total == 220


def test_backpressure_of_a_lossless_queue_is_counted_per_stage(tmp_path):
    report = graph(tmp_path, [StageNode(MaskStage(delay=0.01), "testmask")], queue_size=1,
                   outputs=NO_VIDEO).run([ListSource("f", 30)])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    q = summary["queues"]["testmask"]
    assert report.streams["f"]["frames"]["dropped"] == 0
    assert q["blocked_puts"] > 10 and q["blocked_s"] > 0.05 and q["high_water"] == 1 and q["dropped"] == 0


def test_a_hung_camera_does_not_slow_the_others(tmp_path):
    hung = PausingSource("hung", 40, interval=0.02, pause_at=5, pause_s=2.0)
    others = [ListSource(n, 100, live=True, interval=0.02) for n in ("a", "b", "c")]  # 50 frames/s each, 2 s
    g = graph(tmp_path, [StageNode(MaskStage(), "testmask", batch=4, batch_timeout_ms=5)], outputs=NO_VIDEO,
              stall_timeout_s={"hung": 0.5})
    t0 = time.monotonic()
    report = g.run([hung] + others)
    for n in "abc":
        s = report.streams[n]
        assert s["frames"]["processed"] == 100 and s["stalls"] == 0
        # 100 frames paced at 20 ms: about 2 s of camera; a blocked graph would add the 2 s pause
        assert s["fps"] > 35, s["fps"]
    assert report.streams["hung"]["stalls"] == 1 and time.monotonic() - t0 < 6


def test_hazeflow_run_serves_metrics_while_running_and_frees_the_port(tmp_path, capsys):
    from pipeline import cli

    config = tmp_path / "live.yaml"
    config.write_text(json.dumps({
        "inputs": [{"uri": "synthetic:traffic?size=96x64&frames=40&seed=3", "name": "cam", "live": True}],
        "output": str(tmp_path / "out"), "stages": [{"mog2": {}}, {"blobs": {}}],
        "outputs": {"preview": False, "masks": False},
        "runtime": {"metrics": {"port": 0}, "summary_interval_s": 0}}))
    try:
        status = cli.main(["run", str(config), "--no-progress", "--log-format", "json"])
    finally:
        configure_logging("text")
    err = capsys.readouterr().err.splitlines()
    assert status == 0, err
    lines = [json.loads(x) for x in err if x.startswith("{")]
    served = [e for e in lines if e["event"] == "metrics"]
    assert len(served) == 1 and served[0]["logger"] == "hazeflow.metrics"
    url = served[0]["message"].split()[2]  # "metrics on http://127.0.0.1:PORT/metrics (...)"
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    with pytest.raises(urllib.error.URLError):  # closed with the run
        urllib.request.urlopen(url, timeout=2)
    summary = json.loads((tmp_path / "out" / "cam" / "summary.json").read_text())
    assert summary["live"] and summary["stalls"] == 0 and summary["frames"]["in"] == 40


class GateStage(MaskStage):
    """MaskStage that also records a haze-gate decision, as the dehaze stage does."""

    def process(self, frames):
        for f in frames:
            f.data["haze_score"] = 0.01 * f.index
            f.data["dehaze_applied"] = f.index % 2 == 0
        return super().process(frames)


def test_a_reset_marker_survives_a_saturated_live_graph(tmp_path):
    class Resetting(ListSource):
        def __iter__(self):
            for f in super().__iter__():
                if f.index in (20, 60):
                    f.data["stream_reset"] = "reconnect"
                yield f

    stage = GateStage(delay=0.03)  # far slower than the camera: most frames are dropped
    g = graph(tmp_path, [StageNode(stage, "testmask")], queue_size=2, outputs=NO_VIDEO)
    with MetricsServer(g.observer, port=0) as server:
        report = g.run([Resetting("cam", 100, live=True, interval=0.002)])
        m = samples(get(server.url + "/metrics")[1])
    assert report.streams["cam"]["frames"]["dropped"] > 50
    assert stage.resets == ["cam", "cam"]  # both markers reached the stage, each before a later frame
    cam = frozenset({("stream", "cam")})
    last = max(i for b in stage.batches for _, i in b)
    assert m[("hazeflow_dehaze_active", cam)] == float(last % 2 == 0)
    assert m[("hazeflow_haze_score", cam)] == pytest.approx(0.01 * last)


def test_a_flooding_camera_does_not_take_its_neighbours_frames(tmp_path):
    flood = ListSource("flood", 1500, live=True, interval=0.001)  # up to 1000 frames/s
    calm = [ListSource(n, 40, live=True, interval=0.04) for n in ("a", "b")]  # 25 frames/s each
    report = graph(tmp_path, [StageNode(MaskStage(delay=0.005), "testmask", batch=4, batch_timeout_ms=2)],
                   queue_size=4, outputs=NO_VIDEO).run([flood] + calm)
    assert report.streams["flood"]["frames"]["dropped"] > 100
    # the calm cameras lose a frame only when the sinks stall long enough to fill their fair share;
    # dropping the oldest frame of any stream cost them 11-24 of their 80 frames in four trials
    calm_dropped = sum(report.streams[n]["frames"]["dropped"] for n in "ab")
    assert calm_dropped <= 2 and all(report.streams[n]["frames"]["in"] == 40 for n in "ab"), report.streams


def test_two_inputs_with_one_name_keep_their_own_stall_timeout_and_live(tmp_path):
    from pipeline.commands.run import graph_for, open_sources

    uri = "synthetic:traffic?size=96x64&frames=5&seed={}"
    config = config_from_dict({
        "inputs": [{"uri": uri.format(1), "name": "cam", "stall_timeout_s": 2, "live": True},
                   {"uri": uri.format(2), "name": "cam", "stall_timeout_s": 7, "live": False},
                   {"uri": uri.format(3), "name": "cam"}],
        "output": str(tmp_path / "out"), "stages": [{"mog2": {}}, {"blobs": {}}],
        "outputs": {"preview": False, "masks": False, "dehazed_video": False}})
    sources = open_sources(config)
    g = graph_for(config, [StageNode(MaskStage(), "testmask")], sources)
    report = g.run(sources)
    # the graph renames the duplicates; each keeps its own input's settings, not the last "cam"'s
    assert {n: s.stall_timeout_s for n, s in g.streams.items()} == {"cam": 2.0, "cam-2": 7.0, "cam-3": 10.0}
    assert {n: s["live"] for n, s in report.streams.items()} == {"cam": True, "cam-2": False, "cam-3": False}
    assert all(s["frames"]["in"] == 5 for s in report.streams.values())  # the live one may drop


class FallbackStage(MaskStage):
    """MaskStage whose engine falls back to another backend once it ran ``switch_at`` frames of every
    stream in ``streams``, as a learned stage's engine_info would say."""

    def __init__(self, switch_at, streams):
        super().__init__()
        self.switch_at, self.seen = switch_at, dict.fromkeys(streams, 0)
        self.engine_info = {"backend": "tensorrt", "precision": "fp16", "device": "cuda", "chosen_by": "configured"}

    def process(self, frames):
        for f in frames:
            self.seen[f.stream] += 1
        if min(self.seen.values()) >= self.switch_at:
            self.engine_info = {"backend": "onnxruntime", "precision": "fp32", "device": "cpu",
                                "chosen_by": "auto (portable fallback: test)"}
        return super().process(frames)


def test_an_engine_change_is_one_info_line_per_stream(tmp_path, log_lines):
    together = threading.Barrier(2)
    # paced at 10 ms: both streams still have about 25 frames to go when the engine changes
    sources = [ListSource(n, 30, interval=0.01, start=together) for n in ("a", "b")]
    stage = FallbackStage(switch_at=5, streams="ab")
    report = graph(tmp_path, [StageNode(stage, "testmask", batch=4)], outputs=NO_VIDEO).run(sources)
    engine = [e for e in log_lines() if e["event"] == "engine"]
    assert [e["level"] for e in engine] == ["INFO"] * 4, engine
    for name in "ab":
        mine = [e["message"] for e in engine if e["stream"] == name]
        assert mine == [f"{name}: testmask runs on tensorrt fp16 cuda (configured)",
                        f"{name}: testmask engine changed from tensorrt fp16 cuda to onnxruntime fp32 cpu "
                        "(auto (portable fallback: test))"], engine
        assert report.streams[name]["engines"] == {"testmask": "onnxruntime fp32 cpu"}


def test_a_real_learned_stage_logs_its_engine_once_per_stream(tmp_path, log_lines):
    from pipeline.stages.msfgnet import MsfgnetStage

    stage = MsfgnetStage(MsfgnetStage.Config(backend="onnxruntime", threads=1))
    sources = [ListSource(n, 6) for n in ("a", "b")]
    report = graph(tmp_path, [StageNode(stage, "msfgnet", batch=2)], outputs=NO_VIDEO).run(sources)
    assert report.error is None
    engine = [e for e in log_lines() if e["event"] == "engine"]
    assert sorted(e["stream"] for e in engine) == ["a", "b"]  # once each, not once per call
    assert all(e["message"].endswith("msfgnet runs on onnxruntime fp32 cpu (configured)") for e in engine), engine
    assert report.streams["a"]["engines"] == {"msfgnet": "onnxruntime fp32 cpu"}


def test_an_input_that_cannot_be_opened_is_listed_and_not_ready(tmp_path):
    from pipeline.errors import SourceError
    from pipeline.observability import Observer

    ob = Observer(tmp_path)
    ob.input_failed(SourceError("rtsp://admin:secret@127.0.0.1:1/x", "cannot open rtsp://admin:secret@127.0.0.1:1/x"))
    ob.start()
    assert ob.readiness() == {"rtsp://admin:***@127.0.0.1:1/x": "cannot be opened"}
    assert ob.first_error is None  # the inputs that did open still run
    ob.write_summaries({}, final=True)
    text = (tmp_path / "summary.json").read_text()
    assert "secret" not in text and json.loads(text)["failed_inputs"][0]["where"] == "rtsp://admin:***@127.0.0.1:1/x"
