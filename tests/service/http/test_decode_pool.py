"""The decode pool (service/http/decode_pool.py): work whose deadline passes while it
waits for a worker never runs, and the backlog says when new work would be done."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.http.decode_pool import DecodePool
from service.http.errors import ApiError


def test_work_whose_deadline_passes_in_the_pool_is_skipped():
    """With the only worker busy, a request whose deadline passes while it waits is
    answered 504 without its work ever running; the pool's backlog pushes back when a
    new request's input would be ready (what admission counts)."""
    pool = DecodePool(workers=1)
    ran: list[int] = []

    async def scenario() -> None:
        gate = threading.Event()
        busy = asyncio.ensure_future(pool.run(time.monotonic() + 30, gate.wait, 10))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(pool.run(time.monotonic() + 0.05, ran.append, 1))
        await asyncio.sleep(0.1)  # past the doomed request's deadline, still queued
        gate.set()
        assert await busy is True
        with pytest.raises(ApiError) as refused:
            await doomed
        assert refused.value.status == 504 and "waited to be decoded" in str(refused.value)
        assert pool.tasks == 0
        # The gate's wait (>= 0.15 s) is in the pool's average now: two tasks there
        # would put a new request's input about three tasks away.
        pool.tasks = 2
        assert pool.ready_at() - time.monotonic() > 2 * pool.task_s > 0

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown(wait=True)
    assert ran == []


def test_work_on_the_way_is_counted_with_its_earliest_deadline():
    """precision=auto counts the requests being decoded as queued behind the batch it
    chooses for: the pool says how many are here and their earliest deadline, and
    forgets each as it leaves (done or failed)."""
    pool = DecodePool(workers=1)

    def fail() -> None:
        raise ValueError("bad image")

    async def scenario() -> None:
        assert pool.on_the_way() == (0, float("inf"))
        gate = threading.Event()
        now = time.monotonic()
        first = asyncio.ensure_future(pool.run(now + 30, gate.wait, 10))
        second = asyncio.ensure_future(pool.run(now + 20, fail))
        third = asyncio.ensure_future(pool.run(now + 20, len, "abc"))
        await asyncio.sleep(0.05)
        assert pool.on_the_way() == (3, now + 20)
        gate.set()
        assert await first is True
        with pytest.raises(ValueError, match="bad image"):
            await second
        assert await third == 3
        assert pool.on_the_way() == (0, float("inf"))

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown(wait=True)
