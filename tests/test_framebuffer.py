"""FrameBuffer: last T frames per stream, oldest -> newest, reset on a new resolution."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.framebuffer import FrameBuffer


def frame(value: int, h: int = 4, w: int = 6) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_window_is_oldest_to_newest_and_holds_the_last_T():
    fb = FrameBuffer(3)
    for v in range(1, 8):
        fb.push("cam", frame(v))
        expected = list(range(max(1, v - 2), v + 1))
        assert [int(x[0, 0, 0]) for x in fb.window("cam")] == expected
    assert fb.is_full("cam") and fb.count("cam") == 3


def test_not_full_until_T_frames():
    fb = FrameBuffer(4)
    for v in range(3):
        fb.push("cam", frame(v))
        assert not fb.is_full("cam")
    fb.push("cam", frame(3))
    assert fb.is_full("cam")
    assert not fb.is_full("other")


def test_streams_are_independent():
    fb = FrameBuffer(2)
    fb.push("a", frame(1))
    fb.push("b", frame(10))
    fb.push("a", frame(2))
    assert [int(x[0, 0, 0]) for x in fb.window("a")] == [1, 2]
    assert [int(x[0, 0, 0]) for x in fb.window("b")] == [10]


def test_resolution_change_starts_a_fresh_window():
    fb = FrameBuffer(3)
    for v in range(3):
        fb.push("cam", frame(v))
    assert fb.push("cam", frame(9, h=8, w=10)) is True
    w = fb.window("cam")
    assert w.shape == (1, 8, 10, 3) and int(w[0, 0, 0, 0]) == 9
    assert not fb.is_full("cam")
    assert fb.resets["cam"] == 1


def test_storage_is_preallocated_and_window_is_a_view():
    fb = FrameBuffer(3)
    fb.push("cam", frame(1))
    storage = fb._rings["cam"].slots
    for v in range(2, 20):
        fb.push("cam", frame(v))
    assert fb._rings["cam"].slots is storage  # no reallocation per frame
    w = fb.window("cam")
    assert np.shares_memory(w, storage) and w.flags.c_contiguous
    assert not w.flags.writeable
    kept = fb.window("cam", copy=True)
    fb.push("cam", frame(99))
    assert [int(x[0, 0, 0]) for x in kept] == [17, 18, 19]


def test_reset_forgets_history():
    fb = FrameBuffer(2)
    fb.push("cam", frame(1))
    fb.push("cam", frame(2))
    fb.reset("cam")
    assert fb.count("cam") == 0 and not fb.is_full("cam")
    fb.push("cam", frame(3))
    assert [int(x[0, 0, 0]) for x in fb.window("cam")] == [3]


def test_errors():
    with pytest.raises(ValueError):
        FrameBuffer(0)
    with pytest.raises(KeyError):
        FrameBuffer(2).window("nobody")
