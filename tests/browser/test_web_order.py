"""A message that was stored for a while can arrive after later ones (a
batch lost between nodes; what a connection with receipts held when it
ended: README, "Order"). The page places it by the time the server took it,
as it places history pages. The late arrival is handed to the page's socket
handler directly: the node's timing decides when the real one happens."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Page, expect

from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.browser.conftest import NewPage, add_friend, register, say


async def shown(page: Page) -> list[str]:
    return await page.locator("#messages .msg .bubble").all_text_contents()


async def entries(page: Page, key: str) -> list[dict[str, Any]]:
    got = await page.evaluate(
        "(key) => window.clusterchat.state.convs.get(key).messages"
        ".map((m) => ({ text: m.text, ts: m.ts, mid: m.mid ?? null }))",
        key,
    )
    assert isinstance(got, list)
    return got


async def arrives(page: Page, doc: dict[str, Any]) -> None:
    await page.evaluate("(doc) => window.clusterchat.sock.onPush(doc)", doc)


async def test_a_late_message_is_placed_by_its_time(web_node: Node, new_page: NewPage) -> None:
    port = web_node.http.port
    ann, bob = await new_page(port), await new_page(port)
    ann_id = await register(ann, "Ann Lee")
    bob_id = await register(bob, "Bob Marsh")
    await add_friend(bob, ann_id)
    await bob.click(f'[data-key="u:{ann_id}"]')
    await ann.click(f'[data-key="u:{bob_id}"]')
    for text in ("one", "two", "three"):
        await say(ann, text)
    await expect(bob.locator("#messages .msg.theirs")).to_have_count(3)
    one, _, three = await entries(bob, f"u:{ann_id}")
    t0, t3 = int(one["ts"]), int(three["ts"])

    def chat(text: str, ts: int, mid: str) -> dict[str, Any]:
        doc = {"id": ann_id, "name": "Ann Lee", "toid": bob_id, "time": "", "ts": ts, "mid": mid}
        return {"msgid": int(MsgId.ONE_CHAT), "msg": text, **doc}

    # Taken before "one" (on another node): first.
    await arrives(bob, chat("early", t0 - 1000, "elsewhere-7"))
    await expect(bob.locator("#messages .msg .bubble")).to_have_text(
        ["early", "one", "two", "three"]
    )
    # Later ones; within one millisecond a node's count decides, and
    # between nodes the order they came in stays.
    await arrives(bob, chat("b", t3 + 1000, "n2-10"))
    await arrives(bob, chat("a", t3 + 1000, "n2-9"))
    await arrives(bob, chat("c", t3 + 1000, "n3-1"))
    await expect(bob.locator("#messages .msg .bubble")).to_have_text(
        ["early", "one", "two", "three", "a", "b", "c"]
    )
    # Bob's own message stays where he typed it; a late one goes after it.
    await say(bob, "mine")
    await expect(bob.locator("#messages .msg.mine")).to_have_count(1)
    await arrives(bob, chat("late again", t0 - 500, "elsewhere-9"))
    texts = await shown(bob)
    assert texts[-2:] == ["mine", "late again"], texts
