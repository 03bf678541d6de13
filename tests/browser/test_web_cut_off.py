"""The server cuts a web user's receipts connection off of its own accord
(ERROR 187, ``re: null``: more written than the page confirmed) while a chat
of the page's waits for its reply. That ERROR answers no request: the chat
is in doubt, as at any close, not refused (docs/PROTOCOL.md, Receipts)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from playwright.async_api import Page, expect

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits
from clusterchat.protocol.messages import MsgId
from clusterchat.server.core import ConnectionCore
from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, add_friend, register, say, web_settings
from tests.conftest import PASSWORD

#: Messages the page may hold unconfirmed; the burst below is past it, and
#: the page confirms on its one-second timer (or every 64).
WINDOW = 3
BURST = 10


@contextmanager
def store_held(db: Path) -> Iterator[None]:
    """Another writer holds the SQLite file's write lock (as an operator's
    `sqlite3 chat.db` in a transaction would): the node's writes wait for it."""
    other = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def chats_sent(page: Page) -> list[str]:
    """The text of every ONE_CHAT the page sends from now on, on any WebSocket."""
    sent: list[str] = []

    def frame(payload: str | bytes) -> None:
        doc = json.loads(payload)
        if doc.get("msgid") == MsgId.ONE_CHAT:
            sent.append(str(doc.get("msg")))

    page.on("websocket", lambda ws: ws.on("framesent", frame))
    return sent


async def test_a_chat_waiting_when_the_server_cuts_the_page_off_is_in_doubt_not_refused(
    tmp_path: Path, new_page: NewPage
) -> None:
    limits = replace(Limits(), receipt_window=WINDOW)
    node = Node(web_settings(tmp_path, limits=limits, history_days=0))
    await node.start()
    bob = await ChatConnection.open("127.0.0.1", node.port)
    carol = await ChatConnection.open("127.0.0.1", node.port)
    try:
        carol_id = await carol.register("Carol", PASSWORD)  # offline: chats to her are stored
        await carol.close()
        bob_id = await bob.register("Bob", PASSWORD)
        assert (await bob.login(bob_id, PASSWORD))["errno"] == 0
        page = await new_page(node.http.port)
        sent = chats_sent(page)
        ann_id = await register(page, "Ann")
        await add_friend(page, carol_id)  # her conversation is open
        peer = node.service.sessions[ann_id].peer
        assert isinstance(peer, ConnectionCore)

        with store_held(tmp_path / "web.db"):
            await say(page, "in doubt")  # stored for Carol: it waits for the store
            async with asyncio.timeout(10):
                while peer._queue is None:  # noqa: ASYNC110 (the chat is being served)
                    await asyncio.sleep(0.01)
            burst = "".join(
                json.dumps({"msgid": MsgId.ONE_CHAT, "toid": ann_id, "msg": f"b{i}"}) + "\n"
                for i in range(BURST)
            )
            await bob.send_raw(burst.encode())  # past the page's window at once: cut off
            mine = page.locator("#messages .msg.mine .status")
            await expect(mine).to_have_class("status unconfirmed")
            await expect(mine).to_have_text("connection lost before the server confirmed it")
            await expect(page.locator("#toast")).to_have_text(
                "The server closed the connection: Too many messages not acknowledged "
                "(RECEIVED); closing. They are kept for your next login. Reconnecting…"
            )
        # The store is back: the chat is stored for Carol (it had been served;
        # its CHAT_ACK was never written), the page logs in again by ticket
        # and gets what it had not confirmed, each once.
        for _ in range(BURST):
            assert (await bob.expect(MsgId.CHAT_ACK))["errno"] == 0
        await page.locator(f'[data-key="u:{bob_id}"]').click()
        bubbles = page.locator("#messages .msg.theirs .bubble")
        await expect(bubbles).to_have_text([f"b{i}" for i in range(BURST)])
        await expect(page.locator("#banner")).to_be_hidden()
        # A request's round trip on the new connection: a chat sent again
        # at the reconnect would be in `sent` by now.
        await page.evaluate("clusterchat.sock.request({msgid: 12})")
        assert sent == ["in doubt"]
        carol = await ChatConnection.open("127.0.0.1", node.port)
        ack = await carol.login(carol_id, PASSWORD)
        stored = [json.loads(m)["msg"] for m in ack.get("offlinemsg", [])]
        assert stored == ["in doubt"]
    finally:
        await bob.close()
        await carol.close()
        await node.stop()
