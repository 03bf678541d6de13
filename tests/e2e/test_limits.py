"""Limits a public server needs: each hit gets a clear refusal, and nobody
else is affected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import FailureLimiter, Limits
from tests.conftest import PASSWORD, unique


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Node]:
    n = Node(
        replace(
            settings,
            max_connections_per_address=4,
            limits=Limits(login_failures=3, login_failures_per_address=6, max_group_size=2),
        )
    )
    await n.start()
    yield n
    await n.stop()


async def test_password_guessing_is_cut_short(limited: Node) -> None:
    conn = await ChatConnection.open("127.0.0.1", limited.port)
    victim = await conn.register(unique(), PASSWORD)
    for _ in range(3):
        assert (await conn.login(victim, "guess"))["errno"] == LoginErr.BAD_CREDENTIALS
    refused = await conn.login(victim, PASSWORD)  # even the right password, for now
    assert refused["errno"] == LoginErr.TOO_MANY_FAILURES
    assert "try again in" in refused["errmsg"]
    # Another account from the same address is still fine...
    other = await conn.register(unique(), PASSWORD)
    assert (await conn.login(other, PASSWORD))["errno"] == 0
    await conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    # ...until the address itself has failed too often.
    for uid in range(2_000_000_000, 2_000_000_003):
        await conn.login(uid, "guess")
    assert (await conn.login(other, PASSWORD))["errno"] == LoginErr.TOO_MANY_FAILURES
    await conn.close()


async def test_group_size_is_capped(limited: Node) -> None:
    conns = [await ChatConnection.open("127.0.0.1", limited.port) for _ in range(3)]
    ids = []
    for c in conns:
        uid = await c.register(unique(), PASSWORD)
        await c.login(uid, PASSWORD)
        ids.append(uid)
    gid = (await conns[0].request({"msgid": 8, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK))[
        "groupid"
    ]
    await conns[1].request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    err = await conns[2].request({"msgid": 9, "groupid": gid}, MsgId.ERROR)
    assert err["errno"] == ErrCode.GROUP_FULL and "full" in err["errmsg"]
    for c in conns:
        await c.close()


async def test_connections_per_address_are_capped(limited: Node) -> None:
    kept = [await ChatConnection.open("127.0.0.1", limited.port) for _ in range(4)]
    for c in kept:
        assert (await c.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    extra = await ChatConnection.open("127.0.0.1", limited.port)
    await extra.send({"msgid": MsgId.PING})
    err = await extra.recv()
    assert err["errno"] == ErrCode.SERVER_FULL and "address" in err["errmsg"]
    with pytest.raises(ConnectionClosed):
        await extra.recv()
    for c in [*kept, extra]:
        await c.close()


def test_failure_window_expires() -> None:
    now = [0.0]
    lim = FailureLimiter(2, 10.0, clock=lambda: now[0])
    lim.failed("k")
    assert lim.wait("k") == 0
    lim.failed("k")
    assert lim.wait("k") == 10.0
    now[0] = 10.5
    assert lim.wait("k") == 0
