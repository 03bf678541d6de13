"""/history and /ghistory: parsed, rendered, and used by the real client."""

from __future__ import annotations

import pytest

from clusterchat.client import commands as c
from clusterchat.client import render
from clusterchat.server.node import Node
from tests.client.conftest import Scripted
from tests.client.test_scripted import registered


@pytest.mark.parametrize(
    ("line", "cmd"),
    [
        ("/history 5", c.History(5)),
        ("/history 5 50", c.History(5, count=50)),
        ("/history 5 50 1039", c.History(5, count=50, before=1039)),
        ("/ghistory 3", c.History(3, group=True)),
        ("/ghistory 3 10", c.History(3, group=True, count=10)),
        ("history:5", c.History(5)),
        ("history:5:7", c.History(5, count=7)),
        ("ghistory:3:7", c.History(3, group=True, count=7)),
    ],
)
def test_parse(line: str, cmd: c.Command) -> None:
    assert c.parse(line) == cmd


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("/history", r"the user id is missing; write /history ID \[N\]"),
        ("/ghistory x", "the group id must be a number"),
        ("/history 5 201", "at most 200 messages"),
        ("/history 5 0", "must be 1 or more"),
        ("/history 5 1 2 3", "too many numbers"),
    ],
)
def test_bad_history_commands_say_how_to_fix_them(line: str, says: str) -> None:
    with pytest.raises(c.BadCommand, match=says):
        c.parse(line)


def test_a_page_reads_oldest_first_and_says_how_to_go_back() -> None:
    reply = {
        "msgid": 61,
        "userid": 5,
        "more": True,
        "messages": [
            {"id": 12, "from": 5, "name": "bob\x1b", "mid": "a-2", "ts": 2000, "msg": "second"},
            {"id": 10, "from": 3, "name": "ann", "mid": "a-1", "ts": 1000, "msg": "first"},
        ],
    }
    lines = render.history(5, False, 2, reply)
    assert lines[0] == "History with bob\\x1b (#5):"
    assert lines[1].endswith("ann (#3): first") and lines[2].endswith("bob\\x1b (#5): second")
    assert lines[3] == "(older messages: /history 5 2 10, the 2 before #10)"
    assert render.history(3, True, 20, {"messages": []}) == ["No messages with group 3 kept."]
    # Past the oldest message (`/history 2 20 5`): it used to say none were kept at all.
    assert render.history(2, False, 20, {"messages": []}, before=5) == [
        "No older messages with user 2 kept (nothing before #5)."
    ]
    assert "/ghistory GID [N]" in c.HELP and "/history ID [N]" in c.HELP


async def test_the_client_pages_back_through_a_conversation(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    port = lone_node.port
    ann, ann_id = await registered(port, "ann", scripted)
    bob, bob_id = await registered(port, "bob", scripted)
    for i in range(3):
        await ann.say(f"/msg {bob_id} hello {i}")
        await bob.expect(rf"ann \(#{ann_id}\): hello {i}$")
    await bob.say(f"/history {ann_id} 2")
    await bob.expect(rf"History with ann \(#{ann_id}\):")
    await bob.expect(rf"ann \(#{ann_id}\): hello 1$")
    await bob.expect(rf"ann \(#{ann_id}\): hello 2$")
    more = await bob.expect(rf"\(older messages: /history {ann_id} 2 (\d+), the 2 before #")
    await bob.say(f"/history {ann_id} 2 {more.group(1)}")
    await bob.expect(rf"ann \(#{ann_id}\): hello 0$")
    await bob.say(f"/history {ann_id} 2 1")  # before the first message there is
    await bob.expect(rf"No older messages with ann \(#{ann_id}\) kept \(nothing before #1\)")
    await ann.say("creategroup:room:ours")
    gid = int((await ann.expect(r"Created group room with id (\d+)")).group(1))
    await ann.say(f"/g {gid} anyone?")
    await ann.say(f"/ghistory {gid}")
    await ann.expect(rf"ann \(#{ann_id}\): anyone\?$")
    await bob.say(f"/ghistory {gid}")
    await bob.expect(
        rf"Not done: You are not a member of group {gid}; its history is for members\."
    )
    assert await ann.quit() == 0
    assert await bob.quit() == 1  # its /ghistory was refused: a script is told


async def test_a_conversation_where_only_i_spoke_is_headed_by_the_partners_name(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    """The page names the partner: the heading used to fall back to "user ID"
    when none of the page's messages was theirs."""
    port = lone_node.port
    ann, ann_id = await registered(port, "ann", scripted)
    bob, bob_id = await registered(port, "bob", scripted)
    await ann.say(f"/history {bob_id}")
    await ann.expect(rf"No messages with bob \(#{bob_id}\) kept\.")
    await ann.say(f"/msg {bob_id} are you there?")
    await bob.expect(rf"ann \(#{ann_id}\): are you there\?$")
    await ann.say(f"/history {bob_id}")
    await ann.expect(rf"History with bob \(#{bob_id}\):")
    await ann.expect(rf"ann \(#{ann_id}\): are you there\?$")
    assert await ann.quit() == 0 and await bob.quit() == 0
