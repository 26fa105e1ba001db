"""Dynamic batching: requests for the same (model, precision, k, dual module) run
together.

Requests are queued per key; the device's single worker thread takes the key whose
oldest request has waited longest, waits until that key has `max_batch_size` images
or its oldest request has waited `max_queue_delay`, and runs them as one batch. Under
load the device is busy while requests pile up, so batches fill without waiting;
alone, a request waits at most the delay. The next batch is queued on the device
while the current one runs (see `Batcher.run`).

The queue is bounded (`QueueFull`, answered 503 with Retry-After) so overload turns
into fast refusals instead of unbounded latency and memory; a request past its
deadline, or that its batch would finish after it (the `too_late` check the server
gives, from its latency predictions), is dropped before it costs device time
(`DeadlineExceeded`, answered 504).
The asyncio side waits on a `concurrent.futures.Future`, which is thread-safe and
cancellable: a client that gives up cancels its queued job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import SimpleQueue

import numpy as np

from service.http.engine import ExpertChoice, InferResult

log = logging.getLogger("moe_alexnet.batching")

# (model, precision, k, dual module); precision and k may be "auto"
BatchKey = tuple[str, str, int | str | None, tuple[str, ...]]
IN_FLIGHT = 2  # batches queued on the device at once: the running one and the next


class QueueFull(Exception):
    """The batch queue holds max_queue_size requests already."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its batch could run."""


class BatcherClosed(Exception):
    """The server is shutting down and takes no more work."""


@dataclass
class JobResult:
    """One request's share of a batch, with where its time went."""

    probs: np.ndarray
    routing: list[list[ExpertChoice]] | None
    queue_s: float
    compute_s: float
    batch_size: int
    precision: str = ""  # what it ran at (a request for "auto" learns it here)
    k: int | None = None  # likewise a mixture's experts per image


@dataclass
class Job:
    key: BatchKey
    inputs: np.ndarray  # (n, C, H, W) float32
    deadline: float  # time.monotonic()
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


@dataclass
class Submitted:
    """A batch queued on the device, waiting for the completion thread."""

    key: BatchKey
    jobs: list[Job]
    wait: Callable[[], InferResult]
    at: float  # time.monotonic() when it was queued


INF = float("inf")


@dataclass(frozen=True)
class Pressure:
    """What a batch runs under: its earliest deadline, and the images still queued
    behind it (any key: they share the device) with their earliest deadline."""

    deadline: float
    backlog: int = 0
    backlog_deadline: float = INF


# Queues a batch on the device; the function it returns waits for the result.
RunBatch = Callable[[BatchKey, np.ndarray, Pressure], Callable[[], InferResult]]
OnBatch = Callable[[BatchKey, list[Job], InferResult | None, float], None]
# Whether a batch of this key and size, taken now, would end after the deadline.
TooLate = Callable[[BatchKey, int, float], bool]


class Batcher:
    """Queues per key and the batch loop (`run`, on the device thread)."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        on_batch: OnBatch | None = None,
        on_depth: Callable[[BatchKey, int], None] | None = None,
        too_late: TooLate | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch
        self.on_depth = on_depth
        self.too_late = too_late
        self._queues: dict[BatchKey, deque[Job]] = {}
        self._pending = 0
        self._closed = False
        self._in_flight = 0  # batches queued on the device and not yet answered
        self._cond = threading.Condition()

    # -- the asyncio side ----------------------------------------------------------------

    def submit(self, key: BatchKey, inputs: np.ndarray, deadline: float) -> Future:
        """Queue a request's images (1 to max_batch_size, checked where the request was
        read); its future gets a JobResult."""
        job = Job(key, inputs, deadline)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if self._pending >= self.max_queue_size:
                raise QueueFull(f"the queue is full ({self.max_queue_size} requests waiting)")
            queue = self._queues.setdefault(key, deque())
            queue.append(job)
            self._pending += 1
            if self.on_depth:  # under the lock, so gauge updates keep their order
                self.on_depth(key, self._depth(key))
            self._cond.notify()
        return job.future

    @property
    def pending(self) -> int:
        return self._pending

    def queued_images(self) -> dict[BatchKey, int]:
        """Images waiting per key (a snapshot)."""
        with self._cond:
            return {key: sum(len(job.inputs) for job in q) for key, q in self._queues.items() if q}

    def close(self) -> None:
        """Take no more jobs; the loop runs what is queued (without waiting for batches
        to fill) and returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every queued job (the device could not be opened, or shutdown timed out)."""
        with self._cond:
            jobs = [job for queue in self._queues.values() for job in queue]
            for queue in self._queues.values():
                queue.clear()
            self._pending = 0
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(exc)

    # -- the device thread ---------------------------------------------------------------

    def run(self) -> None:
        """The batch loop: returns once closed, empty and every queued batch answered.

        Two batches are in flight at most: while the device runs one, this thread forms
        the next and queues it behind, and a completion thread waits for each in turn
        and answers its jobs, so the host work between batches (joining the inputs,
        answering the futures, metrics) does not leave the device idle. While a batch
        is in flight the next one waits to be full (not just for the delay): it could
        not start earlier anyway, and a part-filled batch wastes the device's time."""
        finished: SimpleQueue[Submitted | None] = SimpleQueue()
        completer = threading.Thread(
            target=self._complete, args=(finished,), name="batch-results", daemon=True
        )
        completer.start()
        try:
            while (taken := self._next_batch()) is not None:
                submitted = self._submit(*taken) if taken[1] else None
                if submitted is None:
                    self._landed()
                else:
                    finished.put(submitted)
        finally:
            finished.put(None)
            completer.join()

    def _next_batch(self) -> tuple[BatchKey, list[Job], tuple[int, float]] | None:
        """Wait for a slot on the device and a batch to fill it: its key, its jobs, and
        the images still queued behind it with their earliest deadline; None once closed
        and empty."""
        with self._cond:
            while True:
                heads = [(q[0].enqueued, key) for key, q in self._queues.items() if q]
                if not heads and self._closed:
                    return None
                if not heads or self._in_flight >= IN_FLIGHT:
                    self._cond.wait()
                    continue
                oldest, key = min(heads, key=lambda item: item[0])
                queue = self._queues[key]
                images = sum(len(job.inputs) for job in queue)
                wait = oldest + self.max_delay - time.monotonic()
                idle = self._in_flight == 0
                if images >= self.max_batch_size or self._closed or (idle and wait <= 0):
                    self._in_flight += 1
                    jobs = self._take(key, queue)
                    behind = [job for q in self._queues.values() for job in q]
                    backlog = sum(len(job.inputs) for job in behind)
                    return key, jobs, (backlog, min((j.deadline for j in behind), default=INF))
                self._cond.wait(wait if idle else None)

    def _landed(self) -> None:
        """A batch left the device (answered, failed, or all its jobs dropped)."""
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def _take(self, key: BatchKey, queue: deque[Job]) -> list[Job]:
        """Pop up to max_batch_size images; drop cancelled jobs, and those whose
        deadline has passed or that `too_late` says the batch would end after."""
        jobs: list[Job] = []
        images = 0
        now = time.monotonic()
        size = min(self.max_batch_size, sum(len(job.inputs) for job in queue))
        while queue and images + len(queue[0].inputs) <= self.max_batch_size:
            job = queue.popleft()
            self._pending -= 1
            if not job.future.set_running_or_notify_cancel():
                continue  # the client gave up
            if job.deadline <= now:
                job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            if self.too_late is not None and self.too_late(key, size, job.deadline):
                job.future.set_exception(DeadlineExceeded("cannot finish before its deadline"))
                continue
            jobs.append(job)
            images += len(job.inputs)
        if self.on_depth:
            self.on_depth(key, self._depth(key))
        return jobs

    def _depth(self, key: BatchKey) -> int:
        """Requests queued for this model and precision (any k); called under the lock."""
        return sum(len(q) for other, q in self._queues.items() if other[:2] == key[:2])

    def _submit(
        self, key: BatchKey, jobs: list[Job], behind: tuple[int, float]
    ) -> Submitted | None:
        batch = np.concatenate([job.inputs for job in jobs]) if len(jobs) > 1 else jobs[0].inputs
        at = time.monotonic()
        try:
            pressure = Pressure(min(job.deadline for job in jobs), *behind)
            wait = self.run_batch(key, batch, pressure)
        except Exception as exc:  # one bad batch must not stop the loop
            self._fail(key, jobs, exc, time.monotonic() - at)
            return None
        return Submitted(key, jobs, wait, at)

    def _complete(self, finished: SimpleQueue[Submitted | None]) -> None:
        """The completion thread: wait for each batch in submission order, answer its jobs."""
        last_end = 0.0
        while (item := finished.get()) is not None:
            try:
                result = item.wait()
            except Exception as exc:
                result = exc
            end = time.monotonic()
            # On the device from when it was queued or the batch before it finished.
            start = max(item.at, last_end)
            last_end = end
            if isinstance(result, Exception):
                self._fail(item.key, item.jobs, result, end - start)
            else:
                self._answer(item.key, item.jobs, result, start, end - start)
            self._landed()

    def _fail(self, key: BatchKey, jobs: list[Job], exc: Exception, compute: float) -> None:
        log.error(
            "batch of %d for %s failed", sum(len(j.inputs) for j in jobs), key[0], exc_info=exc
        )
        for job in jobs:
            job.future.set_exception(exc)
        self._report(key, jobs, None, compute)

    def _answer(
        self, key: BatchKey, jobs: list[Job], result: InferResult, start: float, compute: float
    ) -> None:
        size = sum(len(job.inputs) for job in jobs)
        offset = 0
        for job in jobs:
            n = len(job.inputs)
            routing = None if result.routing is None else result.routing[offset : offset + n]
            job.future.set_result(
                JobResult(
                    result.probs[offset : offset + n],
                    routing,
                    start - job.enqueued,
                    compute,
                    size,
                    result.precision,
                    result.k,
                )
            )
            offset += n
        self._report(key, jobs, result, compute)

    def _report(
        self, key: BatchKey, jobs: list[Job], result: InferResult | None, compute: float
    ) -> None:
        if self.on_batch is None:
            return
        try:
            self.on_batch(key, jobs, result, compute)
        except Exception:  # metrics must never break serving
            log.exception("batch report failed")
