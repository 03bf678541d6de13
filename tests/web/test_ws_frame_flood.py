"""Frames that are no request (pings, pongs, fragments) cost a flood token
each: a peer sending them past the limit regardless is closed (1008), not
served at the cost of everyone else on the node."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import CloseCode, Frame, Opcode

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique
from tests.web.conftest import WsChat

FRAMES = 200_000


@pytest.mark.parametrize(
    ("first", "frame"),
    [
        (b"", Frame(Opcode.PING, b"").serialize(mask=True)),
        # A message begun, then empty continuation frames, never ending.
        (
            Frame(Opcode.TEXT, b"{", fin=False).serialize(mask=True),
            Frame(Opcode.CONT, b"", fin=False).serialize(mask=True),
        ),
    ],
    ids=["pings", "fragments"],
)
async def test_frames_past_the_flood_limit_close_the_connection(
    ws_node: Node, first: bytes, frame: bytes
) -> None:
    # Before: 1.3 million empty pings (or 1.5 million empty continuation
    # frames) in 5 s from one connection, never logged in, took 5 s of the
    # node's CPU and made its loop 5-7 s late: every user waited, new
    # connections were refused as the node shed load.
    bystander = await ChatConnection.open("127.0.0.1", ws_node.port)
    uid = await bystander.register(unique(), PASSWORD)
    assert (await bystander.login(uid, PASSWORD))["errno"] == 0
    web = await WsChat.open_ws(ws_node.http.port)
    transport = web.ws.transport
    transport.write(first)
    sent = 0
    while sent < FRAMES and not transport.is_closing():
        transport.write(frame * 10_000)
        sent += 10_000
        await asyncio.sleep(0)
    await asyncio.wait_for(web.ws.wait_closed(), 10)
    assert web.ws.close_code == CloseCode.POLICY_VIOLATION, web.ws.close_code
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await bystander.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    assert loop.time() - started < 1.0
    await bystander.close()
