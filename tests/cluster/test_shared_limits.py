"""With Redis, the brute-force guard and the registration meter count across
the cluster: two nodes allow what one does, not twice as much."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId, RegErr
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique
from tests.helpers import OwnRedis, redis_prefix

REDIS = "redis://127.0.0.1:6379/0"
FREE, REGS = 3, 3


@contextlib.asynccontextmanager
async def _two_nodes(settings: Settings, limits: Limits) -> AsyncIterator[tuple[Node, Node]]:
    """Nodes a and b sharing a Redis under a prefix of their own (deleted after)."""
    prefix = redis_prefix()
    shared = replace(settings, redis_url=REDIS, redis_prefix=prefix, limits=limits)
    nodes = (Node(replace(shared, node_id="a")), Node(replace(shared, node_id="b")))
    for n in nodes:
        await n.start()
    yield nodes
    for n in nodes:
        await n.stop()
    client = aioredis.Redis.from_url(REDIS)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def two_nodes(settings: Settings) -> AsyncIterator[tuple[Node, Node]]:
    limits = Limits(
        login_failures=FREE,
        login_failures_per_address=100,
        login_delay=30,
        registrations_per_address=REGS,
        message_rate=0,
    )
    async with _two_nodes(settings, limits) as nodes:
        yield nodes


async def _open(node: Node) -> ChatConnection:
    return await ChatConnection.open("127.0.0.1", node.port, local_addr=("127.0.0.5", 0))


async def test_guesses_and_registrations_count_across_nodes(two_nodes: tuple[Node, Node]) -> None:
    a, b = [await _open(n) for n in two_nodes]
    regs = [await a.request({"msgid": MsgId.REG, "name": unique(), "password": PASSWORD},
                            MsgId.REG_ACK) for _ in range(2)]  # fmt: skip
    regs.append(
        await b.request({"msgid": MsgId.REG, "name": unique(), "password": PASSWORD}, MsgId.REG_ACK)
    )
    assert [r["errno"] for r in regs] == [0, 0, 0]
    over = await a.request(
        {"msgid": MsgId.REG, "name": unique(), "password": PASSWORD}, MsgId.REG_ACK
    )
    assert over["errno"] == RegErr.TOO_MANY, over  # 2 on a + 1 on b: the meter is shared
    victim = int(regs[0]["id"])
    replies = []
    for n in range(2 * FREE):  # alternating nodes, as nginx would spread them
        replies.append(await (a if n % 2 else b).login(victim, "guess"))
    codes = [r["errno"] for r in replies]
    # Per node this would be 6 checked guesses; shared, the 4th is already held.
    assert codes == [LoginErr.BAD_CREDENTIALS] * FREE + [LoginErr.TOO_MANY_FAILURES] * FREE
    for c in (a, b):
        await c.close()


@pytest.fixture
async def metered_nodes(settings: Settings) -> AsyncIterator[tuple[Node, Node]]:
    limits = Limits(registrations_per_address=0, message_rate=0.5, message_burst=5)
    async with _two_nodes(settings, limits) as nodes:
        yield nodes


async def test_reconnecting_elsewhere_does_not_refill_the_flood_bucket(
    metered_nodes: tuple[Node, Node],
) -> None:
    a_node, b_node = metered_nodes
    a = await ChatConnection.open("127.0.0.1", a_node.port)
    uid = await a.register(unique(), PASSWORD)
    ticket = (await a.login(uid, PASSWORD))["ticket"]
    selfie = {"msgid": MsgId.ADD_FRIEND, "friendid": uid}  # refused at once, but metered
    codes = [(await a.request(selfie, MsgId.ERROR))["errno"] for _ in range(6)]
    assert codes == [ErrCode.FRIEND_SELF] * 5 + [ErrCode.TOO_FAST]
    await a.abort()
    async with asyncio.timeout(10):
        while uid in a_node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    b = await ChatConnection.open("127.0.0.1", b_node.port)
    ack = await b.request({"msgid": MsgId.LOGIN, "id": uid, "ticket": ticket}, MsgId.LOGIN_ACK)
    assert ack["errno"] == 0
    codes = [(await b.request(selfie, MsgId.ERROR))["errno"] for _ in range(3)]
    # A fresh bucket would have served all three; the one left on node a serves at most one.
    assert codes.count(ErrCode.TOO_FAST) >= 2, codes
    await b.close()


async def test_with_redis_gone_each_node_still_counts(settings: Settings, tmp_path: Path) -> None:
    own = OwnRedis(tmp_path)
    await own.start()
    limits = Limits(login_failures=FREE, login_delay=30, registrations_per_address=0)
    node = Node(replace(settings, redis_url=own.url, limits=limits))
    await node.start()
    try:
        conn = await _open(node)
        victim = await conn.register(unique(), PASSWORD)
        await own.kill()
        codes = [(await conn.login(victim, "guess"))["errno"] for _ in range(FREE + 2)]
        assert codes == [LoginErr.BAD_CREDENTIALS] * FREE + [LoginErr.TOO_MANY_FAILURES] * 2
        await conn.close()
    finally:
        await node.stop()
        await own.kill()
