"""A long BLOCKED_LIST costs the flood limit what a HISTORY page of its size
does. Blocks have no quota (a harassed user may need many), so one account
that blocked 20,000 users and asked for the list at its limit (20 a second)
had the node send it 30 MB a second: 72% of a core, others' chats p99
0.7 -> 15 ms, their logins 5 -> 34 ms (/tmp/atk/h.py listflood, in the
commit message). A short list costs one token, as before."""

from __future__ import annotations

from sqlalchemy import insert, select

from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import blocked, user
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
