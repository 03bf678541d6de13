"""The flood limit before login is the address's, not each connection's, and
no request escapes it there (not even the ones a logged-in user may always
send)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique

RATE, BURST, ADDRESS_BURST, CONNS = 20.0, 10, 15, 4


def _limits(address_burst: int = ADDRESS_BURST) -> Limits:
    return Limits(
        registrations_per_address=0,
        message_rate=RATE,
        message_burst=BURST,
        address_burst=address_burst,
    )


@pytest.fixture
async def metered(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, max_connections_per_address=CONNS, limits=_limits()))
    await n.start()
    yield n
    await n.stop()


async def _burst(conns: list[ChatConnection], line: bytes, count: int) -> list[dict[str, object]]:
    """``count`` copies of ``line`` on each connection at once; every reply."""
    await asyncio.gather(*(c.send_raw(line * count) for c in conns))
    replies: list[dict[str, object]] = []
    for c in conns:
        replies += [await c.recv() for _ in range(count)]
    return replies


async def test_anonymous_receipts_and_logouts_are_metered(metered: Node) -> None:
    # Before: before login, RECEIVED and LOGOUT were never refused by the
    # flood limit: 18 of each at once got 18 ERROR 110s (any number did, as
    # fast as the node could write them).
    for line in (b'{"msgid":63,"seq":1}\n', b'{"msgid":3}\n'):
        conn = await ChatConnection.open("127.0.0.1", metered.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await _burst([conn], line, BURST + 8)
        took = loop.time() - started
        told = [r["errno"] for r in replies]
        assert set(told) == {ErrCode.NOT_LOGGED_IN, ErrCode.TOO_FAST}, told
        assert told.count(ErrCode.NOT_LOGGED_IN) <= BURST + RATE * took + 1, (told, took)
        await conn.close()
        await asyncio.sleep(ADDRESS_BURST / RATE)  # the address's bucket refills


async def test_more_connections_do_not_multiply_the_rate_before_login(metered: Node) -> None:
    # Before: each of an address's connections had its own bucket: 4
    # connections got 4 x BURST (40) PONGs at once.
    conns = [await ChatConnection.open("127.0.0.1", metered.port) for _ in range(CONNS)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    replies = await _burst(conns, b'{"msgid":12}\n', BURST)
    took = loop.time() - started
    pongs = [r for r in replies if r["msgid"] == MsgId.PONG]
    refused = [r for r in replies if r["msgid"] == MsgId.ERROR]
    assert ADDRESS_BURST <= len(pongs) <= ADDRESS_BURST + RATE * took + 1, (len(pongs), took)
    assert refused and all(r["errno"] == ErrCode.TOO_FAST for r in refused)
    assert "from your address before login" in str(refused[0]["errmsg"])
    # Another address is not affected.
    other = await ChatConnection.open("127.0.0.1", metered.port, local_addr=("127.0.0.2", 0))
    assert (await other.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    # Once logged in, each account has its own bucket again, whatever the
    # address spent: users behind one NAT do not share a limit.
    await asyncio.sleep(3 / RATE)  # room to register and log in
    c = conns[0]
    uid = await c.register(unique(), PASSWORD)
    await asyncio.sleep(2 / RATE)
    assert (await c.login(uid, PASSWORD))["errno"] == 0
    logged = await _burst([c], b'{"msgid":12}\n', BURST)
    assert all(r["msgid"] == MsgId.PONG for r in logged), logged
    for x in [*conns, other]:
        await x.close()


async def test_an_original_client_before_login_waits_for_its_address(metered: Node) -> None:
    # The original client is never refused: its requests before login wait
    # for the address's bucket, each connection's behind the others'.
    conns = [await ChatConnection.open("127.0.0.1", metered.port, legacy=True) for _ in range(2)]
    uid = await conns[0].register(unique(), PASSWORD)  # a REG the address paid for
    count = ADDRESS_BURST + 10
    wrong = {"msgid": MsgId.LOGIN, "id": uid, "password": "wrong"}
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(count):
        await conns[i % 2].send(wrong)
    replies = [await conns[i % 2].recv(timeout=30) for i in range(count)]
    took = loop.time() - started
    assert all(r["msgid"] == MsgId.LOGIN_ACK and r["errno"] != 0 for r in replies)
    assert took >= (count - ADDRESS_BURST) / RATE * 0.9, took
    for c in conns:
        await c.close()


async def test_trusted_addresses_are_metered_per_connection_only(settings: Settings) -> None:
    # Tools and benchmarks on a trusted proxy's address (loopback) open many
    # connections at once; what a proxy relays is readdressed and metered.
    trusted = replace(settings, trusted_proxies=("127.0.0.1",), max_connections_per_address=CONNS)
    n = Node(replace(trusted, limits=_limits()))
    await n.start()
    try:
        conns = [await ChatConnection.open("127.0.0.1", n.port) for _ in range(CONNS)]
        replies = await _burst(conns, b'{"msgid":12}\n', BURST)
        assert all(r["msgid"] == MsgId.PONG for r in replies), replies
        for c in conns:
            await c.close()
    finally:
        await n.stop()
