"""Frames in device memory between GPU stages: one CUDA stream per stage, events between them.

``DeviceFrameQueue`` carries ``(tensor, event)``: the producer records an event on
its stream right after the work that wrote the tensor; the consumer makes its own
stream wait on that event (``stream.wait_event``), which orders the GPU work
without ever blocking the host. ``tensor.record_stream`` tells torch's caching
allocator that the consumer's stream uses the memory, so the producer freeing
its reference cannot hand the block to someone else too early.

``PinnedUploader`` / ``PinnedDownloader`` move frames once after decode and once
before encode through page-locked host buffers (async copies). On the CPU the
same queue carries numpy arrays and no events.

``DeviceFrameBuffer`` is FrameBuffer's per-stream ring kept in device memory
(MSFgNet's window of past working-size grey frames). ``data_to_host`` is the
one place where device tensors in ``Frame.data`` become numpy: the graph calls
it after waiting on a frame's ``cuda_event``, before a host stage or the sinks
read the frame.

torch is imported lazily: ``import pipeline.gpu`` costs nothing on a CPU machine.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np


class QueueClosed(Exception):
    """``get`` on a closed and drained queue."""


class DeviceFrameQueue:
    """Bounded queue between two stages; items are ``(payload, event)``.

    ``put(payload, stream)`` records a CUDA event on ``stream`` (the producer's)
    when the payload holds CUDA tensors; ``get(stream)`` makes ``stream`` (the
    consumer's) wait on it and returns the payload. ``payload`` is a tensor, a
    dict of tensors, or anything else (numpy on the CPU: no event).
    """

    def __init__(self, maxsize: int = 4):
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()

    def put(self, payload: Any, stream=None, timeout: float | None = None) -> None:
        event = None
        if _is_cuda(payload):
            import torch

            stream = stream or torch.cuda.current_stream()
            event = torch.cuda.Event()
            event.record(stream)
        self._q.put((payload, event), timeout=timeout)

    def get(self, stream=None, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
                payload, event = self._q.get(timeout=wait)
                break
            except queue.Empty:
                if self._closed.is_set():
                    raise QueueClosed() from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise
        return self._arrived(payload, event, stream)

    @staticmethod
    def _arrived(payload, event, stream):
        if event is not None:
            import torch

            stream = stream or torch.cuda.current_stream()
            stream.wait_event(event)  # GPU-side wait: the host returns at once
            for t in _tensors(payload):
                t.record_stream(stream)
        return payload

    def get_batch(self, max_items: int, max_wait_s: float, stream=None) -> list:
        """Up to ``max_items`` payloads (frames of several streams for one engine call).

        Blocks for the first item, then takes what arrives within ``max_wait_s``;
        the consumer's stream waits on every item's event. Raises QueueClosed when
        the queue is closed and empty.
        """
        items = [self.get(stream)]
        deadline = time.monotonic() + max_wait_s
        while len(items) < max_items:
            left = deadline - time.monotonic()
            try:
                items.append(self.get(stream, timeout=max(left, 0.0)) if left > 0 else self._get_nowait(stream))
            except (queue.Empty, QueueClosed):
                break
        return items

    def _get_nowait(self, stream):
        payload, event = self._q.get_nowait()
        return self._arrived(payload, event, stream)

    def close(self) -> None:
        """No more puts; ``get`` raises QueueClosed once the queue is empty."""
        self._closed.set()

    def qsize(self) -> int:
        return self._q.qsize()


def _tensors(payload) -> list:
    if isinstance(payload, dict):
        return [v for v in payload.values() if hasattr(v, "record_stream")]
    if isinstance(payload, (list, tuple)):
        return [v for v in payload if hasattr(v, "record_stream")]
    return [payload] if hasattr(payload, "record_stream") else []


def _is_cuda(payload) -> bool:
    return any(getattr(t, "is_cuda", False) for t in _tensors(payload))


class PinnedUploader:
    """Host BGR uint8 frames -> device uint8 tensors, through a ring of pinned buffers.

    A pinned buffer is reused only after its previous copy has finished (its
    event): the one host wait in the upload path, and it is on the copy that
    was issued ``ring`` frames ago, so it almost never blocks.
    """

    def __init__(self, device: str = "cuda", ring: int = 4):
        self.device = device
        self.ring = ring
        self._slots: list = []
        self._next = 0
        self._shape = None

    def _allocate(self, shape) -> None:
        import torch

        self._slots = [(torch.empty(shape, dtype=torch.uint8, pin_memory=True), None) for _ in range(self.ring)]
        self._shape = shape

    def upload(self, image: np.ndarray, stream=None):
        import torch

        if image.shape != self._shape:
            self._allocate(image.shape)
        stream = stream or torch.cuda.current_stream()
        host, done = self._slots[self._next]
        if done is not None:
            done.synchronize()
        np.copyto(host.numpy(), image)
        with torch.cuda.stream(stream):
            dev = torch.empty(image.shape, dtype=torch.uint8, device=self.device)
            dev.copy_(host, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        self._slots[self._next] = (host, event)
        self._next = (self._next + 1) % self.ring
        return dev


class PinnedDownloader:
    """Device tensor -> host numpy through one pinned buffer per shape; waits only for its own copy."""

    def __init__(self):
        self._buffers: dict = {}

    def download(self, tensor, stream=None) -> np.ndarray:
        return self.download_all([tensor], stream)[0]

    def download_all(self, tensors, stream=None) -> list[np.ndarray]:
        """Several tensors (a frame's ports) with one host wait for all their copies."""
        import torch

        stream = stream or torch.cuda.current_stream()
        hosts, seen = [], {}
        with torch.cuda.stream(stream):
            for tensor in tensors:
                shape_dtype = (tuple(tensor.shape), tensor.dtype)
                key = (*shape_dtype, seen.get(shape_dtype, 0))  # two ports of one shape: two buffers
                seen[shape_dtype] = key[2] + 1
                host = self._buffers.get(key)
                if host is None:
                    host = self._buffers[key] = torch.empty(key[0], dtype=tensor.dtype, pin_memory=True)
                host.copy_(tensor, non_blocking=True)
                hosts.append(host)
            event = torch.cuda.Event()
            event.record(stream)
        event.synchronize()  # the encoder needs the bytes: the single host wait of the GPU path
        return [h.numpy().copy() for h in hosts]


def is_tensor(value) -> bool:
    """A torch tensor (checked without importing torch: numpy arrays have no ``is_cuda``)."""
    return hasattr(value, "is_cuda") and hasattr(value, "detach")


def data_to_host(data: dict, downloader: PinnedDownloader | None = None, stream=None) -> int:
    """Replace every torch tensor in ``data`` (a Frame's ports) by numpy, in place; returns how many.

    CUDA tensors are downloaded once each through ``downloader``'s pinned buffers
    on ``stream``, with one host wait for the frame. The caller must already have
    waited for the work that wrote them (the frame's ``cuda_event``) or pass the
    producer's stream.
    """
    keys = [k for k, v in data.items() if is_tensor(v)]
    if not keys:
        return 0
    cuda = [k for k in keys if data[k].is_cuda]
    for k in keys:
        if not data[k].is_cuda:
            data[k] = data[k].detach().numpy()
    if cuda:
        arrays = (downloader or PinnedDownloader()).download_all([data[k].detach() for k in cuda], stream)
        for k, a in zip(cuda, arrays):
            data[k] = a
    return len(keys)


class HostSide:
    """What a host consumer of GPU stages' frames (a CPU stage, the sinks) needs: wait, then download.

    ``frames_to_host`` waits on each frame's ``cuda_event`` and converts its tensors
    with ``data_to_host`` on a stream of its own. Frames without an event (the CPU
    path) are left alone and cost one dict lookup; torch is imported only when an
    event shows up.
    """

    def __init__(self):
        self._downloader = None
        self._stream = None

    def frame_to_host(self, frame) -> None:
        event = frame.data.pop("cuda_event", None)
        if event is None:
            return
        event.synchronize()  # the producer's work is done; the copies below read finished data
        if self._downloader is None and any(is_tensor(v) and v.is_cuda for v in frame.data.values()):
            import torch

            self._downloader, self._stream = PinnedDownloader(), torch.cuda.Stream()
        data_to_host(frame.data, self._downloader, self._stream)

    def frames_to_host(self, frames) -> None:
        for frame in frames:
            if hasattr(frame, "data"):
                self.frame_to_host(frame)


class DeviceFrameBuffer:
    """``FrameBuffer(T)`` in device memory: per stream 2*T slots of one torch tensor, each frame written
    twice, so the T newest frames are one contiguous slice. Works on any torch device.

    ``window(stream, frames, stride)`` picks ``frames`` of them ``stride`` apart, current frame last,
    exactly as ``window_indices`` picks from a FrameBuffer, by slicing (no index tensor, no host copy).
    """

    def __init__(self, T: int):
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        self.T = int(T)
        self._rings: dict = {}  # stream -> [slots, next, count]
        self.resets: dict[str, int] = {}

    def push(self, stream: str, image) -> bool:
        """Append a frame (a tensor); True if this started a fresh window (first frame or new shape)."""
        import torch

        ring = self._rings.get(stream)
        fresh = ring is None or ring[0].shape[1:] != image.shape or ring[0].dtype != image.dtype \
            or ring[0].device != image.device
        if fresh:
            if ring is not None:
                self.resets[stream] = self.resets.get(stream, 0) + 1
            ring = self._rings[stream] = [torch.empty((2 * self.T, *image.shape), dtype=image.dtype,
                                                      device=image.device), 0, 0]
        slots, i, count = ring
        slots[i].copy_(image)
        slots[i + self.T].copy_(image)
        ring[1], ring[2] = (i + 1) % self.T, min(count + 1, self.T)
        return fresh

    def held(self, stream: str):
        """The held frames oldest -> newest (a view), like FrameBuffer.window."""
        slots, nxt, count = self._ring(stream)
        end = nxt + self.T
        return slots[end - count:end]

    def window(self, stream: str, frames: int, stride: int):
        """(frames, *shape): held frames ``window_indices(count, frames, stride)``; a view once full."""
        import torch

        slots, nxt, count = self._ring(stream)
        start = nxt + self.T - count  # slot of the oldest held frame
        newest = count - 1
        clamped = max(0, frames - 1 - newest // stride)  # leading picks clamped to the oldest (short stream)
        first = newest - (frames - 1 - clamped) * stride
        picked = slots[start + first:start + newest + 1:stride]
        if not clamped:
            return picked
        return torch.cat([slots[start:start + 1].expand(clamped, *slots.shape[1:]), picked])

    def _ring(self, stream: str):
        ring = self._rings.get(stream)
        if ring is None:
            raise KeyError(f"no frames buffered for stream {stream!r}")
        return ring

    def count(self, stream: str) -> int:
        ring = self._rings.get(stream)
        return 0 if ring is None else ring[2]

    def reset(self, stream: str) -> None:
        ring = self._rings.get(stream)
        if ring is not None:
            ring[1] = ring[2] = 0
            self.resets[stream] = self.resets.get(stream, 0) + 1

    def drop(self, stream: str) -> None:
        self._rings.pop(stream, None)


def bgr_to_model_input(frames_u8, fp16: bool = False):
    """NxHxWx3 (or HxWx3) BGR uint8 device tensor -> Nx3xHxW RGB float in [0, 1], on the current stream."""
    import torch

    x = frames_u8 if frames_u8.dim() == 4 else frames_u8.unsqueeze(0)
    x = x.flip(-1).permute(0, 3, 1, 2)
    dtype = torch.float16 if fp16 else torch.float32
    return x.to(dtype).mul_(1.0 / 255.0).contiguous()
