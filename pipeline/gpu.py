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
        import torch

        stream = stream or torch.cuda.current_stream()
        key = (tuple(tensor.shape), tensor.dtype)
        host = self._buffers.get(key)
        if host is None:
            host = self._buffers[key] = torch.empty(key[0], dtype=tensor.dtype, pin_memory=True)
        with torch.cuda.stream(stream):
            host.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        event.synchronize()  # the encoder needs the bytes: the single host wait of the GPU path
        return host.numpy().copy()


def bgr_to_model_input(frames_u8, fp16: bool = False):
    """NxHxWx3 (or HxWx3) BGR uint8 device tensor -> Nx3xHxW RGB float in [0, 1], on the current stream."""
    import torch

    x = frames_u8 if frames_u8.dim() == 4 else frames_u8.unsqueeze(0)
    x = x.flip(-1).permute(0, 3, 1, 2)
    dtype = torch.float16 if fp16 else torch.float32
    return x.to(dtype).mul_(1.0 / 255.0).contiguous()
