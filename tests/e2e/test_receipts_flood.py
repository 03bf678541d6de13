"""RECEIVED is never refused by the flood limit while it acknowledges
something; one that acknowledges nothing new, or is wrong (ERROR 185/188),
costs a token, and a client sending them regardless is closed."""

from __future__ import annotations

import asyncio

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique

BURST = 50  # the default --message-rate 20,50


async def _logged_in(node: Node, receipts: bool) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    uid = await conn.register(unique(), PASSWORD)
    assert (await conn.login(uid, PASSWORD, receipts=receipts))["errno"] == 0
    return conn, uid


@pytest.mark.parametrize("receipts", [False, True])
async def test_receipts_that_do_nothing_regardless_close_the_connection(
    node: Node, receipts: bool
) -> None:
    # Before: 430,000 wrong RECEIVEDs (receipts off: ERROR 188 each) or 1.1
    # million repeating a number already acknowledged (no reply) in 4 s from
    # one connection: the node's loop 2-4 s late for everyone.
    conn, _ = await _logged_in(node, receipts)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await conn.send_raw(b'{"msgid":63,"seq":0}\n' * 20_000)
    replies = []
    with pytest.raises(ConnectionClosed):
        while True:
            replies.append(await conn.recv())
    took = loop.time() - started
    *told, last = replies
    assert len(told) <= 2 * BURST + 20 * took + 2, (len(told), took)
    assert all(r["errno"] == ErrCode.RECEIPTS_OFF for r in told) and (told or receipts)
    assert last["errno"] == ErrCode.TOO_FAST and last["errmsg"].endswith("closing"), last


async def test_receipts_that_acknowledge_are_free(node: Node) -> None:
    sender, _ = await _logged_in(node, receipts=False)
    receiver, rid = await _logged_in(node, receipts=True)
    count = 40
    for n in range(count):
        await sender.request({"msgid": MsgId.ONE_CHAT, "toid": rid, "msg": f"m{n}"}, MsgId.CHAT_ACK)
        got = await receiver.expect(MsgId.ONE_CHAT)
        await receiver.received(got["seq"])  # each one acknowledges something new
    # None of them took a token: the whole burst is still there.
    await receiver.send_raw(b'{"msgid":12}\n' * BURST)
    replies = [await receiver.recv() for _ in range(BURST)]
    assert all(r["msgid"] == MsgId.PONG for r in replies), replies
    for c in (sender, receiver):
        await c.close()
