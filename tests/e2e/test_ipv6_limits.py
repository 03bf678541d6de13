"""Per-address limits count an IPv6 client by its /64: whoever has one IPv6
address has 2^64 of them, and per /128 a limit would hold nobody. An IPv4
address counts as itself, and an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``,
how a dual-stack proxy names IPv4 clients) as that IPv4 address.

The real-connection test runs over IPv6 loopback (``::1``): the node trusts
``::1`` as its proxy, and PROXY lines name clients of a few /64s (the
machine has one IPv6 loopback address, not a /64 of them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits, limit_key
from tests.conftest import PASSWORD, unique


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # as getpeername() gives it
        ("::ffff:c000:207", "192.0.2.7"),  # as Python's ipaddress prints it
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),  # a socket with no peer name
        ("not:an:address", "not:an:address"),
    ],
)
def test_limit_key(address: str, key: str) -> None:
    assert limit_key(address) == key


def test_the_key_of_an_ipv4_address_is_the_address_itself() -> None:
    """No new string per connection (the node keeps one per address)."""
    address = "".join(["198.51.100.", "9"])
    assert limit_key(address) is address


@pytest.fixture
async def node6(settings: Settings) -> AsyncIterator[Node]:
    node = Node(
        replace(
            settings,
            host="::1",
            trusted_proxies=("::1",),
            max_connections_per_address=2,
            limits=Limits(registrations_per_address=0, login_failures_per_address=3),
        )
    )
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def _as(node: Node, client: str) -> ChatConnection:
    """A connection over ::1 that the trusted proxy says is from ``client``."""
    conn = await ChatConnection.open("::1", node.port)
    family = "TCP6" if ":" in client else "TCP4"
    local = "::1" if family == "TCP6" else "127.0.0.1"
    await conn.send_raw(f"PROXY {family} {client} {local} 40000 {node.port}\r\n".encode())
    return conn


async def _admitted(conn: ChatConnection) -> bool:
    await conn.send({"msgid": MsgId.PING})
    reply = await conn.recv()
    if reply["msgid"] == MsgId.PONG:
        return True
    assert reply["errno"] == ErrCode.SERVER_FULL and "address" in reply["errmsg"], reply
    with pytest.raises(ConnectionClosed):
        await conn.recv()
    return False


async def test_ipv6_clients_count_by_their_64(node6: Node) -> None:
    conns: list[ChatConnection] = []
    try:
        # Two addresses of one /64 fill its two places: a third of it is refused.
        for client in ("2001:db8:1:2::a", "2001:db8:1:2::b"):
            conns.append(await _as(node6, client))
            assert await _admitted(conns[-1])
        conns.append(await _as(node6, "2001:db8:1:2:ffff::c"))
        assert not await _admitted(conns[-1])
        # Another /64 is someone else.
        conns.append(await _as(node6, "2001:db8:1:3::a"))
        assert await _admitted(conns[-1])
        assert {c.limit_key for c in node6.connections} >= {
            "2001:db8:1:2::/64",
            "2001:db8:1:3::/64",
        }
        # Logged, each connection is still its own address.
        assert "2001:db8:1:2::a" in {c.address for c in node6.connections}

        # Failed logins from one address of the /64 slow down the others of it.
        uid = await conns[3].register(unique(), PASSWORD)
        for n in range(3):
            failed = await conns[0].login(2_000_000_000 + n, "guess")
            assert failed["errno"] == LoginErr.BAD_CREDENTIALS, failed
        held = await conns[1].login(uid, PASSWORD)
        assert held["errno"] == LoginErr.TOO_MANY_FAILURES, held
        assert (await conns[3].login(uid, PASSWORD))["errno"] == 0
    finally:
        for c in conns:
            await c.close()


async def test_an_ipv4_mapped_client_counts_as_its_ipv4_address(node6: Node) -> None:
    conns = [await _as(node6, "192.0.2.7"), await _as(node6, "::ffff:192.0.2.7")]
    try:
        for c in conns:
            assert await _admitted(c)
        conns.append(await _as(node6, "192.0.2.7"))
        assert not await _admitted(conns[-1])
        conns.append(await _as(node6, "192.0.2.8"))
        assert await _admitted(conns[-1])
    finally:
        for c in conns:
            await c.close()
