"""The re-store writer against real stores: few batched writes, retries
through an outage, and a shutdown that writes what is left or says so."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from clusterchat.budget import Budget
from clusterchat.bus.base import Settlement
from clusterchat.protocol import codec
from clusterchat.service.restore import Restorer
from clusterchat.storage.sql import SqlStore
from tests.conftest import MYSQL_SERVER, unique
from tests.helpers import CuttableProxy


def payload(i: int) -> bytes:
    return codec.encode({"msgid": 10, "groupid": 1, "msg": f"m{i}", "mid": f"x-{i}"})


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(db_url, pool_size=2)
    await s.create_schema()
    yield s
    await s.close()


async def _users(store: SqlStore, n: int) -> list[int]:
    return [await store.create_user(unique(), "x") for _ in range(n)]


async def test_hundreds_of_dropped_connections_take_a_few_writes(store: SqlStore) -> None:
    """The burst-then-drop case: many receivers, the same payloads shared."""
    uids = await _users(store, 300)
    shared = [payload(i) for i in range(20)]
    budget = Budget(0)
    restorer = Restorer(store, budget)
    for uid in uids:
        restorer.add(uid, shared)
    # A payload is charged once, however many receivers share it.
    assert budget.used < 300 * 20 * 100
    assert await restorer.drain(30)
    assert restorer.written == 6000
    assert restorer.rounds <= 6000 // 2000 + 2  # not one write per receiver
    assert budget.used == 0
    for uid in (uids[0], uids[-1]):
        rows = await store.offline(uid)
        assert [json.loads(m)["mid"] for _, m in rows] == [f"x-{i}" for i in range(20)]
    await restorer.close(5)


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    p = CuttableProxy(target_port=3306)
    await p.start()
    yield p
    await p.cut()


@pytest.fixture
async def store_via_proxy(proxy: CuttableProxy, mariadb_url: str) -> AsyncIterator[SqlStore]:
    direct = SqlStore(mariadb_url)
    await direct.create_schema()
    await direct.close()
    host = MYSQL_SERVER.rsplit(":", 1)[0]
    s = SqlStore(f"{host}:{proxy.port}/{mariadb_url.rsplit('/', 1)[1]}", pool_size=2)
    yield s
    await s.close()


async def test_retries_through_an_outage_until_the_store_takes_them(
    store_via_proxy: SqlStore, proxy: CuttableProxy
) -> None:
    store = store_via_proxy
    (uid,) = await _users(store, 1)
    restorer = Restorer(store)
    await proxy.cut()
    restorer.add(uid, [payload(1), payload(2)])
    async with asyncio.timeout(20):
        while restorer.failures < 2:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.05)
    await proxy.start()
    assert await restorer.drain(30)
    assert [json.loads(m)["mid"] for _, m in await store.offline(uid)] == ["x-1", "x-2"]
    assert await restorer.close(5) == 0


async def test_shutdown_says_loudly_what_it_could_not_write(
    store_via_proxy: SqlStore, proxy: CuttableProxy, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_via_proxy
    uids = await _users(store, 2)
    restorer = Restorer(store)
    await proxy.cut()
    for uid in uids:
        restorer.add(uid, [payload(1), payload(2), payload(3)])
    with caplog.at_level(logging.ERROR):
        assert await restorer.close(0.5) == 6
    assert "6 acknowledged messages for 2 users NOT stored" in caplog.text


async def test_shutdown_writes_what_is_left_before_it_returns(store: SqlStore) -> None:
    (uid,) = await _users(store, 1)
    restorer = Restorer(store)
    restorer.add(uid, [payload(i) for i in range(50)])
    assert await restorer.close(10) == 0
    assert len(await store.offline(uid)) == 50


async def test_settlements_are_released_once_their_rows_are_written(
    store_via_proxy: SqlStore, proxy: CuttableProxy
) -> None:
    """Another node keeps its copy of a batch until what held it here is
    stored: released after the write (through an outage), never before."""
    store = store_via_proxy
    (uid,) = await _users(store, 1)
    restorer = Restorer(store)
    nothing, first, second = Settlement(), Settlement(), Settlement()
    for s in (nothing, first, second):
        s.hold()
    restorer.add(uid, [], [nothing])  # nothing to write, nothing queued: at once
    assert nothing.settled_or_then(lambda: None)
    await proxy.cut()
    restorer.add(uid, [payload(1)], [first])
    restorer.add(uid, [], [second])  # after what is queued before it
    async with asyncio.timeout(20):
        while restorer.failures < 1:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.05)
    assert not first.settled_or_then(lambda: None)
    assert not second.settled_or_then(lambda: None)
    await proxy.start()
    assert await restorer.drain(30)
    assert first.settled_or_then(lambda: None) and second.settled_or_then(lambda: None)
    assert await restorer.close(5) == 0


async def test_a_copy_of_what_a_session_holds_is_not_pushed_to_it(store: SqlStore) -> None:
    """Stored for a slow client's next login while it still holds them: the
    user's node is not told (it would push them to that session again)."""
    a, b = await _users(store, 2)
    told: list[int] = []

    async def stored(uids: Sequence[int]) -> None:
        told.extend(uids)

    restorer = Restorer(store, stored=stored)
    restorer.add(a, [payload(1)], nudge=False)
    restorer.add(b, [payload(2)])
    assert await restorer.drain(10)
    assert told == [b]
    assert [json.loads(m)["mid"] for _, m in await store.offline(a)] == ["x-1"]
    assert await restorer.close(5) == 0
