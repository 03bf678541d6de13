"""Slow connections cannot hold the slots: the login deadline runs from
accept whatever arrives, a request must arrive whole in time, and at the
connection limit the oldest connection not logged in makes room."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique

LIMIT = 6


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, login_timeout=1.0, frame_timeout=1.0, max_connections=LIMIT))
    await n.start()
    yield n
    await n.stop()


async def _closed_with(conn: ChatConnection, code: ErrCode, words: str) -> None:
    while (msg := await conn.recv(timeout=10))["msgid"] != MsgId.ERROR:
        pass  # PONGs before it
    assert msg["errno"] == code and words in msg["errmsg"], msg
    with pytest.raises(ConnectionClosed):
        await conn.recv(timeout=10)


@pytest.mark.serial  # times the login deadline
async def test_pinging_does_not_extend_the_login_deadline(tight: Node) -> None:
    loop = asyncio.get_running_loop()
    opened = loop.time()  # before the connect, so before the node's accept
    lurker = await ChatConnection.open("127.0.0.1", tight.port)

    async def ping() -> None:
        while True:
            await lurker.send({"msgid": MsgId.PING})
            await asyncio.sleep(0.2)

    pinging = asyncio.ensure_future(ping())
    try:
        await _closed_with(lurker, ErrCode.TIMEOUT, "no login")
    finally:
        pinging.cancel()
    took = loop.time() - opened
    assert 1.0 <= took < 5.0, took
    print(f"a connection pinging every 0.2 s was closed {took:.2f} s after accept")
    await lurker.close()


async def test_a_request_dribbled_a_byte_at_a_time_is_cut_off(tight: Node) -> None:
    slow = await ChatConnection.open("127.0.0.1", tight.port)
    uid = await slow.register(unique(), PASSWORD)
    assert (await slow.login(uid, PASSWORD))["errno"] == 0
    frame = b'{"msgid":12,"pad":"' + b"x" * 100 + b'"}\n'

    async def dribble() -> None:
        for byte in frame:
            await slow.send_raw(bytes([byte]))
            await asyncio.sleep(0.2)

    sending = asyncio.ensure_future(dribble())
    try:
        await _closed_with(slow, ErrCode.TIMEOUT, "too long to arrive")
    finally:
        sending.cancel()
    await slow.close()


@pytest.fixture
async def roomy(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, login_timeout=3.0, max_connections=LIMIT))
    await n.start()
    yield n
    await n.stop()


async def test_at_the_limit_the_oldest_anonymous_connection_makes_room(roomy: Node) -> None:
    users = []
    for _ in range(2):
        c = await ChatConnection.open("127.0.0.1", roomy.port)
        uid = await c.register(unique(), PASSWORD)
        assert (await c.login(uid, PASSWORD))["errno"] == 0
        users.append(c)
    lurkers = []
    for _ in range(LIMIT - 2):
        c = await ChatConnection.open("127.0.0.1", roomy.port)
        assert (await c.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
        lurkers.append(c)
    # Full: a newcomer is refused while the lurkers are young...
    early = await ChatConnection.open("127.0.0.1", roomy.port)
    await _closed_with(early, ErrCode.SERVER_FULL, "full")
    await early.close()
    # ...and once they have lingered a third of the login timeout without
    # logging in, it gets in and the oldest lurker is told and closed.
    await asyncio.sleep(roomy.settings.login_timeout / 3 + 0.1)
    newcomer = await ChatConnection.open("127.0.0.1", roomy.port)
    uid = await newcomer.register(unique(), PASSWORD)
    assert (await newcomer.login(uid, PASSWORD))["errno"] == 0
    await _closed_with(lurkers[0], ErrCode.SERVER_FULL, "not logged in")
    # Logged-in users are never the ones to go.
    for c in users:
        assert (await c.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    for c in [*users, *lurkers, newcomer]:
        await c.close()
