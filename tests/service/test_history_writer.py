"""The history writer against real stores: few batched writes, retries through
an outage, backpressure while a slowed store cannot keep up (senders wait;
past their patience ERROR 151, no effect), and a shutdown that writes what
is queued."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.service.history import BATCH_ROWS, HistoryWriter
from clusterchat.storage.base import Conversations, HistoryRow
from clusterchat.storage.sql import SqlStore
from tests.conftest import MYSQL_SERVER, PASSWORD, unique
from tests.e2e.test_legacy_dialect import nlohmann
from tests.helpers import CuttableProxy
from tests.mysql_proxy import COM_STMT_BULK_EXECUTE, MariaDbProxy


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(db_url, pool_size=2)
    await s.create_schema()
    yield s
    await s.close()


def rows(a: int, b: int, n: int, start: int = 0) -> list[HistoryRow]:
    t = int(time.time() * 1000)
    return [(a, b, a, f"m-{i}", t, f"text {i}") for i in range(start, start + n)]


async def test_thousands_of_messages_take_a_few_writes(store: SqlStore) -> None:
    a = await store.create_user(unique(), "x")
    writer = HistoryWriter(store)
    for row in rows(a, a, 5000):
        writer.add(*row)
    assert await writer.drain(30)
    assert writer.written == 5000 and writer.rounds <= 5000 // 2000 + 2
    page = await store.history(a, a, 0, 3, 0)
    assert [r.body for r in page] == ["text 4999", "text 4998", "text 4997"]
    assert await writer.close(5) == 0


async def test_a_queue_past_a_batch_is_written_in_several_each_conversation_in_order(
    store: SqlStore,
) -> None:
    # Queued by conversation: a batch takes whole conversations, the last
    # one in part (its oldest), and the rest of it goes first in the next.
    a, b, c = [await store.create_user(unique(), "x") for _ in range(3)]
    gid = await store.create_group(a, unique("g"), "")
    convs = [(a, b), (a, c), (0, gid)]
    writer = HistoryWriter(store)
    t = int(time.time() * 1000)
    n = BATCH_ROWS + BATCH_ROWS // 2
    for i in range(n):
        conva, convb = convs[0] if i < BATCH_ROWS // 2 else convs[i % 3]
        writer.add(conva, convb, a, f"m-{i}", t, f"text {i}")
    assert len(writer) == n
    assert await writer.drain(60)
    assert writer.written == n and writer.rounds == 2
    for conva, convb in convs:
        want = [
            f"m-{i}"
            for i in range(n)
            if (conva, convb) == (convs[0] if i < BATCH_ROWS // 2 else convs[i % 3])
        ]
        got = await store.history(conva, convb, 0, n, 0)
        assert [r.mid for r in reversed(got)] == want  # once each, ids in queued order
    assert await writer.close(5) == 0


async def test_rounds_are_paced_unless_the_queue_is_full(store: SqlStore) -> None:
    a = await store.create_user(unique(), "x")
    writer = HistoryWriter(store, max_rows=10, pace=30.0)
    for row in rows(a, a, 3):
        writer.add(*row)
    assert await writer.drain(5) and writer.rounds == 1  # the first round goes at once
    for row in rows(a, a, 3, start=3):
        writer.add(*row)
    # The next round waits for the pace: more rows may join it...
    assert not await writer.drain(0.3) and writer.written == 3
    for row in rows(a, a, 7, start=6):
        writer.add(*row)
    # ...but not once the queue is full: then it goes at once, all of them.
    assert writer.full
    assert await writer.drain(5) and writer.rounds == 2 and writer.written == 13
    assert not writer.full
    page = await store.history(a, a, 0, 20, 0)
    assert [r.mid for r in page] == [f"m-{i}" for i in reversed(range(13))]
    assert await writer.close(5) == 0


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    p = CuttableProxy(target_port=3306)
    await p.start()
    yield p
    await p.cut()


async def test_retries_through_an_outage_until_the_store_takes_them(
    proxy: CuttableProxy, mariadb_url: str
) -> None:
    direct = SqlStore(mariadb_url)
    await direct.create_schema()
    a = await direct.create_user(unique(), "x")
    host = MYSQL_SERVER.rsplit(":", 1)[0]
    store = SqlStore(f"{host}:{proxy.port}/{mariadb_url.rsplit('/', 1)[1]}", pool_size=2)
    try:
        writer = HistoryWriter(store)
        await proxy.cut()
        for row in rows(a, a, 3):
            writer.add(*row)
        async with asyncio.timeout(20):
            while writer.failures < 2:  # noqa: ASYNC110 - polled with a deadline
                await asyncio.sleep(0.05)
        await proxy.start()
        assert await writer.drain(30)
        got = await direct.history(a, a, 0, 10, 0)
        assert [r.mid for r in got] == ["m-2", "m-1", "m-0"]  # once each, in order
        assert await writer.close(5) == 0
    finally:
        await store.close()
        await direct.close()


async def test_a_write_whose_answer_was_lost_is_not_written_twice(mariadb_url: str) -> None:
    """MariaDB kept the rows of a bulk write (autocommit) but its answer was
    lost: the writer must find them there rather than write them again."""
    direct = SqlStore(mariadb_url)
    await direct.create_schema()
    a = await direct.create_user(unique(), "x")
    proxy = MariaDbProxy(target_port=3306)
    await proxy.start()
    host = MYSQL_SERVER.rsplit(":", 1)[0]
    store = SqlStore(f"{host}:{proxy.port}/{mariadb_url.rsplit('/', 1)[1]}", pool_size=2)
    try:
        writer = HistoryWriter(store)
        writer.add(*rows(a, a, 1)[0])
        assert await writer.drain(10)  # the history connection is open
        proxy.lose_next_answer_to(COM_STMT_BULK_EXECUTE)
        for row in rows(a, a, 3, start=1):
            writer.add(*row)
        async with asyncio.timeout(10):
            await proxy.commit_lost.wait()
        assert await writer.drain(30)
        got = await direct.history(a, a, 0, 10, 0)
        assert [r.mid for r in got] == ["m-3", "m-2", "m-1", "m-0"]  # once each
        assert await writer.close(5) == 0
    finally:
        await store.close()
        await proxy.cut()
        await direct.close()


class SlowedStore(SqlStore):
    """A real store whose history writes wait until the test lets them through:
    a database that has stopped keeping up."""

    def __init__(self, url: str) -> None:
        super().__init__(url, pool_size=4)
        self.gate = asyncio.Event()
        self.gate.set()

    async def write_history(self, convs: Conversations) -> None:
        await self.gate.wait()
        await super().write_history(convs)


@pytest.fixture
async def slowed(settings: Settings) -> AsyncIterator[Node]:
    store = SlowedStore(settings.db_url)
    n = Node(replace(settings, history_queue=5), store=store)
    await n.start()
    yield n
    store.gate.set()
    await n.stop()


async def _logged_in(node: Node, legacy: bool = False) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", node.port, legacy=legacy)
    uid = await conn.register(unique(), PASSWORD)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return conn, uid


async def _chat(conn: ChatConnection, toid: int, msg: str) -> dict[str, Any]:
    return await conn.request({"msgid": MsgId.ONE_CHAT, "toid": toid, "msg": msg}, MsgId.CHAT_ACK)


async def _fill(alice: ChatConnection, b: int, n: int) -> list[str]:
    """Chats from alice to b until the history queue is full (n rows)."""
    accepted = []
    for i in range(n):
        assert (await _chat(alice, b, f"m{i}"))["status"] == "delivered"
        accepted.append(f"m{i}")
    return accepted


@pytest.mark.unmetered
async def test_a_store_that_cannot_keep_up_slows_senders_and_loses_nothing(
    slowed: Node,
) -> None:
    node = slowed
    store = node.store
    assert isinstance(store, SlowedStore)
    writer = node.service.history
    assert writer is not None
    alice, a = await _logged_in(node)
    bob, b = await _logged_in(node)
    legacy, c = await _logged_in(node, legacy=True)
    try:
        store.gate.clear()
        accepted = await _fill(alice, b, 5)
        assert writer.full and len(writer) == 5
        for m in accepted:  # everything accepted was delivered
            assert (await bob.expect(MsgId.ONE_CHAT))["msg"] == m
        # Past the bound, a modern chat waits for room, and the sender's next
        # one waits behind it; so does the original client's.
        await alice.send({"msgid": MsgId.ONE_CHAT, "toid": b, "msg": "waited"})
        await alice.send({"msgid": MsgId.ONE_CHAT, "toid": b, "msg": "behind"})
        await legacy.send_raw(nlohmann({"msgid": 6, "id": c, "toid": b, "msg": "from legacy"}))
        await asyncio.sleep(0.3)  # give a wrong reply or delivery the chance to show
        assert not await _readable(alice) and not await _readable(bob)
        store.gate.set()  # the store catches up: everything waiting goes on, in order
        for _ in ("waited", "behind"):
            assert (await alice.expect(MsgId.CHAT_ACK))["status"] == "delivered"
        got = [(await bob.expect(MsgId.ONE_CHAT))["msg"] for _ in range(3)]
        assert [m for m in got if m != "from legacy"] == ["waited", "behind"]
        assert "from legacy" in got
        assert await writer.drain(10)
        kept = [m.body for m in await store.history(min(a, b), max(a, b), 0, 50, 0)]
        assert kept == ["behind", "waited", *reversed(accepted)]
        legacy_kept = await store.history(min(c, b), max(c, b), 0, 50, 0)
        assert [m.body for m in legacy_kept] == ["from legacy"]
        assert writer.refused >= 2  # slowed: the modern chat and the legacy one
    finally:
        for conn in (alice, bob, legacy):
            await conn.close()


@pytest.mark.unmetered
async def test_a_store_that_stays_behind_gets_modern_senders_refused(slowed: Node) -> None:
    node = slowed
    store = node.store
    assert isinstance(store, SlowedStore)
    writer = node.service.history
    assert writer is not None
    node.service.history_patience = 0.3
    alice, a = await _logged_in(node)
    bob, b = await _logged_in(node)
    try:
        store.gate.clear()
        accepted = await _fill(alice, b, 5)
        for m in accepted:
            assert (await bob.expect(MsgId.ONE_CHAT))["msg"] == m
        waited = time.monotonic()
        await alice.send({"msgid": MsgId.ONE_CHAT, "toid": b, "msg": "refused"})
        refusal = await alice.recv()
        # Refused with "busy, retry" once its patience ran out, not dropped...
        assert refusal["msgid"] == MsgId.ERROR, refusal
        assert refusal["errno"] == ErrCode.BUSY and refusal["re"] == MsgId.ONE_CHAT, refusal
        assert "history" in refusal["errmsg"]
        assert time.monotonic() - waited >= 0.3
        # ...and a refusal has no effect: nobody got it, history does not hold it.
        assert not await _readable(bob)
        store.gate.set()
        assert (await _chat(alice, b, "after"))["status"] == "delivered"
        assert (await bob.expect(MsgId.ONE_CHAT))["msg"] == "after"
        assert await writer.drain(10)
        kept = [m.body for m in await store.history(min(a, b), max(a, b), 0, 50, 0)]
        assert kept == ["after", *reversed(accepted)]
    finally:
        for conn in (alice, bob):
            await conn.close()


async def _readable(conn: ChatConnection) -> bool:
    """Whether anything arrives within 0.1 s."""
    try:
        await conn.recv(timeout=0.1)
    except TimeoutError:
        return False
    return True


async def test_shutdown_writes_what_is_queued(settings: Settings) -> None:
    store = SlowedStore(settings.db_url)
    node = Node(settings, store=store)
    await node.start()
    alice, a = await _logged_in(node)
    bob, b = await _logged_in(node)
    store.gate.clear()
    for i in range(3):
        assert (await _chat(alice, b, f"m{i}"))["status"] == "delivered"
    assert node.service.history is not None and len(node.service.history) == 3
    await alice.close()
    await bob.close()
    stopping = asyncio.ensure_future(node.stop())
    await asyncio.sleep(0.1)
    store.gate.set()  # the store answers again while the node shuts down
    await stopping
    again = SqlStore(settings.db_url, pool_size=1)
    try:
        kept = await again.history(min(a, b), max(a, b), 0, 10, 0)
        assert [m.body for m in kept] == ["m2", "m1", "m0"]
    finally:
        await again.close()
