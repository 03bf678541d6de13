"""A node that dies under a ChatConnection: however the client learns it (a
write that fails, a read, a request made after), it is one exception, the
library's own ConnectionClosed, never a BrokenPipeError or another OSError
escaping from inside asyncio, and no request is left waiting forever."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.protocol.client import Event
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node

PING: dict[str, Any] = {"msgid": MsgId.PING}


async def test_writing_to_a_dead_node_raises_connection_closed(lone_node: Node) -> None:
    conn = await ChatConnection.open("127.0.0.1", lone_node.port)
    try:
        assert (await conn.request(PING, MsgId.PONG))["msgid"] == MsgId.PONG
        await lone_node.stop()  # and again at teardown: stop() may be repeated
        # Not reading: the first write after the node's FIN is answered with
        # a reset, the next fails (EPIPE, a BrokenPipeError inside asyncio).
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await conn.send(PING)
        # Reading after it: what the node said before it went, then the end.
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await conn.recv()
        # Listening returns (the connection ended); a request made then
        # fails at once instead of waiting for a reply that cannot come.
        events: list[Event[Any]] = []
        async with asyncio.timeout(10):
            await conn.listen(events.append)
        with pytest.raises(ConnectionClosed):
            conn.call(PING)
        assert await conn.at_eof()
    finally:
        await conn.close()


async def test_a_listening_connection_ends_with_connection_closed(lone_node: Node) -> None:
    conn = await ChatConnection.open("127.0.0.1", lone_node.port)
    events: list[Event[Any]] = []
    listening = asyncio.ensure_future(conn.listen(events.append))
    try:
        assert (await asyncio.wait_for(conn.call(PING), 10))["msgid"] == MsgId.PONG
        await lone_node.stop()  # and again at teardown: stop() may be repeated
        async with asyncio.timeout(10):
            await listening  # returns: no OSError out of it
        # Requests made once it ended fail at once, sent or not.
        for _ in range(3):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(conn.call(PING), 10)
            with pytest.raises(ConnectionClosed):
                await conn.send(PING)
    finally:
        listening.cancel()
        await conn.close()
