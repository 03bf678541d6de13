"""Across nodes: a password login on one node ends the user's ticket session
on another (and is refused, errno 2, if that session came with the password)."""

from __future__ import annotations

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import LoginErr, MsgId
from clusterchat.protocol.replies import DISPLACED_TEXT
from clusterchat.service.limits import Limits
from tests.cluster.test_shared_limits import _two_nodes
from tests.conftest import PASSWORD, unique
from tests.e2e.test_takeover import ticket_login


async def test_a_password_login_takes_over_a_ticket_session_on_another_node(
    settings: Settings,
) -> None:
    async with _two_nodes(settings, Limits(registrations_per_address=0)) as (a, b):
        owner = await ChatConnection.open("127.0.0.1", a.port)
        uid = await owner.register(unique(), PASSWORD)
        ticket = (await owner.login(uid, PASSWORD))["ticket"]
        await owner.close()
        thief, ack = await ticket_login(a.port, uid, ticket)
        assert ack["errno"] == 0
        # Before: errno 2 on node b until an operator kicked the thief.
        owner = await ChatConnection.open("127.0.0.1", b.port)
        assert (await owner.login(uid, PASSWORD))["errno"] == 0
        assert (await thief.expect(MsgId.NOTICE))["text"] == DISPLACED_TEXT
        assert await thief.at_eof()
        # A password session is kept: a second password login elsewhere gets errno 2.
        second = await ChatConnection.open("127.0.0.1", a.port)
        assert (await second.login(uid, PASSWORD))["errno"] == LoginErr.ALREADY_ONLINE
        assert (await owner.request({"msgid": MsgId.PING}, MsgId.PONG))["node"] == "b"
        for c in (owner, thief, second):
            await c.close()
