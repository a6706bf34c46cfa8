"""Per-stream ring buffer of the last T frames (MSFgNet's BENet input).

Each stream gets one preallocated array of 2*T slots and every frame is written
twice, at ``i`` and ``i + T``. The T most recent frames are then always one
contiguous slice, so ``window()`` returns a view (oldest -> newest) with no
copy and no per-frame allocation. The buffer of a stream is reallocated (and
its history forgotten) when the frame shape or dtype changes: a camera that
comes back at another resolution starts a fresh window.

Camera-motion compensation (``pipeline.stabilize``): a frame may be pushed with
its ``pose`` (3x3, from its stream's :class:`pipeline.stabilize.Stabilizer`) and
epoch; ``aligned`` then returns chosen frames of the window warped into the
newest one, plus the pixels most of them could not fill (unknown). Frames are kept
as they were seen, so ``window`` is unchanged and a pose is only applied when
it is read.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.stabilize import DEAD_BAND, coverage, displacement, relation


class _Ring:
    __slots__ = ("slots", "T", "next", "count", "poses", "epochs", "picked", "cover", "unknown")

    def __init__(self, T: int, shape: tuple, dtype):
        self.slots = np.empty((2 * T, *shape), dtype=dtype)
        self.T = T
        self.next = 0   # slot the next frame goes to, in [0, T)
        self.count = 0  # frames held, at most T
        self.poses = None    # (2T, 3, 3) float64, NaN = no pose; allocated at the first pose
        self.epochs = None   # (2T,) int64
        self.picked = None   # reused outputs of aligned()
        self.cover = self.unknown = None

    def push(self, image: np.ndarray, pose, epoch: int) -> None:
        i = self.next
        self.slots[i] = image
        self.slots[i + self.T] = image
        if pose is not None or self.poses is not None:
            if self.poses is None:
                self.poses = np.full((2 * self.T, 3, 3), np.nan)
                self.epochs = np.full(2 * self.T, -1, np.int64)
            self.poses[i] = self.poses[i + self.T] = np.nan if pose is None else pose
            self.epochs[i] = self.epochs[i + self.T] = epoch
        self.next = (i + 1) % self.T
        self.count = min(self.count + 1, self.T)

    def span(self) -> slice:
        # the newest frame is at next-1 (and next-1+T); the window ends there
        end = self.next + self.T
        return slice(end - self.count, end)

    def window(self) -> np.ndarray:
        return self.slots[self.span()]


def _closer(warped: np.ndarray, seen: np.ndarray, newest: np.ndarray, cover: np.ndarray) -> bool:
    """Is the warped past frame nearer the newest than the frame as seen (mean |difference| where
    the warp brings pixels, on every 4th row and column)? A wrong registration that looked
    confident fails this."""
    grid = (slice(None, None, 4), slice(None, None, 4))
    inside = cover[grid].astype(bool)
    if not inside.any():
        return False
    now = newest[grid].astype(np.int16)
    return np.abs(warped[grid] - now)[inside].mean() < np.abs(seen[grid] - now)[inside].mean()


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

    def push(self, stream: str, image: np.ndarray, pose: np.ndarray | None = None, epoch: int = -1) -> bool:
        """Append a frame; True if this started a fresh window (first frame or new shape).

        ``pose``/``epoch``: the frame's registration (``pipeline.stabilize.Motion``), used by ``aligned``.
        """
        ring = self._rings.get(stream)
        fresh = ring is None or ring.slots.shape[1:] != image.shape or ring.slots.dtype != image.dtype
        if fresh:
            if ring is not None:
                self.resets[stream] = self.resets.get(stream, 0) + 1
            ring = self._rings[stream] = _Ring(self.T, image.shape, image.dtype)
        ring.push(image, pose, epoch)
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

    def aligned(self, stream: str, picks: np.ndarray,
                dead_band: float = DEAD_BAND) -> tuple[np.ndarray, np.ndarray | None]:
        """Frames ``picks`` (indices into ``window``) warped into the newest frame's pixels.

        Returns ``(frames, unknown)``: frames (len(picks), *frame_shape), a buffer reused until the
        next call for this stream, where a warped frame has no pixel it holds its own nearest edge
        pixel (replicated); unknown (H, W) uint8, 1 where more than half of the past frames picked
        had no pixel (reported, not used to mask: docs/stabilize.md), or None when nothing was
        warped. A frame is left as it was
        seen when it or the newest frame has no pose, when they belong to different epochs, or when
        the relation moves nothing by more than ``dead_band`` pixels, or when the warped frame is not
        nearer the newest than the frame as seen (mean absolute difference where the warp brings pixels).
        """
        ring = self._rings.get(stream)
        if ring is None:
            raise KeyError(f"no frames buffered for stream {stream!r}")
        span = ring.span()
        held = ring.slots[span]
        if ring.picked is None or ring.picked.shape[0] != len(picks):
            ring.picked = np.empty((len(picks), *held.shape[1:]), held.dtype)
        out = ring.picked
        np.take(held, picks, axis=0, out=out)
        if ring.poses is None:
            return out, None
        poses, epochs = ring.poses[span], ring.epochs[span]
        newest = len(held) - 1
        current = poses[newest]
        if np.isnan(current[0, 0]):
            return out, None
        h, w = held.shape[1:3]
        unknown = None
        for k, j in enumerate(picks):
            if j == newest or epochs[j] != epochs[newest] or np.isnan(poses[j][0, 0]):
                continue
            m = relation(current, poses[j])
            if displacement(m, (w, h)) <= dead_band:
                continue
            if ring.unknown is None:
                ring.unknown = np.empty((h, w), np.uint8)
                ring.cover = np.empty((h, w), np.uint8)
            cover = coverage(m, (w, h), (h, w), ring.cover)
            # where the past frame has no pixel, its nearest edge is carried on (replicated): a
            # vehicle on the picture's border is then a change the network can see
            cv2.warpAffine(held[j], m[:2], (w, h), dst=out[k], flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
            if not _closer(out[k], held[j], held[newest], cover):
                out[k] = held[j]  # the warp does not explain the change: never worse than none
                continue
            if unknown is None:
                unknown = ring.unknown
                unknown[:] = 0
            np.add(unknown, cover ^ 1, out=unknown)  # past frames with no pixel here
        if unknown is not None:
            np.greater(unknown, (len(picks) - 1) / 2, out=unknown)
        return out, unknown

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
