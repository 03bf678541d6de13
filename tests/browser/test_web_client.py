"""Two people in two browser pages, a third on the terminal client."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, add_friend, log_in, register, say

DOCS = Path(__file__).resolve().parents[2] / "docs"


async def test_two_pages_befriend_and_chat_both_ways(web_node: Node, new_page: NewPage) -> None:
    port = web_node.http.port
    ann = await new_page(port)
    bob = await new_page(port)
    await register(ann, "Ann Lee")
    bob_id = await register(bob, "Bob Marsh")
    await add_friend(ann, bob_id)

    await say(ann, "Hi Bob! Lunch at noon?")
    mine = ann.locator("#messages .msg.mine").last
    await expect(mine.locator(".bubble")).to_have_text("Hi Bob! Lunch at noon?")
    await expect(mine.locator(".status")).to_have_text("delivered")

    # Bob sees it in the sidebar with an unread count, then opens it.
    ann_entry = bob.locator('[data-key^="u:"]').first
    await expect(ann_entry.locator(".badge")).to_have_text("1")
    await ann_entry.click()
    theirs = bob.locator("#messages .msg.theirs").last
    await expect(theirs.locator(".bubble")).to_have_text("Hi Bob! Lunch at noon?")
    await expect(theirs.locator(".sender")).to_have_text("Ann Lee")
    await expect(ann_entry.locator(".badge")).to_have_count(0)

    # Shift+Enter is a new line, Enter sends.
    await bob.fill("#text", "Sure!")
    await bob.press("#text", "Shift+Enter")
    await bob.type("#text", "See you there")
    await bob.press("#text", "Enter")
    await expect(ann.locator("#messages .msg.theirs .bubble").last).to_have_text(
        "Sure!\nSee you there"
    )
    await expect(bob.locator("#messages .msg.mine .status").last).to_have_text("delivered")
    await say(ann, "Great, I'll book a table for two 🍜")
    await expect(bob.locator("#messages .msg.theirs .bubble").last).to_contain_text("book a table")
    # Friends' live state: Bob shows online in Ann's sidebar.
    await expect(ann.locator(f'[data-key="u:{bob_id}"] .dot.on')).to_have_count(1)
    await ann.screenshot(path=str(DOCS / "web-client.png"))
