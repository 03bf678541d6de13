"""The history table on SQLite and MariaDB: one multi-row write, pages by id
newest first, and purges that take a bounded chunk at a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat import errors
from clusterchat.config import Settings
from clusterchat.server.node import Node
from clusterchat.service.history import Purger
from clusterchat.storage import history as history_storage
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import history
from tests.conftest import FAST_HASH, MYSQL_SERVER, unique
from tests.helpers import stalling_mariadb


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(db_url, pool_size=2)
    await s.create_schema()
    yield s
    await s.close()


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_pages_go_back_by_id_and_stay_put_under_new_writes(store: SqlStore) -> None:
    a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
    t = now_ms()
    await store.add_history([(a, b, a, f"m-{i}", t + i, f"text {i}") for i in range(10)])
    await store.add_history([(a, b + 1, a, "other", t, "not ours")])  # another conversation
    first = await store.history(a, b, 0, 4, 0)
    assert [r.body for r in first] == ["text 9", "text 8", "text 7", "text 6"]
    assert first[0].sender == a and first[0].name and first[0].mid == "m-9"
    await store.add_history([(a, b, b, "late", t + 99, "newer")])  # arrives while paging
    second = await store.history(a, b, first[-1].id, 4, 0)
    assert [r.body for r in second] == ["text 5", "text 4", "text 3", "text 2"]
    last = await store.history(a, b, second[-1].id, 4, 0)
    assert [r.body for r in last] == ["text 1", "text 0"]
    assert [r.body for r in await store.history(a, b, 0, 1, 0)] == ["newer"]
    # ``since`` hides what is older (group members see from when they joined).
    recent = await store.history(a, b, 0, 50, t + 8)
    assert [r.body for r in recent] == ["newer", "text 9", "text 8"]


async def test_group_joined_tells_members_from_others(store: SqlStore) -> None:
    a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
    gid = await store.create_group(a, unique("g"), "")
    joined = await store.group_joined(a, gid)
    assert joined is not None and abs(joined // 1000 - now_ms()) < 60_000
    assert await store.group_joined(b, gid) is None
    with pytest.raises(errors.NoSuchGroup):
        await store.group_joined(a, 2_000_000_000)
    assert await store.user_exists(a) and not await store.user_exists(2_000_000_000)


async def test_purge_takes_expired_rows_in_chunks_and_keeps_the_rest(store: SqlStore) -> None:
    async with store.engine.begin() as conn:  # the session's MariaDB is shared: start empty
        await conn.execute(delete(history))
    a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
    old = now_ms() - 10_000
    # A row stamped in the future (a node whose clock is ahead) among old ones.
    await store.add_history([(a, b, a, "ahead", now_ms() + 60_000, "ahead")])
    await store.add_history([(a, b, a, f"old-{i}", old + i, "old") for i in range(7)])
    await store.add_history([(a, b, a, "new", now_ms() + 60_000, "new")])
    cutoff = now_ms() - 5_000
    n, after = await store.purge_history(cutoff, 3)
    assert n == 2 and after  # a chunk (3 rows, 2 of them expired), no more; go on
    purger = Purger(store, retention=5.0, chunk=3)
    assert await purger.once() == 5  # the rest, chunk by chunk
    assert purger.purged == 5 and purger.rounds == 1
    kept = await store.history(a, b, 0, 50, 0)
    assert [r.body for r in kept] == ["new", "ahead"]
    assert await store.purge_history(now_ms(), 3) == (0, 0)  # nothing expired
    async with store.engine.begin() as conn:  # leave the shared database as found
        await conn.execute(delete(history))


async def _drop_connections(url: str) -> int:
    """Have MariaDB drop every connection to this database but ours, as a
    server restart or its ``wait_timeout`` would; returns how many."""
    name = url.rsplit("/", 1)[1]
    engine = create_async_engine(MYSQL_SERVER + "/")
    try:
        async with engine.connect() as conn:
            ids = (
                await conn.execute(
                    text(
                        "SELECT ID FROM information_schema.PROCESSLIST"
                        " WHERE DB = :db AND ID <> CONNECTION_ID()"
                    ),
                    {"db": name},
                )
            ).scalars()
            killed = 0
            for cid in list(ids):
                with contextlib.suppress(DBAPIError):  # gone meanwhile
                    await conn.execute(text(f"KILL CONNECTION {int(cid)}"))
                    killed += 1
            return killed
    finally:
        await engine.dispose()


async def test_history_connection_dropped_while_idle_writes_the_next_round(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqlStore(mariadb_url, pool_size=2)
    await store.create_schema()
    try:
        a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
        await store.add_history([(a, b, a, "m-1", now_ms(), "before")])
        assert await _drop_connections(mariadb_url) >= 1
        # Unused for IDLE_PING: pinged first, found dropped, opened again.
        monkeypatch.setattr(history_storage, "IDLE_PING", 0.0)
        await store.add_history([(a, b, a, "m-2", now_ms(), "after")])
        assert [r.body for r in await store.history(a, b, 0, 10, 0)] == ["after", "before"]
    finally:
        await store.close()


async def test_history_connection_dropped_in_use_fails_one_round_in_doubt(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_storage, "IDLE_PING", 3600.0)  # no ping: write at once
    store = SqlStore(mariadb_url, pool_size=2)
    await store.create_schema()
    try:
        a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
        await store.add_history([(a, b, a, "m-1", now_ms(), "first")])
        assert await _drop_connections(mariadb_url) >= 1
        # The write may or may not have been kept: the writer retries it.
        with pytest.raises(errors.InDoubt):
            await store.add_history([(a, b, a, "m-2", now_ms(), "lost")])
        await store.add_history([(a, b, a, "m-3", now_ms(), "next")])  # a new connection
        assert [r.body for r in await store.history(a, b, 0, 10, 0)] == ["next", "first"]
    finally:
        await store.close()


async def test_a_history_write_on_a_silent_connection_fails_in_doubt_in_time(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history connection's flow goes silent (a middlebox holds it: no
    FIN, no reset). The write must fail, in doubt, within WRITE_TIMEOUT and
    the next one go through a new connection; else history, and every chat
    of the node once its queue is full, waits for ever."""
    monkeypatch.setattr(history_storage, "IDLE_PING", 3600.0)
    monkeypatch.setattr(history_storage, "WRITE_TIMEOUT", 1.0)
    direct = SqlStore(mariadb_url, pool_size=2)
    await direct.create_schema()
    proxy, through = await stalling_mariadb(mariadb_url)
    store = SqlStore(through, pool_size=2)
    try:
        a, b = await direct.create_user(unique(), "x"), await direct.create_user(unique(), "x")
        await store.add_history([(a, b, a, "m-1", now_ms(), "first")])
        proxy.stall()
        async with asyncio.timeout(10):
            with pytest.raises(errors.InDoubt):
                await store.add_history([(a, b, a, "m-2", now_ms(), "held")])
        assert store.history_bulk is not None and store.history_bulk._conn is None  # dropped
    finally:
        await store.close()
        await proxy.close()
        await direct.close()


async def test_a_node_opens_its_history_connection_at_start_not_with_the_first_round(
    mariadb_url: str,
) -> None:
    """At its ceiling a node took tens of ms to open it inside the first round,
    while the queue filled (service/history.py, ``HistoryWriter.open``)."""
    settings = Settings(host="127.0.0.1", port=0, db_url=mariadb_url, hash_cost=FAST_HASH)
    store = SqlStore(mariadb_url, pool_size=2)
    node = Node(settings, store=store)
    assert store.history_bulk is not None and not store.history_bulk.connected
    await node.start()
    try:
        assert store.history_bulk.connected  # before any message
        a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
        await store.add_history([(a, b, a, "m-1", now_ms(), "on it")])
        assert [r.body for r in await store.history(a, b, 0, 10, 0)] == ["on it"]
    finally:
        await node.stop()


async def test_opening_the_history_connection_on_a_silent_flow_fails_in_time(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history connection is opened at the node's start (the service
    logs Unavailable and goes on): a flow gone silent (no FIN, no reset)
    must cost that WRITE_TIMEOUT at most, not hold the start for ever; the
    first write opens it again."""
    monkeypatch.setattr(history_storage, "WRITE_TIMEOUT", 1.0)
    direct = SqlStore(mariadb_url, pool_size=2)
    await direct.create_schema()
    proxy, through = await stalling_mariadb(mariadb_url)
    store = SqlStore(through, pool_size=2)
    proxy.stall()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(errors.Unavailable):
                await store.open_history()
        assert store.history_bulk is not None and not store.history_bulk.connected
        proxy.flow()
        a, b = await direct.create_user(unique(), "x"), await direct.create_user(unique(), "x")
        await store.add_history([(a, b, a, "m-1", now_ms(), "after the stall")])
        assert [r.body for r in await direct.history(a, b, 0, 10, 0)] == ["after the stall"]
    finally:
        await store.close()
        await proxy.close()
        await direct.close()
