"""Users on different nodes behind nginx chat as if on one node; nothing is lost
when a node dies, stops, or Redis restarts."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from tests.cluster.conftest import PRESENCE_TTL, Cluster
from tests.conftest import PASSWORD, unique
from tests.helpers import OwnRedis


async def test_users_on_different_nodes_chat_one_to_one(cluster: Cluster) -> None:
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": "across"})
    got = await bob.conn.expect(MsgId.ONE_CHAT)
    assert (got["id"], got["name"], got["msg"]) == (alice.id, alice.name, "across")
    assert (await alice.conn.expect(MsgId.CHAT_ACK))["status"] == "delivered"
    await bob.conn.send({"msgid": 6, "toid": alice.id, "msg": "and back"})
    assert (await alice.conn.expect(MsgId.ONE_CHAT))["msg"] == "and back"


async def test_group_chat_spans_nodes(cluster: Cluster) -> None:
    members = [await cluster.user_on(n) for n in ("node0", "node1", "node0", "node1")]
    owner = members[0]
    gid = (
        await owner.conn.request({"msgid": 8, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK)
    )["groupid"]
    for m in members[1:]:
        await m.conn.request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    sender = members[1]
    await sender.conn.send({"msgid": 10, "groupid": gid, "msg": "to everyone"})
    for m in members:
        if m is not sender:
            got = await m.conn.expect(MsgId.GROUP_CHAT)
            assert (got["id"], got["groupid"], got["msg"]) == (sender.id, gid, "to everyone")


async def test_messages_across_nodes_keep_their_order(cluster: Cluster) -> None:
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    for i in range(300):
        await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": str(i)})
    got = [int((await bob.conn.expect(MsgId.ONE_CHAT))["msg"]) for _ in range(300)]
    assert got == list(range(300))


async def test_duplicate_login_is_refused_across_nodes(cluster: Cluster) -> None:
    alice = await cluster.user_on("node0")
    other = await cluster.connect_to("node1")
    assert (await other.login(alice.id, PASSWORD))["errno"] == 2


async def test_offline_messages_across_nodes(cluster: Cluster) -> None:
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    await bob.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    for i in range(3):
        await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": f"later {i}"})
        assert (await alice.conn.expect(MsgId.CHAT_ACK))["status"] == "stored"
    again = await cluster.connect_to("node0")
    ack = await again.login(bob.id, PASSWORD)
    assert [json.loads(m)["msg"] for m in ack["offlinemsg"]] == ["later 0", "later 1", "later 2"]


async def login_when_free(
    cluster: Cluster, uid: int, deadline: float
) -> tuple[ChatConnection, dict[str, Any]]:
    """Log in through nginx, retrying while the account still shows as online."""
    async with asyncio.timeout(deadline):
        while True:
            conn, _ = await cluster.connect()
            ack = await conn.login(uid, PASSWORD)
            if ack["errno"] == 0:
                return conn, ack
            assert ack["errno"] == 2, ack
            await conn.close()
            await asyncio.sleep(0.2)


async def test_killed_node_frees_its_users_and_loses_nothing(cluster: Cluster) -> None:
    victim, sender = await cluster.user_on("node0"), await cluster.user_on("node1")
    await sender.conn.send({"msgid": 6, "toid": victim.id, "msg": "warm the route"})
    warm = await victim.conn.expect(MsgId.ONE_CHAT)
    assert (await sender.conn.expect(MsgId.CHAT_ACK))["status"] == "delivered"

    await cluster.kill("node0", signal.SIGKILL)
    sent = [f"while down {i}" for i in range(5)]
    for text in sent:
        await sender.conn.send({"msgid": 6, "toid": victim.id, "msg": text})
        # "delivered" only if Redis had not yet noticed the death: then the
        # missing acknowledgement makes the sending node store it.
        assert (await sender.conn.expect(MsgId.CHAT_ACK))["status"] in ("stored", "delivered")
    loop = asyncio.get_running_loop()
    started = loop.time()
    conn, ack = await login_when_free(cluster, victim.id, deadline=PRESENCE_TTL + 5)
    assert loop.time() - started <= PRESENCE_TTL + 5
    got = {m["mid"]: m for m in map(json.loads, ack.get("offlinemsg", []))}
    # At least once: a batch node0 delivered but died before acknowledging
    # comes again, with the same mid, for the client to drop.
    got.pop(warm["mid"], None)
    async with asyncio.timeout(10):  # what the sweep stores after the login arrives live
        while len(got) < len(sent):
            m = await conn.expect(MsgId.ONE_CHAT)
            if m["mid"] != warm["mid"]:
                got[m["mid"]] = m
    assert sorted(m["msg"] for m in got.values()) == sent


async def test_killed_node_loses_nothing_sent_by_original_clients(cluster: Cluster) -> None:
    """The original client gets no reply to a chat, so its messages to other
    nodes are posted without waiting; a dead receiver node must not eat them."""
    victim = await cluster.user_on("node0")
    sender = await cluster.legacy_on("node1")
    await sender.send_raw(
        f'{{"msgid":6,"toid":{victim.id},"msg":"warm the route"}}'.encode() + b"\x00"
    )
    warm = await victim.conn.expect(MsgId.ONE_CHAT)
    await cluster.kill("node0", signal.SIGKILL)
    sent = [f"posted {i}" for i in range(5)]
    for text in sent:
        await sender.send_raw(f'{{"msgid":6,"toid":{victim.id},"msg":"{text}"}}'.encode() + b"\x00")
    conn, ack = await login_when_free(cluster, victim.id, deadline=PRESENCE_TTL + 5)
    got = {m["mid"]: m for m in map(json.loads, ack.get("offlinemsg", []))}
    got.pop(warm["mid"], None)
    async with asyncio.timeout(10):
        while len(got) < len(sent):
            m = await conn.expect(MsgId.ONE_CHAT)
            if m["mid"] != warm["mid"]:
                got[m["mid"]] = m
    assert sorted(m["msg"] for m in got.values()) == sent


async def test_gracefully_stopped_node_releases_its_users_at_once(cluster: Cluster) -> None:
    leaving, staying = await cluster.user_on("node0"), await cluster.user_on("node1")
    await cluster.kill("node0", signal.SIGTERM)
    assert await leaving.conn.at_eof()
    # No wait for presence expiry: the node said goodbye.
    conn, where = await cluster.connect()
    assert where == "node1"  # nginx skips the stopped node
    assert (await conn.login(leaving.id, PASSWORD))["errno"] == 0
    await staying.conn.send({"msgid": 6, "toid": leaving.id, "msg": "found you"})
    assert (await conn.expect(MsgId.ONE_CHAT))["msg"] == "found you"


async def test_redis_restart_mid_conversation(
    cluster_on_own_redis: Cluster, own_redis: OwnRedis
) -> None:
    cluster = cluster_on_own_redis
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    carol = await cluster.user_on("node1")
    await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": "before"})
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "before"
    assert (await alice.conn.expect(MsgId.CHAT_ACK))["status"] == "delivered"

    await own_redis.kill()
    # Same node: still delivered. Across nodes: kept, not dropped.
    await carol.conn.send({"msgid": 6, "toid": bob.id, "msg": "local during outage"})
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "local during outage"
    assert (await carol.conn.expect(MsgId.CHAT_ACK))["status"] == "delivered"
    during = [f"during {i}" for i in range(3)]
    for text in during:
        await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": text})
        assert (await alice.conn.expect(MsgId.CHAT_ACK))["status"] == "stored"

    await own_redis.start()
    # Once the nodes are back on Redis, bob gets what was kept, without logging in again.
    got = [(await bob.conn.expect(MsgId.ONE_CHAT, timeout=15))["msg"] for _ in during]
    assert got == during
    await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": "after"})
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "after"
    assert (await alice.conn.expect(MsgId.CHAT_ACK))["status"] == "delivered"
    # Presence was re-asserted: a second login of bob is still refused.
    other: ChatConnection = await cluster.connect_to("node0")
    assert (await other.login(bob.id, PASSWORD))["errno"] == 2


async def test_node_receiving_a_message_for_a_user_who_left_stores_it(cluster: Cluster) -> None:
    """A stale route (the user left that node) ends in offline storage, not loss."""
    import msgspec
    import redis.asyncio as aioredis

    from clusterchat.protocol import codec

    bob = await cluster.user_on("node1")
    await bob.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    payload = codec.encode({"msgid": 6, "id": 1, "name": "x", "toid": bob.id, "msg": "stale"})
    client = aioredis.Redis.from_url(cluster.redis_url)
    try:
        batch = msgspec.msgpack.encode(("test", 0, 0, [(0, [bob.id], payload, 0)]))
        assert await client.publish(f"{cluster.prefix}to:node1", batch) == 1
    finally:
        await client.aclose()
    async with asyncio.timeout(10):
        while True:  # the node stores it asynchronously; log in once it is there
            again = await cluster.connect_to("node0")
            ack = await again.login(bob.id, PASSWORD)
            if "offlinemsg" in ack:
                break
            await again.request({"msgid": 3}, MsgId.LOGOUT_ACK)
            await asyncio.sleep(0.1)
    assert [json.loads(m)["msg"] for m in ack["offlinemsg"]] == ["stale"]
