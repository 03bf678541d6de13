"""Two people in two browser pages, a third on the terminal client."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from playwright.async_api import expect

from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, add_friend, log_in, register, say
from tests.client.conftest import Scripted, scripted
from tests.client.test_scripted import registered

__all__ = ["scripted"]  # the terminal-client fixture, shared

DOCS = Path(__file__).resolve().parents[2] / "docs"


async def test_two_pages_befriend_and_chat_both_ways(web_node: Node, new_page: NewPage) -> None:
    port = web_node.http.port
    ann = await new_page(port)
    bob = await new_page(port)
    ann_id = await register(ann, "Ann Lee")
    bob_id = await register(bob, "Bob Marsh")
    await add_friend(ann, bob_id)
    # Bob is told at once (FRIEND_ADDED) and has Ann in his list before any message.
    await expect(bob.locator("#toast")).to_have_text("Ann Lee added you as a friend")
    await expect(bob.locator(f'[data-key="u:{ann_id}"]')).to_be_visible()

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
    # Delivery is at least once: the same message again (same mid) is not shown twice.
    mid = await bob.evaluate(
        "[...clusterchat.state.convs.values()].flatMap(c => c.messages).at(-1).mid"
    )
    assert isinstance(mid, str) and mid
    push = """([id, msg, mid]) => clusterchat.sock._receive(JSON.stringify(
        {msgid: 6, id, name: "Ann Lee", toid: 0, msg, ts: Date.now(), mid}))"""
    await bob.evaluate(push, [ann_id, "Hi Bob! Lunch at noon?", mid])
    await bob.evaluate(push, [ann_id, "a new one", "x-1"])
    await expect(bob.locator("#messages .msg.theirs .bubble")).to_have_text(
        ["Hi Bob! Lunch at noon?", "a new one"]
    )

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


async def test_group_with_a_terminal_client_user(
    web_node: Node, new_page: NewPage, scripted: list[Scripted], tmp_path: Path
) -> None:
    port = web_node.http.port
    ann = await new_page(port, width=1000, height=620)
    bob = await new_page(port)
    ann_id = await register(ann, "Ann Lee")
    bob_id = await register(bob, "Bob Marsh")
    await add_friend(ann, bob_id)

    await ann.click("#group-btn")
    await ann.fill("#group-name", "Weekend trip")
    await ann.fill("#group-desc", "Mountains or the sea?")
    await ann.click("#create-group button")
    group = ann.locator('#groups [data-key^="g:"]')
    await expect(group).to_have_count(1)
    gid = int((await group.get_attribute("data-key") or "g:0")[2:])

    await bob.click("#group-btn")
    await bob.fill("#join-id", str(gid))
    await bob.press("#join-id", "Enter")
    await expect(bob.locator("#conv-title")).to_have_text("Weekend trip")

    carol, carol_id = await registered(web_node.port, "carol", scripted)
    await carol.say(f"/join {gid}")
    await carol.expect(rf"Joined group Weekend trip \(#{gid}\)\.")

    await ann.locator(f'[data-key="g:{gid}"]').click()
    await say(ann, "Mountains! Who's in?")
    await expect(ann.locator("#messages .msg.mine .status").last).to_have_text("sent")
    await expect(bob.locator("#messages .msg.theirs .bubble").last).to_have_text(
        "Mountains! Who's in?"
    )
    await carol.expect(rf"\[group {gid}\] Ann Lee \(#{ann_id}\): Mountains! Who's in\?$")

    await carol.say(f"groupchat:{gid}:I'm in, I'll bring the tent")
    for page in (ann, bob):
        last = page.locator("#messages .msg.theirs").last
        await expect(last.locator(".bubble")).to_have_text("I'm in, I'll bring the tent")
        await expect(last.locator(".sender")).to_have_text("carol")
    await say(bob, "Count me in too 🏔️")
    await expect(ann.locator("#messages .msg.theirs .bubble").last).to_have_text(
        "Count me in too 🏔️"
    )
    await carol.expect(rf"Bob Marsh \(#{bob_id}\): Count me in too")
    await say(ann, "Perfect. Saturday 8:00 at the station?\nI'll get the train tickets.")
    await carol.expect(r"Perfect\. Saturday")
    await carol.say(f"groupchat:{gid}:Works for me 👍")
    await expect(ann.locator("#messages .msg.theirs .bubble").last).to_have_text("Works for me 👍")

    # Members: all three, Ann the creator, each with their online state.
    await ann.click("#members-btn")
    members = ann.locator("#member-list .member")
    await expect(members).to_have_count(3)
    await expect(
        ann.locator("#member-list .member", has_text="Ann Lee").locator(".role")
    ).to_have_text("creator")
    await expect(
        ann.locator("#member-list .member", has_text="carol").locator(".dot.on")
    ).to_have_count(1)
    await expect(ann.locator("#conv-sub")).to_have_text(f"group #{gid} · 3 members, 3 online")
    assert carol_id > 0
    await ann.click("#members-btn")
    await ann.locator("#toast").evaluate("t => { t.hidden = true; }")  # not in the picture
    # The README's picture: `CLUSTERCHAT_SCREENSHOT=1 pytest tests/browser -k group` renews it.
    shot = (
        DOCS / "web-client.png" if os.environ.get("CLUSTERCHAT_SCREENSHOT") else tmp_path / "s.png"
    )
    await ann.screenshot(path=str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG")


async def test_message_to_an_offline_user_shown_at_their_next_login(
    web_node: Node, new_page: NewPage
) -> None:
    port = web_node.http.port
    ann = await new_page(port)
    bob = await new_page(port, width=390, height=760)  # a phone
    await register(ann, "Ann")
    bob_id = await register(bob, "Bob")
    await add_friend(ann, bob_id)
    await bob.click("#logout")
    await expect(bob.locator("#auth")).to_be_visible()
    await expect(ann.locator(f'[data-key="u:{bob_id}"] .dot.off')).to_have_count(1)

    await say(ann, "Call me when you're back")
    await expect(ann.locator("#messages .msg.mine .status").last).to_contain_text("stored")

    await log_in(bob, bob_id)
    entry = bob.locator('#friends [data-key^="u:"]').first
    await expect(entry.locator(".badge")).to_have_text("1")
    await entry.click()
    await expect(bob.locator("#messages .msg.theirs .bubble")).to_have_text(
        ["Call me when you're back"]
    )
    # A reload keeps the session (its ticket is in the tab's sessionStorage).
    await bob.reload()
    await expect(bob.locator("#me-id")).to_have_text(f"user id {bob_id}")
    await bob.locator('#friends [data-key^="u:"]').first.click()
    # On a phone the conversation takes the screen; "back" shows the list again.
    await expect(bob.locator("#sidebar")).to_be_hidden()
    await bob.click("#back")
    await expect(bob.locator("#sidebar")).to_be_visible()
    await expect(bob.locator("#pane")).to_be_hidden()


async def test_reconnects_with_its_ticket_after_the_node_restarts(
    web_node: Node, new_page: NewPage, tmp_path: Path
) -> None:
    port, http_port = web_node.port, web_node.http.port
    ann = await new_page(http_port)
    bob = await new_page(http_port)
    await register(ann, "Ann")
    bob_id = await register(bob, "Bob")
    await add_friend(ann, bob_id)
    await say(ann, "before the restart")
    await expect(bob.locator('[data-key^="u:"] .badge')).to_have_text("1")

    await web_node.stop()
    # The node said it was shutting down: the page, which reconnects by
    # itself, says that calmly, not the node's "reconnect to carry on".
    for page in (ann, bob):
        await expect(page.locator("#banner")).to_have_text("Server restarting, reconnecting…")
        await expect(page.locator("#banner")).to_have_class("banner info")
        await expect(page.locator("#toast")).not_to_contain_text("reconnect to carry on")
    restarted = Node(replace(web_node.settings, port=port, http_port=http_port))
    await restarted.start()
    try:
        for page in (ann, bob):
            await expect(page.locator("#banner")).to_be_hidden()
            await expect(page.locator("#me-id")).to_be_visible()
        await say(ann, "after the restart")
        await expect(ann.locator("#messages .msg.mine .status").last).to_have_text("delivered")
        await bob.locator('[data-key^="u:"]').first.click()
        await expect(bob.locator("#messages .msg.theirs .bubble")).to_have_text(
            ["before the restart", "after the restart"]
        )
    finally:
        await restarted.stop()


async def test_markup_from_others_is_shown_as_text(web_node: Node, new_page: NewPage) -> None:
    port = web_node.http.port
    ann = await new_page(port)
    bob = await new_page(port)
    evil = "<img src=x onerror=alert(1)>"
    ann_id = await register(ann, "<b>Eve</b>")
    bob_id = await register(bob, "Bob")
    await add_friend(ann, bob_id)
    await say(ann, evil)
    entry = bob.locator(f'[data-key="u:{ann_id}"]')
    await expect(entry.locator(".name")).to_have_text("<b>Eve</b>")
    await entry.click()
    await expect(bob.locator("#messages .msg.theirs .bubble")).to_have_text([evil])
    await expect(bob.locator("#messages .msg.theirs .sender")).to_have_text(["<b>Eve</b>"])
    assert await bob.locator("#messages img, #messages b, #friends b").count() == 0
    # The page is still alive: the XSS did not run (a dialog would fail the test).
    await say(bob, "nice try")
    await expect(ann.locator("#messages .msg.theirs .bubble")).to_have_text(["nice try"])
