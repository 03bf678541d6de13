"""The password checks' pool: waiting jobs take turns by key, and closing it
leaves no caller waiting."""

from __future__ import annotations

import asyncio
import threading

from clusterchat.service.passwords import FairPool


async def test_waiting_jobs_take_turns_by_key_oldest_first_within_one() -> None:
    pool = FairPool(1, "test")
    gate = threading.Event()
    order: list[str] = []
    try:
        first = asyncio.ensure_future(pool.run("x", gate.wait))
        await asyncio.sleep(0)  # queued
        while pool._jobs:  # noqa: ASYNC110 - until the thread took it
            await asyncio.sleep(0.001)
        jobs = [asyncio.ensure_future(pool.run(k, order.append, f"{k}{n}")) for k, n in
                [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)]]  # fmt: skip
        await asyncio.sleep(0)  # all queued before the thread is let go
        gate.set()
        async with asyncio.timeout(5):
            await asyncio.gather(first, *jobs)
    finally:
        pool.close()
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_close_cancels_what_still_waits() -> None:
    pool = FairPool(1, "test")
    gate = threading.Event()
    running = asyncio.ensure_future(pool.run("x", gate.wait))
    await asyncio.sleep(0)  # queued
    while pool._jobs:  # noqa: ASYNC110 - until the thread took it
        await asyncio.sleep(0.001)
    waiting = asyncio.ensure_future(pool.run("y", int, "1"))
    await asyncio.sleep(0)
    pool.close()
    gate.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(waiting, return_exceptions=True)
        assert await running is True
    assert isinstance(results[0], asyncio.CancelledError)
