"""Requests read together are answered in one write: a client with 16 chats
in flight costs the node one system call for their acknowledgements, not 16,
and the replies keep their order."""

from __future__ import annotations

from typing import Any

from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.conftest import UserFactory


class _CountedWrites:
    """The connection's real transport, counting the writes made through it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _counted(node: Node, uid: int) -> _CountedWrites:
    session = node.service.sessions[uid]
    conn = next(c for c in node.connections if c.session is session)
    counted = _CountedWrites(conn.transport)
    conn.transport = counted  # type: ignore[assignment]
    return counted


async def test_requests_read_together_are_answered_in_one_write(
    node: Node, user: UserFactory
) -> None:
    alice, bob = await user(), await user()
    writes = _counted(node, alice.id)
    chats = [{"msgid": MsgId.ONE_CHAT, "toid": bob.id, "msg": str(i)} for i in range(16)]
    lines = [codec.dumps(d).encode() + b"\n" for d in [*chats, {"msgid": MsgId.PING}]]
    await alice.conn.send_raw(b"".join(lines))  # one write, read by the node at once
    got = [await bob.conn.expect(MsgId.ONE_CHAT) for _ in range(16)]
    acks = [await alice.conn.expect(MsgId.CHAT_ACK) for _ in range(16)]
    assert [a["mid"] for a in acks] == [m["mid"] for m in got]
    await alice.conn.expect(MsgId.PONG)
    assert len(writes.writes) == 1, [w.count(b"\n") for w in writes.writes]


async def test_a_lone_request_is_answered_at_once(node: Node, user: UserFactory) -> None:
    alice = await user()
    writes = _counted(node, alice.id)
    for _ in range(3):
        assert await alice.conn.request({"msgid": MsgId.PING}, MsgId.PONG)
    assert len(writes.writes) == 3
