"""The history table on SQLite and MariaDB: one multi-row write packing each
conversation's messages of a round into one row, pages by message id newest
first across packed and plain rows, and purges that take a bounded chunk at
a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat import errors
from clusterchat.admin import Admin
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
    name = unique()
    a, b = await store.create_user(name, "x"), await store.create_user(unique(), "x")
    gid = await store.create_group(a, unique("g"), "")
    joined = await store.group_joined(a, gid)
    assert joined is not None and abs(joined // 1000 - now_ms()) < 60_000
    assert await store.group_joined(b, gid) is None
    with pytest.raises(errors.NoSuchGroup):
        await store.group_joined(a, 2_000_000_000)
    assert await store.user_name(a) == name and await store.user_name(2_000_000_000) is None


async def test_purge_takes_expired_rows_in_chunks_and_keeps_the_rest(store: SqlStore) -> None:
    async with store.engine.begin() as conn:  # the session's MariaDB is shared: start empty
        await conn.execute(delete(history))
    a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
    old = now_ms() - 10_000
    # A row stamped in the future (a node whose clock is ahead) among old ones.
    await store.add_history([(a, b, a, "ahead", now_ms() + 60_000, "ahead")])
    for i in range(7):  # a round each: seven rows (one round would pack them in one)
        await store.add_history([(a, b, a, f"old-{i}", old + i, "old")])
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


async def rows_of(store: SqlStore, conva: int, convb: int) -> int:
    async with store.engine.connect() as conn:
        where = (history.c.conva == conva) & (history.c.convb == convb)
        return int(await conn.scalar(select(func.count()).select_from(history).where(where)) or 0)


async def test_a_round_packs_each_conversations_messages_into_one_row(store: SqlStore) -> None:
    a, b, c = [await store.create_user(unique(), "x") for _ in range(3)]
    gid = await store.create_group(a, unique("g"), "")
    t = now_ms()
    ab = [(a, b, a if i % 2 else b, f"ab-{i}", t + i, f"ab {i} ünï") for i in range(5)]
    ac = [(a, c, c, "ac-0", t, "alone")]
    group = [(0, gid, (a, b, c)[i], f"g-{i}", t + i, f'g "{i}"') for i in range(3)]
    interleaved = [ab[0], group[0], ab[1], ac[0], group[1], ab[2], ab[3], group[2], ab[4]]
    before = store.history_packed
    await store.add_history(interleaved)
    assert store.history_packed - before == 3  # one row per conversation
    assert [await rows_of(store, *conv) for conv in ((a, b), (a, c), (0, gid))] == [1, 1, 1]
    page = await store.history(a, b, 0, 10, 0)
    assert [(r.sender, r.mid, r.ts, r.body) for r in page] == [r[2:] for r in reversed(ab)]
    assert all(r.name for r in page)
    ids = [r.id for r in page]
    assert ids == sorted(ids, reverse=True) and len({i >> 10 for i in ids}) == 1
    assert [r.body for r in await store.history(a, c, 0, 10, 0)] == ["alone"]
    assert [r.body for r in await store.history(0, gid, 0, 10, 0)] == ['g "2"', 'g "1"', 'g "0"']
    # More than a row holds: the rest goes on in the next row, ids still in order.
    many = [(a, b, a, f"big-{i}", t, str(i)) for i in range(1500)]
    await store.add_history(many)
    assert await rows_of(store, a, b) == 3
    got = await store.history(a, b, 0, 200, 0)
    assert [r.body for r in got] == [str(i) for i in reversed(range(1300, 1500))]
    seen = [r.id for r in got]
    while got:
        got = await store.history(a, b, got[-1].id, 200, 0)
        seen += [r.id for r in got]
    assert len(seen) == 1505 and seen == sorted(set(seen), reverse=True)
    # Long texts: a row stops at PACK_TEXT characters (what a page query reads is bounded).
    long = [(a, c, a, f"long-{i}", t, f"{i:02} " + "y" * 9_997) for i in range(20)]
    await store.add_history(long)
    assert await rows_of(store, a, c) == 1 + 4  # "alone", then 20 x 10 KB in 4 rows
    assert [r.body[:2] for r in await store.history(a, c, 0, 30, 0)][:3] == ["19", "18", "17"]
    # The bound counts characters of text, not bytes of JSON: 6 x 10,000
    # control characters (60,000 bytes in JSON each) still fit one row.
    ctl = [(b, c, b, f"ctl-{i}", t, "\x01" * 10_000) for i in range(6)]
    await store.add_history(ctl)
    assert await rows_of(store, b, c) == 1
    assert [r.mid for r in await store.history(b, c, 0, 10, 0)] == [
        f"ctl-{i}" for i in range(5, -1, -1)
    ]


async def test_a_batch_past_the_databases_packet_is_written_in_several_statements(
    store: SqlStore,
) -> None:
    # The writer's batch bound counts characters (4 MiB); packed in JSON a
    # control character takes 6 bytes: ~24 MiB, past MariaDB's 16 MiB
    # max_allowed_packet, as one bulk command. Before: refused, and retried
    # unchanged for ever (the node's history queue filling behind it).
    a, b, c = [await store.create_user(unique(), "x") for _ in range(3)]
    t = now_ms()
    text_ = "\x01" * 10_000  # what a 64 KiB frame of "\u0001"s carries
    rows = [((a, b) if i % 2 else (a, c)) + (a, f"c-{i}", t + i, text_) for i in range(400)]
    await store.add_history(rows)
    assert await rows_of(store, a, b) + await rows_of(store, a, c) >= 2
    got = await store.history(a, b, 0, 200, 0)
    assert [r.mid for r in got] == [f"c-{i}" for i in reversed(range(1, 400, 2))]
    assert all(r.body == text_ for r in got)
    packed = history_storage.pack(history_storage.by_conversation(rows))
    parts = history_storage.statements(packed)
    assert len(parts) > 1 and sum(map(len, parts)) == len(packed)


async def test_pages_cross_packed_and_plain_rows_and_stay_put_under_new_writes(
    store: SqlStore,
) -> None:
    a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
    t = now_ms()
    async with store.engine.begin() as conn:  # a row as written before revision 0007
        await conn.execute(
            history.insert().values(conva=a, convb=b, sender=a, mid="m-0", ts=t, body="text 0")
        )
    rounds = [[1], [2, 3, 4], [5], [6, 7], [8, 9, 10, 11, 12]]
    for r in rounds:
        await store.add_history([(a, b, (a, b)[i % 2], f"m-{i}", t + i, f"text {i}") for i in r])
    seen: list[int] = []
    page = await store.history(a, b, 0, 3, 0)
    while page:
        seen += [int(m.mid[2:]) for m in page]
        assert [m.id for m in page] == sorted({m.id for m in page}, reverse=True)
        # Others write meanwhile, packed and not: no page shows them or repeats.
        await store.add_history([(a, b, a, f"late-{len(seen)}", t + 99, "late")] * 2)
        await store.add_history([(a, b, b, f"late1-{len(seen)}", t + 99, "late")])
        page = await store.history(a, b, page[-1].id, 3, 0)
    assert seen == list(reversed(range(13)))
    assert (await store.history(a, b, 0, 1, 0))[0].mid.startswith("late1-")


async def test_since_hides_the_older_messages_inside_a_packed_row(store: SqlStore) -> None:
    """A group's history from when the member joined: a row packs messages
    from either side of that time."""
    a = await store.create_user(unique(), "x")
    gid = await store.create_group(a, unique("g"), "")
    t = now_ms()
    await store.add_history([(0, gid, a, f"g-{i}", t + i, str(i)) for i in range(10)])
    assert [r.body for r in await store.history(0, gid, 0, 50, t + 6)] == ["9", "8", "7", "6"]
    assert await store.history(0, gid, 0, 50, t + 10) == []
    first = await store.history(0, gid, 0, 2, t + 6)
    assert [r.body for r in await store.history(0, gid, first[-1].id, 50, t + 6)] == ["7", "6"]


async def test_a_packed_row_is_purged_when_its_newest_message_expires(store: SqlStore) -> None:
    async with store.engine.begin() as conn:  # the session's MariaDB is shared: start empty
        await conn.execute(delete(history))
    a, b = await store.create_user(unique(), "x"), await store.create_user(unique(), "x")
    old = now_ms() - 10_000
    cutoff = now_ms() - 5_000
    await store.add_history([(a, b, a, f"old-{i}", old + i, "old") for i in range(5)])
    # Its first message is past the cutoff, its newest not: the row stays whole.
    straddling = [(a, b, a, "edge-0", old, "edge 0"), (a, b, a, "edge-1", cutoff + 1000, "edge 1")]
    await store.add_history(straddling)
    for i in range(4):
        await store.add_history([(a, b, a, f"one-{i}", old + i, "old")])
    assert await Purger(store, retention=5.0, chunk=2).once() == 5  # 1 packed + 4 plain
    assert [r.body for r in await store.history(a, b, 0, 50, 0)] == ["edge 1", "edge 0"]
    async with store.engine.begin() as conn:  # leave the shared database as found
        await conn.execute(delete(history))


async def test_a_write_in_doubt_is_found_inside_packed_rows(store: SqlStore) -> None:
    a, b, c = [await store.create_user(unique(), "x") for _ in range(3)]
    t = now_ms()
    written = [(a, b, a, f"p-{i}", t, "x") for i in range(4)] + [(a, c, a, "q-0", t, "y")]
    await store.add_history(written)
    asked = [*written, (a, b, a, "p-9", t, "not written"), (b, c, b, "r-0", t, "nor this")]
    kept = await store.history_kept(history_storage.by_conversation(asked))
    assert kept == {"p-0", "p-1", "p-2", "p-3", "q-0"}


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
    settings = Settings(
        host="127.0.0.1", port=0, db_url=mariadb_url, hash_cost=FAST_HASH, shed_lag=0.0
    )
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


async def test_deleting_an_account_takes_its_messages_out_of_packed_group_rows(
    store: SqlStore, db_url: str
) -> None:
    """``clusterchat admin delete`` removes what the user said in groups (on
    SQLite their id may be given again): from packed rows, message by message."""
    a, b, c = [await store.create_user(unique(), "x") for _ in range(3)]
    gid = await store.create_group(a, unique("g"), "")
    t = now_ms()
    await store.add_history([(0, gid, (a, b)[i % 2], f"g-{i}", t, f"m{i}") for i in range(4)])
    await store.add_history([(0, gid, b, f"g-{i}", t, f"m{i}") for i in (4, 5)])
    looks_like_b = f'see [{b},"'  # a text that matches the search: left as it is
    await store.add_history([(0, gid, c, "g-6", t, looks_like_b), (0, gid, c, "g-7", t, "m7")])
    await store.add_history([(0, gid, b, "g-8", t, "m8")])
    await store.add_history([(a, b, b, f"p-{i}", t, "private") for i in range(3)])
    ids = {m.body: m.id for m in await store.history(0, gid, 0, 50, 0)}
    async with Admin(db_url, None) as admin:
        gone = await admin.delete_user(b)
    assert gone["history_messages"] == 2 + 2 + 1 + 3
    left = await store.history(0, gid, 0, 50, 0)
    assert [m.body for m in left] == ["m7", looks_like_b, "m2", "m0"]
    # What is left keeps its id: a client's cursor into a row still means
    # the same message, so paging from it skips and repeats nothing.
    assert {m.body: m.id for m in left} == {k: ids[k] for k in ("m7", looks_like_b, "m2", "m0")}
    assert [m.body for m in await store.history(0, gid, ids["m3"], 1, 0)] == ["m2"]
    assert [m.body for m in await store.history(0, gid, ids["m2"], 50, 0)] == ["m0"]
    assert [m.body for m in await store.history(0, gid, ids["m1"], 50, 0)] == ["m0"]
    assert [m.sender for m in left] == [c, c, a, a]
    assert await store.history(a, b, 0, 50, 0) == []


async def test_what_a_deleted_account_said_after_its_delete_is_not_served(
    store: SqlStore, db_url: str
) -> None:
    """Rows written after ``admin delete`` (a node's queue, a session the
    node was not told to end) by or to the gone account: its 1:1
    conversations read as empty, its group messages are skipped, packed or
    not, and a page still fills up with the others' messages."""
    a, b, c = [await store.create_user(unique(), "x") for _ in range(3)]
    gid = await store.create_group(a, unique("g"), "")
    async with Admin(db_url, None) as admin:
        await admin.delete_user(b)
    t = now_ms()
    await store.add_history([(0, gid, a, f"a-{i}", t + i, f"a{i}") for i in range(3)])
    await store.add_history([(0, gid, (b, c)[i % 2], f"p-{i}", t + 9, f"p{i}") for i in range(4)])
    for i in range(20):  # plain rows, more than a batch of rows reads
        await store.add_history([(0, gid, b, f"b-{i}", t + 10 + i, f"b{i}")])
    await store.add_history([(a, b, b, "late", t, "late"), (a, b, a, "to b", t + 1, "to b")])
    page = await store.history(0, gid, 0, 4, 0)
    assert [(m.sender, m.body) for m in page] == [(c, "p3"), (c, "p1"), (a, "a2"), (a, "a1")]
    assert all(m.name for m in page)
    assert [m.body for m in await store.history(0, gid, page[-1].id, 50, 0)] == ["a0"]
    assert await store.history(a, b, 0, 50, 0) == []
    assert await store.history(b, b, 0, 50, 0) == []


async def test_a_packed_row_whose_newest_message_is_taken_out_is_paged_by_the_one_before(
    store: SqlStore, db_url: str
) -> None:
    """The row's own columns (``ts`` for ``since`` and purges) become those
    of its newest message left."""
    a, b = [await store.create_user(unique(), "x") for _ in range(2)]
    gid = await store.create_group(a, unique("g"), "")
    t = now_ms()
    await store.add_history([(0, gid, a, "g-0", t, "m0"), (0, gid, b, "g-1", t + 50, "m1")])
    async with Admin(db_url, None) as admin:
        await admin.delete_user(b)
    async with store.engine.connect() as conn:
        cols = select(history.c.sender, history.c.ts, history.c.n)
        ours = (history.c.conva == 0) & (history.c.convb == gid)
        (row,) = (await conn.execute(cols.where(ours))).all()
    assert tuple(row) == (a, t, 2)
    assert [m.body for m in await store.history(0, gid, 0, 50, t)] == ["m0"]
    assert await store.history(0, gid, 0, 50, t + 1) == []
