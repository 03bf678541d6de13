"""The fan-out's cache of group members is bounded by members held (memory),
not by the number of groups; what it drops is read again, nothing is lost."""

from __future__ import annotations

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique

GROUPS, BOUND = 8, 20


async def test_the_member_cache_holds_a_bounded_number_of_members(node: Node) -> None:
    # Before: only the number of groups was bounded (10,000, whatever their
    # size): 8 groups of 3 held 24 members against a bound of 20.
    service = node.service
    service.max_cached_members = BOUND
    conns = [await ChatConnection.open("127.0.0.1", node.port) for _ in range(3)]
    for c in conns:
        assert (await c.login(await c.register(unique(), PASSWORD), PASSWORD))["errno"] == 0
    owner, *others = conns
    gids = []
    for _ in range(GROUPS):
        ack = await owner.request(
            {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK
        )
        gids.append(ack["groupid"])
        for c in others:
            await c.request(
                {"msgid": MsgId.ADD_GROUP, "groupid": ack["groupid"]}, MsgId.ADD_GROUP_ACK
            )
    for round_ in range(2):  # the second round reads again what the first dropped
        for gid in gids:
            chat = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": f"{round_}-{gid}"}
            assert (await owner.request(chat, MsgId.CHAT_ACK))["status"] == "sent"
            for c in others:
                got = await c.expect(MsgId.GROUP_CHAT)
                assert got["msg"] == f"{round_}-{gid}"
            held = sum(len(m) for m in service._members.values())
            assert held <= BOUND, (held, len(service._members))
    assert service._members  # the newest are still cached
    for c in conns:
        await c.close()
