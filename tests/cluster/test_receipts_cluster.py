"""Receipts across nodes, through nginx: the receiver's node keeps what it
pushed until acknowledged, whichever node the sender is on; a receiver
that vanishes silently gets the rest at its next login, on either node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.protocol.messages import MsgId
from tests.cluster.conftest import Cluster, receipts_user_via, running_cluster
from tests.conftest import PASSWORD
from tests.e2e.test_receipts import arrivals, chats, send_chats
from tests.helpers import StallingProxy


@pytest.fixture
async def rcluster(
    tmp_path: Path, mariadb_url: str, shared_redis: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("CLUSTERCHAT_RECEIPT_TIMEOUT", "1")  # the nodes read it at start
    async with running_cluster(tmp_path, mariadb_url, shared_redis) as c:
        yield c


async def test_a_receiver_on_another_node_that_vanishes_loses_nothing(rcluster: Cluster) -> None:
    sender = (await rcluster.user_on("node0")).conn
    proxy = StallingProxy(rcluster.port)
    await proxy.start()
    phone, uid = await receipts_user_via(proxy.port, "node1")
    try:
        before = await send_chats(sender, uid, ["one", "two", "three"])
        assert [m["mid"] for m in await chats(phone, 3)] == before  # via Redis
        await phone.received(1)
        await phone.request({"msgid": MsgId.PING}, MsgId.PONG)
        proxy.stall()
        after = await send_chats(sender, uid, [f"after {i}" for i in range(4)])
        async with asyncio.timeout(20):  # declared dead, stored, and offline
            while await rcluster.holder_of(uid) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        await proxy.close()
        await phone.abort()
    again, _ = await rcluster.connect()
    ack = await again.login(uid, PASSWORD, receipts=True)
    got = await arrivals(again, ack, 2 + 4)
    assert [m["mid"] for m in got] == before[1:] + after
