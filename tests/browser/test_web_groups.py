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
from tests.browser.conftest import NewPage, log_in, web_settings
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
    # A flood limit of 4 at once, 1 a second: the login's lists (friends, the
    # first page of groups, blocked, invitations) take the burst, and the
    # second page of groups is refused (ERROR 170). The page used to drop the
    # whole list then, at every refresh: no group ever showed.
    node = Node(web_settings(tmp_path, limits=Limits(message_rate=1, message_burst=4)))
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
