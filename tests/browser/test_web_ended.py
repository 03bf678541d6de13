"""A session the server ends for good, seen from the page: the account logged
in elsewhere (displaced), or an operator kicked or banned it (`clusterchat
admin kick/ban`, run as a process against the node's Redis). The page says
which, forgets its ticket and does not log in again by itself, not even
after a reload. Before, it tried its dead ticket at the reconnect and said
"Your session ended: wrong id or ticket"."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import LoginErr, MsgId
from clusterchat.protocol.replies import KICKED_TEXT
from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, register, web_settings
from tests.helpers import OwnRedis

DISPLACED = (
    "You were logged out: this account logged in elsewhere (another window or device). "
    "Log in again to use it here."
)
KICKED = "You were logged out: an operator ended this session. Log in again with your password."
BANNED = "You were logged out: an operator banned this account."
PREFIX = "ccweb:"


@pytest.fixture
async def redis_node(tmp_path: Path, own_redis: OwnRedis) -> AsyncIterator[Node]:
    """A node on a Redis of the test's own: `admin kick` reaches it there."""
    n = Node(web_settings(tmp_path, redis_url=own_redis.url, redis_prefix=PREFIX))
    await n.start()
    yield n
    await n.stop()


async def admin(node: Node, *args: str) -> str:
    """`clusterchat admin ARGS` as an operator runs it; its standard output."""
    settings = node.settings
    assert settings.redis_url is not None
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "admin", "--db", settings.db_url,
        "--redis", settings.redis_url, "--redis-prefix", settings.redis_prefix, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def logins(page: Page) -> list[dict[str, object]]:
    """Every LOGIN the page sends from now on, on any of its WebSockets."""
    sent: list[dict[str, object]] = []

    def frame(payload: str | bytes) -> None:
        doc = json.loads(payload)
        if doc.get("msgid") == MsgId.LOGIN:
            sent.append(doc)

    page.on("websocket", lambda ws: ws.on("framesent", frame))
    return sent


async def ended_and_not_back(
    page: Page, text: str, uid: int, sent: list[dict[str, object]]
) -> None:
    """The page says ``text`` on its log-in form, with the user id filled in,
    and is connected again without having logged in."""
    await expect(page.locator("#auth")).to_be_visible()
    await expect(page.locator("#auth-error")).to_have_text(text)
    await expect(page.locator("#login-id")).to_have_value(str(uid))
    await expect(page.locator("#app")).to_be_hidden()
    await expect(page.locator("#toast")).to_be_hidden()  # not the session's "Welcome!"
    await page.wait_for_function(
        "() => window.clusterchat?.sock.ready && clusterchat.sock.ws !== window.before"
    )
    # A request's round trip on the new connection: a LOGIN sent at its
    # opening (a ticket login goes first) would be in `sent` by now.
    await page.evaluate("clusterchat.sock.request({msgid: 12})")
    assert sent == [], sent
    await expect(page.locator("#banner")).to_be_hidden()  # not "Disconnected (...)"
    assert await page.evaluate("sessionStorage.getItem('clusterchat.session')") is None
    assert await page.evaluate("clusterchat.sock.ticket") is None


async def test_a_page_displaced_by_a_password_login_says_so_and_stays_out(
    web_node: Node, new_page: NewPage
) -> None:
    page = await new_page(web_node.http.port)
    uid = await register(page, "Ann")
    # The session comes by ticket after a reload: a password login takes it over
    # (one that came with the password is kept: docs/PROTOCOL.md).
    await page.reload()
    await expect(page.locator("#me-id")).to_have_text(f"user id {uid}")
    await page.evaluate("window.before = clusterchat.sock.ws")
    sent = logins(page)

    other = await ChatConnection.open("127.0.0.1", web_node.port)
    try:
        assert (await other.login(uid, "pw"))["errno"] == 0
        await ended_and_not_back(page, DISPLACED, uid, sent)
        # After a reload it still says why, and still does not log in.
        await page.reload()
        await ended_and_not_back(page, DISPLACED, uid, sent)
        # The session that took over was left alone: a PONG, no NOTICE before it.
        await other.request({"msgid": MsgId.PING}, MsgId.PONG)
    finally:
        await other.close()


async def test_a_page_kicked_by_an_operator_says_so_and_logs_in_again(
    redis_node: Node, new_page: NewPage, tmp_path: Path
) -> None:
    page = await new_page(redis_node.http.port)
    uid = await register(page, "Ann Lee")
    await page.evaluate("window.before = clusterchat.sock.ws")
    sent = logins(page)

    assert "session ended" in await admin(redis_node, "kick", str(uid))
    await ended_and_not_back(page, KICKED, uid, sent)
    shot = Path(os.environ.get("CLUSTERCHAT_SHOT_DIR", tmp_path)) / "kicked.png"
    await page.screenshot(path=str(shot))  # CLUSTERCHAT_SHOT_DIR=... keeps it to look at
    assert shot.read_bytes().startswith(b"\x89PNG")
    await page.reload()
    await ended_and_not_back(page, KICKED, uid, sent)

    # Kicked, not banned: the password works (the id is filled in already),
    # and the page forgets what ended the session before.
    await page.fill("#password", "pw")
    await page.click("#auth-submit")
    await expect(page.locator("#me-id")).to_have_text(f"user id {uid}")
    assert [doc.get("password") for doc in sent] == ["pw"]
    await page.reload()  # resumed by its new ticket, not told "logged out" again
    await expect(page.locator("#me-id")).to_have_text(f"user id {uid}")
    await page.click("#logout")
    await expect(page.locator("#auth-error")).to_have_text("")


async def test_a_page_banned_by_an_operator_says_so(redis_node: Node, new_page: NewPage) -> None:
    page = await new_page(redis_node.http.port)
    uid = await register(page, "Bob")
    await page.evaluate("window.before = clusterchat.sock.ws")
    sent = logins(page)

    await admin(redis_node, "ban", str(uid))
    await ended_and_not_back(page, BANNED, uid, sent)
    await page.reload()
    await ended_and_not_back(page, BANNED, uid, sent)
    # Trying the password anyway: the server's refusal, on the same form.
    await page.fill("#password", "pw")
    await page.click("#auth-submit")
    await expect(page.locator("#auth-error")).to_have_text("This account is banned.")
    assert [doc.get("password") for doc in sent] == ["pw"]
    conn = await ChatConnection.open("127.0.0.1", redis_node.port)
    try:
        assert (await conn.login(uid, "pw"))["errno"] == LoginErr.BANNED
    finally:
        await conn.close()


async def test_other_notices_keep_the_session_and_old_nodes_text_is_understood(
    web_node: Node, new_page: NewPage
) -> None:
    """A NOTICE the page does not know ends nothing: its text is shown. One
    with only the text of a final NOTICE (a node from before `event`) ends
    the session as the `event` would."""
    page = await new_page(web_node.http.port)
    uid = await register(page, "Ann")
    push = "doc => clusterchat.sock._receive(JSON.stringify({msgid: 23, ...doc}))"
    await page.evaluate(push, {"text": "maintenance at noon", "event": "future"})
    await expect(page.locator("#toast")).to_have_text("maintenance at noon")
    # A known text under an event the page does not know is that event's, not a kick.
    await page.evaluate(push, {"text": KICKED_TEXT, "event": "future"})
    await expect(page.locator("#toast")).to_have_text(KICKED_TEXT)
    await expect(page.locator("#me-id")).to_have_text(f"user id {uid}")
    assert await page.evaluate("clusterchat.sock.ticket") is not None

    await page.evaluate(push, {"text": KICKED_TEXT})
    await expect(page.locator("#auth-error")).to_have_text(KICKED)
    await expect(page.locator("#login-id")).to_have_value(str(uid))
    assert await page.evaluate("clusterchat.sock.ticket") is None
    assert await page.evaluate("sessionStorage.getItem('clusterchat.session')") is None
