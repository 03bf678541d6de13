"""A receiver's node killed (SIGKILL) while it holds acknowledged messages
the receiver has not confirmed (receipts). Found by bench/soak.py: 4,375
of 99,600 acknowledged deliveries lost when node1 was killed mid-burst.

node1 keeps what its client has not confirmed in the receipt window, in
memory only. From another node: node1 used to acknowledge the batch once
written to the connection, so the sender's node let go of its copy and the
kill took the only one; now node1 acknowledges it as *taken* and, once the
receipts (or storing) cover it, as *settled*, and the sender's node keeps
it until then and stores it when node1's heartbeat lapses. From node1
itself (1:1 or a group): node1 copies the message into Redis before it
tells the sender, deletes the copy at the receipt, and the node that reaps
node1 stores what is left."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from tests.cluster.conftest import PRESENCE_TTL, Cluster, receipts_user_via
from tests.conftest import PASSWORD, unique
from tests.e2e.test_receipts import send_chats
from tests.helpers import StallingProxy

#: Survivors reap a dead node (and store its copies) 3 presence TTLs after
#: its last heartbeat; a stored message is then pushed to its receiver.
REAPED = 3 * PRESENCE_TTL + 6


@pytest.mark.parametrize(
    ("sender_on", "kind"), [("node0", "chat"), ("node1", "chat"), ("node1", "group")]
)
async def test_acknowledged_chats_survive_the_receivers_node_killed(
    cluster: Cluster, sender_on: str, kind: str
) -> None:
    sender = (await cluster.user_on(sender_on)).conn
    proxy = StallingProxy(cluster.port)  # the client reads nothing: in flight, unconfirmed
    await proxy.start()
    phone, uid = await receipts_user_via(proxy.port, "node1")
    try:
        if kind == "group":
            gid = (
                await sender.request({"msgid": 8, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK)
            )["groupid"]
            await phone.request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
            proxy.stall()
            mids = []
            for i in range(5):
                ack = await sender.request(
                    {"msgid": 10, "groupid": gid, "msg": f"g{i}"}, MsgId.CHAT_ACK
                )
                assert ack["errno"] == 0, ack
                mids.append(ack["mid"])
        else:
            proxy.stall()
            mids = await send_chats(sender, uid, [f"m{i}" for i in range(5)])
        await cluster.kill("node1")
    finally:
        await proxy.close()
        await phone.abort()
    async with asyncio.timeout(20):  # node1's presence lapses; log in on node0
        while True:
            again = await cluster.connect_to("node0")
            ack = await again.login(uid, PASSWORD, receipts=True)
            if ack["errno"] == 0:
                break
            await again.close()
            await asyncio.sleep(0.5)
    pushed = {MsgId.ONE_CHAT, MsgId.GROUP_CHAT}
    got = [codec.loads(m)["mid"] for m in ack.get("offlinemsg", ())]
    with contextlib.suppress(TimeoutError):  # then pushed ones, until node1 is surely reaped
        while len(got) < len(mids):
            msg = await again.recv(timeout=REAPED)
            if msg["msgid"] in pushed:
                got.append(msg["mid"])
    assert got == mids, f"acknowledged {len(mids)}, arrived {len(got)}"
