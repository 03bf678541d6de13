"""Accounts and mailbox counts shared by the full-mailbox tests (one node
and across nodes)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits
from clusterchat.protocol.messages import ChatStatus, MsgId
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import offlinemessage
from tests.conftest import PASSWORD, unique

QUOTA = 20  # --offline-quota's messages
WINDOW = 10  # --receipt-window
SMALL = 5  # a quota below the window
ROUNDS = 20


def quota_limits(base: Limits, quota: int) -> Limits:
    """``base`` with a mailbox of ``quota`` messages (1 MiB) and a receipt
    window of WINDOW, unmetered; no sender's share: the bound under test is
    the whole mailbox."""
    return replace(
        base,
        message_rate=0,
        max_offline_messages=quota,
        max_offline_bytes=1 << 20,
        offline_share=0,
        receipt_window=WINDOW,
    )


async def registered(node: Node) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    return conn, await conn.register(unique(), PASSWORD)


async def logged_in(node: Node) -> tuple[ChatConnection, int]:
    """A new account, logged in."""
    conn, uid = await registered(node)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return conn, uid


async def stored_rows(node: Node, uid: int) -> int:
    """Messages stored for ``uid``, counted in the table (not the tally)."""
    store = node.service.store
    assert isinstance(store, SqlStore)
    async with store.engine.connect() as conn:
        q = select(func.count()).where(offlinemessage.c.userid.in_((uid, -uid)))
        return int((await conn.execute(q)).scalar_one())


async def chat(sender: ChatConnection, toid: int, msg: str) -> dict[str, Any]:
    """A ONE_CHAT and what answers it (a CHAT_ACK or an ERROR)."""
    await sender.send({"msgid": MsgId.ONE_CHAT, "toid": toid, "msg": msg})
    return await sender.recv()


async def gone(node: Node, uid: int) -> None:
    """The session is over and what it left is stored."""
    async with asyncio.timeout(10):
        while uid in node.service.sessions:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert await node.service.restorer.drain(10)


async def a_full_member_misses_a_group_message(at: Node, members_at: Node, quota: int) -> None:
    """A group message from a sender on ``at`` to a member on ``members_at``
    whose mailbox holds ``quota`` messages is kept for them within the
    quota, as for a member away: not kept, listed in the CHAT_ACK's
    ``full``, while the other member gets it live."""
    (sender, _), (other, _) = await logged_in(at), await logged_in(members_at)
    member, uid = await logged_in(members_at)
    made = await sender.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique()}, MsgId.CREATE_GROUP_ACK
    )
    gid = made["groupid"]
    for conn in (member, other):
        joined = await conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
        assert joined["errno"] == 0, joined
    await member.close()
    await gone(members_at, uid)
    for i in range(quota):
        assert (await chat(sender, uid, f"kept {i}"))["status"] == ChatStatus.STORED
    member = await ChatConnection.open("127.0.0.1", members_at.port)
    assert (await member.login(uid, PASSWORD, receipts=True))["errno"] == 0
    post = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "to the group"}
    ack = await sender.request(post, MsgId.CHAT_ACK)
    assert ack["status"] == ChatStatus.SENT and ack["full"] == [uid], ack
    assert (await other.expect(MsgId.GROUP_CHAT))["mid"] == ack["mid"]
    assert await stored_rows(members_at, uid) == quota
    for c in (sender, member, other):
        await c.close()
