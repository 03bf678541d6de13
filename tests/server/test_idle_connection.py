"""What an idle logged-in connection costs: the objects it only needs while
it is being sent to (its outbox, a set of who blocks it) or while a request
arrives in parts (a frame decoder of its own) are not made until then, and
the outbox is given back once what it wrote is settled. The
memory figure itself is ``bench/run.py --only hold`` (BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from clusterchat.protocol.messages import MsgId
from clusterchat.server.connection import Connection
from clusterchat.server.node import Node
from clusterchat.service.session import NOBODY
from tests.conftest import UserFactory


def server_side(node: Node, uid: int) -> Connection:
    session = node.service.sessions[uid]
    return next(c for c in node.connections if c.session is session)


@pytest.mark.parametrize("legacy", [False, True])
async def test_an_idle_logged_in_connection_has_no_outbox(
    node: Node, user: UserFactory, legacy: bool
) -> None:
    u = await user(legacy=legacy)
    conn = server_side(node, u.id)
    assert conn.outbox is None
    assert conn.session.blocked_by is NOBODY
    assert conn.core.decoder is node.decoder
    assert conn._id == 0  # numbered by its first log line: none yet
    assert sys.getsizeof(conn.session) <= 128  # one slot more takes a 144-byte block


async def test_the_outbox_comes_with_a_message_and_goes_once_settled(
    node: Node, user: UserFactory
) -> None:
    a, b = await user(), await user()
    await a.conn.send({"msgid": MsgId.ONE_CHAT, "toid": b.id, "msg": "hello"})
    assert (await b.conn.expect(MsgId.ONE_CHAT))["msg"] == "hello"
    receiver = server_side(node, b.id)
    assert receiver.outbox is not None  # remembers what it wrote, for now
    async with asyncio.timeout(5):  # two in-flight reports, half a second apart
        while receiver.outbox is not None:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.05)
    await a.conn.send({"msgid": MsgId.ONE_CHAT, "toid": b.id, "msg": "again"})
    assert (await b.conn.expect(MsgId.ONE_CHAT))["msg"] == "again"  # a new one serves


async def test_a_closed_connection_refuses_deliveries_it_never_had_an_outbox_for(
    node: Node, user: UserFactory
) -> None:
    u = await user()
    conn = server_side(node, u.id)
    conn.close()
    assert conn.core.ended
    assert not conn.core.deliver(b'{"msgid":6}\n')  # the caller stores it


async def test_accepted_sockets_inherit_the_listeners_options(
    node: Node, user: UserFactory
) -> None:
    """Set once on the listening socket (no socket object kept per connection)."""
    u = await user()
    transport = server_side(node, u.id).transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
