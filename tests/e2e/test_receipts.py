"""Receipts on real sockets: a client that vanishes without closing loses
nothing it did not acknowledge, a client that never acknowledges is cut
off at the bound with its window kept, and without receipts (the original
dialect, or a client that did not ask) nothing changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol import codec
from clusterchat.protocol.client import ClientProtocol
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.metrics import NodeCollector
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique
from tests.helpers import StallingProxy

WINDOW = 10


@pytest.fixture
async def rnode(settings: Settings) -> AsyncIterator[Node]:
    n = Node(
        replace(
            settings, limits=replace(settings.limits, receipt_window=WINDOW, receipt_timeout=1.0)
        )
    )
    await n.start()
    yield n
    await n.stop()


async def registered(port: int) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", port)
    return conn, await conn.register(unique(), PASSWORD)


async def logged_in(port: int) -> ChatConnection:
    """A user who sends (no receipts)."""
    conn, uid = await registered(port)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return conn


async def send_chats(sender: ChatConnection, toid: int, texts: list[str]) -> list[str]:
    """Send each; the mids the server gave them, in order."""
    mids = []
    for text in texts:
        ack = await sender.request({"msgid": 6, "toid": toid, "msg": text}, MsgId.CHAT_ACK)
        assert ack["errno"] == 0, ack
        mids.append(ack["mid"])
    return mids


async def chats(conn: ChatConnection, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = await conn.recv()
        if msg["msgid"] == MsgId.ONE_CHAT:
            out.append(msg)
    return out


async def arrivals(conn: ChatConnection, ack: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The first ``n`` chats after a login: those its reply carries, then
    pushed ones; with receipts they are numbered 1 to n in that order."""
    got = [codec.loads(m) for m in ack.get("offlinemsg", ())][:n]
    got += await chats(conn, n - len(got))
    if ack.get("receipts"):
        seqs = [m.get("seq", i) for i, m in enumerate(got, 1)]
        assert seqs == list(range(1, n + 1)), seqs
    return got


async def gone(node: Node, uid: int) -> None:
    async with asyncio.timeout(10):
        while uid in node.service.sessions:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_client_that_vanishes_silently_gets_everything_unacknowledged(
    rnode: Node,
) -> None:
    sender = await logged_in(rnode.port)
    proxy = StallingProxy(rnode.port)
    await proxy.start()
    phone, uid = await registered(proxy.port)
    ack = await phone.login(uid, PASSWORD, receipts=True)
    assert ack["errno"] == 0 and ack["receipts"] is True
    try:
        before = await send_chats(sender, uid, [f"before {i}" for i in range(5)])
        got = await chats(phone, 5)
        assert [m["mid"] for m in got] == before
        assert [m["seq"] for m in got] == [1, 2, 3, 4, 5]
        await phone.received(3)  # it saw 5, says 3: 4 and 5 will come again
        await phone.request({"msgid": MsgId.PING}, MsgId.PONG)  # the receipt is in
        collected = NodeCollector(rnode).collect()
        gauges = {m.name: m.samples[0].value for m in collected if m.samples}
        assert gauges["clusterchat_receipt_connections"] == 1
        assert gauges["clusterchat_receipt_unacked"] == 2  # 4 and 5
        proxy.stall()  # into the tunnel: no FIN, no RST
        after = await send_chats(sender, uid, [f"after {i}" for i in range(8)])
        # Each was "delivered" to a connection that no longer reaches anyone;
        # with nothing acknowledged for the receipt timeout it is declared dead.
        await gone(rnode, uid)
    finally:
        await proxy.close()
    again = await ChatConnection.open("127.0.0.1", rnode.port)
    ack = await again.login(uid, PASSWORD, receipts=True)
    assert ack["errno"] == 0
    got = await arrivals(again, ack, 2 + 8)  # the reply's offline messages are 1 to n
    assert [m["mid"] for m in got] == before[3:] + after  # nothing lost, in order
    assert [m["msg"] for m in got[:2]] == ["before 3", "before 4"]  # duplicates: same mid
    await again.received(10)
    await again.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    # Acknowledged, so not stored again.
    ack = await again.login(uid, PASSWORD, receipts=True)
    await again.request({"msgid": MsgId.PING}, MsgId.PONG)
    assert "offlinemsg" not in ack
    for c in (sender, again, phone):
        await c.close()


async def test_a_client_that_never_acknowledges_is_cut_at_the_bound(rnode: Node) -> None:
    sender = await logged_in(rnode.port)
    mute, uid = await registered(rnode.port)
    assert (await mute.login(uid, PASSWORD, receipts=True))["errno"] == 0
    mids = await send_chats(sender, uid, [f"m{i}" for i in range(WINDOW + 5)])
    seqs = []
    while (msg := await mute.recv())["msgid"] == MsgId.ONE_CHAT:
        seqs.append(msg["seq"])
    assert msg["msgid"] == MsgId.ERROR and msg["errno"] == ErrCode.RECEIPT_WINDOW_FULL, msg
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) <= WINDOW
    assert rnode.service.counts.refusals[("error", ErrCode.RECEIPT_WINDOW_FULL)] == 1
    with pytest.raises(ConnectionClosed):
        await mute.recv()
    await gone(rnode, uid)
    back = await ChatConnection.open("127.0.0.1", rnode.port)
    ack = await back.login(uid, PASSWORD)  # without receipts: in the reply, as ever
    assert ack["errno"] == 0
    offline = [codec.loads(m)["mid"] for m in ack["offlinemsg"]]
    # The whole window, in order; what came after the cut was stored as for
    # anyone offline (by another writer: it may come first; docs/RELIABILITY.md).
    assert sorted(offline) == sorted(mids)
    window = set(mids[: len(seqs)])
    assert [m for m in offline if m in window] == mids[: len(seqs)]
    for c in (sender, mute, back):
        await c.close()


async def test_receipt_errors_are_specific_and_not_fatal(rnode: Node) -> None:
    plain, uid = await registered(rnode.port)
    assert (await plain.login(uid, PASSWORD))["errno"] == 0
    err = await plain.request({"msgid": MsgId.RECEIVED, "seq": 1}, MsgId.ERROR)
    assert err["errno"] == ErrCode.RECEIPTS_OFF and err["re"] == MsgId.RECEIVED
    other, oid = await registered(rnode.port)
    assert (await other.login(oid, PASSWORD, receipts=True))["errno"] == 0
    err = await other.request({"msgid": MsgId.RECEIVED, "seq": 5}, MsgId.ERROR)
    assert err["errno"] == ErrCode.RECEIPT_AHEAD
    assert (await other.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    for c in (plain, other):
        await c.close()


async def test_silence_with_messages_waiting_is_declared_dead(rnode: Node) -> None:
    sender = await logged_in(rnode.port)
    quiet, uid = await registered(rnode.port)
    assert (await quiet.login(uid, PASSWORD, receipts=True))["errno"] == 0
    mids = await send_chats(sender, uid, ["are you there?"])
    assert (await quiet.expect(MsgId.ONE_CHAT))["mid"] == mids[0]
    err = await quiet.expect(MsgId.ERROR)  # after --receipt-timeout (1 s here)
    assert err["errno"] == ErrCode.RECEIPT_TIMEOUT, err
    assert rnode.service.counts.refusals[("error", ErrCode.RECEIPT_TIMEOUT)] == 1
    assert await quiet.at_eof()
    await gone(rnode, uid)
    back = await ChatConnection.open("127.0.0.1", rnode.port)
    ack = await back.login(uid, PASSWORD, receipts=True)
    assert [m["mid"] for m in await arrivals(back, ack, 1)] == mids
    for c in (sender, quiet, back):
        await c.close()


async def test_logout_keeps_what_was_not_acknowledged(rnode: Node) -> None:
    sender = await logged_in(rnode.port)
    conn, uid = await registered(rnode.port)
    assert (await conn.login(uid, PASSWORD, receipts=True))["errno"] == 0
    mids = await send_chats(sender, uid, ["a", "b", "c"])
    await chats(conn, 3)
    await conn.received(1)
    await conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    # The same connection, the same user again: b and c come back, numbered anew.
    ack = await conn.login(uid, PASSWORD, receipts=True)
    got = await arrivals(conn, ack, 2)
    assert [m["mid"] for m in got] == mids[1:]
    for c in (sender, conn):
        await c.close()


async def test_without_receipts_pushes_are_not_numbered(rnode: Node) -> None:
    sender = await logged_in(rnode.port)
    plain, uid = await registered(rnode.port)
    ack = await plain.login(uid, PASSWORD)
    assert "receipts" not in ack
    original = await ChatConnection.open("127.0.0.1", rnode.port, legacy=True)
    oid = await original.register(unique(), PASSWORD)
    ack = await original.request(
        {"msgid": MsgId.LOGIN, "id": oid, "password": PASSWORD, "receipts": True},
        MsgId.LOGIN_ACK,
    )
    assert ack["errno"] == 0 and "receipts" not in ack  # the original dialect: never
    await send_chats(sender, uid, ["x"])
    await send_chats(sender, oid, ["y"])
    assert "seq" not in (await plain.expect(MsgId.ONE_CHAT))
    assert "seq" not in (await original.expect(MsgId.ONE_CHAT))
    for c in (sender, plain, original):
        await c.close()


@pytest.mark.unmetered
async def test_a_full_mailbox_flows_at_the_pace_of_acknowledgements(rnode: Node) -> None:
    sender = await logged_in(rnode.port)
    conn, uid = await registered(rnode.port)
    mids = await send_chats(sender, uid, [f"m{i}" for i in range(6 * WINDOW)])  # offline
    ack = await conn.login(uid, PASSWORD, receipts=True)
    got = [codec.loads(m) for m in ack.get("offlinemsg", ())]
    assert 0 < len(got) <= WINDOW // 2  # the reply carries less than the window
    await conn.received(len(got))
    while len(got) < len(mids):  # more than the window: it waits for our receipts
        msg = await conn.expect(MsgId.ONE_CHAT)
        assert msg["seq"] == len(got) + 1
        got.append(msg)
        if msg["seq"] % 3 == 0:
            await conn.received(msg["seq"])
    assert [m["mid"] for m in got] == mids
    await conn.received(len(got))
    assert (await conn.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    for c in (sender, conn):
        await c.close()


@pytest.mark.unmetered
async def test_logging_out_while_the_mailbox_waits_for_receipts_loses_nothing(
    rnode: Node,
) -> None:
    sender = await logged_in(rnode.port)
    conn, uid = await registered(rnode.port)
    mids = await send_chats(sender, uid, [f"m{i}" for i in range(4 * WINDOW)])  # offline
    ack = await conn.login(uid, PASSWORD, receipts=True)
    seen = [codec.loads(m)["mid"] for m in ack.get("offlinemsg", ())]
    seen += [m["mid"] for m in await chats(conn, WINDOW - len(seen))]  # the window is full
    await conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)  # nothing acknowledged
    ack = await conn.login(uid, PASSWORD, receipts=True)
    got = await arrivals(conn, ack, min(len(ack.get("offlinemsg", ())), WINDOW // 2))
    seq = len(got)
    while set(mids) - {m["mid"] for m in got}:
        msg = await conn.expect(MsgId.ONE_CHAT)
        got.append(msg)
        if msg["seq"] - seq >= 3:
            seq = msg["seq"]
            await conn.received(seq)
    assert {m["mid"] for m in got} == set(mids)  # all of them, duplicates allowed
    assert set(seen) <= {m["mid"] for m in got}
    for c in (sender, conn):
        await c.close()


@pytest.mark.unmetered
async def test_big_messages_are_acknowledged_before_the_window_fills(node: Node) -> None:
    """Two senders of 60 KB messages fill --receipt-bytes (2 MiB) in 35
    messages, before our client's 64th or its 1-s timer: it was cut off
    (ERROR 187) over and over (found by attack). It acknowledges by bytes
    too now, and gets everything on one connection."""
    first, uid = await registered(node.port)
    await first.close()
    # As the terminal client's (client/session.py): it acknowledges by itself.
    receiver = await ChatConnection.open(
        "127.0.0.1", node.port, core=ClientProtocol(acknowledge=True)
    )
    assert (await receiver.login(uid, PASSWORD, receipts=True))["errno"] == 0
    senders = [await logged_in(node.port) for _ in range(2)]
    big = "b" * 60_000

    async def send(sender: ChatConnection, tag: str) -> list[str]:
        return await send_chats(sender, uid, [f"{tag}{i} {big}" for i in range(40)])

    sent = asyncio.gather(*(send(s, t) for s, t in zip(senders, "xy", strict=True)))
    got = await chats(receiver, 80)  # an ERROR 187 and the close would end this early
    mids = await sent
    assert sorted(m["mid"] for m in got) == sorted(mids[0] + mids[1])
    assert ("error", ErrCode.RECEIPT_WINDOW_FULL) not in node.service.counts.refusals
    assert uid in node.service.sessions
    for c in (receiver, *senders):
        await c.close()
