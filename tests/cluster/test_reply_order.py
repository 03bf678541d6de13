"""A chat to a user on another node is acknowledged once its batch is
published, with no task of its own; a later request on the same connection,
even one answered at once, must never have its reply overtake that
acknowledgement (our client matches replies in order)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import redis.asyncio as aioredis

from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from tests.cluster.conftest import Cluster
from tests.conftest import User


def _lines(*docs: dict[str, Any]) -> bytes:
    """Requests as one write: the node reads them in one go."""
    return b"".join(codec.dumps(d).encode() + b"\n" for d in docs)


async def _warm(sender: User, receiver: User) -> None:
    """One chat each way, so each node knows where the other's user is (the
    route is cached: later chats are posted without a lookup)."""
    await sender.conn.send({"msgid": MsgId.ONE_CHAT, "toid": receiver.id, "msg": "warm"})
    await receiver.conn.expect(MsgId.ONE_CHAT)
    assert (await sender.conn.expect(MsgId.CHAT_ACK))["status"] == "delivered"


async def test_sync_replies_wait_for_a_cross_node_ack(cluster: Cluster) -> None:
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    carol = await cluster.user_on("node0")
    await _warm(alice, bob)
    for round_ in range(30):
        # cross-node chat, then three requests answered without I/O: a PING,
        # a chat to a user on the same node, and a request refused at once.
        await alice.conn.send_raw(
            _lines(
                {"msgid": MsgId.ONE_CHAT, "toid": bob.id, "msg": f"far {round_}"},
                {"msgid": MsgId.PING},
                {"msgid": MsgId.ONE_CHAT, "toid": carol.id, "msg": f"near {round_}"},
                {"msgid": MsgId.ONE_CHAT, "msg": "no receiver"},
            )
        )
        far = await bob.conn.expect(MsgId.ONE_CHAT)
        near = await carol.conn.expect(MsgId.ONE_CHAT)
        assert (far["msg"], near["msg"]) == (f"far {round_}", f"near {round_}")
        replies = [await alice.conn.recv() for _ in range(4)]
        assert [r["msgid"] for r in replies] == [
            MsgId.CHAT_ACK,
            MsgId.PONG,
            MsgId.CHAT_ACK,
            MsgId.ERROR,
        ], replies
        assert (replies[0]["mid"], replies[0]["status"]) == (far["mid"], "delivered")
        assert (replies[2]["mid"], replies[2]["status"]) == (near["mid"], "delivered")


async def test_many_cross_node_chats_then_a_ping_in_one_write(cluster: Cluster) -> None:
    """Several posted chats wait in the same batch; each ack comes in the
    order sent, and the PING's reply after all of them."""
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    await _warm(alice, bob)
    chats = [{"msgid": MsgId.ONE_CHAT, "toid": bob.id, "msg": str(i)} for i in range(50)]
    await alice.conn.send_raw(_lines(*chats, {"msgid": MsgId.PING}))
    got = [await bob.conn.expect(MsgId.ONE_CHAT) for _ in range(50)]
    assert [m["msg"] for m in got] == [str(i) for i in range(50)]
    acks = [await alice.conn.expect(MsgId.CHAT_ACK) for _ in range(50)]
    assert [a["mid"] for a in acks] == [m["mid"] for m in got]
    assert {a["status"] for a in acks} == {"delivered"}
    await alice.conn.expect(MsgId.PONG)


async def test_a_stored_cross_node_chat_is_acknowledged_before_later_replies(
    cluster: Cluster,
) -> None:
    """The receiver's node dies with its route still cached here: the
    PUBLISH reaches nobody, the message is stored, and only then is it
    acknowledged (``stored``); the PING sent right after it is answered after
    that, never before."""
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    await _warm(alice, bob)
    await cluster.kill("node1", signal.SIGKILL)
    channel = f"{cluster.prefix}to:node1"
    client = aioredis.Redis.from_url(cluster.redis_url)
    try:
        async with asyncio.timeout(10):  # Redis has seen node1's subscription go
            while dict(await client.pubsub_numsub(channel)).get(channel.encode()):  # noqa: ASYNC110 - Redis state, polled
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    await alice.conn.send_raw(
        _lines(
            {"msgid": MsgId.ONE_CHAT, "toid": bob.id, "msg": "while away"},
            {"msgid": MsgId.PING},
        )
    )
    ack = await alice.conn.recv()
    assert (ack["msgid"], ack["status"]) == (MsgId.CHAT_ACK, "stored"), ack
    assert (await alice.conn.recv())["msgid"] == MsgId.PONG
