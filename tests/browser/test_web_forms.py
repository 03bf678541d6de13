"""The page as a newcomer meets it: a name typed where the id goes, a wrong
password, a group of one, friends' presence while the server is down, a
conversation on a server that keeps no history."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import expect

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from clusterchat.server.websocket import WsConnection
from tests.browser.conftest import NewPage, add_friend, register, web_settings
from tests.conftest import PASSWORD, unique


async def test_a_name_in_the_id_field_is_explained_and_does_not_block_registering(
    web_node: Node, new_page: NewPage
) -> None:
    page = await new_page(web_node.http.port)
    await page.fill("#login-id", "ann")  # a newcomer's guess: their name
    await page.fill("#password", "pw")
    await page.click("#auth-submit")
    await expect(page.locator("#auth-error")).to_have_text("Your user id is a number.")
    # The hidden id field, still holding "ann", did block the Create account
    # button (the browser's own check of a field nobody could see).
    uid = await register(page, unique("ann"))
    assert uid > 0


async def test_a_wrong_password_is_said_as_a_sentence(web_node: Node, new_page: NewPage) -> None:
    conn = await ChatConnection.open("127.0.0.1", web_node.port)
    uid = await conn.register(unique("bob"), PASSWORD)
    await conn.close()
    page = await new_page(web_node.http.port)
    await page.fill("#login-id", str(uid))
    await page.fill("#password", "not the password")
    await page.click("#auth-submit")
    await expect(page.locator("#auth-error")).to_have_text("Wrong id or password.")
    await expect(page.locator("#auth")).to_be_visible()


async def test_a_group_of_one_has_one_member(web_node: Node, new_page: NewPage) -> None:
    page = await new_page(web_node.http.port)
    await register(page, unique("cat"))
    # Before any group, the list says how to get one (it said only "No groups yet.").
    await expect(page.locator("#groups-empty")).to_have_text(
        "No groups yet. Create one, or join one by its id, with +."
    )
    await page.click("#group-btn")
    await page.fill("#group-name", "Solo")
    await page.press("#group-name", "Enter")
    item = page.locator("#groups li.conv", has_text="Solo")
    await expect(item.locator(".sub")).to_have_text(re.compile(r"^1 member · #\d+$"))
    await item.click()
    await expect(page.locator("#conv-sub")).to_have_text(re.compile(r"· 1 member, 1 online$"))


async def test_presence_is_not_claimed_while_disconnected(
    tmp_path: Path, new_page: NewPage
) -> None:
    node = Node(web_settings(tmp_path))
    await node.start()
    try:
        ann = await new_page(node.http.port)
        ann_id = await register(ann, unique("ann"))
        bob = await new_page(node.http.port)
        await register(bob, unique("bob"))
        await add_friend(bob, ann_id)
        item = bob.locator(f'[data-key="u:{ann_id}"]')
        await expect(item.locator(".sub")).to_have_text("online")
        await item.click()
        await expect(bob.locator("#conv-sub")).to_have_text("online")
        # The connections drop with no word from the node (a node that was
        # stopped says so first: test_web_client.py, the restart), and new
        # ones are not taken.
        node.http.close()
        for conn in list(node.connections):
            if isinstance(conn, WsConnection) and conn.transport is not None:
                conn.transport.abort()
        await expect(bob.locator("#banner")).to_contain_text("Disconnected")
        # Whether ann is still there nobody knows now: the page said "online".
        await expect(item.locator(".sub")).to_have_text("not connected")
        await expect(item.locator(".dot")).to_have_class("dot off")
        await expect(bob.locator("#conv-sub")).to_have_text("not connected")
    finally:
        await node.stop()


async def test_a_server_without_history_says_so_atop_a_conversation(
    tmp_path: Path, new_page: NewPage
) -> None:
    node = Node(web_settings(tmp_path, history_days=0))
    await node.start()
    try:
        ann = await new_page(node.http.port)
        ann_id = await register(ann, unique("ann"))
        bob = await new_page(node.http.port)
        await register(bob, unique("bob"))
        await add_friend(bob, ann_id)
        await bob.click(f'[data-key="u:{ann_id}"]')
        # It said "Start of the conversation", of friends who had talked for years.
        await expect(bob.locator("#history-edge")).to_have_text("This server keeps no history.")
    finally:
        await node.stop()


async def test_a_refusal_is_readable_white_on_red(web_node: Node, new_page: NewPage) -> None:
    """An error toast ("No group has id 999.") was red text on a red
    background: `.error` (the log-in form's red text) came after `.toast` in
    the style sheet and set its colour too. Every refusal a web user met was
    an empty red box (seen on a screenshot, following the README)."""
    page = await new_page(web_node.http.port)
    await register(page, unique("ann"))
    await page.locator("#toast").evaluate("t => { t.hidden = true; }")  # the "Welcome!"
    await page.click("#group-btn")
    await page.fill("#join-id", "999999")
    await page.press("#join-id", "Enter")
    toast = page.locator("#toast.error")
    await expect(toast).to_have_text("No group has id 999999.")
    colour, background = await toast.evaluate(
        "t => [getComputedStyle(t).color, getComputedStyle(t).backgroundColor]"
    )
    assert (colour, background) == ("rgb(255, 255, 255)", "rgb(229, 72, 77)")


async def test_a_long_last_message_does_not_widen_the_list_on_a_phone(
    web_node: Node, new_page: NewPage
) -> None:
    """On a phone-sized window the list is the one column; a friend's last
    message, shown under their name, is cut with an ellipsis as on a wide
    window. The column used to grow to the whole line's width: Log out, the
    + buttons and the unread badges were pushed off the right edge (seen on
    a screenshot at 390 px after a long group message)."""
    ann = await new_page(web_node.http.port, width=390, height=760)
    ann_id = await register(ann, unique("ann"))
    conn = await ChatConnection.open("127.0.0.1", web_node.port)
    bob_id = await conn.register(unique("bob"), PASSWORD)
    assert (await conn.login(bob_id, PASSWORD))["errno"] == 0
    await ann.click("#add-friend-btn")
    await ann.fill("#friend-id", str(bob_id))
    await ann.press("#friend-id", "Enter")
    await ann.click("#back")  # adding opened the conversation, which takes the screen
    long = "lorem ipsum dolor sit amet " * 12
    await conn.send({"msgid": MsgId.ONE_CHAT, "toid": ann_id, "msg": long})
    entry = ann.locator(f'[data-key="u:{bob_id}"]')
    await expect(entry.locator(".badge")).to_have_text("1")
    overflow = await ann.evaluate("() => document.documentElement.scrollWidth - innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the window"
    for selector in ("#logout", "#add-friend-btn", f'[data-key="u:{bob_id}"] .badge'):
        box = await ann.locator(selector).bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390, (selector, box)
    await conn.close()


async def test_what_you_type_in_the_log_in_form_is_in_the_text_colour(
    web_node: Node, new_page: NewPage
) -> None:
    """The id and password fields sit inside their labels and took the
    labels' muted grey, bold: a typed id looked like a placeholder (seen on
    a screenshot following the README). They are in the text colour now."""
    page = await new_page(web_node.http.port)
    await page.fill("#login-id", "42")
    for field in ("#login-id", "#password", "#reg-name"):
        colour, weight = await page.locator(field).evaluate(
            "f => [getComputedStyle(f).color, getComputedStyle(f).fontWeight]"
        )
        assert (colour, weight) == ("rgb(29, 32, 48)", "400"), field


async def test_a_toast_on_a_phone_is_not_squeezed_into_half_the_window(
    web_node: Node, new_page: NewPage
) -> None:
    """Placed from the window's middle, a toast could only take the other
    half: "Welcome! Your user id is 1: you log in with it." ran over three
    narrow lines on a 390 px window (seen on a screenshot)."""
    page = await new_page(web_node.http.port, width=390, height=700)
    await register(page, unique("ann"))
    toast = page.locator("#toast")
    await expect(toast).to_contain_text("Welcome!")
    box = await toast.bounding_box()
    assert box is not None and box["width"] > 300, box
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
