"""A user in more groups than one LIST_GROUPS reply holds (about 4,000
members' worth: docs/PROTOCOL.md, 21/22) sees every one of them in the web
client's sidebar, not only the first page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, log_in
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
