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
from collections.abc import AsyncIterator, Container
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from clusterchat.server import node as node_module
from clusterchat.server.node import Node
from clusterchat.storage.base import LoginView
from clusterchat.storage.sql import SqlStore
from tests.conftest import PASSWORD, Connect, UserFactory, unique
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


class ResetAtLogin(SqlStore):
    """A real store that resets a socket the test names just as the login
    reading it returns: the reset reaches the node before the login reply
    is written, and is read after the login goes on."""

    def __init__(self, url: str) -> None:
        super().__init__(url, pool_size=4)
        self.reset: socket.socket | None = None

    async def open_session(
        self, uid: int, ticket_digest: str | None, known: Container[int] = frozenset()
    ) -> LoginView:
        view = await super().open_session(uid, ticket_digest, known)
        sock, self.reset = self.reset, None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        return view


@pytest.fixture
async def resetting(settings: Settings) -> AsyncIterator[tuple[Node, ResetAtLogin]]:
    store = ResetAtLogin(settings.db_url)
    n = Node(settings, store=store)
    await n.start()
    yield n, store
    await n.stop()


async def test_offline_messages_of_a_login_reply_that_never_left_are_kept(
    resetting: tuple[Node, ResetAtLogin],
) -> None:
    node, store = resetting
    alice = await ChatConnection.open("127.0.0.1", node.port)
    alice_id = await alice.register(unique(), PASSWORD)
    assert (await alice.login(alice_id, PASSWORD))["errno"] == 0
    bob_conn = await ChatConnection.open("127.0.0.1", node.port)
    bob_id = await bob_conn.register(unique(), PASSWORD)
    await bob_conn.close()
    mids = set()
    for i in range(3):
        ack = await alice.request(
            {"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": f"away {i}"}, MsgId.CHAT_ACK
        )
        assert ack["status"] == "stored"
        mids.add(ack["mid"])
    loop = asyncio.get_running_loop()
    bob = socket.socket()
    bob.setblocking(False)
    await loop.sock_connect(bob, ("127.0.0.1", node.port))
    store.reset = bob
    login = {"msgid": MsgId.LOGIN, "id": bob_id, "password": PASSWORD}
    await loop.sock_sendall(bob, codec.dumps(login).encode() + b"\n")
    async with asyncio.timeout(5):
        while store.reset is not None or bob_id in node.service.sessions:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    again = await ChatConnection.open("127.0.0.1", node.port)
    try:
        got = await _everything_for(again, bob_id, mids)
    finally:
        await again.close()
        await alice.close()
    assert mids <= got, f"{len(mids - got)} of {len(mids)} stored messages lost"
