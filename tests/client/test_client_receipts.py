"""The terminal client's protocol layer asks for receipts and acknowledges:
every 64 messages, on a one-second timer, and before it logs out, so the
server keeps nothing it has shown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.client.session import ChatClient
from clusterchat.protocol.acks import EVERY
from clusterchat.protocol.messages import MsgId
from clusterchat.server.core import ConnectionCore
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique


async def _unacked(node: Node, uid: int) -> int:
    peer = node.service.sessions[uid].peer
    assert isinstance(peer, ConnectionCore) and peer.outbox is not None
    receipts = peer.outbox.receipts
    assert receipts is not None  # kept while receipts are on
    return receipts.count


async def _until_acknowledged(node: Node, uid: int) -> None:
    async with asyncio.timeout(5):
        while await _unacked(node, uid):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@pytest.mark.unmetered
async def test_the_client_acknowledges_on_count_timer_and_logout(node: Node) -> None:
    shown: list[dict[str, Any]] = []
    client = ChatClient("127.0.0.1", node.port, on_push=shown.append, on_status=lambda _: None)
    await client.connect()
    reg = await client.request({"msgid": MsgId.REG, "name": unique(), "password": PASSWORD})
    uid = int(reg["id"])
    ack = await client.login(uid, PASSWORD)
    assert ack["receipts"] is True
    sender = await ChatConnection.open("127.0.0.1", node.port)
    await sender.login(await sender.register(unique(), PASSWORD), PASSWORD)
    try:
        for i in range(EVERY):  # a full count: acknowledged without the timer
            await sender.request({"msgid": 6, "toid": uid, "msg": f"{i}"}, MsgId.CHAT_ACK)
        await _until_acknowledged(node, uid)
        await sender.request({"msgid": 6, "toid": uid, "msg": "one"}, MsgId.CHAT_ACK)
        await _until_acknowledged(node, uid)  # the timer, within a second
        await sender.request({"msgid": 6, "toid": uid, "msg": "last"}, MsgId.CHAT_ACK)
        async with asyncio.timeout(5):
            while len(shown) < EVERY + 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert (await client.logout())["msgid"] == MsgId.LOGOUT_ACK
        # Acknowledged before the logout: nothing stored again.
        ack = await client.login(uid, PASSWORD)
        assert "offlinemsg" not in ack
    finally:
        await client.close()
        await sender.close()
