"""RtspSource against a real gst-rtsp-server on 127.0.0.1: read, reconnect, time out, give up."""
from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest

from pipeline.errors import SourceError
from pipeline.sources import RESET_RECONNECT, open_source
from pipeline.sources.rtsp import RtspSource
from tests.rtsp_fixtures import RtspServer, encode_h264_clip, free_port

pytestmark = pytest.mark.rtsp

FAST = dict(timeout=2.0, backoff_initial=0.2, backoff_max=0.8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return encode_h264_clip(tmp_path_factory.mktemp("rtsp") / "clip.mp4", frames=40)


@pytest.fixture
def pattern_server():
    server = RtspServer().start()
    yield server
    server.stop()


def take(source, n):
    return [next(source) for _ in range(n)]


def test_frames_equal_the_served_clip(clip):
    with av.open(str(clip)) as container:
        expected = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    with RtspServer(file=clip) as server, open_source(server.url, **FAST) as source:
        assert isinstance(source, RtspSource) and source.is_live
        frames = take(source, 20)
    # the same H.264 bit stream through the same decoder: identical pictures
    assert [f.index for f in frames] == list(range(1, 21))
    for frame, picture in zip(frames, expected):
        assert np.array_equal(frame.image, picture)
    assert all(b.pts >= a.pts for a, b in zip(frames, frames[1:]))
    assert source.frames_read == 20 and source.events == []


def test_reconnects_with_backoff_after_server_killed(pattern_server):
    with RtspSource(pattern_server.url, **FAST) as source:
        before = take(source, 5)
        pattern_server.kill()
        # the camera comes back 1.5 s later on the same port, at another resolution
        pattern_server.size = "160x120"
        threading.Timer(1.5, pattern_server.start).start()
        after = []
        for frame in source:  # frames still buffered come first
            after.append(frame)
            if frame.size == (160, 120) or len(after) > 500:
                break
        after += take(source, 5)
    kinds = [e["kind"] for e in source.events]
    assert "disconnect" in kinds and "reconnect" in kinds and "resolution_change" in kinds
    assert kinds.count("connect_failed") >= 1  # it retried while the server was down
    assert source.reconnects == 1
    first_new = next(f for f in after if f.size == (160, 120))
    assert first_new.data.get("stream_reset") == RESET_RECONNECT
    assert all(f.size == (160, 120) for f in after[after.index(first_new):])
    indices = [f.index for f in before + after]
    assert indices == list(range(1, len(indices) + 1))
    assert before[0].size == (320, 240)


def test_hung_server_times_out_instead_of_blocking(pattern_server):
    source = RtspSource(pattern_server.url, timeout=1.0, backoff_initial=0.1, backoff_max=0.1, max_attempts=1)
    with source:
        take(source, 3)
        pattern_server.pause()
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="unreachable after 1 attempts"):
            for _ in range(1000):  # frames already buffered may still arrive
                next(source)
        elapsed = time.monotonic() - t0
    pattern_server.resume()
    assert elapsed < 10, f"blocked {elapsed:.1f} s with a 1 s timeout"
    assert [e["kind"] for e in source.events][-1] == "give_up"


def test_unreachable_port_gives_a_clear_error_after_retries():
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/test"
    source = RtspSource(url, timeout=1.0, backoff_initial=0.05, backoff_max=0.1, max_attempts=3)
    with source, pytest.raises(SourceError) as info:
        next(source)
    message = str(info.value)
    assert "unreachable after 3 attempts" in message and "s3cret" not in message
    assert "rtsp://admin:***@127.0.0.1" in message
    assert [e["kind"] for e in source.events] == ["connect_failed"] * 3 + ["give_up"]
    assert all("s3cret" not in e["message"] for e in source.events)
    assert "s3cret" not in source.name and "s3cret" not in repr(source)


def test_credentials_reach_the_server_but_no_log(caplog):
    server = RtspServer(user="viewer", password="pa55word").start()
    try:
        with RtspSource(server.url, **FAST) as source:
            frame = next(source)
        assert frame.size == (320, 240)
        wrong = server.url.replace("pa55word", "wrong")
        with RtspSource(wrong, timeout=2.0, backoff_initial=0.05, max_attempts=1) as bad, \
                pytest.raises(SourceError) as info:
            next(bad)
        assert "wrong" not in str(info.value) and "viewer:***@" in str(info.value)
    finally:
        server.stop()
    assert "pa55word" not in caplog.text and "wrong@" not in caplog.text


def test_close_from_another_thread_ends_the_reader(pattern_server):
    source = RtspSource(pattern_server.url, timeout=1.0, backoff_initial=0.1, backoff_max=0.2)
    got = []

    def read():
        for frame in source:
            got.append(frame.index)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    pattern_server.pause()  # the reader now blocks inside FFmpeg
    time.sleep(0.3)
    source.close()
    reader.join(timeout=5)
    pattern_server.resume()
    assert not reader.is_alive(), "reader still blocked after close()"
    assert got and source.closed


def test_looping_file_server_streams_without_disconnects(tmp_path):
    clip = encode_h264_clip(tmp_path / "short.mp4", frames=15)
    with RtspServer(file=clip, loop=True) as server, RtspSource(server.url, **FAST) as source:
        frames = take(source, 35)
    assert source.events == []  # the server seeks back; the client sees one endless stream
    assert np.array_equal(frames[0].image, frames[15].image)  # the same key frame again
