"""A chat to a receiver with receipts on the sender's own node, in a
cluster: its CHAT_ACK waits until the message is copied into Redis (so the
node's SIGKILL does not take the only copy), while the sender's next
requests are served and their replies keep their order behind it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.helpers import StallingProxy, redis_prefix


async def test_the_ack_waits_for_the_copy_and_later_replies_wait_behind_it(
    tmp_path: Path, shared_redis: str
) -> None:
    redis_port = int(shared_redis.rsplit(":", 1)[1].split("/")[0])
    proxy = StallingProxy(redis_port)
    await proxy.start()
    prefix = redis_prefix("cccopy")
    node = Node(
        Settings(
            port=0,
            db_url=f"sqlite+aiosqlite:///{tmp_path}/chat.db",
            hash_cost=FAST_HASH,
            shed_lag=0.0,
            redis_url=f"redis://127.0.0.1:{proxy.port}/0",
            redis_prefix=prefix,
            node_id="n",
        )
    )
    await node.start()
    r = aioredis.Redis.from_url(shared_redis)
    try:
        receiver = await ChatConnection.open("127.0.0.1", node.port)
        rid = await receiver.register(unique(), PASSWORD)
        assert (await receiver.login(rid, PASSWORD, receipts=True))["receipts"] is True
        sender = await ChatConnection.open("127.0.0.1", node.port)
        sid = await sender.register(unique(), PASSWORD)
        assert (await sender.login(sid, PASSWORD))["errno"] == 0
        proxy.stall()  # the node's Redis answers nothing for now
        await sender.send({"msgid": MsgId.ONE_CHAT, "toid": rid, "msg": "kept"})
        await sender.send({"msgid": MsgId.PING})
        pushed = await receiver.expect(MsgId.ONE_CHAT)  # delivered at once
        assert pushed["msg"] == "kept"
        with pytest.raises(TimeoutError):  # neither the ack nor the PONG behind it
            await sender.recv(timeout=0.3)
        proxy.flow()
        ack = await sender.expect(MsgId.CHAT_ACK)
        assert (ack["errno"], ack["status"]) == (0, "delivered")
        await sender.expect(MsgId.PONG)
        # The copy was made; the receiver's RECEIVED removes it.
        assert await r.hlen(f"{prefix}keep:n") == 1
        await receiver.received(pushed["seq"])
        async with asyncio.timeout(10):
            while await r.hlen(f"{prefix}keep:n"):  # noqa: ASYNC110 - Redis state, polled
                await asyncio.sleep(0.05)
        for c in (sender, receiver):
            await c.close()
    finally:
        await node.stop()
        await proxy.close()
        stale = await r.keys(f"{prefix}*")  # its registration meter: ours alone
        if stale:
            await r.delete(*stale)
        await r.aclose()
