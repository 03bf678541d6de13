"""A client that stops reading is cut off past the output limit; what it was
not sent is stored for its next login; the sender is not held up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique

# The sender's worst wait is bounded: alone, not beside other tests.
pytestmark = pytest.mark.serial

LIMIT = 64 * 1024


@pytest.fixture
async def tight_node(settings: Settings) -> AsyncIterator[Node]:
    # The senders flood on purpose: no flood limit here.
    # One sender fills the stalled reader's mailbox on purpose: no per-sender share.
    limits = Limits(message_rate=0, offline_share=0)
    n = Node(replace(settings, output_limit=LIMIT, limits=limits))
    await n.start()
    yield n
    await n.stop()


async def test_stalled_reader_is_cut_off_and_nothing_is_lost(tight_node: Node) -> None:
    port = tight_node.port
    stalled = await ChatConnection.open("127.0.0.1", port)
    uid = await stalled.register(unique(), PASSWORD)
    assert (await stalled.login(uid, PASSWORD))["errno"] == 0

    sender = await ChatConnection.open("127.0.0.1", port)
    sid = await sender.register(unique(), PASSWORD)
    await sender.login(sid, PASSWORD)
    texts = [f"{i:05d}:" + "x" * 8000 for i in range(1500)]  # 12 MB, past every buffer
    loop = asyncio.get_running_loop()
    worst = 0.0
    for text in texts:
        t0 = loop.time()
        await sender.send({"msgid": 6, "toid": uid, "msg": text})
        ack = await sender.expect(MsgId.CHAT_ACK)
        worst = max(worst, loop.time() - t0)
        assert ack["status"] in ("delivered", "stored")
    assert worst < 1.0  # the sender never waits for the stalled reader

    # The stalled connection was cut off; whatever reached its socket is readable.
    got: list[str] = []
    try:
        while True:
            msg = await stalled.recv(timeout=5)
            got.append(msg["msg"])
    except (ConnectionClosed, ConnectionError):
        pass
    await stalled.close()
    assert len(got) < len(texts), "it was cut off before everything was written"

    again = await ChatConnection.open("127.0.0.1", port)
    async with asyncio.timeout(10):
        while True:  # the cut-off session's logout is processed a moment later
            ack = await again.login(uid, PASSWORD)
            if ack["errno"] == 0:
                break
            await asyncio.sleep(0.05)
    stored = [json.loads(m)["msg"] for m in ack.get("offlinemsg", [])]
    assert stored, "the unsent tail must have been stored"
    async with asyncio.timeout(20):  # past the reply's first page, the rest follows
        while len(set(got) | set(stored)) < len(texts):
            stored.append((await again.expect(MsgId.ONE_CHAT))["msg"])
    assert sorted(set(got) | set(stored)) == texts
    await again.close()
    await sender.close()
