"""A HISTORY page costs the flood limit by its size: reading, decoding and
encoding 128 KiB again costs the node far more than a PING. Before, 20
accounts each paging 120 KB at the flood limit (213 pages a second) took
others' stores for away users from 8 to 119 ms and logins from 16 to 305 ms
(/tmp/attack/groupstorm.py, MODE=history)."""

from __future__ import annotations

import asyncio

from clusterchat.protocol.messages import ErrCode, MsgId
from tests.conftest import UserFactory
from tests.e2e.test_history import chat, reply


async def test_big_pages_take_more_of_the_flood_limit_small_ones_do_not(
    user: UserFactory,
) -> None:
    ann, bob, carol, dave = await user(), await user(), await user(), await user()
    for i in range(3):
        await chat(ann, bob.id, f"{i}" + "x" * 60_000)
    await chat(carol, dave.id, "short")
    # 40 small pages at once: within the burst (50), as before.
    for _ in range(40):
        await carol.conn.send({"msgid": MsgId.HISTORY, "userid": dave.id})
    small = [await reply(carol.conn) for _ in range(40)]
    assert all(r["msgid"] == MsgId.HISTORY_PAGE for r in small), small[-1]
    # 12 pages of ~120 KB at once: each takes 8 tokens, so the burst runs out.
    for _ in range(12):
        await ann.conn.send({"msgid": MsgId.HISTORY, "userid": bob.id})
    big = [await reply(ann.conn) for _ in range(12)]
    pages = [r for r in big if r["msgid"] == MsgId.HISTORY_PAGE]
    refused = [r for r in big if r["msgid"] == MsgId.ERROR]
    assert 4 <= len(pages) <= 8 and len(pages) + len(refused) == 12, big
    assert all(len(p["messages"]) == 2 and p["more"] for p in pages)
    assert all(r["errno"] == ErrCode.TOO_FAST and "retry in" in r["errmsg"] for r in refused)
    # A client that waits as told is served again, not closed.
    wait = float(refused[-1]["errmsg"].rsplit("retry in ", 1)[1].split(" s")[0])
    assert wait <= 2.6
    await asyncio.sleep(wait + 0.05)  # the time it was told, not a guess
    await ann.conn.send({"msgid": MsgId.HISTORY, "userid": bob.id, "limit": 1})
    assert (await reply(ann.conn))["msgid"] == MsgId.HISTORY_PAGE
