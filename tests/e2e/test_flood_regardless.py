"""A client that goes on sending past the flood limit, whatever it is told,
is closed: refusing each request costs the node what serving it would."""

from __future__ import annotations

import asyncio

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique

BURST = 50  # the default --message-rate 20,50


@pytest.mark.parametrize("logged_in", [False, True])
async def test_requests_past_the_limit_regardless_close_the_connection(
    node: Node, logged_in: bool
) -> None:
    # Before: 20,000 pipelined PINGs got 20,000 replies (50 PONGs, the rest
    # ERROR 170); one connection doing that without pause held a core and
    # made the node's loop 4-5 s late for everyone (a bystander's PING took
    # 4.3 s).
    flooder = await ChatConnection.open("127.0.0.1", node.port)
    if logged_in:
        uid = await flooder.register(unique(), PASSWORD)
        assert (await flooder.login(uid, PASSWORD))["errno"] == 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    await flooder.send_raw(b'{"msgid":12}\n' * 20_000)
    replies = []
    with pytest.raises(ConnectionClosed):
        while True:
            replies.append(await flooder.recv())
    took = loop.time() - started
    *answered, last = replies
    assert len(answered) <= 2 * BURST + 20 * took + 2, (len(answered), took)
    assert last["errno"] == ErrCode.TOO_FAST and last["errmsg"].endswith("regardless; closing")
    refused = [r for r in answered if r["msgid"] == MsgId.ERROR]
    assert refused and all(r["errno"] == ErrCode.TOO_FAST for r in refused)


async def test_a_client_that_waits_as_told_is_served(node: Node) -> None:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    uid = await conn.register(unique(), PASSWORD)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    await conn.send_raw(b'{"msgid":12}\n' * (BURST + 10))
    replies = [await conn.recv() for _ in range(BURST + 10)]
    refused = [r for r in replies if r["msgid"] == MsgId.ERROR]
    assert len(refused) >= 5
    told = float(refused[-1]["errmsg"].rsplit("retry in ", 1)[1].split()[0])
    await asyncio.sleep(told)
    assert (await conn.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    await conn.close()
