"""Connections that never log in, and our clients that go silent, are closed;
a client that pings stays; the original client (which never pings) stays."""

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


@pytest.fixture
async def strict_node(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, login_timeout=0.6, idle_timeout=1.2))
    await n.start()
    yield n
    await n.stop()


async def _closed_with(conn: ChatConnection, code: ErrCode) -> None:
    err = await conn.recv(timeout=10)
    assert err["msgid"] == MsgId.ERROR and err["errno"] == code, err
    with pytest.raises(ConnectionClosed):
        await conn.recv(timeout=10)


async def test_silent_peers_are_closed_and_lively_ones_kept(strict_node: Node) -> None:
    port = strict_node.port
    lurker = await ChatConnection.open("127.0.0.1", port)
    await lurker.send({"msgid": MsgId.PING})
    assert (await lurker.recv())["msgid"] == MsgId.PONG

    silent = await ChatConnection.open("127.0.0.1", port)
    silent_id = await silent.register(unique(), PASSWORD)
    await silent.login(silent_id, PASSWORD)

    pinger = await ChatConnection.open("127.0.0.1", port)
    pinger_id = await pinger.register(unique(), PASSWORD)
    await pinger.login(pinger_id, PASSWORD)

    original = await ChatConnection.open("127.0.0.1", port, legacy=True)
    original_id = await original.register(unique(), PASSWORD)
    await original.login(original_id, PASSWORD)

    async def keep_pinging() -> None:
        while True:
            await pinger.send({"msgid": MsgId.PING})
            await asyncio.sleep(0.3)

    pings = asyncio.ensure_future(keep_pinging())
    try:
        await _closed_with(lurker, ErrCode.TIMEOUT)  # never logged in
        await _closed_with(silent, ErrCode.TIMEOUT)  # logged in, then silent
        async with asyncio.timeout(5):  # and counted offline
            while silent_id in strict_node.service.sessions:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert pinger_id in strict_node.service.sessions
        assert original_id in strict_node.service.sessions
    finally:
        pings.cancel()
    # The survivors still work.
    await original.send_raw(f'{{"msgid":6,"toid":{pinger_id},"msg":"still here"}}\x00'.encode())
    async with asyncio.timeout(5):
        while (msg := await pinger.recv())["msgid"] != MsgId.ONE_CHAT:
            pass
    assert msg["msg"] == "still here"
    for c in (lurker, silent, pinger, original):
        await c.close()
