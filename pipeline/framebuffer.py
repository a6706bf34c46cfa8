"""Per-stream ring buffer of the last T frames (MSFgNet's BENet input).

Each stream gets one preallocated array of 2*T slots and every frame is written
twice, at ``i`` and ``i + T``. The T most recent frames are then always one
contiguous slice, so ``window()`` returns a view (oldest -> newest) with no
copy and no per-frame allocation. The buffer of a stream is reallocated (and
its history forgotten) when the frame shape or dtype changes: a camera that
comes back at another resolution starts a fresh window.
"""
from __future__ import annotations

import numpy as np


class _Ring:
    __slots__ = ("slots", "T", "next", "count")

    def __init__(self, T: int, shape: tuple, dtype):
        self.slots = np.empty((2 * T, *shape), dtype=dtype)
        self.T = T
        self.next = 0   # slot the next frame goes to, in [0, T)
        self.count = 0  # frames held, at most T

    def push(self, image: np.ndarray) -> None:
        i = self.next
        self.slots[i] = image
        self.slots[i + self.T] = image
        self.next = (i + 1) % self.T
        self.count = min(self.count + 1, self.T)

    def window(self) -> np.ndarray:
        # the newest frame is at next-1 (and next-1+T); the window ends there
        end = self.next + self.T
        return self.slots[end - self.count:end]


class FrameBuffer:
    """``FrameBuffer(T)``: the last ``T`` frames of every stream.

    >>> fb = FrameBuffer(3)
    >>> fb.push("cam", image)          # HxWx3 uint8, or any fixed-shape array
    >>> fb.is_full("cam"), fb.window("cam").shape   # (True, (3, H, W, 3)) after 3 pushes

    ``window`` is a read-only view valid until the next ``push`` of that stream;
    pass ``copy=True`` to keep it longer.
    """

    def __init__(self, T: int):
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        self.T = int(T)
        self._rings: dict[str, _Ring] = {}
        #: stream -> times its history was dropped (resolution change or reset)
        self.resets: dict[str, int] = {}

    def push(self, stream: str, image: np.ndarray) -> bool:
        """Append a frame; True if this started a fresh window (first frame or new shape)."""
        ring = self._rings.get(stream)
        fresh = ring is None or ring.slots.shape[1:] != image.shape or ring.slots.dtype != image.dtype
        if fresh:
            if ring is not None:
                self.resets[stream] = self.resets.get(stream, 0) + 1
            ring = self._rings[stream] = _Ring(self.T, image.shape, image.dtype)
        ring.push(image)
        return fresh

    def window(self, stream: str, copy: bool = False) -> np.ndarray:
        """The held frames of ``stream`` stacked oldest -> newest, shape (n, *frame_shape), n <= T."""
        ring = self._rings.get(stream)
        if ring is None:
            raise KeyError(f"no frames buffered for stream {stream!r}")
        view = ring.window()
        if copy:
            return view.copy()
        view = view.view()
        view.flags.writeable = False
        return view

    def is_full(self, stream: str) -> bool:
        ring = self._rings.get(stream)
        return ring is not None and ring.count == self.T

    def count(self, stream: str) -> int:
        ring = self._rings.get(stream)
        return 0 if ring is None else ring.count

    def reset(self, stream: str) -> None:
        """Forget the history of ``stream`` (keeps the allocation for the same shape)."""
        ring = self._rings.get(stream)
        if ring is not None:
            ring.next = ring.count = 0
            self.resets[stream] = self.resets.get(stream, 0) + 1

    def drop(self, stream: str) -> None:
        """Free the memory of a stream that ended."""
        self._rings.pop(stream, None)

    def __contains__(self, stream: str) -> bool:
        return stream in self._rings

    def streams(self) -> list[str]:
        return list(self._rings)
