"""A node SIGKILLed before a client with receipts confirmed the offline
messages its login gave it: they come again at the next login. Before,
a login's rows were deleted once written to the connection, and the kill
lost them (a double fault: they were stored because the user was away)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.storage.tables import offlinemessage
from tests.conftest import PASSWORD, unique
from tests.e2e.test_process import server_process
from tests.e2e.test_receipts import arrivals, send_chats

#: More than the login reply carries with receipts (100): the rest is pushed.
SENT = 150
CONFIRMED = 30


async def silent_login(port: int, uid: int) -> tuple[asyncio.StreamWriter, list[dict[str, Any]]]:
    """Log in with receipts, read every offline message, confirm none
    (ChatConnection would, on its own)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    login = {"msgid": MsgId.LOGIN, "id": uid, "password": PASSWORD, "receipts": True}
    writer.write(json.dumps(login).encode() + b"\n")
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while len(got) < SENT:
            doc = json.loads(await reader.readline())
            if doc["msgid"] == MsgId.LOGIN_ACK:
                assert doc["errno"] == 0 and doc["receipts"] is True, doc
                got += [json.loads(m) for m in doc.get("offlinemsg", ())]
            elif doc["msgid"] == MsgId.ONE_CHAT:
                got.append(doc)
    return writer, got


async def stored_for(db_url: str, uid: int) -> int:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            mine = or_(offlinemessage.c.userid == uid, offlinemessage.c.userid == -uid)
            q = select(func.count()).select_from(offlinemessage).where(mine)
            return int((await conn.execute(q)).scalar_one())
    finally:
        await engine.dispose()


async def test_unconfirmed_offline_messages_survive_a_kill_of_the_node(db_url: str) -> None:
    args = ("--port", "0", "--db", db_url, "--message-rate", "0")
    async with server_process(*args) as (proc, port, _):
        sender = await ChatConnection.open("127.0.0.1", port)
        uid = await sender.register(unique(), PASSWORD)  # the receiver, away
        sid = await sender.register(unique(), PASSWORD)
        assert (await sender.login(sid, PASSWORD))["errno"] == 0
        mids = await send_chats(sender, uid, [f"while away {i}" for i in range(SENT)])
        writer, got = await silent_login(port, uid)
        assert [m["mid"] for m in got] == mids
        # Some confirmed: their rows go (the receipt deletes them)...
        writer.write(json.dumps({"msgid": MsgId.RECEIVED, "seq": CONFIRMED}).encode() + b"\n")
        async with asyncio.timeout(10):
            while await stored_for(db_url, uid) != SENT - CONFIRMED:  # noqa: ASYNC110 - a table, polled
                await asyncio.sleep(0.05)
        proc.kill()  # ...and the node dies before the rest are
        await proc.wait()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await sender.close()
    async with server_process(*args) as (proc, port, _):
        again = await ChatConnection.open("127.0.0.1", port)
        ack = await again.login(uid, PASSWORD, receipts=True)
        assert ack["errno"] == 0
        back = await arrivals(again, ack, SENT - CONFIRMED)
        assert [m["mid"] for m in back] == mids[CONFIRMED:]  # all of them, in order
        await again.received(SENT - CONFIRMED)
        await again.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
        assert await stored_for(db_url, uid) == 0  # confirmed, then gone
        await again.close()
