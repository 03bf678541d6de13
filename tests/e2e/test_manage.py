"""Friends and groups a person manages (issue 18), end to end over real TCP,
on SQLite and MariaDB: every action, its pushes, and every refusal."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, Connect, User, UserFactory, unique


async def done(u: User, doc: dict[str, Any]) -> dict[str, Any]:
    reply = await u.conn.request(doc, MsgId.DONE)
    assert reply["errno"] == 0 and reply["re"] == doc["msgid"], reply
    return reply


async def refused(u: User, doc: dict[str, Any], errno: int) -> dict[str, Any]:
    err = await u.conn.request(doc, MsgId.ERROR)
    assert err["errno"] == errno and err["re"] == doc["msgid"], err
    return err


async def event(u: User, **expected: Any) -> dict[str, Any]:
    got = await u.conn.expect(MsgId.GROUP_EVENT)
    assert {k: got.get(k) for k in expected} == expected, got
    return got


async def group_of(owner: User, *members: User) -> int:
    ack = await owner.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g"), "groupdesc": "d"},
        MsgId.CREATE_GROUP_ACK,
    )
    gid = int(ack["groupid"])
    for m in members:
        await m.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    return gid


async def roles(u: User, gid: int) -> dict[int, str]:
    reply = await u.conn.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
    for g in reply["groups"]:
        if g["id"] == gid:
            return {m["id"]: m["role"] for m in g["users"]}
    return {}


async def group_chat(sender: User, gid: int, text: str) -> None:
    await sender.conn.send({"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": text})
    ack = await sender.conn.expect(MsgId.CHAT_ACK)
    assert ack["status"] == "sent"


async def test_unfriend_is_mutual_and_pushed(user: UserFactory) -> None:
    ann, bob = await user(), await user()
    await ann.conn.request({"msgid": MsgId.ADD_FRIEND, "friendid": bob.id}, MsgId.ADD_FRIEND_ACK)
    added = await bob.conn.expect(MsgId.FRIEND_ADDED)
    assert added["friend"] == {"id": ann.id, "name": ann.name, "state": "online"}
    await done(ann, {"msgid": MsgId.REMOVE_FRIEND, "friendid": bob.id})
    got = await bob.conn.expect(MsgId.FRIEND_EVENT)
    assert (got["event"], got["id"], got["name"]) == ("unfriended", ann.id, ann.name)
    for u in (ann, bob):
        lst = await u.conn.request({"msgid": MsgId.LIST_FRIENDS}, MsgId.FRIEND_LIST)
        assert lst["friends"] == []
    await refused(ann, {"msgid": MsgId.REMOVE_FRIEND, "friendid": bob.id}, ErrCode.NOT_FRIENDS)
    await refused(ann, {"msgid": MsgId.REMOVE_FRIEND, "friendid": ann.id}, ErrCode.SELF_TARGET)


async def test_block_refuses_chat_friendship_and_hides_presence(user: UserFactory) -> None:
    ann, bob = await user(), await user()
    await ann.conn.request({"msgid": MsgId.ADD_FRIEND, "friendid": bob.id}, MsgId.ADD_FRIEND_ACK)
    await bob.conn.expect(MsgId.FRIEND_ADDED)
    gid = await group_of(ann, bob)
    reply = await done(ann, {"msgid": MsgId.BLOCK, "userid": bob.id})
    assert reply["name"] == bob.name
    await done(ann, {"msgid": MsgId.BLOCK, "userid": bob.id})  # again: no change, no error
    lst = await ann.conn.request({"msgid": MsgId.LIST_BLOCKED}, MsgId.BLOCKED_LIST)
    assert lst["blocked"] == [{"id": bob.id, "name": bob.name}]

    # bob's chat is refused like any chat the receiver does not take.
    err = await refused(bob, {"msgid": MsgId.ONE_CHAT, "toid": ann.id, "msg": "hi"}, 123)
    assert "block" not in err["errmsg"]
    await refused(bob, {"msgid": MsgId.ADD_FRIEND, "friendid": ann.id}, ErrCode.REFUSED_BY_USER)
    # bob sees ann offline, in friends and in the group.
    friends = await bob.conn.request({"msgid": MsgId.LIST_FRIENDS}, MsgId.FRIEND_LIST)
    assert friends["friends"] == [{"id": ann.id, "name": ann.name, "state": "offline"}]
    groups = await bob.conn.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
    states = {m["id"]: m["state"] for m in groups["groups"][0]["users"]}
    assert states == {ann.id: "offline", bob.id: "online"}
    # bob's group messages do not reach ann; ann's still reach bob.
    carol = await user()
    await carol.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await group_chat(bob, gid, "from bob")
    assert (await carol.conn.expect(MsgId.GROUP_CHAT))["msg"] == "from bob"
    await group_chat(ann, gid, "from ann")
    assert (await bob.conn.expect(MsgId.GROUP_CHAT))["msg"] == "from ann"
    assert (await carol.conn.expect(MsgId.GROUP_CHAT))["msg"] == "from ann"
    # Nothing of bob's reached ann: the next thing she gets is her own reply.
    pong = await ann.conn.request({"msgid": MsgId.PING}, MsgId.PONG)
    assert pong["msgid"] == MsgId.PONG

    await done(ann, {"msgid": MsgId.UNBLOCK, "userid": bob.id})
    await bob.conn.send({"msgid": MsgId.ONE_CHAT, "toid": ann.id, "msg": "again"})
    assert (await ann.conn.expect(MsgId.ONE_CHAT))["msg"] == "again"
    assert (await bob.conn.expect(MsgId.CHAT_ACK))["status"] == "delivered"
    lst = await ann.conn.request({"msgid": MsgId.LIST_BLOCKED}, MsgId.BLOCKED_LIST)
    assert lst["blocked"] == []
    await refused(ann, {"msgid": MsgId.BLOCK, "userid": ann.id}, ErrCode.SELF_TARGET)
    await refused(ann, {"msgid": MsgId.BLOCK, "userid": 2_000_000_000}, ErrCode.NO_SUCH_USER)


async def test_block_holds_across_the_blocked_users_next_login(
    user: UserFactory, connect: Connect
) -> None:
    ann, bob = await user(), await user()
    await done(ann, {"msgid": MsgId.BLOCK, "userid": bob.id})
    await bob.conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    assert (await bob.conn.login(bob.id, PASSWORD))["errno"] == 0
    await refused(bob, {"msgid": MsgId.ONE_CHAT, "toid": ann.id, "msg": "x"}, 123)
    # and when ann is offline: refused, not stored for her.
    await ann.conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    await refused(bob, {"msgid": MsgId.ONE_CHAT, "toid": ann.id, "msg": "x"}, 123)
    again = await ann.conn.login(ann.id, PASSWORD)
    assert "offlinemsg" not in again


async def test_leave_stops_messages_both_ways(user: UserFactory) -> None:
    ann, bob, carol = await user(), await user(), await user()
    gid = await group_of(ann, bob, carol)
    await done(bob, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    for u in (ann, carol):
        await event(u, event="left", id=bob.id, by=bob.id, groupid=gid)
    await refused(bob, {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "x"}, 132)
    await group_chat(ann, gid, "without bob")
    assert (await carol.conn.expect(MsgId.GROUP_CHAT))["msg"] == "without bob"
    pong = await bob.conn.request({"msgid": MsgId.PING}, MsgId.PONG)  # nothing before it
    assert pong["msgid"] == MsgId.PONG
    assert await roles(bob, gid) == {}
    await refused(bob, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid}, ErrCode.NOT_GROUP_MEMBER)
    await refused(bob, {"msgid": MsgId.LEAVE_GROUP, "groupid": 2_000_000_000}, 130)


async def test_admin_actions_by_role(user: UserFactory) -> None:
    ann, bob, carol, dave = await user(), await user(), await user(), await user()
    gid = await group_of(ann, bob, carol, dave)
    # ann (creator) appoints bob; everyone else hears it.
    await done(ann, {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": bob.id, "role": "admin"})
    for u in (bob, carol, dave):
        await event(u, event="role", id=bob.id, role="admin", by=ann.id)
    assert (await roles(carol, gid))[bob.id] == "admin"
    # bob (admin) removes dave, who is told by whom.
    await done(bob, {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": dave.id})
    await event(dave, event="removed", id=dave.id, by=bob.id, byname=bob.name)
    for u in (ann, carol):
        await event(u, event="removed", id=dave.id, by=bob.id)
    await refused(dave, {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "x"}, 132)
    # bob renames and re-describes.
    name = unique("n")
    edit = {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupname": name, "groupdesc": "new"}
    await done(bob, edit)
    for u in (ann, carol):
        await event(u, event="edited", groupname=name, groupdesc="new", by=bob.id)
    lst = await carol.conn.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
    assert (lst["groups"][0]["groupname"], lst["groups"][0]["groupdesc"]) == (name, "new")
    # Only the creator: demote an admin, transfer, delete.
    demote = {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": bob.id, "role": "normal"}
    await done(ann, demote)
    for u in (bob, carol):
        await event(u, event="role", id=bob.id, role="normal")
    await done(ann, {"msgid": MsgId.TRANSFER_GROUP, "groupid": gid, "userid": carol.id})
    for u in (bob, carol):
        await event(u, event="role", id=carol.id, role="creator")
        await event(u, event="role", id=ann.id, role="admin")
    assert await roles(bob, gid) == {ann.id: "admin", bob.id: "normal", carol.id: "creator"}
    await done(carol, {"msgid": MsgId.DELETE_GROUP, "groupid": gid})
    for u in (ann, bob):
        await event(u, event="deleted", groupid=gid, by=carol.id)
    assert await roles(ann, gid) == {}
    await refused(ann, {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "x"}, 130)


async def test_a_normal_member_changes_nothing(user: UserFactory) -> None:
    ann, bob, carol = await user(), await user(), await user()
    gid = await group_of(ann, bob, carol)
    for doc in (
        {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": carol.id},
        {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": carol.id, "role": "admin"},
        {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": bob.id, "role": "admin"},
        {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupname": unique("x")},
        {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupdesc": "mine now"},
        {"msgid": MsgId.TRANSFER_GROUP, "groupid": gid, "userid": bob.id},
        {"msgid": MsgId.DELETE_GROUP, "groupid": gid},
        {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "inviteonly": True},
        {"msgid": MsgId.INVITE, "groupid": gid, "userid": ann.id + 1000},
    ):
        err = await refused(bob, doc, ErrCode.NOT_ALLOWED)
        assert "only the group's creator" in err["errmsg"]
    # An admin may not do what only the creator may, nor touch the creator.
    await done(ann, {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": bob.id, "role": "admin"})
    await event(bob, event="role")
    await event(carol, event="role")
    await done(ann, {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": carol.id, "role": "admin"})
    await event(bob, event="role")
    await event(carol, event="role")
    for doc in (
        {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": ann.id},
        {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": carol.id},
        {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": carol.id, "role": "normal"},
        {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": ann.id, "role": "normal"},
        {"msgid": MsgId.TRANSFER_GROUP, "groupid": gid, "userid": bob.id},
        {"msgid": MsgId.DELETE_GROUP, "groupid": gid},
    ):
        await refused(bob, doc, ErrCode.NOT_ALLOWED)
    assert await roles(ann, gid) == {ann.id: "creator", bob.id: "admin", carol.id: "admin"}
    # A normal member may not demote an admin either.
    dave = await user()
    await dave.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    demote = {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": bob.id, "role": "normal"}
    await refused(dave, demote, ErrCode.NOT_ALLOWED)
    # Outsiders and missing targets.
    erin = await user()
    await refused(erin, {"msgid": MsgId.DELETE_GROUP, "groupid": gid}, ErrCode.NOT_GROUP_MEMBER)
    await refused(ann, {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": erin.id}, 127)
    await refused(ann, {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": ann.id}, 125)
    taken = await ann.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique("t")}, MsgId.CREATE_GROUP_ACK
    )
    await refused(
        ann, {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupname": taken["groupname"]}, 131
    )


async def test_creator_leaving_hands_over_or_deletes(user: UserFactory) -> None:
    ann, bob, carol = await user(), await user(), await user()
    gid = await group_of(ann, bob, carol)
    # No admin: the longest member (bob joined first) becomes the creator.
    await done(ann, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    for u in (bob, carol):
        await event(u, event="left", id=ann.id)
        await event(u, event="role", id=bob.id, role="creator")
    assert await roles(carol, gid) == {bob.id: "creator", carol.id: "normal"}
    # An admin goes before an older member.
    dave = await user()
    await dave.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await done(bob, {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": dave.id, "role": "admin"})
    for u in (carol, dave):
        await event(u, event="role", id=dave.id, role="admin")
    await done(bob, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    for u in (carol, dave):
        await event(u, event="left", id=bob.id)
        await event(u, event="role", id=dave.id, role="creator")
    await done(carol, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    await event(dave, event="left", id=carol.id)
    # The last one out deletes it.
    await done(dave, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    await refused(dave, {"msgid": MsgId.ADD_GROUP, "groupid": gid}, ErrCode.NO_SUCH_GROUP)


async def sync_legacy(conn: ChatConnection) -> None:
    """Wait until an original client's earlier requests were served: a
    request with a reply (a refused login) comes back after them."""
    await conn.send({"msgid": MsgId.LOGIN, "id": 2_000_000_000, "password": "x"})
    ack = await conn.expect(MsgId.LOGIN_ACK)
    assert ack["errno"] in (1, 3), ack


def nlohmann(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\x00"


async def test_original_client_sees_changes_only_in_its_own_replies(
    user: UserFactory, connect: Connect, node: Node
) -> None:
    ann, bob = await user(), await user()
    legacy: ChatConnection = await connect(legacy=True)
    name = unique()
    uid = await legacy.register(name, PASSWORD)
    assert (await legacy.login(uid, PASSWORD))["errno"] == 0
    await legacy.send_raw(nlohmann({"msgid": 7, "id": uid, "friendid": ann.id}))
    assert (await ann.conn.expect(MsgId.FRIEND_ADDED))["friend"]["id"] == uid  # ann is modern
    gid = await group_of(ann, bob)
    await legacy.send_raw(nlohmann({"msgid": 9, "id": uid, "groupid": gid}))
    await sync_legacy(legacy)
    # Everything changes around the original client; it is told nothing new.
    await done(ann, {"msgid": MsgId.REMOVE_FRIEND, "friendid": uid})
    await done(ann, {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": uid, "role": "admin"})
    await event(bob, event="role", id=uid)
    name2 = unique("r")
    await done(ann, {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupname": name2})
    await event(bob, event="edited")
    await done(bob, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    await event(ann, event="left", id=bob.id)
    await done(bob, {"msgid": MsgId.BLOCK, "userid": uid})
    # It still chats: with ann 1:1 and in the group, and is refused (silently) by bob.
    await legacy.send_raw(nlohmann({"msgid": 6, "id": uid, "toid": ann.id, "msg": "hi ann"}))
    assert (await ann.conn.expect(MsgId.ONE_CHAT))["msg"] == "hi ann"
    await legacy.send_raw(nlohmann({"msgid": 6, "id": uid, "toid": bob.id, "msg": "hi bob"}))
    await legacy.send_raw(nlohmann({"msgid": 10, "id": uid, "groupid": gid, "msg": "all"}))
    assert (await ann.conn.expect(MsgId.GROUP_CHAT))["msg"] == "all"
    await ann.conn.send({"msgid": MsgId.ONE_CHAT, "toid": uid, "msg": "back"})
    got = await legacy.recv()
    assert (got["msgid"], got["msg"]) == (MsgId.ONE_CHAT, "back")
    # Its next login reply carries the new state, in the original's shape.
    await legacy.send_raw(nlohmann({"msgid": 3, "id": uid}))
    await legacy.send_raw(nlohmann({"msgid": 1, "id": uid, "password": PASSWORD}))
    again = await legacy.expect(MsgId.LOGIN_ACK)
    assert "friends" not in again and "offlinemsg" not in again
    (group,) = [json.loads(g) for g in again["groups"]]
    assert group["groupname"] == name2
    users = {json.loads(m)["id"]: json.loads(m)["role"] for m in group["users"]}
    assert users == {ann.id: "creator", uid: "admin"}
    # and bob never saw its message.
    pong = await bob.conn.request({"msgid": MsgId.PING}, MsgId.PONG)
    assert pong["msgid"] == MsgId.PONG


@pytest.mark.parametrize("legacy", [False, True])
async def test_events_are_not_kept_for_users_away(
    user: UserFactory, connect: Connect, node: Node, legacy: bool
) -> None:
    ann, bob = await user(), await user(legacy=legacy)
    await ann.conn.request({"msgid": MsgId.ADD_FRIEND, "friendid": bob.id}, MsgId.ADD_FRIEND_ACK)
    gid = await group_of(ann)
    if legacy:
        await bob.conn.send({"msgid": MsgId.ADD_GROUP, "groupid": gid})
        await sync_legacy(bob.conn)  # the first thing it gets: no FRIEND_ADDED, no ack
    else:
        await bob.conn.expect(MsgId.FRIEND_ADDED)
        await bob.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await bob.conn.close()
    async with asyncio.timeout(5):
        while bob.id in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    await done(ann, {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupdesc": "changed"})
    await done(ann, {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": bob.id})
    await done(ann, {"msgid": MsgId.REMOVE_FRIEND, "friendid": bob.id})
    await ann.conn.send({"msgid": MsgId.ONE_CHAT, "toid": bob.id, "msg": "kept"})
    assert (await ann.conn.expect(MsgId.CHAT_ACK))["status"] == "stored"
    conn = await connect(legacy=legacy)
    again = await conn.login(bob.id, PASSWORD)
    offline = [json.loads(m) for m in again["offlinemsg"]]
    assert [(m["msgid"], m["msg"]) for m in offline] == [(MsgId.ONE_CHAT, "kept")]
    assert "groups" not in again and "friends" not in again


async def test_invite_only_group(user: UserFactory) -> None:
    ann, bob, carol, dave = await user(), await user(), await user(), await user()
    gid = await group_of(ann, bob)
    only = {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "inviteonly": True}
    await refused(bob, only, ErrCode.NOT_ALLOWED)
    await done(ann, only)
    await event(bob, event="edited", inviteonly=True)
    join = {"msgid": MsgId.ADD_GROUP, "groupid": gid}
    await refused(carol, join, ErrCode.INVITE_ONLY)
    invite = {"msgid": MsgId.INVITE, "groupid": gid, "userid": carol.id}
    await refused(bob, invite, ErrCode.NOT_ALLOWED)
    await refused(dave, invite, ErrCode.NOT_GROUP_MEMBER)
    await refused(ann, {**invite, "userid": bob.id}, ErrCode.TARGET_ALREADY_MEMBER)
    await done(ann, invite)
    got = await event(carol, event="invited", groupid=gid, id=carol.id, by=ann.id)
    assert got["groupname"]
    lst = await carol.conn.request({"msgid": MsgId.LIST_INVITES}, MsgId.INVITE_LIST)
    assert [(i["groupid"], i["by"], i["byname"]) for i in lst["invites"]] == [
        (gid, ann.id, ann.name)
    ]
    await carol.conn.request(join, MsgId.ADD_GROUP_ACK)  # accepting is joining
    lst = await carol.conn.request({"msgid": MsgId.LIST_INVITES}, MsgId.INVITE_LIST)
    assert lst["invites"] == []
    assert set(await roles(carol, gid)) == {ann.id, bob.id, carol.id}
    # Out again, the invitation is spent; an admin's invitation works too.
    await done(carol, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    await event(ann, event="left")
    await event(bob, event="left")
    await refused(carol, join, ErrCode.INVITE_ONLY)
    await done(ann, {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": bob.id, "role": "admin"})
    await event(bob, event="role")
    await done(bob, {**invite, "userid": dave.id})
    await event(dave, event="invited", by=bob.id)
    await dave.conn.request(join, MsgId.ADD_GROUP_ACK)
    # Open again: anyone joins.
    await done(ann, {**only, "inviteonly": False})
    await event(bob, event="edited", inviteonly=False)
    await event(dave, event="edited", inviteonly=False)
    await carol.conn.request(join, MsgId.ADD_GROUP_ACK)


async def test_inviting_again_tells_nobody_again(user: UserFactory) -> None:
    """An admin may invite anyone, but an open invitation is told once: one
    admin repeating INVITE at its flood limit sent its target an event per
    request, and the web client refreshed its lists for each (its own
    chats then refused as too fast; tests/browser/test_web_event_flood.py)."""
    ann, carol = await user(), await user()
    gid = await group_of(ann)
    invite = {"msgid": MsgId.INVITE, "groupid": gid, "userid": carol.id}
    await done(ann, invite)
    await event(carol, event="invited", groupid=gid, by=ann.id)
    for _ in range(5):
        await done(ann, invite)  # done, as before: the invitation is open
    # carol's next message is her own PONG: no more events came.
    assert (await carol.conn.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    lst = await carol.conn.request({"msgid": MsgId.LIST_INVITES}, MsgId.INVITE_LIST)
    assert [(i["groupid"], i["by"]) for i in lst["invites"]] == [(gid, ann.id)]


async def test_leaving_a_group_one_is_invited_to_declines(user: UserFactory) -> None:
    """An invitation could only be used (ADD_GROUP) or outwaited: nothing
    let its invitee turn it down. LEAVE_GROUP by the invitee declines it,
    silently for the group; with no invitation it is refused as before."""
    ann, bob, carol = await user(), await user(), await user()
    gid = await group_of(ann, bob)
    await done(ann, {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "inviteonly": True})
    await event(bob, event="edited")
    await done(ann, {"msgid": MsgId.INVITE, "groupid": gid, "userid": carol.id})
    await event(carol, event="invited", groupid=gid)
    leave = {"msgid": MsgId.LEAVE_GROUP, "groupid": gid}
    reply = await done(carol, leave)
    assert reply["groupid"] == gid
    lst = await carol.conn.request({"msgid": MsgId.LIST_INVITES}, MsgId.INVITE_LIST)
    assert lst["invites"] == []
    # Declined, it is gone: joining needs a new one, and nobody was told.
    await refused(carol, {"msgid": MsgId.ADD_GROUP, "groupid": gid}, ErrCode.INVITE_ONLY)
    await refused(carol, leave, ErrCode.NOT_GROUP_MEMBER)
    for u in (ann, bob):
        assert (await u.conn.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    assert set(await roles(ann, gid)) == {ann.id, bob.id}
    # Invited again, the invitee is told again and may join at once (a
    # decline starts no rejoin wait: nothing was left).
    await done(ann, {"msgid": MsgId.INVITE, "groupid": gid, "userid": carol.id})
    await event(carol, event="invited", groupid=gid)
    await carol.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    assert set(await roles(carol, gid)) == {ann.id, bob.id, carol.id}


async def test_open_invitations_are_bounded_per_inviter_and_in_all(
    user: UserFactory, node: Node
) -> None:
    """One inviter may hold 20 of a user's open invitations, everyone 200;
    blocking an inviter deletes theirs. Before, nothing bounded them: admins
    of many groups filled a user's list with thousands, which the web client
    asks for every 5 s."""
    from sqlalchemy import insert

    from clusterchat.storage.social import MAX_INVITES, MAX_INVITES_FROM_ONE
    from clusterchat.storage.sql import SqlStore
    from clusterchat.storage.tables import groupinvite

    eve, ann, carol, dave = await user(), await user(), await user(), await user()
    gids = [await group_of(eve) for _ in range(MAX_INVITES_FROM_ONE + 1)]
    for gid in gids[:-1]:
        await done(eve, {"msgid": MsgId.INVITE, "groupid": gid, "userid": carol.id})
        await event(carol, event="invited", groupid=gid)
    last = {"msgid": MsgId.INVITE, "groupid": gids[-1], "userid": carol.id}
    err = await refused(eve, last, ErrCode.QUOTA)
    assert err["errmsg"] == f"user {carol.id} has 20 open invitations from you, the most allowed"
    # Others still invite carol.
    ours = await group_of(ann)
    await done(ann, {"msgid": MsgId.INVITE, "groupid": ours, "userid": carol.id})
    await event(carol, event="invited", groupid=ours, by=ann.id)
    # Blocking eve deletes hers; ann's stays.
    await done(carol, {"msgid": MsgId.BLOCK, "userid": eve.id})
    lst = await carol.conn.request({"msgid": MsgId.LIST_INVITES}, MsgId.INVITE_LIST)
    assert [i["groupid"] for i in lst["invites"]] == [ours]
    # The bound on all of them (rows written straight: 200 inviters' worth).
    assert isinstance(node.store, SqlStore)
    async with node.store.engine.begin() as db:
        rows = [
            {"groupid": 10_000_000 + i, "userid": carol.id, "inviter": 10_000_000 + i}
            for i in range(MAX_INVITES - 1)
        ]
        await db.execute(insert(groupinvite), rows)
    theirs = await group_of(dave)
    err = await refused(dave, {"msgid": MsgId.INVITE, "groupid": theirs, "userid": carol.id}, 173)
    assert err["errmsg"].startswith(f"user {carol.id} has 200 open invitations, the most")
    assert (await carol.conn.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG


async def test_block_checks_read_no_database_per_message(user: UserFactory, node: Node) -> None:
    from sqlalchemy import event as sa_event

    from clusterchat.storage.sql import SqlStore

    ann, bob, carol = await user(), await user(), await user()
    gid = await group_of(ann, bob, carol)
    await group_chat(carol, gid, "warm the member cache")
    for u in (ann, bob):
        await u.conn.expect(MsgId.GROUP_CHAT)
    await done(ann, {"msgid": MsgId.BLOCK, "userid": bob.id})
    assert isinstance(node.store, SqlStore)
    statements: list[str] = []

    def seen(_conn: object, _cur: object, sql: str, *_: object) -> None:
        statements.append(sql)

    engine = node.store.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", seen)
    try:
        for i in range(20):
            await refused(bob, {"msgid": MsgId.ONE_CHAT, "toid": ann.id, "msg": str(i)}, 123)
            await group_chat(bob, gid, str(i))
            assert (await carol.conn.expect(MsgId.GROUP_CHAT))["msg"] == str(i)
    finally:
        sa_event.remove(engine, "before_cursor_execute", seen)
    # History is written by its own batched writer, off the chat path (issue 16).
    assert [s for s in statements if not s.startswith("INSERT INTO history")] == []
