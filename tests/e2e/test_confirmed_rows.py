"""Offline messages a client with receipts confirmed are not given again:
not within the session (a read that began before their delete committed),
nor at a password login that displaces the session while their delete is
still under way. Real sockets to an in-process node; the store is the real
one, with a gate on one call to hold it at the moment that matters."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol import codec
from clusterchat.protocol.messages import LoginErr, MsgId
from clusterchat.server.node import Node
from clusterchat.service import chat
from tests.conftest import PASSWORD, unique
from tests.e2e.test_double_fault import stored_for
from tests.e2e.test_receipts import logged_in, send_chats

pytestmark = pytest.mark.unmetered


class Raw:
    """A client with receipts that confirms only when told (ChatConnection
    confirms on its own)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, doc: dict[str, Any]) -> None:
        self.writer.write(json.dumps(doc).encode() + b"\n")

    async def next(self, msgid: int) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                doc: dict[str, Any] = json.loads(await self.reader.readline())
                if doc["msgid"] == msgid:
                    return doc

    async def chats(self, n: int) -> list[dict[str, Any]]:
        return [await self.next(MsgId.ONE_CHAT) for _ in range(n)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def gate(
    call: Callable[..., Awaitable[Any]], before: bool
) -> tuple[Callable[..., Awaitable[Any]], asyncio.Event, asyncio.Event]:
    """``call``, held at a gate the test opens (before the real call, or
    between it and its answer); and the events: reached, open."""
    reached, opened = asyncio.Event(), asyncio.Event()

    async def gated(*args: Any) -> Any:
        if before:
            reached.set()
            await opened.wait()
            return await call(*args)
        out = await call(*args)
        reached.set()
        await opened.wait()
        return out

    return gated, reached, opened


async def test_a_row_confirmed_while_a_read_is_under_way_is_not_given_again(
    node: Node, db_url: str
) -> None:
    """The flush read rows 1..150 (snapshot) while the client confirmed the
    reply's 100 and their delete committed: it filtered them against the
    rows still unconfirmed *after* the read, and pushed 1..100 again."""
    sender = await logged_in(node.port)
    uid = await sender.register(unique(), PASSWORD)
    mids = await send_chats(sender, uid, [f"while away {i}" for i in range(150)])
    store = node.service.store
    store.offline, reached, opened = gate(store.offline, before=False)  # type: ignore[method-assign,assignment]
    raw = await Raw.open(node.port)
    raw.send({"msgid": MsgId.LOGIN, "id": uid, "password": PASSWORD, "receipts": True})
    ack = await raw.next(MsgId.LOGIN_ACK)
    carried = [json.loads(m)["mid"] for m in ack["offlinemsg"]]
    assert carried == mids[:100]
    async with asyncio.timeout(10):
        await reached.wait()  # the flush has read its page: 1..150
        raw.send({"msgid": MsgId.RECEIVED, "seq": 100})
        while await stored_for(db_url, uid) != 50:  # noqa: ASYNC110 - a table, polled
            await asyncio.sleep(0.02)
        while uid in node.service._rows._running:  # noqa: ASYNC110 - the delete's task ends
            await asyncio.sleep(0.02)
    opened.set()
    pushed = await raw.chats(50)
    assert [m["mid"] for m in pushed] == mids[100:]  # not 1..100 again
    assert [m["seq"] for m in pushed] == list(range(101, 151))
    await raw.close()
    await sender.close()


async def test_a_password_login_does_not_get_what_the_displaced_session_confirmed(
    node: Node,
) -> None:
    """A ticket session confirmed its offline messages; their delete is slow.
    A password login displaces it: it read them again and gave them to the
    new session (a logout or a drop waits for that delete; this did not)."""
    sender = await logged_in(node.port)
    owner = await ChatConnection.open("127.0.0.1", node.port)
    uid = await owner.register(unique(), PASSWORD)
    ticket = (await owner.login(uid, PASSWORD))["ticket"]
    await owner.close()  # dropped: the ticket stays good
    async with asyncio.timeout(10):
        while uid in node.service.sessions:  # noqa: ASYNC110 - the drop is handled
            await asyncio.sleep(0.02)
    mids = await send_chats(sender, uid, [f"while away {i}" for i in range(10)])
    for _ in range(100):  # until the drop's release of the account is done
        thief = await Raw.open(node.port)
        thief.send({"msgid": MsgId.LOGIN, "id": uid, "ticket": ticket, "receipts": True})
        ack = await thief.next(MsgId.LOGIN_ACK)
        if ack["errno"] != LoginErr.ALREADY_ONLINE:
            break
        await thief.close()
        await asyncio.sleep(0.05)
    assert ack["errno"] == 0 and ack["resumed"] is True, ack
    got = [json.loads(m)["mid"] for m in ack.get("offlinemsg", ())]
    got += [m["mid"] for m in await thief.chats(10 - len(got))]
    assert got == mids
    rows = node.service._rows  # it holds the store's delete_offline
    rows._delete, reached, opened = gate(rows._delete, before=True)
    thief.send({"msgid": MsgId.RECEIVED, "seq": 10})  # all confirmed: their delete is slow
    async with asyncio.timeout(10):
        await reached.wait()
    again = await ChatConnection.open("127.0.0.1", node.port)
    login = asyncio.ensure_future(again.login(uid, PASSWORD, receipts=True))
    # The store answers the delete after the login's reply, or after 2 s
    # (a login that waits for it must not wait for ever).
    await asyncio.wait([login], timeout=2)
    opened.set()
    relogin = await login
    assert relogin["errno"] == 0, relogin
    assert relogin.get("offlinemsg", []) == []  # confirmed on the other device: not again
    await again.request({"msgid": MsgId.PING}, MsgId.PONG)
    await thief.close()
    for c in (again, sender):
        await c.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_late_delete_does_not_take_a_newer_message_with_the_same_id(
    node: Node, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S1 confirmed M1 (the newest row, id R); the store is slow and the drop's
    wait for that delete gives up (RESTORE_DEADLINE, shortened here), so S2's
    login gets M1 again (a duplicate: accepted). The delete then goes through
    and M2 is stored for the user (a store that raced the login, or S1's
    window restored late): SQLite gave it id R before revision 0010, S2's
    flush skipped it (R among its unconfirmed) and S2's receipt for M1
    deleted row R: M2 was lost. Ids are never reused now."""
    monkeypatch.setattr(chat, "RESTORE_DEADLINE", 0.3)
    sender = await logged_in(node.port)
    uid = await sender.register(unique(), PASSWORD)
    (m1,) = await send_chats(sender, uid, ["first"])
    s1 = await Raw.open(node.port)
    s1.send({"msgid": MsgId.LOGIN, "id": uid, "password": PASSWORD, "receipts": True})
    ack = await s1.next(MsgId.LOGIN_ACK)
    assert [json.loads(m)["mid"] for m in ack["offlinemsg"]] == [m1]
    rows = node.service._rows
    rows._delete, reached, opened = gate(rows._delete, before=True)
    s1.send({"msgid": MsgId.RECEIVED, "seq": 1})
    async with asyncio.timeout(10):
        await reached.wait()
    await s1.close()  # dropped while its delete waits for the store
    for _ in range(100):
        s2 = await Raw.open(node.port)
        s2.send({"msgid": MsgId.LOGIN, "id": uid, "password": PASSWORD, "receipts": True})
        ack = await s2.next(MsgId.LOGIN_ACK)
        if ack["errno"] != LoginErr.ALREADY_ONLINE:
            break
        await s2.close()
        await asyncio.sleep(0.05)
    assert ack["errno"] == 0, ack
    assert [json.loads(m)["mid"] for m in ack["offlinemsg"]] == [m1]  # again: accepted
    opened.set()  # the store is back: S1's delete goes through
    async with asyncio.timeout(10):
        while await stored_for(db_url, uid):  # noqa: ASYNC110 - a table, polled
            await asyncio.sleep(0.02)
    m2 = codec.encode_text(json.dumps({"msgid": 6, "mid": "late-2", "id": 0, "msg": "second"}))
    await node.service.store_offline([uid], m2)  # noticed: S2's flush reads it
    assert await stored_for(db_url, uid) == 1
    s2.send({"msgid": MsgId.RECEIVED, "seq": 1})  # S2 confirms its copy of M1
    async with asyncio.timeout(10):
        while uid in node.service._rows._running:  # noqa: ASYNC110 - the delete's task ends
            await asyncio.sleep(0.02)
    s2.send({"msgid": MsgId.LOGOUT})
    await s2.next(MsgId.LOGOUT_ACK)
    await s2.close()
    s3 = await Raw.open(node.port)
    s3.send({"msgid": MsgId.LOGIN, "id": uid, "password": PASSWORD, "receipts": True})
    ack = await s3.next(MsgId.LOGIN_ACK)
    await s3.close()
    await sender.close()
    got = [json.loads(m)["mid"] for m in ack.get("offlinemsg", ())]
    assert got == ["late-2"] or await stored_for(db_url, uid) == 1, got  # M2 is somewhere
