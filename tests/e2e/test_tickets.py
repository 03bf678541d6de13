"""Session tickets rotate at each use and expire: a stolen old ticket stops
working as soon as its owner reconnects, and every ticket dies in time."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import LoginErr, MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, Connect, unique


async def _gone(node: Node, uid: int) -> None:
    """Wait until the node has noticed a dropped session."""
    async with asyncio.timeout(10):
        while uid in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)


async def _by_ticket(conn: ChatConnection, uid: int, ticket: str) -> dict[str, object]:
    return await conn.request({"msgid": MsgId.LOGIN, "id": uid, "ticket": ticket}, MsgId.LOGIN_ACK)


async def test_a_stolen_ticket_dies_when_the_owner_uses_theirs(
    connect: Connect, node: Node
) -> None:
    owner = await connect()
    uid = await owner.register(unique(), PASSWORD)
    stolen = first = str((await owner.login(uid, PASSWORD))["ticket"])
    tickets = [first]
    for _ in range(3):  # reconnect three times, each with the ticket last received
        await owner.abort()
        await _gone(node, uid)
        owner = await connect()
        ack = await _by_ticket(owner, uid, tickets[-1])
        assert ack["errno"] == 0 and ack["resumed"] is True
        tickets.append(str(ack["ticket"]))
    assert len(set(tickets)) == 4  # a new one each time
    await owner.abort()
    await _gone(node, uid)
    thief = await connect()
    for old in (stolen, *tickets[1:-1]):
        assert (await _by_ticket(thief, uid, old))["errno"] == LoginErr.BAD_CREDENTIALS
    # The owner's current ticket still works; logging out revokes it.
    back = await connect()
    ack = await _by_ticket(back, uid, tickets[-1])
    assert ack["errno"] == 0
    await back.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    assert (await _by_ticket(back, uid, str(ack["ticket"])))["errno"] == LoginErr.BAD_CREDENTIALS


async def test_tickets_expire(settings: Settings) -> None:
    node = Node(replace(settings, limits=Limits(registrations_per_address=0, ticket_lifetime=1)))
    await node.start()
    try:
        conn = await ChatConnection.open("127.0.0.1", node.port)
        uid = await conn.register(unique(), PASSWORD)
        ticket = str((await conn.login(uid, PASSWORD))["ticket"])
        await conn.abort()
        await _gone(node, uid)
        await asyncio.sleep(2.1)  # the lifetime under test, whole seconds in the store
        conn = await ChatConnection.open("127.0.0.1", node.port)
        assert (await _by_ticket(conn, uid, ticket))["errno"] == LoginErr.BAD_CREDENTIALS
        assert (await conn.login(uid, PASSWORD))["errno"] == 0  # the password still does
        await conn.close()
    finally:
        await node.stop()
