"""A connection whose input the node stopped reading (its requests wait
behind one of its own that awaits a slow store) is not timed out for the
node's slowness: the frame and idle timeouts count the client's silence,
not the node's."""

from __future__ import annotations

import asyncio

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits, Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.core import QUEUE_PAUSE
from clusterchat.server.node import Node
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.helpers import stalling_mariadb


async def test_a_request_held_behind_a_slow_store_is_not_timed_out(mariadb_url: str) -> None:
    """A client pipelining past QUEUE_PAUSE requests behind a chat that
    waits for the store, the last request half-sent when the node stops
    reading. Before, the frame timeout ran while the node held the bytes
    unread: the client was cut off with ERROR 161 "a request took too long
    to arrive" (found by the fan-in soak: 299 honest senders cut off, 9,865
    requests left in doubt) and whatever its requests had done was unknown."""
    proxy, url = await stalling_mariadb(mariadb_url)
    settings = Settings(
        port=0,
        db_url=url,
        hash_cost=FAST_HASH,
        shed_lag=0.0,
        frame_timeout=1.0,
        limits=Limits(message_rate=0),
    )
    node = Node(settings)
    await node.start()
    conn = await ChatConnection.open("127.0.0.1", node.port)
    try:
        away = await conn.register(unique(), PASSWORD)
        uid = await conn.register(unique(), PASSWORD)
        assert (await conn.login(uid, PASSWORD))["errno"] == 0
        proxy.stall()  # the chat to the away user waits for the store
        pings = QUEUE_PAUSE + 6
        chat = conn.core.send({"msgid": MsgId.ONE_CHAT, "toid": away, "msg": "kept"})
        queued = b"".join(conn.core.send({"msgid": MsgId.PING}) for _ in range(pings))
        whole = conn.core.send({"msgid": MsgId.PING})
        await conn.send_raw(chat + queued + whole[:5])  # the last begun, not whole
        (core,) = [c.core for c in node.connections if c.core.session.uid == uid]
        async with asyncio.timeout(10):
            while not core.input_held:  # noqa: ASYNC110 - the node stopped reading us, polled
                await asyncio.sleep(0.01)
        # Three frame timeouts of the node holding our bytes (the sweep runs
        # every half timeout): before, the connection was closed within one.
        await asyncio.sleep(3 * settings.frame_timeout)
        await conn.send_raw(whole[5:])
        proxy.flow()
        ack = await conn.recv(timeout=20)
        assert ack["msgid"] == MsgId.CHAT_ACK, ack
        assert ack["status"] == "stored"
        for _ in range(pings + 1):
            assert (await conn.recv())["msgid"] == MsgId.PONG
        # The timeouts still apply once the node reads again.
        await conn.send_raw(whole[:5])
        msg = await conn.recv(timeout=5 * settings.frame_timeout)
        assert msg["msgid"] == MsgId.ERROR and msg["errno"] == ErrCode.TIMEOUT, msg
    finally:
        await conn.close()
        await node.stop()
        await proxy.close()


async def test_receipts_waiting_behind_a_slow_store_are_not_overdue(mariadb_url: str) -> None:
    """A client with receipts confirms a message while its own chat waits
    for the store: its RECEIVED queues behind that chat, unread by the
    service. Before, the receipt timeout ran meanwhile and the node cut the
    client off (ERROR 186) for the node's slowness (the fan-in soak: ~100
    honest senders cut off; their chats in flight left in doubt)."""
    proxy, url = await stalling_mariadb(mariadb_url)
    settings = Settings(
        port=0,
        db_url=url,
        hash_cost=FAST_HASH,
        shed_lag=0.0,
        limits=Limits(message_rate=0, receipt_timeout=1.0),
    )
    node = Node(settings)
    await node.start()
    a = await ChatConnection.open("127.0.0.1", node.port)
    b = await ChatConnection.open("127.0.0.1", node.port)
    try:
        away = await a.register(unique(), PASSWORD)
        ua = await a.register(unique(), PASSWORD)
        ub = await b.register(unique(), PASSWORD)
        assert (await a.login(ua, PASSWORD, receipts=True))["errno"] == 0
        assert (await b.login(ub, PASSWORD))["errno"] == 0
        proxy.stall()
        await a.send({"msgid": MsgId.ONE_CHAT, "toid": away, "msg": "to the store"})
        (core,) = [c.core for c in node.connections if c.core.session.uid == ua]
        async with asyncio.timeout(10):
            while core._queue is None:  # noqa: ASYNC110 - a's chat awaits the store, polled
                await asyncio.sleep(0.01)
        await b.send({"msgid": MsgId.ONE_CHAT, "toid": ua, "msg": "live"})
        push = await a.expect(MsgId.ONE_CHAT)
        await a.received(push["seq"])  # queued behind a's chat
        # Three receipt timeouts of the node not reading a's receipt.
        await asyncio.sleep(3 * settings.limits.receipt_timeout)
        proxy.flow()
        ack = await a.recv(timeout=20)
        assert ack["msgid"] == MsgId.CHAT_ACK and ack["status"] == "stored", ack
        assert (await a.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
        # The receipt counted: nothing is stored for a's next login.
        await a.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
        again = await a.login(ua, PASSWORD, receipts=True)
        assert not again.get("offlinemsg"), again
    finally:
        await a.close()
        await b.close()
        await node.stop()
        await proxy.close()
