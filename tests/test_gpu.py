"""CUDA path: TorchRunner on the GPU against the CPU model, and frames passed between two
CUDA streams through DeviceFrameQueue (event recorded by the producer, waited on by the consumer)."""
from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from pipeline.gpu import DeviceFrameQueue, QueueClosed


def test_queue_on_cpu_carries_numpy_and_closes():
    q = DeviceFrameQueue(maxsize=2)
    a = np.arange(6, dtype=np.uint8)
    q.put(a)
    q.put(a + 1)
    with pytest.raises(queue.Full):
        q.put(a, timeout=0.01)  # bounded: backpressure on the producer
    assert q.get() is a and q.get()[0] == 1
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.close()
    with pytest.raises(QueueClosed):
        q.get()


def test_queue_batches_frames_of_several_streams_within_max_wait():
    import time

    q = DeviceFrameQueue(maxsize=8)
    for i in range(5):
        q.put(np.full(2, i))
    assert [int(a[0]) for a in q.get_batch(3, 0.01)] == [0, 1, 2]  # full batch: no waiting
    t0 = time.monotonic()
    assert [int(a[0]) for a in q.get_batch(4, 0.03)] == [3, 4]     # partial batch after max wait
    assert 0.02 <= time.monotonic() - t0 < 0.5
    q.close()
    with pytest.raises(QueueClosed):
        q.get_batch(4, 0.01)


@pytest.mark.gpu
@pytest.mark.parametrize("fp16,channels_last,cuda_graph", [(False, False, False), (True, True, False), (True, True, True)])
def test_torch_runner_cuda_matches_cpu(fp16, channels_last, cuda_graph):
    import torch

    from engines.parity import check_parity
    from engines.torch.runner import TorchRunner
    from tests.test_runners import feeds, make_tiny

    stream = torch.cuda.Stream()
    gpu = TorchRunner(make_tiny(), device="cuda", fp16=fp16, channels_last=channels_last,
                      cuda_graph=cuda_graph, stream=stream)
    with TorchRunner(make_tiny()) as cpu, gpu:
        report = check_parity(cpu, gpu, feeds(4, 64, 96), precision="fp16" if fp16 else "fp32")
    print(report.summary())


@pytest.mark.gpu
def test_device_queue_orders_two_streams_without_host_sync():
    """The producer's last write lands after a long kernel chain; a consumer that did not wait
    on the event would read the previous value. 20 frames, checked on the consumer's stream."""
    import torch

    from pipeline.gpu import PinnedDownloader, PinnedUploader

    frames = [np.full((360, 640, 3), i, np.uint8) for i in range(20)]
    q = DeviceFrameQueue(maxsize=3)
    producer_stream, consumer_stream = torch.cuda.Stream(), torch.cuda.Stream()
    busy = torch.randn(2048, 2048, device="cuda")
    results, errors = [], []

    def produce():
        try:
            up = PinnedUploader()
            for img in frames:
                dev = up.upload(img, producer_stream)
                with torch.cuda.stream(producer_stream):
                    for _ in range(5):
                        busy.matmul(busy)  # keep the producer stream busy before the result exists
                    out = dev.float().add_(1.0)
                q.put(out, producer_stream)
            q.close()
        except Exception as e:  # surfaced in the main thread
            errors.append(e)
            q.close()

    t = threading.Thread(target=produce)
    t.start()
    down = PinnedDownloader()
    while True:
        try:
            x = q.get(consumer_stream)
        except QueueClosed:
            break
        with torch.cuda.stream(consumer_stream):
            y = x.mul(2.0).to(torch.uint8)
        results.append(down.download(y, consumer_stream))
    t.join()
    assert not errors, errors
    assert [int(r[0, 0, 0]) for r in results] == [(i + 1) * 2 for i in range(20)]
    assert all(r.min() == r.max() for r in results)
