"""The offline mailbox, end to end (SQLite and MariaDB): a group message to
many offline members is kept with its text stored once and reaches each of
them, the original client included, exactly as an online member got it; and
one sender may fill only a share of a receiver's mailbox (ERROR 174), while
others can still leave messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol import codec
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import offlinebody, offlinemessage
from tests.conftest import PASSWORD, unique

#: 8 messages a receiver, a quarter (2) of them from any one sender, half
#: (4) of them group messages.
LIMITS = Limits(
    registrations_per_address=0,
    message_rate=0,
    max_offline_messages=8,
    offline_share=0.25,
    offline_group_share=0.5,
)


@pytest.fixture
async def share_node(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, limits=LIMITS))
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def opened() -> AsyncIterator[list[ChatConnection]]:
    conns: list[ChatConnection] = []
    yield conns
    for c in conns:
        await c.close()


class Who:
    def __init__(self, conn: ChatConnection, uid: int) -> None:
        self.conn, self.id = conn, uid

    async def req(self, doc: dict[str, Any], reply: int) -> dict[str, Any]:
        return await self.conn.request(doc, reply)


async def _user(
    node: Node, opened: list[ChatConnection], login: bool = True, legacy: bool = False
) -> Who:
    c = await ChatConnection.open("127.0.0.1", node.port, legacy=legacy)
    opened.append(c)
    uid = await c.register(unique(), PASSWORD)
    if login:
        assert (await c.login(uid, PASSWORD))["errno"] == 0
    return Who(c, uid)


def _chat(to: int, msg: str) -> dict[str, Any]:
    return {"msgid": MsgId.ONE_CHAT, "toid": to, "msg": msg}


async def _texts(node: Node, conn: ChatConnection, uid: int) -> list[str]:
    login = await conn.login(uid, PASSWORD)
    assert login["errno"] == 0, login
    return [codec.loads(m)["msg"] for m in login.get("offlinemsg", [])]


async def test_a_stranger_fills_only_a_share_of_the_mailbox(
    share_node: Node, opened: list[ChatConnection]
) -> None:
    stranger, friend = await _user(share_node, opened), await _user(share_node, opened)
    victim = await _user(share_node, opened, login=False)
    replies = []
    for n in range(3):
        await stranger.conn.send(_chat(victim.id, f"s{n}"))
        replies.append(await stranger.conn.recv())
    assert [r.get("status") for r in replies[:2]] == ["stored", "stored"]
    err = replies[2]
    assert err["msgid"] == MsgId.ERROR and err["errno"] == ErrCode.MAILBOX_SHARE_FULL, err
    assert "one sender" in err["errmsg"] and "not sent" in err["errmsg"], err
    # Everyone else can still leave the victim messages (not ERROR 171).
    ack = await friend.req(_chat(victim.id, "f0"), MsgId.CHAT_ACK)
    assert ack["status"] == "stored"
    # Exactly the acknowledged ones arrive; delivered, the share is free again.
    assert await _texts(share_node, victim.conn, victim.id) == ["s0", "s1", "f0"]
    await victim.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    ack = await stranger.req(_chat(victim.id, "s3"), MsgId.CHAT_ACK)
    assert ack["status"] == "stored"


async def test_group_messages_count_toward_their_writers_share(
    share_node: Node, opened: list[ChatConnection]
) -> None:
    a, b, idle = [await _user(share_node, opened) for _ in range(3)]
    gid = (
        await a.req({"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK)
    )["groupid"]
    for m in (b, idle):
        await m.req({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await idle.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)

    async def say(who: Who, text: str) -> dict[str, Any]:
        doc = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": text}
        ack = await who.req(doc, MsgId.CHAT_ACK)
        other = b if who is a else a
        assert (await other.conn.expect(MsgId.GROUP_CHAT))["msg"] == text  # online: always
        return ack

    acks = [await say(a, f"a{n}") for n in range(3)]
    # a's third is over a's share of idle's mailbox; b's still reaches idle.
    assert [x.get("full") for x in acks] == [None, None, [idle.id]]
    assert (await say(b, "b0")).get("full") is None
    # A stranger's 1:1 messages do not use up a's share, nor a's theirs.
    assert await _texts(share_node, idle.conn, idle.id) == ["a0", "a1", "b0"]


async def test_a_group_message_to_many_away_members_is_kept_once(
    share_node: Node, opened: list[ChatConnection]
) -> None:
    a, online = await _user(share_node, opened), await _user(share_node, opened)
    gid = (
        await a.req({"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK)
    )["groupid"]
    await online.req({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    away = [await _user(share_node, opened) for _ in range(13)]
    for m in away:
        await m.req({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
        await m.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    *away, legacy = away  # logs in with the original client
    text = "ü" * 3000 + unique()
    ack = await a.req({"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": text}, MsgId.CHAT_ACK)
    assert ack["status"] == "sent" and not ack.get("full")
    live = await online.conn.expect(MsgId.GROUP_CHAT)
    store = share_node.store
    assert isinstance(store, SqlStore)
    async with store.engine.connect() as conn:
        kept = (await conn.execute(select(offlinebody.c.refs).where(
            offlinebody.c.message.like(f"%{text[-12:]}%")))).scalars().all()  # fmt: skip
        copies = await conn.scalar(
            select(func.count()).where(offlinemessage.c.message.like(f"%{text[-12:]}%"))
        )
    assert list(kept) == [13] and copies == 0  # one text, 13 rows naming it
    # Each away member, modern or original, gets the very document an online one got.
    for m in away:
        login = await m.conn.login(m.id, PASSWORD)
        assert [codec.loads(x) for x in login["offlinemsg"]] == [live]
    orig = await ChatConnection.open("127.0.0.1", share_node.port, legacy=True)
    opened.append(orig)
    login = await orig.login(legacy.id, PASSWORD)
    assert [codec.loads(x) for x in login["offlinemsg"]] == [live]


async def test_group_messages_fill_only_their_part_of_the_mailbox(
    share_node: Node, opened: list[ChatConnection]
) -> None:
    """Each writer may fill a share of a member's mailbox, and a group
    multiplies that by its members: five accounts posting in a public group
    of 300 filled every away member's mailbox (16 MiB each) in 49 s, after
    which their friends' messages got ERROR 171. Group messages, all writers
    together, now fill half of it; the other half takes only 1:1 messages."""
    writers = [await _user(share_node, opened) for _ in range(4)]
    away = await _user(share_node, opened)
    gid = (
        await writers[0].req(
            {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK
        )
    )["groupid"]
    for m in (*writers[1:], away):
        await m.req({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await away.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    fulls = []
    for n, w in enumerate(writers):  # each within its share (2): 8 without the group part
        for k in range(2):
            doc = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": f"w{n}.{k}"}
            await w.conn.send(doc)
            while (ack := await w.conn.recv())["msgid"] == MsgId.GROUP_CHAT:
                pass  # another writer's, live
            assert ack["msgid"] == MsgId.CHAT_ACK, ack
            fulls.append(ack.get("full"))
    assert fulls == [None] * 4 + [[away.id]] * 4
    # Two strangers' 1:1 messages still get in, each within its share.
    strangers = [await _user(share_node, opened) for _ in range(3)]
    for n, s in enumerate(strangers[:2]):
        for k in range(2):
            ack = await s.req(_chat(away.id, f"s{n}.{k}"), MsgId.CHAT_ACK)
            assert ack["status"] == "stored", ack
    # Now it is full, for everyone.
    err = await strangers[2].req(_chat(away.id, "one more"), MsgId.ERROR)
    assert err["errno"] == ErrCode.MAILBOX_FULL, err
    kept = ["w0.0", "w0.1", "w1.0", "w1.1", "s0.0", "s0.1", "s1.0", "s1.1"]
    assert await _texts(share_node, away.conn, away.id) == kept
