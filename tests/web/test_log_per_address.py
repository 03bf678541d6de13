"""One client opening connection after connection, each refused once, gets
its refusals logged at a bounded rate too: per address, not only per
connection (service/refusals.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from clusterchat.protocol.messages import ErrCode
from clusterchat.server.node import Node
from clusterchat.service.refusals import PER_ADDRESS

CONNECTIONS = 40


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def _once(port: int, data: bytes, local: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(data)
    async with asyncio.timeout(10):
        reply = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return reply


async def test_garbage_on_many_connections_is_logged_at_a_bounded_rate(
    ws_node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: one line per connection, 40 lines (144 KB of log a second
    # from one client doing this as fast as it could).
    caplog.set_level(logging.INFO)
    for _ in range(CONNECTIONS):
        reply = await _once(ws_node.port, b"{garbage\n", "127.0.0.2")
        assert f'"errno":{ErrCode.MALFORMED}'.encode() in reply
    assert len(_lines(caplog, "(127.0.0.2, uid 0)")) == PER_ADDRESS
    # Someone else's refusal is still logged.
    await _once(ws_node.port, b"{garbage\n", "127.0.0.3")
    assert len(_lines(caplog, "(127.0.0.3, uid 0)")) == 1


async def test_bad_http_requests_are_logged_at_a_bounded_rate(
    ws_node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    post = b"POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi"
    evil = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for n in range(CONNECTIONS):
        reply = await _once(ws_node.http.port, post if n % 2 else evil, "127.0.0.2")
        assert reply.startswith(b"HTTP/1.1 40"), reply
    assert len(_lines(caplog, "refused")) == PER_ADDRESS
