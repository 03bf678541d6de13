"""A receiver's reset read in the same loop iteration as a burst for it.

The node writes what it accepted for a peer at the end of the loop
iteration. If the peer's RST is read in that iteration, after the burst was
accepted (and acknowledged ``delivered`` to its sender), the write finds the
transport closing: those messages were never written, so all of them must
be stored for the receiver's next login, not only the last few that a peer
which was keeping up may have had in its receive buffer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import pytest

from clusterchat.protocol.messages import MsgId
from clusterchat.server import node as node_module
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, Connect, UserFactory
from tests.e2e.test_memory_budget import stalled_user

BURST = 200


async def _everything_for(conn: Any, uid: int, mids: set[str]) -> set[str]:
    """Log in and collect the mids of what arrives: the login's offline
    messages, then pages pushed after it, until all of ``mids`` came or
    nothing more does within 3 s."""
    login = await conn.login(uid, PASSWORD)
    assert login["errno"] == 0, login
    got = {json.loads(m)["mid"] for m in login.get("offlinemsg", [])}
    try:
        while not mids <= got:
            msg = await conn.recv(timeout=3)
            if msg["msgid"] == MsgId.ONE_CHAT:
                got.add(msg["mid"])
    except TimeoutError:
        pass
    return got


@pytest.mark.unmetered
async def test_a_burst_accepted_just_before_the_receivers_reset_is_all_kept(
    user: UserFactory, connect: Connect, node: Node
) -> None:
    alice = await user()
    bob, bob_id = await stalled_user(node.port)
    # Nothing below yields to the loop: the node reads alice's burst, then
    # bob's reset, in one iteration, before it writes anything to bob.
    loop = asyncio.get_running_loop()
    acks: list[asyncio.Future[dict[str, Any]]] = [loop.create_future() for _ in range(BURST)]
    burst = b"".join(
        alice.conn.core.send({"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": f"m{i}"}, ack)
        for i, ack in enumerate(acks)
    )
    await alice.conn.send_raw(burst)  # one write; its drain does not yield (buffer empty)
    bob.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    bob.close()
    reading = asyncio.ensure_future(alice.conn.listen(lambda event: None))
    try:
        replies = await asyncio.wait_for(asyncio.gather(*acks), 10)
    finally:
        reading.cancel()
    acked = {r["mid"] for r in replies if r["msgid"] == MsgId.CHAT_ACK}
    assert acked, replies[:3]
    async with asyncio.timeout(5):
        while bob_id in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    got = await _everything_for(await connect(), bob_id, acked)
    assert not acked - got, f"{len(acked - got)} of {len(acked)} acknowledged messages lost"


@pytest.mark.unmetered
async def test_a_burst_the_receiver_never_read_is_kept_when_it_resets_at_once(
    user: UserFactory, connect: Connect, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Megabytes written to a receiver that reads nothing sit in the node's
    send queue (the receiver's kernel has not acknowledged them): a reset
    right after must not settle them as read, whenever the node's next
    in-flight report would have come (here: never)."""
    monkeypatch.setattr(node_module, "REPORT_EVERY", 3600.0)
    alice = await user()
    bob, bob_id = await stalled_user(node.port)
    text = "z" * 1000
    loop = asyncio.get_running_loop()
    acks: list[asyncio.Future[dict[str, Any]]] = [loop.create_future() for _ in range(BURST * 15)]
    burst = b"".join(
        alice.conn.core.send({"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": text}, ack)
        for ack in acks
    )
    reading = asyncio.ensure_future(alice.conn.listen(lambda event: None))
    try:
        await alice.conn.send_raw(burst)
        replies = await asyncio.wait_for(asyncio.gather(*acks), 30)
    finally:
        reading.cancel()
    acked = {r["mid"] for r in replies if r["msgid"] == MsgId.CHAT_ACK}
    assert len(acked) == len(acks), replies[:3]
    bob.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    bob.close()
    async with asyncio.timeout(5):
        while bob_id in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    got = await _everything_for(await connect(), bob_id, acked)
    assert not acked - got, f"{len(acked - got)} of {len(acked)} acknowledged messages lost"
