"""The terminal client's commands for friends and groups a person manages:
parsed, listed by help, and carried out by real clients with the pushes
shown as notices."""

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
        ("/unfriend 4", c.Unfriend(4)),
        ("unfriend:4", c.Unfriend(4)),
        ("/block 4", c.Block(4)),
        ("block:4", c.Block(4)),
        ("/unblock 4", c.Unblock(4)),
        ("/blocked", c.Blocked()),
        ("blocked", c.Blocked()),
        ("/leave 3", c.Leave(3)),
        ("leave:3", c.Leave(3)),
        ("/kick 3 4", c.Kick(3, 4)),
        ("kick:3:4", c.Kick(3, 4)),
        ("/admin 3 4", c.SetRole(3, 4, "admin")),
        ("/deadmin 3 4", c.SetRole(3, 4, "normal")),
        ("/rename 3 new name", c.Rename(3, "new name")),
        ("rename:3:room", c.Rename(3, "room")),
        ("/describe 3 a nice place", c.Describe(3, "a nice place")),
        ("/describe 3", c.Describe(3, "")),
        ("/owner 3 4", c.Owner(3, 4)),
        ("/delgroup 3", c.DeleteGroup(3)),
        ("delgroup:3", c.DeleteGroup(3)),
        ("/invite 3 4", c.Invite(3, 4)),
        ("invite:3:4", c.Invite(3, 4)),
        ("/invites", c.Invites()),
        ("/decline 3", c.Decline(3)),
        ("decline:3", c.Decline(3)),
        ("/inviteonly 3 on", c.InviteOnly(3, True)),
        ("inviteonly:3:off", c.InviteOnly(3, False)),
    ],
)
def test_parse(line: str, cmd: c.Command) -> None:
    assert c.parse(line) == cmd


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("/kick 3", "the user id is missing; write /kick GROUPID ID"),
        ("/kick 3 x", "the user id must be a number"),
        ("/deadmin", "the group id is missing; write /deadmin GROUPID ID"),
        ("/rename 3", "the new name is missing"),
        ("/leave x", "the group id must be a number"),
        ("/inviteonly 3 maybe", "say on or off"),
    ],
)
def test_bad_commands_say_how_to_fix_them(line: str, says: str) -> None:
    with pytest.raises(c.BadCommand, match=says):
        c.parse(line)


def test_help_lists_every_command() -> None:
    for word in ("/unfriend", "/block", "/unblock", "/blocked", "/leave", "/kick", "/admin",
                 "/deadmin", "/rename", "/describe", "/owner", "/delgroup", "/invite",
                 "/invites", "/inviteonly", "/decline"):  # fmt: skip
        assert word + " " in c.HELP


def test_events_read_as_notices() -> None:
    base = {"msgid": 43, "groupid": 7, "by": 2, "byname": "bob"}
    assert render.event({**base, "event": "left", "id": 3, "name": "ann"}, 9) == (
        "*** ann (#3) left group 7"
    )
    assert render.event({**base, "event": "removed", "id": 9, "name": "me"}, 9) == (
        "*** you were removed from group 7 by bob (#2)"
    )
    assert render.event({**base, "event": "role", "id": 2, "name": "bob", "role": "admin"}, 9) == (
        "*** bob (#2) is now an admin of group 7"
    )
    hostile = {**base, "event": "edited", "groupname": "x\x1b[2J", "groupdesc": ""}
    assert render.event(hostile, 9) == "*** group 7 is now x\\x1b[2J (by bob (#2))"
    unfriended = {"msgid": 42, "event": "unfriended", "id": 2, "name": "bob"}
    assert render.event(unfriended, 9) == "*** bob (#2) removed you from their friends"


async def test_two_clients_manage_a_group_and_a_block(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    port = lone_node.port
    ann, ann_id = await registered(port, "ann", scripted)
    bob, bob_id = await registered(port, "bob", scripted)
    await ann.say("creategroup:room:ours")
    gid = int((await ann.expect(r"Created group room with id (\d+)")).group(1))
    await bob.say(f"/join {gid}")
    await bob.expect(rf"Joined group room \(#{gid}\)\.")

    await ann.say(f"/admin {gid} {bob_id}")
    await ann.expect(rf"User {bob_id} is an admin of group {gid}\.")
    await bob.expect(rf"\*\*\* you are now an admin of group {gid}$")
    await bob.say(f"/rename {gid} lounge")
    await bob.expect(rf"Group {gid} is now called lounge\.")
    await ann.expect(rf"\*\*\* group {gid} is now lounge - ours \(by bob \(#{bob_id}\)\)")
    await ann.say(f"/kick {gid} {bob_id}")
    await ann.expect(rf"Removed user {bob_id} from group {gid}\.")
    await bob.expect(rf"\*\*\* you were removed from group {gid} by ann \(#{ann_id}\)")
    await bob.say(f"/g {gid} hello?")
    await bob.expect(r"Not done: You are not in this group\.")
    await bob.say(f"/kick {gid} {ann_id}")
    await bob.expect(rf"Not done: You are not a member of group {gid}\.")

    await ann.say(f"/block {bob_id}")
    await ann.expect(rf"Blocked bob \(#{bob_id}\)")
    await ann.say("/blocked")
    await ann.expect(rf"  bob \(#{bob_id}\)")
    await bob.say(f"/msg {ann_id} hi")
    await bob.expect(rf"Not done: User {ann_id} does not accept this from you\.")
    await ann.say(f"/unblock {bob_id}")
    await ann.expect(rf"Unblocked user {bob_id}\.")
    await ann.say(f"/inviteonly {gid} on")
    await ann.expect(rf"Group {gid} is invite-only now\.")
    await bob.say(f"/join {gid}")
    await bob.expect(rf"Not done: Group {gid} takes members by invitation only\.")
    await ann.say(f"/invite {gid} {bob_id}")
    await ann.expect(rf"Invited user {bob_id} to group {gid}\.")
    await bob.expect(rf"\*\*\* ann \(#{ann_id}\) invited you to group {gid} \(lounge\); /join")
    await bob.say("/invites")
    await bob.expect(rf"  \[group {gid}\] lounge, from ann \(#{ann_id}\)")
    await bob.say(f"/decline {gid}")
    await bob.expect(rf"You declined the invitation to group {gid}\.")
    await bob.say("/invites")
    await bob.expect(r"No open invitations\.")
    await ann.say(f"/invite {gid} {bob_id}")
    await ann.expect(rf"Invited user {bob_id} to group {gid}\.")
    await bob.expect(rf"/join {gid} accepts, /decline {gid} turns it down")
    await bob.say(f"/join {gid}")
    await bob.expect(rf"Joined group lounge \(#{gid}\)\.")
    await ann.say(f"/delgroup {gid}")
    await ann.expect(rf"Deleted group {gid}\.")
    await bob.expect(rf"\*\*\* group {gid} \(lounge\) was deleted by ann \(#{ann_id}\)")
    await ann.say("/help")
    await ann.expect(r"/delgroup GROUPID")
    assert await ann.quit() == 0
    assert await bob.quit() == 1  # its first /join was refused: a script is told
