"""Bounded queue between two workers of the graph.

Two policies, chosen per item so that files and live cameras can share a graph:

* ``block`` (files): ``put`` waits while the queue is full. Nothing is lost;
  a slow stage slows the reader down (backpressure).
* ``drop_oldest`` (live): ``put`` never waits. When the queue is full the oldest
  *live* frame in it is dropped and counted per (stream, reason), so latency
  stays bounded by the queue length instead of growing without limit.

Control messages (end of stream) are never dropped and do not count against
the capacity: losing one would leave a stream's outputs unfinished. Stream
resets travel in band, as ``frame.data["stream_reset"]`` (see sources/base.py);
``drop_oldest`` never loses one: the marker of a dropped frame moves to the
next frame of its stream, and a frame that carries the only marker of its
stream is not chosen as the victim.

Isolation: the victim is the oldest frame of the stream that holds the most
frames in the queue, so a camera that floods the graph drops its own frames
rather than those of the cameras beside it.

A ``block`` put that has to wait is backpressure, not loss: it is counted
(``blocked_puts``, ``blocked_s``) so a slow stage shows where it sits.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from pipeline.frame import Frame

#: the in-band reset marker of a frame (pipeline.sources.base)
RESET_KEY = "stream_reset"

BLOCK = "block"
DROP_OLDEST = "drop_oldest"


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """No more frames of ``stream`` will follow (its outputs can be finalised)."""

    stream: str


class FrameQueue:
    """Thread-safe bounded FIFO of Frames and control messages.

    ``policy``: ``block`` or ``drop_oldest`` for every frame; with ``block``,
    ``live_streams`` still names streams whose frames follow ``drop_oldest``
    (files and cameras sharing one graph). ``close()`` is called by the producer when it is
    done; ``get_batch`` then returns what is left and finally ``None``.
    ``abandon()`` is called by the consumer when it stops early (an error):
    items in the queue and any put afterwards are discarded without blocking.
    """

    def __init__(self, maxsize: int, name: str = "", live_streams=(), reason: str | None = None,
                 policy: str = BLOCK):
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if policy not in (BLOCK, DROP_OLDEST):
            raise ValueError(f"policy must be {BLOCK!r} or {DROP_OLDEST!r}, got {policy!r}")
        self.policy = policy
        self.maxsize = maxsize
        self.name = name
        self.live_streams = frozenset(live_streams)
        self.reason = reason or (f"queue full before {name}" if name else "queue full")
        self._items: deque = deque()
        self._frames = 0  # frames in _items (control messages are not counted)
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._abandoned = False
        #: (stream, reason) -> frames dropped
        self.drops: Counter = Counter()
        self.dropped_total = 0
        self.high_water = 0
        self.blocked_puts = 0  # block-policy puts that found the queue full
        self.blocked_s = 0.0  # and the time they waited
        self._per_stream: Counter = Counter()  # stream -> live frames in _items

    # -------------------------------------------------------------- producer
    def put(self, item, stop: threading.Event | None = None) -> bool:
        """Add a Frame or control message.

        Returns False when the item was discarded without being counted here
        (queue abandoned, or a blocking put gave up because ``stop`` is set, so
        a reader stuck behind a dead consumer can still shut down); the caller
        accounts for it. A live frame dropped by ``drop_oldest`` is counted in
        ``drops`` and the put returns True.
        """
        with self._lock:
            if self._abandoned:
                return False
            if not isinstance(item, Frame):
                self._append(item, frame=False)
                return True
            if self._is_live(item):
                return self._put_live(item)
            if self._frames >= self.maxsize:
                self.blocked_puts += 1
                t = time.monotonic()
                try:
                    while self._frames >= self.maxsize and not self._abandoned:
                        if stop is not None and stop.is_set():
                            return False
                        self._not_full.wait(0.1)
                finally:
                    self.blocked_s += time.monotonic() - t
            if self._abandoned:
                return False
            self._append(item, frame=True)
            return True

    def _put_live(self, frame: Frame) -> bool:
        if self._frames >= self.maxsize:
            victim = self._victim(frame)
            if victim is None:  # nothing droppable queued: the newcomer is the oldest live frame
                if not frame.data.get(RESET_KEY):
                    self._count_drop(frame.stream)
                    return True
                # it carries a reset that nothing else can take over: kept, one over capacity
            else:
                index, old = victim
                del self._items[index]
                self._frames -= 1
                self._per_stream[old.stream] -= 1
                self._hand_over_reset(old, index, frame)
                self._count_drop(old.stream)
        self._append(frame, frame=True)
        return True

    def _count_drop(self, stream: str) -> None:
        self.drops[(stream, self.reason)] += 1
        self.dropped_total += 1

    def _victim(self, newcomer: Frame):
        """(index, frame) to drop, or None to drop the newcomer: the oldest frame of the stream with
        the most live frames queued (the newcomer counted), never a frame whose reset marker no
        later frame of its stream could take over."""
        counts = Counter(self._per_stream)
        counts[newcomer.stream] += 1
        candidates = sorted((-counts[item.stream], i) for i, item in enumerate(self._items)
                            if isinstance(item, Frame) and self._is_live(item)
                            and not (item.data.get(RESET_KEY) and counts[item.stream] < 2))
        if not candidates or -candidates[0][0] < counts[newcomer.stream]:
            return None
        i = candidates[0][1]
        return i, self._items[i]

    def _hand_over_reset(self, dropped: Frame, index: int, newcomer: Frame) -> None:
        """The next frame of the dropped frame's stream takes over its reset marker."""
        reason = dropped.data.get(RESET_KEY)
        if not reason:
            return
        later = (item for item in list(self._items)[index:] if isinstance(item, Frame) and item.stream == dropped.stream)
        heir = next(later, newcomer if newcomer.stream == dropped.stream else None)
        if heir is not None and not heir.data.get(RESET_KEY):
            heir.data[RESET_KEY] = reason

    def _is_live(self, frame: Frame) -> bool:
        return self.policy == DROP_OLDEST or frame.stream in self.live_streams

    def _append(self, item, frame: bool) -> None:
        self._items.append(item)
        if frame:
            self._frames += 1
            if self._is_live(item):
                self._per_stream[item.stream] += 1
            if self._frames > self.high_water:
                self.high_water = self._frames
        self._not_empty.notify()

    def close(self) -> None:
        """The producer is done; the consumer drains what is left."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()

    # -------------------------------------------------------------- consumer
    def get_batch(self, max_items: int = 1, timeout_s: float = 0.0) -> list | None:
        """Wait for at least one item, then gather up to ``max_items`` frames.

        After the first item arrives, waits at most ``timeout_s`` more for the
        batch to fill. A control message ends the batch (it must be seen in
        order). Returns None once the queue is closed and empty.
        """
        with self._lock:
            while not self._items:
                if self._closed or self._abandoned:
                    return None
                self._not_empty.wait(0.1)
            batch = []
            deadline = None
            while len(batch) < max_items:
                if not self._items:
                    if self._closed or timeout_s <= 0:
                        break
                    if deadline is None:
                        deadline = time.monotonic() + timeout_s
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._not_empty.wait(left)
                    continue
                item = self._items[0]
                if not isinstance(item, Frame):
                    if not batch:  # control message alone
                        self._items.popleft()
                        batch.append(item)
                    break
                self._items.popleft()
                self._frames -= 1
                if self._is_live(item):
                    self._per_stream[item.stream] -= 1
                batch.append(item)
            self._not_full.notify_all()
            return batch

    def abandon(self) -> list[Frame]:
        """The consumer stopped: discard queued items, never block producers again.

        Returns the frames that were discarded, for the caller to count.
        """
        with self._lock:
            self._abandoned = True
            frames = [item for item in self._items if isinstance(item, Frame)]
            self._items.clear()
            self._frames = 0
            self._per_stream.clear()
            self._not_full.notify_all()
            self._not_empty.notify_all()
            return frames

    # -------------------------------------------------------------- observers
    def drop_counts(self) -> dict:
        """A copy of ``drops``, taken under the lock (readers in other threads)."""
        with self._lock:
            return dict(self.drops)

    def take_drops(self) -> dict:
        """``drops`` handed over and cleared (the graph moves them into the streams' counts)."""
        with self._lock:
            out = dict(self.drops)
            self.drops.clear()
            return out

    def stats(self) -> dict:
        with self._lock:
            return {"depth": self._frames, "capacity": self.maxsize, "high_water": self.high_water,
                    "blocked_puts": self.blocked_puts, "blocked_s": round(self.blocked_s, 3),
                    "dropped": self.dropped_total}

    def __len__(self) -> int:
        with self._lock:
            return self._frames
