"""History in a two-node cluster (MariaDB, Redis, nginx): each message is
kept once, by the sender's node, and every node serves the same pages."""

from __future__ import annotations

import asyncio
from typing import Any

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from tests.cluster.conftest import Cluster
from tests.conftest import unique
from tests.e2e.test_history import everything, group_chat, history


async def _settled(conn: ChatConnection, want: int, **req: Any) -> list[dict[str, Any]]:
    """Every page once ``want`` messages are there: another node writes its
    senders' messages a few milliseconds after acknowledging them."""
    async with asyncio.timeout(10):
        while True:
            got = await everything(conn, 4, **req)
            if len(got) >= want:
                return got
            await asyncio.sleep(0.05)


async def test_history_is_kept_once_and_read_the_same_from_every_node(cluster: Cluster) -> None:
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    sent = []
    for i in range(6):
        sender, to = (alice, bob) if i % 2 == 0 else (bob, alice)
        await sender.conn.send({"msgid": MsgId.ONE_CHAT, "toid": to.id, "msg": f"m{i}"})
        ack = await sender.conn.expect(MsgId.CHAT_ACK)
        assert (await to.conn.expect(MsgId.ONE_CHAT))["mid"] == ack["mid"]
        sent.append((f"m{i}", sender.id, ack["mid"]))
    for reader, other in ((alice, bob), (bob, alice)):
        got = await _settled(reader.conn, 6, userid=other.id)
        # Each once. Pages follow the order rows were written (row ids), which
        # for senders on different nodes may differ from ``ts`` by the writers'
        # few milliseconds: clients order what they show by ``ts``.
        assert sorted((m["msg"], m["from"], m["mid"]) for m in got) == sorted(sent)
        assert len(got) == 6

    # A group spanning both nodes; a member who joins later, on the other node.
    owner = alice
    gid = (
        await owner.conn.request(
            {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK
        )
    )["groupid"]
    await bob.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await group_chat(owner, gid, "g0 from node0")
    await group_chat(bob, gid, "g1 from node1")
    await asyncio.sleep(0.002)  # join times are kept to the microsecond, chats to the ms
    late = await cluster.user_on("node1")
    await late.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await group_chat(owner, gid, "g2 after the late join")
    for reader in (alice, bob):
        got = await _settled(reader.conn, 3, groupid=gid)
        assert [m["msg"] for m in got] == [
            "g2 after the late join",
            "g1 from node1",
            "g0 from node0",
        ]
    got = await _settled(late.conn, 1, groupid=gid)
    assert [m["msg"] for m in got] == ["g2 after the late join"]
    page = await history(late.conn, groupid=gid, before=got[0]["id"])
    assert page["messages"] == [] and page["more"] is False

    # Paging back on node0 while node1's sender keeps writing: no repeats, no gaps.
    for i in range(20):
        await group_chat(owner, gid, f"old {i}")
    stop = asyncio.Event()

    async def keep_writing() -> int:
        n = 0
        while not stop.is_set():
            await group_chat(bob, gid, f"new {n}")
            n += 1
        return n

    writer = asyncio.ensure_future(keep_writing())
    try:
        seen = await everything(owner.conn, 6, groupid=gid)
    finally:
        stop.set()
        assert await writer > 0
    ids = [m["id"] for m in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    olds = [m["msg"] for m in seen if m["msg"].startswith("old")]
    assert olds == [f"old {i}" for i in reversed(range(20))]
