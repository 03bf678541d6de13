"""Quotas: nothing one account does fills the disk or swells another's login.
Each bound gets a clear refusal, and a refused message has had no effect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.service import chat
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique

LIMITS = Limits(
    registrations_per_address=0,
    message_rate=0,
    max_offline_messages=3,
    max_offline_bytes=1500,
    max_stored_message=700,
    max_groups_created=2,
    max_memberships=3,
    max_friends=2,
    offline_share=0,  # the whole quota's bounds, one sender at a time (test_offline_share.py)
    offline_group_share=0,  # group messages too
)


_OPENED: list[ChatConnection] = []


@pytest.fixture
async def quota_node(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, limits=LIMITS))
    await n.start()
    yield n
    while _OPENED:
        await _OPENED.pop().close()
    await n.stop()


class Who:
    def __init__(self, conn: ChatConnection, uid: int) -> None:
        self.conn, self.id = conn, uid

    async def req(self, doc: dict[str, Any], reply: int) -> dict[str, Any]:
        return await self.conn.request(doc, reply)


async def _user(node: Node, login: bool = True, legacy: bool = False) -> Who:
    c = await ChatConnection.open("127.0.0.1", node.port, legacy=legacy)
    _OPENED.append(c)
    uid = await c.register(unique(), PASSWORD)
    if login:
        assert (await c.login(uid, PASSWORD))["errno"] == 0
    return Who(c, uid)


def _chat(to: int, msg: str) -> dict[str, Any]:
    return {"msgid": MsgId.ONE_CHAT, "toid": to, "msg": msg}


async def test_offline_mailbox_is_bounded_and_refusals_leave_no_trace(quota_node: Node) -> None:
    sender, away = await _user(quota_node), await _user(quota_node, login=False)
    replies = []
    for n in range(5):
        await sender.conn.send(_chat(away.id, f"m{n}"))
        replies.append(await sender.conn.recv())
    assert [r["msgid"] for r in replies] == [MsgId.CHAT_ACK] * 3 + [MsgId.ERROR] * 2
    assert all(r["status"] == "stored" for r in replies[:3])
    assert replies[3]["errno"] == ErrCode.MAILBOX_FULL and "not sent" in replies[3]["errmsg"]
    # Too long to keep for an offline receiver: refused, never acknowledged...
    err = await sender.req(_chat(await _new_away(quota_node), "x" * 800), MsgId.ERROR)
    assert err["errno"] == ErrCode.TOO_LONG_TO_STORE and err["re"] == MsgId.ONE_CHAT
    # ...while the same text to someone online is delivered.
    online = await _user(quota_node)
    ack = await sender.req(_chat(online.id, "x" * 800), MsgId.CHAT_ACK)
    assert ack["status"] == "delivered"
    # Exactly the acknowledged ones arrive.
    login = await away.conn.login(away.id, PASSWORD)
    assert [chat_doc(m)["msg"] for m in login["offlinemsg"]] == ["m0", "m1", "m2"]


def chat_doc(text: str) -> dict[str, Any]:
    from clusterchat.protocol import codec

    return codec.loads(text)  # type: ignore[no-any-return]


async def _new_away(node: Node) -> int:
    return (await _user(node, login=False)).id


async def test_offline_bytes_are_bounded(quota_node: Node) -> None:
    sender, away = await _user(quota_node), await _user(quota_node, login=False)
    big = "y" * 500  # about 650 bytes stored: two fit in 1,500, not a third
    codes = []
    for _ in range(3):
        await sender.conn.send(_chat(away.id, big))
        codes.append((await sender.conn.recv()).get("errno"))
    assert codes == [0, 0, ErrCode.MAILBOX_FULL], codes


async def test_groups_memberships_and_friends_are_capped(quota_node: Node) -> None:
    me = await _user(quota_node)
    gids = []
    for _ in range(2):
        ack = await me.req(
            {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK
        )
        gids.append(ack["groupid"])
    err = await me.req({"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.ERROR)
    assert err["errno"] == ErrCode.QUOTA and "created 2 groups" in err["errmsg"]
    other = await _user(quota_node)
    theirs = []
    for _ in range(2):
        ack = await other.req(
            {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK
        )
        theirs.append(ack["groupid"])
    await me.req({"msgid": MsgId.ADD_GROUP, "groupid": theirs[0]}, MsgId.ADD_GROUP_ACK)
    err = await me.req({"msgid": MsgId.ADD_GROUP, "groupid": theirs[1]}, MsgId.ERROR)
    assert err["errno"] == ErrCode.QUOTA and "in 3 groups" in err["errmsg"]
    friends = [await _user(quota_node, login=False) for _ in range(3)]
    for f in friends[:2]:
        await me.req({"msgid": MsgId.ADD_FRIEND, "friendid": f.id}, MsgId.ADD_FRIEND_ACK)
    err = await me.req({"msgid": MsgId.ADD_FRIEND, "friendid": friends[2].id}, MsgId.ERROR)
    assert err["errno"] == ErrCode.QUOTA and "2 friends" in err["errmsg"]
    # Nor can anyone push a third friend onto a user who has two.
    err = await other.req({"msgid": MsgId.ADD_FRIEND, "friendid": me.id}, MsgId.ERROR)
    assert err["errno"] == ErrCode.QUOTA and f"user {me.id} has 2 friends" in err["errmsg"]


async def test_group_chat_too_long_to_store_reaches_nobody(quota_node: Node) -> None:
    a, b = await _user(quota_node), await _user(quota_node)
    gid = (
        await a.req({"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK)
    )["groupid"]
    await b.req({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    long = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "z" * 800}
    err = await a.req(long, MsgId.ERROR)
    assert err["errno"] == ErrCode.TOO_LONG_TO_STORE and err["re"] == MsgId.GROUP_CHAT
    short = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "fits"}
    await a.req(short, MsgId.CHAT_ACK)
    assert (await b.conn.expect(MsgId.GROUP_CHAT))["msg"] == "fits"  # not the long one first


async def test_a_full_mailbox_misses_group_chat_and_the_sender_is_told(quota_node: Node) -> None:
    a, away = await _user(quota_node), await _user(quota_node)
    gid = (
        await a.req({"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK)
    )["groupid"]
    await away.req({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await away.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    acks = [
        await a.req({"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": f"g{n}"}, MsgId.CHAT_ACK)
        for n in range(4)
    ]
    assert [x.get("full") for x in acks] == [None, None, None, [away.id]]


async def test_the_login_reply_is_bounded(
    quota_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat, "LOGIN_FRIENDS", 1)
    me, f1, f2 = await _user(quota_node), await _user(quota_node), await _user(quota_node)
    for f in (f1, f2):
        await me.req({"msgid": MsgId.ADD_FRIEND, "friendid": f.id}, MsgId.ADD_FRIEND_ACK)
    await me.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    login = await me.conn.login(me.id, PASSWORD)
    assert len(login["friends"]) == 1 and login["more"] == ["friends"]
    listed = await me.req({"msgid": MsgId.LIST_FRIENDS}, MsgId.FRIEND_LIST)
    assert {f["id"] for f in listed["friends"]} == {f1.id, f2.id}
    # The original client's reply has the shape it knows (plus a key it ignores).
    await me.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    legacy = await ChatConnection.open("127.0.0.1", quota_node.port, legacy=True)
    old = await legacy.login(me.id, PASSWORD)
    assert old["errno"] == 0 and len(old["friends"]) == 1 and isinstance(old["friends"][0], str)
    await legacy.close()


async def test_long_group_lists_come_in_pages(
    quota_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat, "LOGIN_GROUPS_BYTES", 1)  # one group per page
    me = await _user(quota_node)
    made = []
    for _ in range(2):
        ack = await me.req(
            {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK
        )
        made.append(ack["groupid"])
    await me.req({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    login = await me.conn.login(me.id, PASSWORD)
    assert len(login["groups"]) == 1 and login["more"] == ["groups"]
    seen, after = [], 0
    while True:
        page = await me.req({"msgid": MsgId.LIST_GROUPS, "after": after}, MsgId.GROUP_LIST)
        seen += [g["id"] for g in page["groups"]]
        if not page.get("more"):
            break
        after = seen[-1]
    assert seen == sorted(made)
