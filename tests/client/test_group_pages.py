"""`/groups` for a user in more groups than one LIST_GROUPS reply holds
(about 4,000 members' worth): every page, shown as one list."""

from __future__ import annotations

from clusterchat.server.node import Node
from tests.client.conftest import Scripted
from tests.client.test_scripted import registered
from tests.conftest import unique
from tests.helpers import big_groups


async def test_groups_lists_every_page_under_one_header(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    ann, ann_id = await registered(lone_node.port, "ann", scripted)
    gids = await big_groups(lone_node.store, ann_id, unique("m"), groups=7, members=999)
    await ann.say("/groups")
    await ann.say("/ping")  # answered after the whole list
    await ann.expect(r"^pong from node", timeout=30)
    listed = ann.lines[ann.lines.index("Groups:") :]
    heads = [line for line in listed if line.startswith("  [group ")]
    assert [int(h.split()[1].rstrip("]")) for h in heads] == gids  # pages 2 and 3 too
    assert listed.count("Groups:") == 1 and not any("No groups" in x for x in listed)
    assert sum(1 for x in listed if x.startswith("      ")) == 7 * 1000  # every member
