"""Blank lines are dropped, but a stream of them is metered like any input:
past the flood limit the connection is closed."""

from __future__ import annotations

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.protocol.messages import ErrCode
from clusterchat.server.node import Node


async def test_a_stream_of_blank_lines_is_closed(node: Node) -> None:
    # Before: 13 MB of blank lines in 4 s from one connection got no reply
    # and no limit: 1.7 s of the node's CPU, its loop 2.4 s late.
    conn = await ChatConnection.open("127.0.0.1", node.port)
    await conn.send_raw(b"\r\n" * 1_000_000)
    replies = []
    with pytest.raises(ConnectionClosed):
        while True:
            replies.append(await conn.recv())
    *unreadable, last = replies
    assert unreadable and all(r["errno"] == ErrCode.MALFORMED for r in unreadable)
    assert last["errno"] == ErrCode.TOO_FAST and last["errmsg"].endswith("closing")


async def test_a_few_blank_lines_are_still_dropped(node: Node) -> None:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    await conn.send_raw(b"\r\n" * 63 + b'{"msgid":12}\n')
    assert (await conn.recv())["msgid"] == 13
    await conn.send_raw(b'{"msgid":12}\n')
    assert (await conn.recv())["msgid"] == 13  # nothing else came before it
    await conn.close()
