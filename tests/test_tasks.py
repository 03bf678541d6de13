"""cancel_and_wait ends a task even when a cancel is lost on its way
(Python 3.11: a cancel meeting an expiring asyncio.timeout inside a Redis
read came out as that read's timeout, and the bus's heartbeat ran on)."""

from __future__ import annotations

import asyncio

from clusterchat.tasks import cancel_and_wait


async def test_a_task_that_loses_a_cancel_is_cancelled_again() -> None:
    lost = 0

    async def loop_that_carries_on() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost == 2:
                    raise
                lost += 1  # as a timeout that swallowed it would

    task = asyncio.ensure_future(loop_that_carries_on())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait([task])
    assert task.cancelled() and lost == 2


async def test_ended_and_failed_tasks_are_waited_for_quietly() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.ensure_future(fails())
    done = asyncio.ensure_future(asyncio.sleep(0))
    await asyncio.wait([failed, done])
    sleeper = asyncio.ensure_future(asyncio.sleep(3600))
    await cancel_and_wait([failed, done, sleeper])
    assert sleeper.cancelled() and isinstance(failed.exception(), RuntimeError)
    await cancel_and_wait([])
