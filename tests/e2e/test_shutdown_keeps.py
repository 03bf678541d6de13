"""A node that stops while a receiver is not reading keeps what it owed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique
from tests.e2e.test_memory_budget import stalled_user


async def test_shutdown_stores_what_a_stalled_reader_was_owed(settings: Settings) -> None:
    settings = replace(settings, limits=Limits(message_rate=0))
    node = Node(settings)
    await node.start()
    try:
        stalled, stalled_id = await stalled_user(node.port)
        sender = await ChatConnection.open("127.0.0.1", node.port)
        sid = await sender.register(unique(), PASSWORD)
        await sender.login(sid, PASSWORD)
        mids = []
        for i in range(60):  # ~3 MB: past the kernel's buffers into the outbox
            ack = await sender.request(
                {"msgid": MsgId.ONE_CHAT, "toid": stalled_id, "msg": f"{i:03d}" + "x" * 50_000},
                MsgId.CHAT_ACK,
            )
            mids.append(ack["mid"])
        await sender.close()
    finally:
        await node.stop()  # stalled never read a byte
    stalled.close()

    again = Node(settings)
    await again.start()
    try:
        conn = await ChatConnection.open("127.0.0.1", again.port)
        ack = await conn.login(stalled_id, PASSWORD)
        got = {json.loads(m)["mid"] for m in ack.get("offlinemsg", [])}
        async with asyncio.timeout(20):
            while not set(mids) <= got:
                got.add((await conn.expect(MsgId.ONE_CHAT))["mid"])
        await conn.close()
    finally:
        await again.stop()
