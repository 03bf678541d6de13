"""A long BLOCKED_LIST, or a LIST_GROUPS page of big groups, costs the flood
limit what a HISTORY page of its size does. Blocks have no quota (a
harassed user may need many), so one account that blocked 20,000 users and
asked for the list at its limit (20 a second) had the node send it 30 MB a
second: 72% of a core, others' chats p99 0.7 -> 15 ms, their logins
5 -> 34 ms (/tmp/atk/h.py listflood, in the commit message). A short list
costs one token, as before."""

from __future__ import annotations

import time

from sqlalchemy import insert, select

from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import allgroup, blocked, groupuser, user
from clusterchat.storage.tables import user as user_table
from tests.conftest import UserFactory, unique

LIST = {"msgid": MsgId.LIST_BLOCKED}


async def _blocks(node: Node, uid: int, n: int) -> None:
    """``uid`` blocks ``n`` new users with 50-character names (rows written
    straight to the store: blocking them over the protocol takes minutes)."""
    assert isinstance(node.store, SqlStore)
    tag = unique("b")
    async with node.store.engine.begin() as db:
        names = [f"{tag}{i:0{50 - len(tag)}d}" for i in range(n)]
        await db.execute(insert(user), [{"name": x, "namekey": x, "password": "x"} for x in names])
        found = await db.execute(select(user.c.id).where(user.c.name.like(f"{tag}%")))
        ids = found.scalars().all()
        await db.execute(insert(blocked), [{"userid": uid, "blockedid": b} for b in ids])


async def test_a_long_blocked_list_costs_its_size(user: UserFactory, node: Node) -> None:
    eve, ann = await user(), await user()
    await _blocks(node, eve.id, 8000)  # ~590 KB of list: ~36 tokens
    served = 0
    for _ in range(5):  # without a cost, 5 of a burst of 50 tokens
        await eve.conn.send(LIST)
        reply = await eve.conn.recv()
        if reply["msgid"] != MsgId.BLOCKED_LIST:
            break
        assert len(reply["blocked"]) == 8000
        served += 1
    assert served == 2, served  # the burst paid for two
    assert reply["errno"] == ErrCode.TOO_FAST and reply["re"] == MsgId.LIST_BLOCKED, reply
    assert "retry in" in reply["errmsg"], reply
    # Someone with a short list asks as often as any request allows.
    await _blocks(node, ann.id, 3)
    for _ in range(10):
        reply = await ann.conn.request(LIST, MsgId.BLOCKED_LIST)
        assert len(reply["blocked"]) == 3


async def _big_group(node: Node, members: list[int], n: int) -> None:
    """A group of ``members`` and ``n`` new users with 50-character names
    (rows written straight to the store, as above)."""
    assert isinstance(node.store, SqlStore)
    tag = unique("m")
    async with node.store.engine.begin() as db:
        names = [f"{tag}{i:0{50 - len(tag)}d}" for i in range(n)]
        await db.execute(insert(user), [{"name": x, "namekey": x, "password": "x"} for x in names])
        found = await db.execute(select(user.c.id).where(user.c.name.like(f"{tag}%")))
        ids = [*members, *found.scalars().all()]
        gid = (await db.execute(insert(allgroup).values(groupname=tag, groupkey=tag))).lastrowid
        await db.execute(insert(groupuser), [{"groupid": gid, "userid": u} for u in ids])


async def test_a_page_of_big_groups_costs_its_size(user: UserFactory, node: Node) -> None:
    """Five accounts in three groups of 1,000 asking LIST_GROUPS at their
    limit got 35 pages of 218 KB a second: the node's CPU 10.1 s of 15,
    others' chats p99 6 -> 91 ms, their logins p50 9 -> 388 ms
    (/tmp/hunt-atk/lgflood.py, in the commit message)."""
    eve, ann = await user(), await user()
    for _ in range(3):
        await _big_group(node, [eve.id], 999)  # ~360 KB of members: pages of ~240 KB
    served = 0
    start = time.monotonic()
    for _ in range(10):  # without a cost, 10 of a burst of 50 tokens
        await eve.conn.send({"msgid": MsgId.LIST_GROUPS})
        reply = await eve.conn.recv()
        if reply["msgid"] != MsgId.GROUP_LIST:
            break
        assert reply["more"] and len(reply["groups"]) == 2
        served += 1
    # The first page costs 1 (eve had none of these lists yet), each one
    # after ~16 of the burst's 50 and of what came back meanwhile (20 a
    # second: a slow machine's pages take long enough to matter).
    earned = int(20 * (time.monotonic() - start))
    assert 2 <= served <= 2 + (49 + earned) // 15, (served, earned)
    assert reply["errno"] == ErrCode.TOO_FAST and reply["re"] == MsgId.LIST_GROUPS, reply
    assert "retry in" in reply["errmsg"], reply
    # Someone in a small group asks as often as any request allows.
    await _big_group(node, [ann.id], 3)
    for _ in range(10):
        reply = await ann.conn.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
        assert len(reply["groups"]) == 1 and len(reply["groups"][0]["users"]) == 4


async def test_reading_each_list_once_costs_only_the_requests(
    user: UserFactory, node: Node
) -> None:
    """An honest member of many big groups paid a token per 16 KiB to read
    its list even once: 500 groups of 1,000 took ~2,000 tokens, 100 s of the
    limit. Each list is charged its size only when sent again to the same
    user within LIST_WINDOW (what the attack above does), so a first read
    of 30 groups of 1,000 (15 pages of ~240 KB, ~225 tokens before) fits in
    the burst; reading it all again right away is refused within it."""
    eve = await user()
    assert isinstance(node.store, SqlStore)
    tag = unique("m")
    async with node.store.engine.begin() as db:
        names = [f"{tag}{i:0{50 - len(tag)}d}" for i in range(999)]
        await db.execute(
            insert(user_table), [{"name": x, "namekey": x, "password": "x"} for x in names]
        )
        found = await db.execute(select(user_table.c.id).where(user_table.c.name.like(f"{tag}%")))
        ids = [eve.id, *found.scalars().all()]
        for g in range(30):
            name = f"{tag}g{g}"
            res = await db.execute(insert(allgroup).values(groupname=name, groupkey=name))
            rows = [{"groupid": res.lastrowid, "userid": u} for u in ids]
            await db.execute(insert(groupuser), rows)

    async def read_all() -> int | None:
        """Pages read, or None once one is refused."""
        after, pages = 0, 0
        while True:
            doc = {"msgid": MsgId.LIST_GROUPS, **({"after": after} if after else {})}
            await eve.conn.send(doc)
            reply = await eve.conn.recv()
            if reply["msgid"] != MsgId.GROUP_LIST:
                assert reply["errno"] == ErrCode.TOO_FAST, reply
                return None
            pages += 1
            assert all(len(g["users"]) == 1000 for g in reply["groups"])
            if not reply.get("more"):
                return pages
            after = reply["groups"][-1]["id"]

    assert await read_all() == 15
    assert await read_all() is None
