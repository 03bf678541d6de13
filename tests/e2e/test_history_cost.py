"""What one HISTORY request costs the store, over real TCP on MariaDB: a page
reads about as many rows as it returns, however long the conversation's past
it may not see. Counted with MariaDB's own handler counters on a node with a
pool of one connection (the counters are per connection)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, insert, text

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits, Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import history
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.e2e.test_history import history as ask_history

#: Rows of the group's past, from before the newcomer joined.
PAST = 20_000


@pytest.fixture
async def node(mariadb_url: str) -> AsyncIterator[Node]:
    n = Node(
        Settings(
            host="127.0.0.1",
            port=0,
            db_url=mariadb_url,
            db_pool=1,
            hash_cost=FAST_HASH,
            limits=Limits(registrations_per_address=0),
            trusted_proxies=(),
        )
    )
    await n.start()
    yield n
    await n.stop()


async def rows_read(store: SqlStore) -> int:
    """Rows the pool's one connection has read through indexes and scans."""
    async with store.engine.connect() as conn:
        found = await conn.execute(text("SHOW SESSION STATUS LIKE 'Handler_read%'"))
        return sum(int(value) for _, value in found)


async def test_a_new_member_reads_a_page_not_the_groups_whole_past(node: Node) -> None:
    conns = [await ChatConnection.open("127.0.0.1", node.port) for _ in range(2)]
    store = node.store
    assert isinstance(store, SqlStore)
    try:
        owner, newcomer = conns
        uids = [await c.register(unique(), PASSWORD) for c in conns]
        for c, uid in zip(conns, uids, strict=True):
            assert (await c.login(uid, PASSWORD))["errno"] == 0
        created = await owner.request(
            {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g"), "groupdesc": ""},
            MsgId.CREATE_GROUP_ACK,
        )
        gid = created["groupid"]
        old = int(time.time() * 1000) - 3_600_000  # an hour of the group's past
        past = [
            {"conva": 0, "convb": gid, "sender": uids[0], "mid": f"old-{i}", "ts": old + i,
             "body": "before you came"}
            for i in range(PAST)
        ]  # fmt: skip
        async with store.engine.begin() as conn:
            await conn.execute(insert(history), past)
        await newcomer.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
        await owner.request(
            {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "welcome"}, MsgId.CHAT_ACK
        )
        start = await rows_read(store)
        page = await ask_history(newcomer, groupid=gid, limit=200)
        read = await rows_read(store) - start
        assert [m["msg"] for m in page["messages"]] == ["welcome"] and page["more"] is False
        # Before: every row of the group's past was read to find none it may see (20,000+).
        assert read < 100, read
    finally:
        for c in conns:
            await c.close()
        async with store.engine.begin() as conn:  # the session's MariaDB is shared
            await conn.execute(delete(history).where(history.c.convb == gid))
