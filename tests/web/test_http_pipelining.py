"""HTTP/1.1 lets a client send requests one behind the other without waiting
for the answers (pipelining). The node answers one request a connection, with
``Connection: close``: the first is answered as if it came alone, what
followed it is not read, and the client asks again on a new connection (RFC
9112 section 9.6). Before, the library took the second request for WebSocket
frames, failed them, and the first request was answered 400."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.frames import Frame, Opcode

from clusterchat.protocol.messages import MsgId
from clusterchat.server.http import load_static
from clusterchat.server.node import Node
from clusterchat.server.websocket import WsConnection

GET = "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def only_response(raw: bytes) -> tuple[int, bytes]:
    """The status and body of the one response in ``raw`` (read to the
    node's close): nothing may follow its body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert b"connection: close" in lines, head
    (length,) = [int(h.split(b":", 1)[1]) for h in lines if h.startswith(b"content-length:")]
    assert len(body) == length, raw[:300]  # a second response would follow it
    return int(lines[0].split()[1]), body


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(10):
            return await reader.read()  # to the node's close
    finally:
        writer.close()


async def test_pipelined_requests_get_the_first_answered_and_the_rest_unread(
    ws_node: Node,
) -> None:
    port = ws_node.http.port
    page = load_static()["/index.html"][1]
    raw = await exchange(port, (GET.format("/") + GET.format("/icon.svg")).encode())
    assert only_response(raw) == (200, page)  # before: 400, "one request per connection"
    # Behind a route answered later, from a task.
    raw = await exchange(port, (GET.format("/healthz") + GET.format("/nope") * 3).encode())
    assert only_response(raw) == (200, b"ok\n")
    # A second request that is not even HTTP is not read either.
    raw = await exchange(port, (GET.format("/") + "\x00\xff garbage").encode())
    assert only_response(raw) == (200, page)


@pytest.mark.parametrize("path", ["/", "/healthz"])
async def test_the_end_of_the_first_request_may_come_in_any_read(ws_node: Node, path: str) -> None:
    """Fed to the node's connection in two reads, cut anywhere around the end
    of the first request's head (it is found across reads). /healthz is
    answered from a task, after the second read: meanwhile nothing is read."""
    port = ws_node.http.port
    first = GET.format(path)
    data = (first + GET.format("/nope")).encode()
    answer = (200, load_static()["/index.html"][1] if path == "/" else b"ok\n")
    for cut in range(len(first) - 5, len(first) + 3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(10):
                # Accepted in the node's loop, soon (the node's state, polled).
                while not (conns := [c for c in ws_node.connections if not c.core.ended]):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            (conn,) = conns
            assert isinstance(conn, WsConnection)
            conn.data_received(data[:cut])
            conn.data_received(data[cut:])
            async with asyncio.timeout(10):
                raw = await reader.read()
            assert only_response(raw) == answer, cut
        finally:
            writer.close()
            await writer.wait_closed()
        async with asyncio.timeout(10):
            while ws_node.connections:  # noqa: ASYNC110 - the node's side gone too, polled
                await asyncio.sleep(0.01)


async def test_frames_right_behind_the_upgrade_request_are_served(ws_node: Node) -> None:
    """What follows a WebSocket upgrade in the same read is frames, and read
    as such once the upgrade is answered."""
    ping = Frame(Opcode.TEXT, json.dumps({"msgid": MsgId.PING}).encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", ws_node.http.port)
    try:
        writer.write(UPGRADE.encode() + ping.serialize(mask=True))
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head
            first, size = await reader.readexactly(2)
            assert (first, size & 0x80) == (0x81, 0)  # one text frame, unmasked
            pong = json.loads(await reader.readexactly(size))
        assert pong["msgid"] == MsgId.PONG
    finally:
        writer.close()
        await writer.wait_closed()
