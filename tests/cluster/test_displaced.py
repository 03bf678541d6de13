"""A node cut off from Redis for longer than the presence TTL loses its
users' presence; if one of them logs in on another node meanwhile, the old
session must end when the first node comes back (one user, one session)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.cluster.conftest import PRESENCE_TTL
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.helpers import CuttableProxy, OwnRedis


@pytest.fixture
async def redis_proxy(own_redis: OwnRedis) -> AsyncIterator[CuttableProxy]:
    p = CuttableProxy(target_port=own_redis.port)
    await p.start()
    yield p
    await p.cut()


async def _node(tmp_path: Path, db_url: str, redis_url: str, name: str) -> Node:
    node = Node(
        Settings(
            port=0,
            db_url=db_url,
            hash_cost=FAST_HASH,
            shed_lag=0.0,
            redis_url=redis_url,
            redis_prefix=f"ccdisp:{tmp_path.name}:",
            presence_ttl=PRESENCE_TTL,
            node_id=name,
        )
    )
    await node.start()
    return node


async def test_session_taken_over_while_cut_off_is_ended_on_return(
    tmp_path: Path, mariadb_url: str, own_redis: OwnRedis, redis_proxy: CuttableProxy
) -> None:
    cut_off = await _node(tmp_path, mariadb_url, f"redis://127.0.0.1:{redis_proxy.port}/0", "a")
    other = await _node(tmp_path, mariadb_url, own_redis.url, "b")
    try:
        old = await ChatConnection.open("127.0.0.1", cut_off.port)
        uid = await old.register(unique(), PASSWORD)
        assert (await old.login(uid, PASSWORD))["errno"] == 0
        await redis_proxy.cut()
        new = await ChatConnection.open("127.0.0.1", other.port)
        async with asyncio.timeout(PRESENCE_TTL * 5):
            # Refused while node a's heartbeat lives; then the user is free.
            while (ack := await new.login(uid, PASSWORD))["errno"] != 0:
                assert ack["errno"] == 2, ack
                await asyncio.sleep(0.2)
        await redis_proxy.start()
        notice = await old.expect(MsgId.NOTICE, timeout=15)
        assert "somewhere else" in notice["text"]
        with pytest.raises(ConnectionClosed):
            await old.recv()
        # The new session is the one that stays, and it is reachable.
        sender = await ChatConnection.open("127.0.0.1", cut_off.port)
        sid = await sender.register(unique(), PASSWORD)
        assert (await sender.login(sid, PASSWORD))["errno"] == 0
        await sender.send({"msgid": MsgId.ONE_CHAT, "toid": uid, "msg": "to the new one"})
        assert (await new.expect(MsgId.ONE_CHAT))["msg"] == "to the new one"
        for c in (old, new, sender):
            await c.close()
    finally:
        await cut_off.stop()
        await other.stop()


async def test_a_displaced_session_with_receipts_hands_on_what_it_did_not_acknowledge(
    tmp_path: Path, mariadb_url: str, own_redis: OwnRedis, redis_proxy: CuttableProxy
) -> None:
    """Receipts' window is stored when a session is displaced (not only when
    it closes or goes silent): the new session gets every message the old
    one was pushed but never acknowledged, with the same mids, in order."""
    cut_off = await _node(tmp_path, mariadb_url, f"redis://127.0.0.1:{redis_proxy.port}/0", "a")
    other = await _node(tmp_path, mariadb_url, own_redis.url, "b")
    try:
        sender = await ChatConnection.open("127.0.0.1", cut_off.port)
        sid = await sender.register(unique(), PASSWORD)
        assert (await sender.login(sid, PASSWORD))["errno"] == 0
        old = await ChatConnection.open("127.0.0.1", cut_off.port)
        uid = await old.register(unique(), PASSWORD)
        assert (await old.login(uid, PASSWORD, receipts=True))["receipts"] is True
        mids = []
        for text in ("one", "two", "three", "four"):
            ack = await sender.request(
                {"msgid": MsgId.ONE_CHAT, "toid": uid, "msg": text}, MsgId.CHAT_ACK
            )
            mids.append(ack["mid"])
        pushed = [await old.expect(MsgId.ONE_CHAT) for _ in mids]
        assert [m["seq"] for m in pushed] == [1, 2, 3, 4]
        await old.received(1)  # "one" is acknowledged; the other three are not
        await old.request({"msgid": MsgId.PING}, MsgId.PONG)
        await redis_proxy.cut()
        new = await ChatConnection.open("127.0.0.1", other.port)
        async with asyncio.timeout(PRESENCE_TTL * 5):
            while (ack := await new.login(uid, PASSWORD, receipts=True))["errno"] != 0:
                assert ack["errno"] == 2, ack
                await asyncio.sleep(0.2)
        assert "offlinemsg" not in ack  # nothing stored yet: node a still holds them
        await redis_proxy.start()
        notice = await old.expect(MsgId.NOTICE, timeout=15)
        assert "somewhere else" in notice["text"]
        got = [await new.expect(MsgId.ONE_CHAT, timeout=15) for _ in mids[1:]]
        assert [m["mid"] for m in got] == mids[1:]
        assert [m["msg"] for m in got] == ["two", "three", "four"]
        for c in (old, new, sender):
            await c.close()
    finally:
        await cut_off.stop()
        await other.stop()
