"""A user in more groups than one LIST_GROUPS reply holds (about 4,000
members' worth: docs/PROTOCOL.md, 21/22) sees every one of them in the web
client's sidebar, not only the first page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits
from clusterchat.protocol.messages import ErrCode, ListGroups, MsgId
from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, log_in, register, web_settings
from tests.conftest import PASSWORD, unique
from tests.helpers import big_groups


async def test_every_page_of_groups_is_in_the_sidebar(
    web_node: Node, new_page: NewPage, tmp_path: Path
) -> None:
    conn = await ChatConnection.open("127.0.0.1", web_node.port)
    uid = await conn.register(unique("big"), PASSWORD)
    # 7 groups of 1,000 (--max-group-size's default): the list comes in 3 pages.
    gids = await big_groups(web_node.store, uid, unique("m"), groups=7, members=999)
    login = await conn.login(uid, PASSWORD)
    assert login["more"] == ["groups"] and len(login["groups"]) < 7, login.get("more")
    pages: list[dict[str, Any]] = []
    after = 0
    while not pages or pages[-1].get("more"):
        doc = {"msgid": MsgId.LIST_GROUPS, "after": after}
        pages.append(await conn.request(doc, MsgId.GROUP_LIST))
        after = pages[-1]["groups"][-1]["id"]
    assert len(pages) >= 3 and [g["id"] for p in pages for g in p["groups"]] == gids
    await conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    await conn.close()

    page = await new_page(web_node.http.port)
    await log_in(page, uid, PASSWORD)
    items = page.locator("#groups li.conv")
    await expect(items).to_have_count(7)
    for gid in gids:
        await expect(page.locator(f'[data-key="g:{gid}"] .sub')).to_have_text(
            f"1000 members · #{gid}"
        )
    await page.click(f'[data-key="g:{gids[-1]}"]')  # the last page's group opens, members known
    await expect(page.locator("#conv-sub")).to_have_text(
        f"group #{gids[-1]} · 1000 members, 1 online"
    )
    shot = Path(os.environ.get("CLUSTERCHAT_SHOT_DIR", tmp_path)) / "many-groups.png"
    await page.screenshot(path=str(shot))  # CLUSTERCHAT_SHOT_DIR=... keeps it to look at
    assert shot.read_bytes().startswith(b"\x89PNG")


async def _big_user(node: Node) -> tuple[int, list[int]]:
    """A user in 7 groups of 1,000: a list of 3 pages."""
    conn = await ChatConnection.open("127.0.0.1", node.port)
    uid = await conn.register(unique("big"), PASSWORD)
    await conn.close()
    return uid, await big_groups(node.store, uid, unique("m"), groups=7, members=999)


async def test_a_page_refused_as_too_fast_is_asked_again(tmp_path: Path, new_page: NewPage) -> None:
    # A flood limit of 4 at once, 2 a second: the login's lists (friends,
    # blocked, invitations, and three pages of groups, a token each the first
    # time a list is sent) take the burst, and a page of groups is refused
    # (ERROR 170). The page used to drop the whole list then, at every
    # refresh: no group ever showed.
    node = Node(web_settings(tmp_path, limits=Limits(message_rate=2, message_burst=4)))
    await node.start()
    try:
        uid, gids = await _big_user(node)
        page = await new_page(node.http.port)
        await log_in(page, uid, PASSWORD)
        await expect(page.locator("#groups li.conv")).to_have_count(len(gids))
        refused = node.service.counts.refusals.get(("error", ErrCode.TOO_FAST), 0)
        assert refused > 0, "the limit was never reached: the test shows nothing"
    finally:
        await node.stop()


async def test_a_long_group_list_is_not_read_again_every_five_seconds(
    web_node: Node, new_page: NewPage
) -> None:
    uid, gids = await _big_user(web_node)
    page = await new_page(web_node.http.port)
    await log_in(page, uid, PASSWORD)
    await expect(page.locator("#groups li.conv")).to_have_count(len(gids))
    requests = web_node.service.counts.requests
    listed = requests.get(ListGroups, 0)
    assert listed >= 3  # the whole list, 3 pages
    # The friends' refresh runs every 5 s; the list of 3 pages is due every 12.5 s.
    await page.wait_for_timeout(11_000)
    assert requests.get(ListGroups, 0) - listed <= 3, "the 3 pages were read again at each 5 s tick"


async def test_the_member_panel_is_drawn_again_only_when_members_change(
    web_node: Node, new_page: NewPage
) -> None:
    """Every message redraws the sidebar and the conversation's head; the
    member panel was built again from the whole member list each time (1,000
    list items a message in a big group). It is now drawn only when the
    members or their presence change, and still is then."""
    page = await new_page(web_node.http.port)
    await register(page, "Ann")
    await page.click("#group-btn")
    await page.fill("#group-name", unique("g"))
    await page.click("#create-group button")
    group = page.locator('#groups [data-key^="g:"]')
    await expect(group).to_have_count(1)
    gid = int((await group.get_attribute("data-key") or "g:0")[2:])

    bob = await ChatConnection.open("127.0.0.1", web_node.port)
    name = unique("bob")
    bob_id = await bob.register(name, PASSWORD)
    assert (await bob.login(bob_id, PASSWORD))["errno"] == 0
    await bob.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await group.click()
    await page.click("#members-btn")
    row = page.locator("#member-list .member", has_text=name)
    await expect(row.locator(".dot.on")).to_have_count(1)  # at the page's next refresh
    await expect(page.locator("#conv-sub")).to_have_text(f"group #{gid} · 2 members, 2 online")

    await page.evaluate("window.drawnRow = document.querySelector('#member-list .member')")
    for n in range(5):
        doc = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": f"message {n}"}
        await bob.request(doc, MsgId.CHAT_ACK)
    await expect(page.locator("#messages .msg.theirs .bubble")).to_have_count(5)
    same = "document.querySelector('#member-list .member') === window.drawnRow"
    assert await page.evaluate(same), "the member panel was built again for a message"

    # Bob leaves: the next refresh reads him offline, and the panel says so.
    await bob.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    await bob.close()
    await expect(row.locator(".dot.off")).to_have_count(1)
    await expect(page.locator("#conv-sub")).to_have_text(f"group #{gid} · 2 members, 1 online")
    assert not await page.evaluate(same)
