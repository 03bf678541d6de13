"""Log lines name the connection they are about, looked up only when a line
is logged (nothing is set per read): from the serving method on the stack,
or from the task that connection started."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from clusterchat import logs


class _Served:
    def __init__(self, cid: int) -> None:
        self.id = cid

    @logs.names_connection
    def data_received(self) -> int:
        return _deep()


def _deep() -> int:
    return logs.current_connection()


async def _in_task() -> int:
    await asyncio.sleep(0)
    return logs.current_connection()


def test_a_line_logged_under_a_read_names_its_connection() -> None:
    assert _Served(7).data_received() == 7
    assert logs.current_connection() == 0


async def test_a_task_started_under_a_read_names_its_connection() -> None:
    class _Starter(_Served):
        @logs.names_connection
        def data_received(self) -> int:
            self.task = logs.start_task(_in_task())
            return 0

    starter = _Starter(9)
    starter.data_received()
    assert await starter.task == 9
    assert await logs.start_task(_in_task()) == 0  # started outside any read


async def test_a_task_started_under_a_read_reads_the_id_only_to_log() -> None:
    """A connection numbers itself on its first line: starting its tasks
    (every login does) must not make it take a number (issue 14)."""

    class _Lazy:
        asked = 0

        @property
        def id(self) -> int:
            self.asked += 1
            return 5

        @logs.names_connection
        def data_received(self, coro: Coroutine[Any, Any, int]) -> asyncio.Task[int]:
            return logs.start_task(coro)

    async def quiet() -> int:
        await asyncio.sleep(0)
        return 0

    conn = _Lazy()
    await conn.data_received(quiet())
    assert conn.asked == 0
    assert await conn.data_received(_in_task()) == 5
