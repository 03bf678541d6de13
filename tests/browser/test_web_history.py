"""The web client pages a conversation's history in: the last page when it
opens, earlier ones as the reader scrolls up, in time order, none twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.browser.conftest import NewPage, log_in, say, web_settings
from tests.conftest import PASSWORD, unique
from tests.e2e.test_history import reply


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(web_settings(tmp_path, limits=Limits(message_rate=0, registrations_per_address=0)))
    await n.start()
    yield n
    await n.stop()


async def _talked(port: int, n: int) -> tuple[int, int]:
    """Two friends who exchanged ``n`` messages over TCP, then logged out."""
    ann = await ChatConnection.open("127.0.0.1", port)
    bob = await ChatConnection.open("127.0.0.1", port)
    ann_id = await ann.register(unique("ann"), PASSWORD)
    bob_id = await bob.register(unique("bob"), PASSWORD)
    for conn, uid in ((ann, ann_id), (bob, bob_id)):
        assert (await conn.login(uid, PASSWORD))["errno"] == 0
    await ann.request({"msgid": MsgId.ADD_FRIEND, "friendid": bob_id}, MsgId.ADD_FRIEND_ACK)
    for i in range(n):
        sender, to = (ann, bob_id) if i % 3 else (bob, ann_id)
        await sender.send({"msgid": MsgId.ONE_CHAT, "toid": to, "msg": f"m{i}"})
        assert (await reply(sender))["msgid"] == MsgId.CHAT_ACK
    for conn in (ann, bob):
        await conn.close()
    return ann_id, bob_id


async def test_history_loads_on_open_and_more_on_scrolling_up(
    node: Node, new_page: NewPage
) -> None:
    ann_id, bob_id = await _talked(node.port, 120)
    assert node.service.history is not None and await node.service.history.drain(10)
    page = await new_page(node.http.port, height=600)
    await log_in(page, bob_id, PASSWORD)
    await page.click(f'[data-key="u:{ann_id}"]')
    bubbles = page.locator("#messages .msg .bubble")
    await expect(bubbles).to_have_count(50)  # the last page
    await expect(bubbles.last).to_have_text("m119")
    await expect(bubbles.first).to_have_text("m70")
    await expect(page.locator("#history-edge")).to_have_text("Scroll up for earlier messages")
    # Bob's own messages read back from history are his, without a delivery status.
    mine = page.locator("#messages .msg.mine .bubble")
    await expect(mine.last).to_have_text("m117")
    await expect(page.locator("#messages .msg.mine .status")).to_have_count(0)

    messages = page.locator("#messages")
    await messages.evaluate("el => { el.scrollTop = 0; }")
    await expect(bubbles).to_have_count(100)
    await expect(bubbles.first).to_have_text("m20")
    await messages.evaluate("el => { el.scrollTop = 0; }")
    await expect(bubbles).to_have_count(120)
    await expect(page.locator("#history-edge")).to_have_text("Start of the conversation")
    texts = await bubbles.all_text_contents()
    assert texts == [f"m{i}" for i in range(120)]  # time order, none twice

    # A message sent now lands at the bottom once, whatever history holds.
    await say(page, "and a new one")
    await expect(page.locator("#messages .msg.mine .status").last).to_have_text(
        "stored · they get it when they log in"
    )
    await messages.evaluate("el => { el.scrollTop = 0; }")
    await expect(bubbles).to_have_count(121)
    await expect(bubbles.last).to_have_text("and a new one")
