"""The streaming graph with real sources, stages and sinks.

Clips are encoded with PyAV in fixtures; frame counts are checked by decoding
the outputs independently with PyAV.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.config import OutputsConfig, config_from_dict
from pipeline.errors import ConfigError, SourceError, StageError
from pipeline.frame import Frame
from pipeline.graph import Graph, StageNode, build_stages, check_ports
from pipeline.sources import open_source
from pipeline.stages.base import Stage
from tests.media import write_clip

W, H = 96, 64


# ------------------------------------------------------------------ media helpers
def moving_square(i: int, w: int = W, h: int = H) -> np.ndarray:
    img = np.full((h, w, 3), 90, np.uint8)
    x = (i * 4) % (w - 16)
    cv2.rectangle(img, (x, 20), (x + 14, 34), (20, 200, 240), -1)
    return img


def encode_clip(path: Path, frames: int, fps: int = 25, codec: str = "mpeg4", fmt: str | None = None) -> Path:
    """A deterministic clip: a square moving over a grey background."""
    return write_clip(path, (moving_square(i) for i in range(frames)), fps=fps, codec=codec, fmt=fmt)


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return encode_clip(tmp_path_factory.mktemp("media") / "clip.avi", 40)


# ------------------------------------------------------------------ tiny sources and stages
class ListSource:
    """In-memory source: ``n`` frames, optionally paced, optionally failing after ``fail_after``."""

    def __init__(self, name, n, live=False, interval=0.0, fail_after=None, start=None):
        self.name, self.n, self.is_live, self.interval, self.fail_after = name, n, live, interval, fail_after
        self.start = start  # a threading.Barrier the readers pass together before their first frame
        self.uri_masked = f"list:{name}"
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closed = True

    def __iter__(self):
        if self.start is not None:
            self.start.wait(timeout=30)
        for i in range(self.n):
            if self.fail_after is not None and i == self.fail_after:
                raise SourceError(self.uri_masked, f"corrupt packet after frame {i}")
            if self.interval:
                time.sleep(self.interval)
            yield Frame(self.name, i + 1, i / 25, moving_square(i))


class MaskStage(Stage):
    """Threshold stage: writes ``mask``; raises on frame ``fail_at`` when set."""

    name = "testmask"
    inputs = ("image",)
    outputs = ("mask",)
    max_batch = 8

    def __init__(self, fail_at=None, delay=0.0):
        self.fail_at, self.delay = fail_at, delay
        self.batches, self.resets, self.closed = [], [], False

    def process(self, frames):
        self.batches.append([(f.stream, f.index) for f in frames])
        if self.delay:
            time.sleep(self.delay)
        for f in frames:
            if self.fail_at is not None and f.index == self.fail_at:
                raise RuntimeError(f"boom at {f.index}")
            f.data["mask"] = cv2.inRange(f.image, (0, 150, 150), (255, 255, 255))
        return frames

    def reset_stream(self, stream):
        self.resets.append(stream)

    def close(self):
        self.closed = True


class NeedsObjects(Stage):
    name = "needs"
    inputs = ("objects",)


def graph(tmp_path, nodes, **kw) -> Graph:
    outputs = kw.pop("outputs", OutputsConfig())
    return Graph(nodes, tmp_path / "out", outputs, **kw)


def real_nodes():
    config = config_from_dict({"stages": [{"dcp": {}}, {"mog2": {"history": 20, "batch": 4}}, {"blobs": {}}]})
    return build_stages(config.stages)


# ------------------------------------------------------------------ tests
def test_file_is_lossless_frames_in_equal_frames_out(tmp_path, clip):
    expected = count_frames(clip)
    report = graph(tmp_path, real_nodes()).run([open_source(str(clip))])
    assert report.error is None
    s = report.streams["clip"]
    assert s["frames"] == {"in": expected, "processed": expected, "dropped": 0, "dropped_by_reason": {}}
    folder = tmp_path / "out" / "clip"
    assert count_frames(folder / "dehazed.mp4") == expected
    assert count_frames(folder / "preview.mp4") == expected
    masks = sorted(p.name for p in (folder / "masks").iterdir())
    assert masks == [f"bin{i:06d}.png" for i in range(1, expected + 1)]
    events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["index"] for e in events] == list(range(1, expected + 1))
    assert events[-1]["objects"] and "box" in events[-1]["objects"][0] and "haze_score" in events[-1]
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["stages"]) == {"dcp", "mog2", "blobs", "sinks"}
    assert summary["stages"]["mog2"]["p99_ms"] >= summary["stages"]["mog2"]["p50_ms"] > 0
    assert summary["fps"] > 0 and summary["errors"] == []
    assert not partials(tmp_path)


def test_several_streams_share_one_graph_and_batches_mix_streams(tmp_path):
    stage = MaskStage(delay=0.01)
    # the readers start together: on a loaded machine one reader thread could otherwise push all
    # its frames before the next one was scheduled, and no batch could mix streams
    together = threading.Barrier(3)
    sources = [ListSource(n, 30, start=together) for n in ("a", "b", "c")]
    report = graph(tmp_path, [StageNode(stage, "testmask", batch=8, batch_timeout_ms=20)],
                   outputs=OutputsConfig(dehazed_video=False, preview=False)).run(sources)
    assert report.error is None
    for n in "abc":
        assert report.streams[n]["frames"]["processed"] == 30
        assert len(list((tmp_path / "out" / n / "masks").iterdir())) == 30
    assert max(len(b) for b in stage.batches) > 1
    assert any(len({s for s, _ in b}) > 1 for b in stage.batches), "no batch held frames of two streams"
    # order within each stream is kept
    for n in "abc":
        seen = [i for b in stage.batches for s, i in b if s == n]
        assert seen == list(range(1, 31))
    assert all(s.closed for s in sources) and stage.closed


def test_live_stream_drops_oldest_and_latency_stays_bounded(tmp_path):
    stage = MaskStage(delay=0.03)  # ~33 frames/s of capacity against a 200 frames/s camera
    source = ListSource("cam", 150, live=True, interval=0.005)
    report = graph(tmp_path, [StageNode(stage, "testmask")], queue_size=2,
                   outputs=OutputsConfig(dehazed_video=False, preview=False)).run([source])
    s = report.streams["cam"]
    f = s["frames"]
    assert s["live"] and s["policy"] == "drop_oldest"
    assert f["dropped"] > 50 and f["in"] == 150
    assert f["in"] == f["processed"] + f["dropped"]
    assert set(f["dropped_by_reason"]) <= {"queue full before testmask", "queue full before sinks"}
    # with 2 frames queued per hop, a frame waits a few stage calls, never the whole backlog
    # (150 frames at 30 ms would be a 4.5 s backlog without dropping)
    assert s["latency"]["end_to_end"]["p99_ms"] < 1000
    # survivors are in order and the newest frames made it
    indices = [i for b in stage.batches for _, i in b]
    assert indices == sorted(indices) and indices[-1] >= 148


def test_file_stream_blocks_instead_of_dropping(tmp_path):
    stage = MaskStage(delay=0.005)
    report = graph(tmp_path, [StageNode(stage, "testmask")], queue_size=1,
                   outputs=OutputsConfig(dehazed_video=False, preview=False, masks=False)).run(
        [ListSource("f", 60)])
    assert report.streams["f"]["frames"]["processed"] == 60 and report.streams["f"]["frames"]["dropped"] == 0


def test_stage_error_stops_and_keeps_what_was_processed(tmp_path):
    stage = MaskStage(fail_at=13)
    report = graph(tmp_path, [StageNode(stage, "testmask")]).run([ListSource("s", 200)])
    assert isinstance(report.error, StageError)
    assert report.error.input == "stages.testmask" and "boom at 13" in report.error.cause
    folder = tmp_path / "out" / "s"
    assert count_frames(folder / "dehazed.mp4") == 12
    assert sorted(p.name for p in (folder / "masks").iterdir())[-1] == "bin000012.png"
    assert len((folder / "events.jsonl").read_text().splitlines()) == 12
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["errors"][0]["where"] == "stages.testmask"
    f = summary["frames"]
    assert f["processed"] == 12 and f["in"] == f["processed"] + f["dropped"] and f["in"] < 200
    assert not partials(tmp_path) and stage.closed


def test_setup_error_is_reported_before_any_frame(tmp_path):
    class BadSetup(MaskStage):
        def setup(self):
            raise StageError("stages.testmask", "weights missing")

    source = ListSource("s", 10)
    report = graph(tmp_path, [StageNode(BadSetup(), "testmask")]).run([source])
    assert report.error.cause == "weights missing"
    assert report.streams["s"]["frames"]["in"] == 0 and source.closed


def test_source_fault_mid_stream_keeps_earlier_frames_and_other_streams(tmp_path):
    report = graph(tmp_path, [StageNode(MaskStage(), "testmask")],
                   outputs=OutputsConfig(preview=False)).run([ListSource("bad", 50, fail_after=17),
                                                              ListSource("good", 25)])
    assert isinstance(report.error, SourceError)
    assert report.streams["bad"]["frames"]["processed"] == 17
    assert report.streams["good"]["frames"]["processed"] == 25
    assert count_frames(tmp_path / "out" / "bad" / "dehazed.mp4") == 17
    bad = json.loads((tmp_path / "out" / "bad" / "summary.json").read_text())
    assert "corrupt packet" in bad["errors"][0]["error"]
    assert json.loads((tmp_path / "out" / "good" / "summary.json").read_text())["errors"] == []


def test_truncated_file_processes_the_frames_before_the_fault(tmp_path):
    clip = encode_clip(tmp_path / "whole.mkv", 40)  # Matroska opens when cut short (AVI/MP4 keep an index at the end)
    cut = tmp_path / "cut.mkv"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    report = graph(tmp_path, [StageNode(MaskStage(), "testmask")],
                   outputs=OutputsConfig(preview=False)).run([open_source(str(cut))])
    assert isinstance(report.error, SourceError)
    done = report.streams["cut"]["frames"]["processed"]
    assert 0 < done < count_frames(clip)
    assert count_frames(tmp_path / "out" / "cut" / "dehazed.mp4") == done
    assert len(list((tmp_path / "out" / "cut" / "masks").iterdir())) == done


def test_stop_drains_in_flight_frames_and_finalises(tmp_path):
    stage = MaskStage(delay=0.01)
    g = graph(tmp_path, [StageNode(stage, "testmask")], outputs=OutputsConfig(preview=False))

    def stop_when_running():
        while g.progress()["processed"] < 5:
            time.sleep(0.01)
        g.stop()

    threading.Thread(target=stop_when_running, daemon=True).start()
    report = g.run([ListSource("s", 100000, interval=0.002)])
    assert report.interrupted and report.error is None
    f = report.streams["s"]["frames"]
    assert 0 < f["processed"] and f["in"] == f["processed"] + f["dropped"]
    assert count_frames(tmp_path / "out" / "s" / "dehazed.mp4") == f["processed"]
    assert not partials(tmp_path)


def test_stream_reset_reaches_the_stage_before_its_frame(tmp_path):
    class ResettingSource(ListSource):
        def __iter__(self):
            for f in super().__iter__():
                if f.index == 5:
                    f.data["stream_reset"] = "resolution_change"
                yield f

    stage = MaskStage()
    graph(tmp_path, [StageNode(stage, "testmask", batch=8, batch_timeout_ms=50)],
          outputs=OutputsConfig(preview=False, dehazed_video=False)).run([ResettingSource("s", 8)])
    assert stage.resets == ["s"]
    first_after = next(b for b in stage.batches if ("s", 5) in b)
    assert first_after[0] == ("s", 5)  # the batch was split at the reset


def test_ports_are_checked_before_the_first_frame():
    with pytest.raises(ConfigError) as info:
        check_ports([StageNode(NeedsObjects(), "needs")])
    assert info.value.input == "stages.needs" and "'objects'" in info.value.cause
    check_ports(real_nodes())  # dcp -> mog2 -> blobs is consistent
    with pytest.raises(ConfigError):
        build_stages(config_from_dict({"stages": [{"blobs": {}}]}).stages) and \
            check_ports(build_stages(config_from_dict({"stages": [{"blobs": {}}]}).stages))


def test_batch_larger_than_the_stage_takes_is_refused():
    with pytest.raises(ConfigError) as info:
        build_stages(config_from_dict({"stages": [{"dcp": {"batch": 4}}]}).stages)
    assert info.value.input == "stages.dcp.batch"


def test_duplicate_stream_names_get_their_own_folders(tmp_path):
    report = graph(tmp_path, [StageNode(MaskStage(), "testmask")],
                   outputs=OutputsConfig(preview=False, dehazed_video=False)).run(
        [ListSource("cam", 3), ListSource("cam", 4), ListSource("../x", 2)])
    assert sorted(report.streams) == ["cam", "cam-2", "x"]
    assert len(list((tmp_path / "out" / "cam-2" / "masks").iterdir())) == 4


@pytest.mark.gpu
def test_gpu_stages_get_their_own_stream_and_sync_by_event(tmp_path):
    import torch

    class CudaInvert(Stage):
        name = "cudainvert"
        inputs = ("image",)
        outputs = ("dehazed",)
        wants_cuda_stream = True
        device = "cuda"

        def use_cuda_stream(self, stream):
            self.stream = stream

        def process(self, frames):
            with torch.cuda.stream(self.stream):
                for f in frames:
                    x = torch.from_numpy(f.image).to("cuda", non_blocking=True)
                    f.data["dehazed"] = 255 - x
            return frames

    stage = CudaInvert()
    report = graph(tmp_path, [StageNode(stage, "cudainvert")], outputs=OutputsConfig(preview=False)).run(
        [ListSource("g", 10)])
    assert report.error is None and stage.stream != torch.cuda.current_stream()
    first = next(iter(av.open(str(tmp_path / "out" / "g" / "dehazed.mp4")).decode(video=0)))
    assert abs(int(first.to_ndarray(format="bgr24")[0, 0, 0]) - (255 - 90)) < 8


@pytest.mark.rtsp
def test_real_rtsp_camera_under_a_slow_stage_drops_and_stays_fresh(tmp_path):
    from tests.rtsp_fixtures import RtspServer

    server = RtspServer(fps=25, size="160x120").start()
    try:
        source = open_source(server.url, name="cam", timeout=5.0)
        assert source.is_live
        stage = MaskStage(delay=0.08)  # ~12 frames/s against a 25 frames/s camera
        g = graph(tmp_path, [StageNode(stage, "testmask")], queue_size=2, outputs=OutputsConfig(preview=False))

        def stop_later():
            while g.progress()["processed"] < 15:
                time.sleep(0.05)
            g.stop()

        threading.Thread(target=stop_later, daemon=True).start()
        report = g.run([source])
    finally:
        server.stop()
    s = report.streams["cam"]
    f = s["frames"]
    assert s["policy"] == "drop_oldest" and f["dropped"] > 0
    assert f["in"] == f["processed"] + f["dropped"]
    assert s["latency"]["end_to_end"]["p99_ms"] < 1500
    videos = list((tmp_path / "out" / "cam" / "dehazed").glob("*.mp4"))  # a live camera records in segments
    assert sum(count_frames(v) for v in videos) == f["processed"] and not [v for v in videos if ".open" in v.name]
    assert not partials(tmp_path)


# ------------------------------------------------------------------ the queue on its own
def test_queue_drop_oldest_keeps_the_newest_and_counts_per_stream():
    from pipeline.queues import DROP_OLDEST, EndOfStream, FrameQueue

    q = FrameQueue(3, name="x", policy=DROP_OLDEST)
    q.put(EndOfStream("a"))  # control messages are never dropped
    for i in range(1, 8):
        assert q.put(Frame("a" if i % 2 else "b", i, None, np.zeros((1, 1, 3), np.uint8)))
    assert len(q) == 3 and q.dropped_total == 4
    assert q.drops == {("a", "queue full before x"): 2, ("b", "queue full before x"): 2}
    assert isinstance(q.get_batch(8)[0], EndOfStream)
    assert [f.index for f in q.get_batch(8)] == [5, 6, 7]


def test_queue_block_waits_for_room_and_gives_up_on_stop():
    from pipeline.queues import FrameQueue

    q = FrameQueue(1)
    q.put(Frame("f", 1, None, np.zeros((1, 1, 3), np.uint8)))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t = time.monotonic()
    assert q.put(Frame("f", 2, None, np.zeros((1, 1, 3), np.uint8)), stop) is False
    assert time.monotonic() - t >= 0.15 and len(q) == 1 and q.dropped_total == 0
    threading.Timer(0.1, lambda: q.get_batch(1)).start()
    assert q.put(Frame("f", 3, None, np.zeros((1, 1, 3), np.uint8))) is True
    q.close()
    assert [f.index for f in q.get_batch(4)] == [3] and q.get_batch(4) is None


def test_summary_is_rewritten_while_a_live_stream_runs(tmp_path):
    """A camera that runs for days (or a process killed mid-run) still leaves current numbers in summary.json."""
    source = ListSource("cam", 60, live=True, interval=0.02)  # ~1.2 s of camera
    g = graph(tmp_path, [StageNode(MaskStage(delay=0.03), "testmask")], queue_size=2, summary_interval_s=0.2,
              outputs=OutputsConfig(dehazed_video=False, preview=False, masks=False))
    seen = []

    def watch():
        path = tmp_path / "out" / "cam" / "summary.json"
        while t.is_alive():
            if path.is_file():
                seen.append(json.loads(path.read_text()))  # atomic rename: never a half-written file
            time.sleep(0.05)

    t = threading.Thread(target=g.run, args=([source],))
    t.start()
    watch()
    t.join()
    running = [s for s in seen if s["running"]]
    assert running, "no summary.json was written before the end"
    assert all(0 <= s["frames"]["processed"] <= 60 for s in running)
    assert max(s["frames"]["processed"] for s in running) > 0
    assert any(s["frames"]["dropped"] > 0 for s in running)  # the live queues' drops, counted while running
    final = json.loads((tmp_path / "out" / "cam" / "summary.json").read_text())
    assert final["running"] is False and final["frames"]["in"] == 60
    assert final["frames"]["in"] == final["frames"]["processed"] + final["frames"]["dropped"]
    run_level = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert run_level["running"] is False and run_level["frames"]["dropped"] == final["frames"]["dropped"]


def test_summary_interval_must_not_be_negative():
    from pipeline.config import RuntimeConfig

    with pytest.raises(ConfigError, match="runtime.summary_interval_s"):
        RuntimeConfig(summary_interval_s=-1)
