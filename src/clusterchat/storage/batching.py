"""Many concurrent single-key reads served by one statement.

During a storm (every user of a restarted node reconnecting at once) the
same query runs for thousands of keys within milliseconds; collecting the
keys asked for in one event-loop tick and fetching them with ``IN (...)``
turns thousands of round trips into a few.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
A = TypeVar("A")

MAX_BATCH = 500


class Batcher(Generic[T]):
    def __init__(self, fetch: Callable[[list[int]], Awaitable[dict[int, T]]]) -> None:
        self._fetch = fetch
        self._waiting: dict[int, list[asyncio.Future[T | None]]] = {}
        self._scheduled = False

    async def get(self, key: int) -> T | None:
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)
        return await fut

    def _start(self) -> None:
        self._scheduled = False
        while self._waiting:
            keys = list(self._waiting)[:MAX_BATCH]
            batch = {k: self._waiting.pop(k) for k in keys}
            task = asyncio.ensure_future(self._run(batch))
            task.add_done_callback(_retrieve)

    async def _run(self, batch: dict[int, list[asyncio.Future[T | None]]]) -> None:
        try:
            found = await self._fetch(list(batch))
        except BaseException as exc:
            for futs in batch.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(exc)
            raise
        for key, futs in batch.items():
            for fut in futs:
                if not fut.done():
                    fut.set_result(found.get(key))


class WriteBatcher(Generic[A, T]):
    """Many concurrent single-key writes done by one transaction: the
    arguments given in one event-loop tick go to ``write`` together (at most
    MAX_BATCH keys). Two writes of one key in a tick go in separate batches,
    so ``write`` sees each key once and the second sees what the first did."""

    def __init__(self, write: Callable[[dict[int, A]], Awaitable[dict[int, T]]]) -> None:
        self._write = write
        self._waiting: list[tuple[int, A, asyncio.Future[T | None]]] = []

    async def put(self, key: int, arg: A) -> T | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T | None] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._start)
        self._waiting.append((key, arg, fut))
        return await fut

    def _start(self) -> None:
        pending, self._waiting = self._waiting, []
        while pending:
            batch: dict[int, tuple[A, asyncio.Future[T | None]]] = {}
            later = []
            for key, arg, fut in pending:
                if key in batch or len(batch) >= MAX_BATCH:
                    later.append((key, arg, fut))
                else:
                    batch[key] = (arg, fut)
            pending = later
            task = asyncio.ensure_future(self._run(batch))
            task.add_done_callback(_retrieve)

    async def _run(self, batch: dict[int, tuple[A, asyncio.Future[T | None]]]) -> None:
        try:
            done = await self._write({k: arg for k, (arg, _) in batch.items()})
        except BaseException as exc:
            for _, fut in batch.values():
                if not fut.done():
                    fut.set_exception(exc)
            raise
        for key, (_, fut) in batch.items():
            if not fut.done():
                fut.set_result(done.get(key))


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # already handed to the waiters
