"""Receipts over WebSocket: a browser whose network vanishes without a close
gets, at its next login, everything it had not acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.config import Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, unique
from tests.e2e.test_receipts import arrivals, chats, gone, logged_in, send_chats
from tests.helpers import StallingProxy
from tests.web.conftest import WsChat


@pytest.fixture
async def rnode(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, http_port=0, limits=replace(settings.limits, receipt_timeout=1.0)))
    await n.start()
    yield n
    await n.stop()


async def test_a_browser_that_vanishes_gets_what_it_did_not_acknowledge(rnode: Node) -> None:
    assert rnode.http.port
    sender = await logged_in(rnode.port)
    proxy = StallingProxy(rnode.http.port)
    await proxy.start()
    web = await WsChat.open_ws(proxy.port, ping_interval=None)
    uid = await web.register(unique(), PASSWORD)
    ack = await web.login(uid, PASSWORD, receipts=True)
    assert ack["errno"] == 0 and ack["receipts"] is True
    try:
        before = await send_chats(sender, uid, ["one", "two", "three"])
        got = await chats(web, 3)
        assert [(m["mid"], m["seq"]) for m in got] == list(zip(before, [1, 2, 3], strict=True))
        await web.received(1)
        await web.request({"msgid": MsgId.PING}, MsgId.PONG)
        proxy.stall()
        after = await send_chats(sender, uid, [f"after {i}" for i in range(5)])
        await gone(rnode, uid)
    finally:
        await proxy.close()
    again = await WsChat.open_ws(rnode.http.port)
    ack = await again.login(uid, PASSWORD, receipts=True)
    got = await arrivals(again, ack, 2 + 5)
    assert [m["mid"] for m in got] == before[1:] + after
    for c in (sender, again):
        await c.close()
    await web.abort()
