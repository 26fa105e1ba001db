"""The dynamic batcher (service/http/batching.py) on its own (no device): what runs
together, the queue bound, deadlines, cancellation, failures and draining."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from service.http.batching import Batcher, BatcherClosed, DeadlineExceeded, QueueFull
from service.http.engine import ExpertChoice, InferResult


class Recorder:
    """A fake device: records batches, optionally blocks until released."""

    def __init__(self, block: bool = False, fail: bool = False) -> None:
        self.batches: list[tuple[tuple, int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not block:
            self.release.set()
        self.fail = fail

    def __call__(self, key, batch, pressure):
        self.started.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("device on fire")
        self.batches.append((key, len(batch)))
        # probs: the images' first pixel, so each job can check it got its own rows
        probs = batch[:, 0, 0, :1].astype(np.float32)
        routing = [[ExpertChoice(0, 1.0)] for _ in batch] if key[2] is not None else None
        result = InferResult(probs, routing)
        return lambda: result


class Queued:
    """A fake device that queues like the real one: a batch is submitted at once and its
    result waits until the test finishes it (`finish(i)`)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.done: list[threading.Event] = []
        self.changed = threading.Condition()

    def __call__(self, key, batch, pressure):
        done = threading.Event()
        with self.changed:
            self.sizes.append(len(batch))
            self.done.append(done)
            self.changed.notify_all()
        probs = batch[:, 0, 0, :1].astype(np.float32)

        def wait():
            assert done.wait(10)
            return InferResult(probs)

        return wait

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.sizes) >= count, 5)

    def finish(self, i: int) -> None:
        self.done[i].set()


def images(n: int, value: float = 0.0) -> np.ndarray:
    return np.full((n, 1, 1, 1), value, np.float32)


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture
def make():
    running = []

    def build(device, **kw):
        opts = {"max_batch_size": 4, "max_queue_delay_s": 0.05, "max_queue_size": 8, **kw}
        batcher = Batcher(device, **opts)
        thread = threading.Thread(target=batcher.run, daemon=True)
        thread.start()
        running.append((batcher, thread))
        return batcher

    yield build
    for batcher, thread in running:
        batcher.close()
        thread.join(10)
        assert not thread.is_alive()


def test_same_key_runs_together_up_to_max_batch(make):
    device = Recorder(block=True)
    b = make(device)
    first = b.submit(("m", "fp32", None), images(1, 9), later())
    assert device.started.wait(5)  # the first job runs alone: nothing else was queued
    futures = [b.submit(("m", "fp32", None), images(1, i), later()) for i in range(6)]
    device.release.set()
    assert first.result(5).batch_size == 1
    results = [f.result(5) for f in futures]
    assert [r.probs[0, 0] for r in results] == list(range(6))  # each job got its own rows
    assert [n for _, n in device.batches] == [1, 4, 2]
    assert results[0].queue_s >= 0 and results[0].compute_s >= 0


def test_keys_are_batched_apart_and_multi_image_jobs_fit(make):
    device = Recorder(block=True)
    b = make(device, max_batch_size=4)
    b.submit(("m", "fp32", None), images(1), later())
    assert device.started.wait(5)
    a = b.submit(("m", "fp32", None), images(3, 1), later())
    c = b.submit(("moe", "fp32", 2), images(2, 2), later())
    d = b.submit(("m", "fp32", None), images(2, 3), later())  # 3 + 2 > 4: next batch
    device.release.set()
    assert a.result(5).probs.shape == (3, 1) and a.result().batch_size == 3
    assert c.result(5).routing == [[ExpertChoice(0, 1.0)]] * 2
    assert d.result(5).probs[:, 0].tolist() == [3, 3]
    keys = [key[0] for key, _ in device.batches]
    assert keys == ["m", "m", "moe", "m"]  # oldest head first


def test_waits_for_the_delay_to_fill_a_batch(make):
    device = Recorder()
    b = make(device, max_queue_delay_s=0.3)
    start = time.monotonic()
    f1 = b.submit(("m", "fp32", None), images(1), later())
    time.sleep(0.05)
    f2 = b.submit(("m", "fp32", None), images(1), later())
    assert f1.result(5).batch_size == 2 and f2.result(5).batch_size == 2
    assert time.monotonic() - start >= 0.25
    # A full batch does not wait.
    start = time.monotonic()
    futures = [b.submit(("m", "fp32", None), images(1), later()) for _ in range(4)]
    assert all(f.result(5).batch_size == 4 for f in futures)
    assert time.monotonic() - start < 0.25


def test_queue_bound(make):
    device = Recorder(block=True)
    b = make(device, max_queue_size=2)
    b.submit(("m", "fp32", None), images(1), later())
    assert device.started.wait(5)
    b.submit(("m", "fp32", None), images(1), later())
    b.submit(("m", "fp32", None), images(1), later())
    with pytest.raises(QueueFull):
        b.submit(("m", "fp32", None), images(1), later())
    device.release.set()


def test_expired_and_cancelled_jobs_cost_no_device_time(make):
    device = Recorder(block=True)
    b = make(device)
    b.submit(("m", "fp32", None), images(1), later())
    assert device.started.wait(5)
    expired = b.submit(("m", "fp32", None), images(1), time.monotonic() + 0.01)
    cancelled = b.submit(("m", "fp32", None), images(1), later())
    kept = b.submit(("m", "fp32", None), images(1, 5), later())
    assert cancelled.cancel()
    time.sleep(0.05)
    device.release.set()
    with pytest.raises(DeadlineExceeded):
        expired.result(5)
    with pytest.raises(CancelledError):
        cancelled.result(5)
    assert kept.result(5).batch_size == 1
    assert [n for _, n in device.batches] == [1, 1]


def test_jobs_their_batch_would_finish_too_late_for_are_dropped(make):
    """`too_late` (the server's prediction) rules out a job before its batch runs: it
    fails with DeadlineExceeded and costs no device time; the others run."""
    asked = []

    def too_late(key, size, deadline):
        asked.append((key, size))
        return deadline < later(5)  # the device "needs" 5 s: a 1 s deadline cannot make it

    device = Recorder(block=True)
    b = make(device, too_late=too_late)
    b.submit(("m", "fp32", None), images(1), later())
    assert device.started.wait(5)
    doomed = b.submit(("m", "fp32", None), images(1), later(1))
    kept = b.submit(("m", "fp32", None), images(2, 5), later())
    assert b.queued_images() == {("m", "fp32", None): 3}
    device.release.set()
    with pytest.raises(DeadlineExceeded, match="cannot finish before its deadline"):
        doomed.result(5)
    assert kept.result(5).batch_size == 2
    assert [n for _, n in device.batches] == [1, 2]
    assert (("m", "fp32", None), 3) in asked  # sized as the batch being formed
    assert b.queued_images() == {}


def test_a_failing_batch_fails_its_jobs_only(make):
    device = Recorder(fail=True)
    b = make(device)
    f = b.submit(("m", "fp32", None), images(1), later())
    with pytest.raises(RuntimeError, match="on fire"):
        f.result(5)
    device.fail = False
    assert b.submit(("m", "fp32", None), images(1), later()).result(5).batch_size == 1


def test_close_runs_what_is_queued_then_refuses(make):
    device = Recorder(block=True)
    b = make(device, max_queue_delay_s=5.0)
    futures = [b.submit(("m", "fp32", None), images(1), later()) for _ in range(3)]
    b.close()  # no waiting for the 5 s delay once closed
    device.release.set()
    assert all(f.result(5) for f in futures)
    with pytest.raises(BatcherClosed):
        b.submit(("m", "fp32", None), images(1), later())


def test_the_next_batch_is_queued_while_one_runs(make):
    device = Queued()
    b = make(device, max_queue_delay_s=0.05)
    key = ("m", "fp32", None)
    first = [b.submit(key, images(1, i), later()) for i in range(4)]
    device.wait_for(1)
    second = [b.submit(key, images(1, 10 + i), later()) for i in range(4)]
    device.wait_for(2)  # queued behind the first, which has not finished
    lone = b.submit(key, images(1, 20), later())
    time.sleep(0.2)  # four times the delay: no third batch while two are in flight
    assert device.sizes == [4, 4]
    device.finish(0)
    assert [f.result(5).probs[0, 0] for f in first] == [0, 1, 2, 3]
    time.sleep(0.2)  # one in flight: a part-filled batch waits to be full, not for the delay
    assert device.sizes == [4, 4]
    device.finish(1)
    results = [f.result(5) for f in second]
    assert [r.probs[0, 0] for r in results] == [10, 11, 12, 13]
    assert results[0].queue_s >= 0.2  # waiting behind the first batch counts as queueing
    device.wait_for(3)  # the device is idle: the lone request runs after its delay
    assert device.sizes == [4, 4, 1]
    device.finish(2)
    assert lone.result(5).batch_size == 1


def test_a_batch_runs_with_its_earliest_deadline():
    """precision=auto plans for the tightest request of the batch."""
    seen = []

    def run(key, batch, pressure):
        seen.append(pressure.deadline)
        return lambda: InferResult(batch[:, 0, 0, :1].astype(np.float32))

    b = Batcher(run, max_batch_size=4, max_queue_delay_s=0.05, max_queue_size=8)
    now = time.monotonic()
    futures = [b.submit(("m", "fp32", None, ()), np.zeros((1, 3, 2, 2), np.float32), now + t)
               for t in (9.0, 5.0, 7.0)]  # fmt: skip
    b.close()
    b.run()
    assert all(f.result(1) for f in futures) and seen == [now + 5.0]
