"""Events someone else causes must not spend the page's own flood allowance.

The page refreshes its lists (friends, groups, blocked, invitations) when a
FRIEND_EVENT or GROUP_EVENT arrives, and anyone may cause those for anyone:
an admin of any group may INVITE any user, again and again; anyone may
add a user as a friend and remove them again (with --rejoin-after 0: it
waits otherwise). One attacker doing either at
15 requests a second (under its own limit, never refused) made the
victim's page send a refresh (3 requests) per event: past the victim's own
--message-rate its chats were refused ERROR 170 (6 of its 9 lines never
reached their reader). The page now refreshes at most once a second for
events, and the server tells an invitee once per open invitation (a
repeated INVITE changes nothing and pushes nothing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits
from clusterchat.protocol.messages import ErrCode, ListInvites, MsgId
from clusterchat.server.node import Node
from clusterchat.server.websocket import WsConnection
from tests.browser.conftest import NewPage, add_friend, register, say, web_settings
from tests.conftest import PASSWORD, unique

ATTACK_SECONDS = 4.0
#: Under the default --message-rate (20 a second): the attacker is never refused.
PER_SECOND = 15


async def _flood(eve: ChatConnection, requests: list[dict[str, Any]]) -> int:
    """Send ``requests`` in turn, paced under eve's own limit, for
    ATTACK_SECONDS; returns how many were done."""
    done = 0
    end = time.monotonic() + ATTACK_SECONDS
    while time.monotonic() < end:
        doc = requests[done % len(requests)]
        want = MsgId.ADD_FRIEND_ACK if doc["msgid"] == MsgId.ADD_FRIEND else MsgId.DONE
        reply = await eve.request(doc, want)
        assert reply.get("errno", 0) == 0, reply
        done += 1
        await asyncio.sleep(1 / PER_SECOND)
    return done


def _socket_of(node: Node, uid: int) -> WsConnection | None:
    for conn in node.connections:
        if isinstance(conn, WsConnection) and conn.session.uid == uid:
            return conn
    return None


@pytest.fixture(params=["invite", "friend"])
async def how(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Node]]:
    """The way events are caused, and the node. Befriending again waits
    --rejoin-after now (tests/e2e/test_group_churn.py::test_befriending_again_waits);
    the friend loop runs with it off, to show the page's own part."""
    limits = Limits(rejoin_after=0.0) if request.param == "friend" else Limits()
    n = Node(web_settings(tmp_path, limits=limits))
    await n.start()
    yield request.param, n
    await n.stop()


async def test_others_events_do_not_spend_the_pages_flood_allowance(
    how: tuple[str, Node], new_page: NewPage
) -> None:
    how_, web_node = how
    page = await new_page(web_node.http.port)
    victim = await register(page, unique("vic"))
    bob = await ChatConnection.open("127.0.0.1", web_node.port)
    bob_id = await bob.register(unique("bob"), PASSWORD)
    await bob.login(bob_id, PASSWORD)
    await add_friend(page, bob_id)
    await page.click(f'[data-key="u:{bob_id}"]')

    eve = await ChatConnection.open("127.0.0.1", web_node.port)
    eve_id = await eve.register(unique("eve"), PASSWORD)
    await eve.login(eve_id, PASSWORD)
    gids: list[int] = []
    if how_ == "invite":  # three groups: three open invitations, then repeats
        for n in range(3):
            doc = {"msgid": MsgId.CREATE_GROUP, "groupname": unique(f"lure{n}")}
            gids.append(int((await eve.request(doc, MsgId.CREATE_GROUP_ACK))["groupid"]))
        flood = [{"msgid": MsgId.INVITE, "groupid": g, "userid": victim} for g in gids]
    else:  # friends, not friends, friends...: an event each time
        flood = [
            {"msgid": MsgId.ADD_FRIEND, "friendid": victim},
            {"msgid": MsgId.REMOVE_FRIEND, "friendid": victim},
        ]
    conn = _socket_of(web_node, victim)
    assert conn is not None
    counts = web_node.service.counts
    lists_before = counts.requests.get(ListInvites, 0)
    too_fast = ("error", int(ErrCode.TOO_FAST))
    too_fast_before = counts.refusals.get(too_fast, 0)

    attack = asyncio.ensure_future(_flood(eve, flood))
    said: list[str] = []
    while not attack.done():  # the victim chats with bob throughout
        text = f"still here {len(said)}"
        await say(page, text)
        said.append(text)
        await asyncio.sleep(0.4)
    assert await attack >= ATTACK_SECONDS * PER_SECOND / 2

    # Every line the victim typed reached bob, in order.
    got: list[str] = []
    while len(got) < len(said):
        msg = await bob.recv()
        if msg.get("msgid") == MsgId.ONE_CHAT and msg.get("id") == victim:
            got.append(msg["msg"])
    assert got == said
    # Nobody was refused for flooding (the attacker paced itself under its
    # limit; before, the victim's page was: 38 refusals in 4 s), and the
    # victim's page is still connected on the same socket.
    assert counts.refusals.get(too_fast, 0) == too_fast_before
    assert _socket_of(web_node, victim) is conn and conn.transport is not None
    # The page asked for its lists about once a second at most, not once
    # per event (before: 29 times in the 4 s).
    lists = counts.requests.get(ListInvites, 0) - lists_before
    assert lists <= ATTACK_SECONDS + 3, lists
    for gid in gids:  # each invitation shown, once
        await expect(page.locator("#invites li", has_text=f"#{gid} ")).to_have_count(1)
    await bob.close()
    await eve.close()
