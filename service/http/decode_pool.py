"""The decode pool: requests' CPU work (decoding, preprocessing, tensor parsing) off the
event loop, on a few threads.

Decoding is CPU and memory heavy (an image of max_image_pixels is ~120 MB decoded): a
small pool bounds both, instead of Starlette's 40 threads. Work whose request's deadline
passes while it waits for a worker is skipped (504): under overload the pool then spends
itself on requests that can still be answered in time, not on those already lost. It
also says when a new request's input would be ready (`ready_at`), for admission, and
what work is on its way to the batch queue (`on_the_way`), for precision=auto.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.http.errors import ApiError

SMOOTHING = 0.1  # weight of a task's time in its moving average


class _Expired(Exception):
    """The task's deadline passed before a worker took it."""


class DecodePool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self.tasks = 0  # tasks here, running or waiting (changed on the event loop only)
        self.task_s = 0.0  # seconds a task takes, lately
        self._deadlines: Counter[float] = Counter()  # of the tasks here (read off the loop)
        self._lock = threading.Lock()

    async def run(self, deadline: float, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on a worker, unless `deadline` (time.monotonic) passes first."""

        def work() -> Any:
            started = time.monotonic()
            if started >= deadline:
                raise _Expired
            try:
                return fn(*args)
            finally:
                # A moving average; a lost update between workers costs nothing.
                self.task_s += SMOOTHING * (time.monotonic() - started - self.task_s)

        self.tasks += 1
        with self._lock:
            self._deadlines[deadline] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except _Expired:
            raise ApiError(504, "request deadline passed while it waited to be decoded") from None
        finally:
            self.tasks -= 1
            with self._lock:
                self._deadlines[deadline] -= 1
                if not self._deadlines[deadline]:
                    del self._deadlines[deadline]

    def on_the_way(self) -> tuple[int, float]:
        """The requests here (at least an image each) and their earliest deadline (inf
        if none): work bound for the batch queue that a batch chosen now runs ahead of.
        Safe from any thread."""
        with self._lock:
            return self._deadlines.total(), min(self._deadlines, default=float("inf"))

    def ready_at(self) -> float:
        """When a task sent now would be done: those here share the workers, then its own."""
        return time.monotonic() + (self.tasks / self.workers + 1) * self.task_s

    def shutdown(self, wait: bool = False) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=True)
