"""The web client asks for receipts and acknowledges what it shows: the
server keeps nothing for a page that has it."""

from __future__ import annotations

import asyncio

from playwright.async_api import expect

from clusterchat.server.core import ConnectionCore
from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, add_friend, register, say


async def test_the_page_acknowledges_what_it_received(web_node: Node, new_page: NewPage) -> None:
    port = web_node.http.port
    ann = await new_page(port)
    bob = await new_page(port)
    ann_id = await register(ann, "Ann Lee")
    bob_id = await register(bob, "Bob Marsh")
    await add_friend(ann, bob_id)
    peer = web_node.service.sessions[bob_id].peer
    assert isinstance(peer, ConnectionCore) and peer.outbox is not None  # made at login
    receipts = peer.outbox.receipts
    assert receipts is not None  # asked for at login
    for text in ("one", "two", "three"):
        await say(ann, text)
    await bob.locator(f'[data-key="u:{ann_id}"]').click()
    await expect(bob.locator("#messages .msg.theirs .bubble")).to_have_text(["one", "two", "three"])
    assert await bob.evaluate("clusterchat.sock.seenSeq") >= 3
    async with asyncio.timeout(10):  # the page's one-second timer
        while receipts.count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert receipts.released >= 3
