"""A login with the password takes the account over from a session that came
by ticket (a stolen ticket must not keep its owner out), and revokes the
ticket; a session that came with the password is not displaced (errno 2, as
in the original)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.protocol.messages import LoginErr, MsgId
from clusterchat.protocol.replies import DISPLACED_TEXT
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique


async def ticket_login(port: int, uid: int, ticket: str) -> tuple[ChatConnection, dict[str, Any]]:
    """Log in with ``ticket``, retrying while the account is still online
    (its last connection's end is being handled); the connection and reply."""
    for _ in range(100):
        conn = await ChatConnection.open("127.0.0.1", port)
        ack = await conn.request(
            {"msgid": MsgId.LOGIN, "id": uid, "ticket": ticket}, MsgId.LOGIN_ACK
        )
        if ack["errno"] != LoginErr.ALREADY_ONLINE:
            return conn, ack
        await conn.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the account stayed online")


async def stolen(port: int) -> tuple[int, ChatConnection, str]:
    """An account whose ticket a thief used: (uid, the thief's connection,
    the ticket the thief holds now)."""
    owner = await ChatConnection.open("127.0.0.1", port)
    uid = await owner.register(unique(), PASSWORD)
    ticket = (await owner.login(uid, PASSWORD))["ticket"]
    await owner.close()
    thief, ack = await ticket_login(port, uid, ticket)
    assert ack["errno"] == 0 and ack["resumed"] is True
    return uid, thief, ack["ticket"]


async def test_the_password_takes_over_a_ticket_session(node: Node) -> None:
    # Before: the owner got errno 2 "already online" until an operator kicked.
    uid, thief, thiefs_ticket = await stolen(node.port)
    friend = await ChatConnection.open("127.0.0.1", node.port)
    fid = await friend.register(unique(), PASSWORD)
    await friend.login(fid, PASSWORD)
    owner = await ChatConnection.open("127.0.0.1", node.port)
    ack = await owner.login(uid, PASSWORD)
    assert ack["errno"] == 0, ack
    notice = await thief.expect(MsgId.NOTICE)
    assert notice["text"] == DISPLACED_TEXT
    assert await thief.at_eof()
    # The thief's ticket is dead; the owner's session is the account's.
    again = await ChatConnection.open("127.0.0.1", node.port)
    refused = await again.request(
        {"msgid": MsgId.LOGIN, "id": uid, "ticket": thiefs_ticket}, MsgId.LOGIN_ACK
    )
    assert refused["errno"] == LoginErr.BAD_CREDENTIALS
    await friend.request({"msgid": MsgId.ONE_CHAT, "toid": uid, "msg": "hi"}, MsgId.CHAT_ACK)
    assert (await owner.expect(MsgId.ONE_CHAT))["msg"] == "hi"
    for c in (owner, friend, again, thief):
        await c.close()


async def test_an_original_client_takes_over_and_revokes_the_ticket(node: Node) -> None:
    uid, thief, thiefs_ticket = await stolen(node.port)
    owner = await ChatConnection.open("127.0.0.1", node.port, legacy=True)
    assert (await owner.login(uid, PASSWORD))["errno"] == 0
    assert (await thief.expect(MsgId.NOTICE))["text"] == DISPLACED_TEXT
    await thief.close()
    await owner.close()  # the ticket does not work once the owner is gone either
    conn, ack = await ticket_login(node.port, uid, thiefs_ticket)
    assert ack["errno"] == LoginErr.BAD_CREDENTIALS, ack
    await conn.close()


async def test_a_password_session_is_not_displaced(node: Node) -> None:
    first = await ChatConnection.open("127.0.0.1", node.port)
    uid = await first.register(unique(), PASSWORD)
    ticket = (await first.login(uid, PASSWORD))["ticket"]
    for legacy in (False, True):  # a second password login: errno 2, as in the original
        second = await ChatConnection.open("127.0.0.1", node.port, legacy=legacy)
        assert (await second.login(uid, PASSWORD))["errno"] == LoginErr.ALREADY_ONLINE
        await second.close()
    # A ticket never displaces anyone either.
    third = await ChatConnection.open("127.0.0.1", node.port)
    ack = await third.request({"msgid": MsgId.LOGIN, "id": uid, "ticket": ticket}, MsgId.LOGIN_ACK)
    assert ack["errno"] == LoginErr.ALREADY_ONLINE
    assert (await first.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    for c in (first, third):
        await c.close()


async def test_a_wrong_password_displaces_nobody(node: Node) -> None:
    uid, thief, _ = await stolen(node.port)
    owner = await ChatConnection.open("127.0.0.1", node.port)
    assert (await owner.login(uid, "wrong"))["errno"] == LoginErr.BAD_CREDENTIALS
    assert (await thief.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    with contextlib.suppress(ConnectionClosed):
        await owner.close()
    await thief.close()
