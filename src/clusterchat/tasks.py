"""Stopping background tasks for certain.

On Python 3.11 a cancel can be lost: when it arrives as an
``asyncio.timeout`` around a Redis read expires, the read may come out as
its TimeoutError instead (redis-py reads under such a timeout), and a loop
that carries on after timeouts then runs for ever. A plain ``cancel()``
followed by ``await gather(...)`` then never returns; CI saw a bus's
heartbeat outlive ``RedisCluster.close`` that way, under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: Seconds between cancels of a task that has not ended yet.
AGAIN_AFTER = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks, again and again until every one has ended; their
    exceptions are consumed (the caller is stopping them, not running them)."""
    pending = {t for t in tasks if not t.done()}
    everything = set(pending)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=AGAIN_AFTER)
    for task in everything:
        if not task.cancelled():
            task.exception()
