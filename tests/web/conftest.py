"""Protocol-level tests over real WebSocket connections to a node's HTTP port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsClosed

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.client import ClientProtocol, Undecodable
from clusterchat.server.node import Node


class WsChat(ChatConnection):
    """The test client of tests/e2e, over a WebSocket: one message per request."""

    def __init__(self, ws: ClientConnection) -> None:
        # No reader/writer: the WebSocket replaces them.
        self.ws = ws
        self.core = ClientProtocol()

    @classmethod
    async def open_ws(cls, port: int, **kw: Any) -> WsChat:
        kw.setdefault("max_size", None)
        return cls(await connect(f"ws://127.0.0.1:{port}/ws", **kw))

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send(data.rstrip(b"\n").decode())

    async def recv(self, timeout: float | None = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            try:
                text = await self.ws.recv()
            except WsClosed as exc:
                raise ConnectionClosed(str(exc)) from exc
        (event,) = self.core.receive_message(text if isinstance(text, bytes) else text.encode())
        assert not isinstance(event, Undecodable), event
        return event.msg

    async def at_eof(self, timeout: float = 10.0) -> bool:
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
        return True

    async def close(self) -> None:
        await self.ws.close()

    async def abort(self) -> None:
        self.ws.transport.abort()
        with contextlib.suppress(Exception):
            await self.ws.wait_closed()


def ws_settings(settings: Settings, **kw: Any) -> Settings:
    return replace(settings, http_port=0, **kw)


@pytest.fixture
async def ws_node(settings: Settings) -> AsyncIterator[Node]:
    """A node with its HTTP port on (SQLite and MariaDB, as every e2e test)."""
    n = Node(ws_settings(settings))
    await n.start()
    yield n
    await n.stop()
