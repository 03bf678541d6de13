"""What one request costs the store, over real TCP on MariaDB: a page of
HISTORY or LIST_GROUPS reads about as many rows as it returns, however long
the conversation's past it may not see, however many big groups the user is
in. Counted with MariaDB's own handler counters on a node with a pool of one
connection (the counters are per connection)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete, insert, select, text

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits, Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import allgroup, groupuser, history, user
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
            shed_lag=0.0,
            # Unmetered: rows read are measured here; a page of big groups
            # costs the flood limit its size (tests/e2e/test_list_cost.py).
            limits=Limits(registrations_per_address=0, message_rate=0),
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
    gid = 0
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


async def test_a_member_of_many_big_groups_lists_a_page_of_them(node: Node) -> None:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    store = node.store
    assert isinstance(store, SqlStore)
    tag = unique("m")
    gids: list[int] = []
    try:
        uid = await conn.register(unique(), PASSWORD)
        async with store.engine.begin() as db:  # 40 groups of 500: 20,000 memberships
            names = [
                {"name": f"{tag}{i}", "namekey": f"{tag}{i}", "password": "x"} for i in range(500)
            ]
            await db.execute(insert(user), names)
            members = await db.execute(select(user.c.id).where(user.c.name.like(f"{tag}%")))
            others = members.scalars().all()
            groups = [{"groupname": f"{tag}g{i}", "groupkey": f"{tag}g{i}"} for i in range(40)]
            await db.execute(insert(allgroup), groups)
            found = await db.execute(
                select(allgroup.c.id).where(allgroup.c.groupname.like(f"{tag}g%"))
            )
            gids = sorted(found.scalars().all())
            await db.execute(
                insert(groupuser),
                [{"groupid": g, "userid": u} for g in gids for u in [*others, uid]],
            )
        start = await rows_read(store)
        ack = await conn.login(uid, PASSWORD)
        login = await rows_read(store) - start
        assert ack["errno"] == 0 and ack["more"] == ["groups"] and 0 < len(ack["groups"]) < 40
        start = await rows_read(store)
        page = await conn.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
        listed = await rows_read(store) - start
        assert (
            page["more"] is True
            and [g["id"] for g in page["groups"]] == gids[: len(page["groups"])]
        )
        start = await rows_read(store)
        past = await conn.request({"msgid": MsgId.LIST_GROUPS, "after": gids[-1]}, MsgId.GROUP_LIST)
        nothing = await rows_read(store) - start
        assert past["groups"] == [] and "more" not in past
        # Before: each read every membership of every group (95,000 handler reads; now 15,000).
        assert login < 20_000 and listed < 20_000 and nothing < 100, (login, listed, nothing)
        # Paging with ``after`` still reaches every group.
        seen, after = [], 0
        while True:
            got = await conn.request({"msgid": MsgId.LIST_GROUPS, "after": after}, MsgId.GROUP_LIST)
            seen += [g["id"] for g in got["groups"]]
            if not got.get("more"):
                break
            after = seen[-1]
        assert seen == gids
    finally:
        await conn.close()
        async with store.engine.begin() as db:  # the session's MariaDB is shared
            await db.execute(delete(groupuser).where(groupuser.c.groupid.in_(gids)))
            await db.execute(delete(allgroup).where(allgroup.c.id.in_(gids)))
            await db.execute(delete(user).where(user.c.name.like(f"{tag}%")))


async def test_a_page_of_long_messages_reads_about_a_pages_worth(node: Node) -> None:
    """A page is cut at 128 KiB of text; the store read every message asked
    for all the same, 100 of 50,000 characters (5 MB) to send two of them."""
    conn = await ChatConnection.open("127.0.0.1", node.port)
    store = node.store
    assert isinstance(store, SqlStore)
    uid = 0
    try:
        uid = await conn.register(unique(), PASSWORD)
        assert (await conn.login(uid, PASSWORD))["errno"] == 0
        now = int(time.time() * 1000)
        notes = [
            {"conva": uid, "convb": uid, "sender": uid, "mid": f"{uid}-{i}", "ts": now + i,
             "body": f"{i} " + "x" * 50_000}
            for i in range(100)
        ]  # fmt: skip
        async with store.engine.begin() as db:  # notes to oneself, one row each
            await db.execute(insert(history), notes)
        start = await rows_read(store)
        page = await ask_history(conn, userid=uid, limit=100)
        read = await rows_read(store) - start
        assert [m["msg"].split()[0] for m in page["messages"]] == ["99", "98"] and page["more"]
        assert read < 20, read  # before: every one of the 100 rows
        rest = await ask_history(conn, userid=uid, limit=100, before=page["messages"][-1]["id"])
        assert rest["messages"][0]["msg"].startswith("97 ") and rest["more"]
    finally:
        await conn.close()
        async with store.engine.begin() as db:  # the session's MariaDB is shared
            await db.execute(delete(history).where(history.c.conva == uid))
