"""The original's feature set, over real TCP, on SQLite and on MariaDB."""

from __future__ import annotations

import asyncio
import json

import pytest

from clusterchat.protocol.framing import DEFAULT_MAX_FRAME
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, Connect, UserFactory, unique
from tests.e2e.test_memory_budget import stalled_user


async def test_register_then_login_returns_identity(connect: Connect) -> None:
    conn = await connect()
    name = unique()
    uid = await conn.register(name, PASSWORD)
    ack = await conn.login(uid, PASSWORD)
    ticket = ack.pop("ticket")
    limit = ack.pop("maxframe")  # the longest request the node takes (issue 12)
    assert ack == {"msgid": MsgId.LOGIN_ACK, "errno": 0, "id": uid, "name": name}
    assert limit == DEFAULT_MAX_FRAME
    assert isinstance(ticket, str) and len(ticket) >= 32


async def test_ticket_logs_in_again_until_logout(connect: Connect, node: Node) -> None:
    conn = await connect()
    uid = await conn.register(unique(), PASSWORD)
    ticket = (await conn.login(uid, PASSWORD))["ticket"]
    await conn.close()  # dropped, not logged out: the ticket still works
    async with asyncio.timeout(5):
        while uid in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    again = await connect()
    ack = await again.request({"msgid": 1, "id": uid, "ticket": ticket}, MsgId.LOGIN_ACK)
    # Tickets rotate (issue 13): the reply carries a new one, the old is dead.
    assert ack["errno"] == 0 and ack["ticket"] != ticket
    ticket = ack["ticket"]
    await again.request({"msgid": 3}, MsgId.LOGOUT_ACK)  # logout revokes it
    ack = await again.request({"msgid": 1, "id": uid, "ticket": ticket}, MsgId.LOGIN_ACK)
    assert ack["errno"] == 1
    wrong = await again.request({"msgid": 1, "id": uid, "ticket": "x" * 43}, MsgId.LOGIN_ACK)
    assert wrong["errno"] == 1
    none = await again.request({"msgid": 1, "id": uid}, MsgId.LOGIN_ACK)
    assert none["errno"] == 1


async def test_register_refuses_a_taken_name(connect: Connect) -> None:
    conn = await connect()
    name = unique()
    await conn.register(name, PASSWORD)
    ack = await conn.request({"msgid": MsgId.REG, "name": name, "password": "x"}, MsgId.REG_ACK)
    assert ack["errno"] == 1
    assert "taken" in ack["errmsg"]


async def test_login_with_wrong_password_or_unknown_id(connect: Connect) -> None:
    conn = await connect()
    uid = await conn.register(unique(), PASSWORD)
    assert (await conn.login(uid, "wrong"))["errno"] == 1
    assert (await conn.login(2_000_000_000, PASSWORD))["errno"] == 1


async def test_duplicate_login_is_refused_with_errno_2(user: UserFactory, connect: Connect) -> None:
    alice = await user()
    other = await connect()
    ack = await other.login(alice.id, PASSWORD)
    assert ack["errno"] == 2
    assert "logged in elsewhere" in ack["errmsg"] and "log out there" in ack["errmsg"]


async def test_one_to_one_chat_carries_sender_identity_and_server_stamp(
    user: UserFactory,
) -> None:
    alice, bob = await user(), await user()
    await alice.conn.send(
        {"msgid": 6, "id": alice.id, "name": alice.name, "toid": bob.id, "msg": "hi", "time": "t"}
    )
    got = await bob.conn.expect(MsgId.ONE_CHAT)
    assert (got["id"], got["name"], got["toid"], got["msg"], got["time"]) == (
        alice.id,
        alice.name,
        bob.id,
        "hi",
        "t",
    )
    assert isinstance(got["ts"], int) and got["ts"] > 0
    ack = await alice.conn.expect(MsgId.CHAT_ACK)
    assert ack["status"] == "delivered" and ack["mid"] == got["mid"]


async def test_sender_identity_comes_from_the_session_not_the_message(
    user: UserFactory,
) -> None:
    alice, bob, mallory = await user(), await user(), await user()
    await mallory.conn.send(
        {"msgid": 6, "id": alice.id, "name": alice.name, "toid": bob.id, "msg": "from alice?"}
    )
    got = await bob.conn.expect(MsgId.ONE_CHAT)
    assert (got["id"], got["name"]) == (mallory.id, mallory.name)


async def test_before_login_only_register_login_and_ping_are_accepted(
    connect: Connect, user: UserFactory
) -> None:
    bob = await user()
    conn = await connect()
    for req in (
        {"msgid": 6, "id": 1, "toid": bob.id, "msg": "x"},
        {"msgid": 7, "id": 1, "friendid": bob.id},
        {"msgid": 8, "id": 1, "groupname": unique("g"), "groupdesc": ""},
        {"msgid": 9, "id": 1, "groupid": 1},
        {"msgid": 10, "id": 1, "groupid": 1, "msg": "x"},
        {"msgid": 3, "id": 1},
    ):
        err = await conn.request(req, MsgId.ERROR)
        assert err["errno"] == ErrCode.NOT_LOGGED_IN and err["re"] == req["msgid"]
    pong = await conn.request({"msgid": MsgId.PING}, MsgId.PONG)
    assert isinstance(pong["node"], str)
    # Nothing reached bob.
    await bob.conn.send({"msgid": MsgId.PING})
    assert (await bob.conn.recv())["msgid"] == MsgId.PONG


async def test_offline_messages_arrive_at_next_login_in_order_then_are_gone(
    user: UserFactory, connect: Connect
) -> None:
    alice, bob = await user(), await user()
    await bob.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    texts = [f"m{i}" for i in range(5)] + ["x" * 5000]  # no 500-byte cap
    for t in texts:
        await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": t})
        assert (await alice.conn.expect(MsgId.CHAT_ACK))["status"] == "stored"
    ack = await bob.conn.login(bob.id, PASSWORD)
    stored = [json.loads(m) for m in ack["offlinemsg"]]
    assert [m["msg"] for m in stored] == texts
    assert all(m["id"] == alice.id and m["msgid"] == 6 for m in stored)
    await bob.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    again = await bob.conn.login(bob.id, PASSWORD)
    assert "offlinemsg" not in again


async def test_logout_keeps_the_connection_and_marks_offline(
    user: UserFactory, connect: Connect
) -> None:
    alice = await user()
    assert await alice.conn.request({"msgid": 3, "id": alice.id}, MsgId.LOGOUT_ACK)
    # Another connection may now log in as alice; the first stays usable.
    other = await connect()
    assert (await other.login(alice.id, PASSWORD))["errno"] == 0
    assert await alice.conn.request({"msgid": MsgId.PING}, MsgId.PONG)


async def test_dropped_connection_marks_the_user_offline(
    user: UserFactory, connect: Connect, node: Node
) -> None:
    alice = await user()
    await alice.conn.close()
    async with asyncio.timeout(5):
        while alice.id in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    again = await connect()
    assert (await again.login(alice.id, PASSWORD))["errno"] == 0


async def test_a_message_crossing_the_receivers_close_is_kept(
    user: UserFactory, connect: Connect, node: Node
) -> None:
    """Written to bob's socket just as bob's client went away, unread: the
    server cannot know whether it was read, so it keeps it for bob's next
    login (at least once; a duplicate carries the same mid)."""
    alice = await user()
    # bob's client never reads again: what the node writes him stays in his
    # kernel, unread, as with a client that died before it got to it.
    bob, bob_id = await stalled_user(node.port)
    ack = await alice.conn.request(
        {"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": "crossing"}, MsgId.CHAT_ACK
    )
    assert ack["status"] == "delivered"
    bob.close()  # gone without handling what had arrived (unread: the kernel resets)
    async with asyncio.timeout(5):
        while bob_id in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    again = await connect()
    login = await again.login(bob_id, PASSWORD)
    assert [json.loads(m)["msg"] for m in login["offlinemsg"]] == ["crossing"]
    assert json.loads(login["offlinemsg"][0])["mid"] == ack["mid"]


async def test_a_receiver_that_logs_out_gets_nothing_twice(
    user: UserFactory, connect: Connect
) -> None:
    alice, bob = await user(), await user()
    await alice.conn.request(
        {"msgid": MsgId.ONE_CHAT, "toid": bob.id, "msg": "once"}, MsgId.CHAT_ACK
    )
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "once"
    await bob.conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    await bob.conn.close()
    again = await connect()
    assert not (await again.login(bob.id, PASSWORD)).get("offlinemsg")


async def test_friendship_is_mutual_with_live_state(user: UserFactory, connect: Connect) -> None:
    alice, bob = await user(), await user()
    ack = await alice.conn.request({"msgid": 7, "friendid": bob.id}, MsgId.ADD_FRIEND_ACK)
    assert ack["friend"] == {"id": bob.id, "name": bob.name, "state": "online"}
    # bob is told at once (issue 12): FRIEND_ADDED, pushed.
    told = await bob.conn.expect(MsgId.FRIEND_ADDED)
    assert told["friend"] == {"id": alice.id, "name": alice.name, "state": "online"}
    await alice.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    await bob.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    a = await alice.conn.login(alice.id, PASSWORD)
    assert [json.loads(f) for f in a["friends"]] == [
        {"id": bob.id, "name": bob.name, "state": "offline"}
    ]
    b = await bob.conn.login(bob.id, PASSWORD)
    assert [json.loads(f) for f in b["friends"]] == [
        {"id": alice.id, "name": alice.name, "state": "online"}
    ]


async def test_add_friend_refusals(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    err = await alice.conn.request({"msgid": 7, "friendid": alice.id}, MsgId.ERROR)
    assert err["errno"] == ErrCode.FRIEND_SELF
    err = await alice.conn.request({"msgid": 7, "friendid": 2_000_000_000}, MsgId.ERROR)
    assert err["errno"] == ErrCode.NO_SUCH_USER
    await alice.conn.request({"msgid": 7, "friendid": bob.id}, MsgId.ADD_FRIEND_ACK)
    await bob.conn.expect(MsgId.FRIEND_ADDED)
    err = await bob.conn.request({"msgid": 7, "friendid": alice.id}, MsgId.ERROR)
    assert err["errno"] == ErrCode.ALREADY_FRIENDS


async def test_groups_create_join_chat_and_login_view(user: UserFactory) -> None:
    alice, bob, carol, dave = await user(), await user(), await user(), await user()
    gname = unique("g")
    created = await alice.conn.request(
        {"msgid": 8, "groupname": gname, "groupdesc": "about"}, MsgId.CREATE_GROUP_ACK
    )
    gid = created["groupid"]
    for u in (bob, carol):
        ack = await u.conn.request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
        assert ack["groupid"] == gid
    await bob.conn.send({"msgid": 10, "groupid": gid, "msg": "hello group"})
    for u in (alice, carol):
        got = await u.conn.expect(MsgId.GROUP_CHAT)
        assert (got["id"], got["name"], got["groupid"], got["msg"]) == (
            bob.id,
            bob.name,
            gid,
            "hello group",
        )
    assert (await bob.conn.expect(MsgId.CHAT_ACK))["status"] == "sent"
    # A non-member can neither send to nor read the group.
    err = await dave.conn.request({"msgid": 10, "groupid": gid, "msg": "sneak"}, MsgId.ERROR)
    assert err["errno"] == ErrCode.NOT_GROUP_MEMBER
    # Login shows groups with members and roles.
    await carol.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    ack = await carol.conn.login(carol.id, PASSWORD)
    (group,) = [json.loads(g) for g in ack["groups"]]
    assert (group["id"], group["groupname"], group["groupdesc"]) == (gid, gname, "about")
    users = {u["id"]: u for u in map(json.loads, group["users"])}
    assert users[alice.id] == {
        "id": alice.id,
        "name": alice.name,
        "state": "online",
        "role": "creator",
    }
    assert users[bob.id]["role"] == "normal" and users[carol.id]["role"] == "normal"


async def test_group_refusals(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    gname = unique("g")
    gid = (await alice.conn.request({"msgid": 8, "groupname": gname}, MsgId.CREATE_GROUP_ACK))[
        "groupid"
    ]
    err = await bob.conn.request({"msgid": 8, "groupname": gname, "groupdesc": ""}, MsgId.ERROR)
    assert err["errno"] == ErrCode.GROUP_NAME_TAKEN and gname in err["errmsg"]
    err = await bob.conn.request({"msgid": 9, "groupid": 2_000_000_000}, MsgId.ERROR)
    assert err["errno"] == ErrCode.NO_SUCH_GROUP
    err = await alice.conn.request({"msgid": 9, "groupid": gid}, MsgId.ERROR)
    assert err["errno"] == ErrCode.ALREADY_MEMBER
    err = await bob.conn.request({"msgid": 10, "groupid": 2_000_000_000, "msg": "x"}, MsgId.ERROR)
    assert err["errno"] == ErrCode.NO_SUCH_GROUP


async def test_group_messages_to_offline_members_are_stored(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    gid = (
        await alice.conn.request({"msgid": 8, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK)
    )["groupid"]
    await bob.conn.request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await bob.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    await alice.conn.send({"msgid": 10, "groupid": gid, "msg": "while you were out"})
    assert (await alice.conn.expect(MsgId.CHAT_ACK))["status"] == "sent"
    ack = await bob.conn.login(bob.id, PASSWORD)
    (stored,) = [json.loads(m) for m in ack["offlinemsg"]]
    assert (stored["msgid"], stored["groupid"], stored["msg"]) == (10, gid, "while you were out")


async def test_chat_to_unknown_user_is_refused(user: UserFactory) -> None:
    alice = await user()
    err = await alice.conn.request({"msgid": 6, "toid": 2_000_000_000, "msg": "x"}, MsgId.ERROR)
    assert err["errno"] == ErrCode.NO_SUCH_USER


@pytest.mark.unmetered
async def test_messages_between_two_users_keep_their_order(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    for i in range(200):
        await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": str(i)})
    got = [int((await bob.conn.expect(MsgId.ONE_CHAT))["msg"]) for _ in range(200)]
    assert got == list(range(200))


async def test_list_friends_and_groups_with_live_state(user: UserFactory) -> None:
    alice, bob, carol = await user(), await user(), await user()
    await alice.conn.request({"msgid": 7, "friendid": bob.id}, MsgId.ADD_FRIEND_ACK)
    await alice.conn.request({"msgid": 7, "friendid": carol.id}, MsgId.ADD_FRIEND_ACK)
    for friend in (bob, carol):
        await friend.conn.expect(MsgId.FRIEND_ADDED)
    await carol.conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
    got = await alice.conn.request({"msgid": MsgId.LIST_FRIENDS}, MsgId.FRIEND_LIST)
    assert got["friends"] == [
        {"id": bob.id, "name": bob.name, "state": "online"},
        {"id": carol.id, "name": carol.name, "state": "offline"},
    ]
    gname = unique("g")
    gid = (
        await bob.conn.request(
            {"msgid": 8, "groupname": gname, "groupdesc": "d"}, MsgId.CREATE_GROUP_ACK
        )
    )["groupid"]
    await alice.conn.request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    got = await alice.conn.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
    assert got["groups"] == [
        {
            "id": gid,
            "groupname": gname,
            "groupdesc": "d",
            "users": [
                {"id": alice.id, "name": alice.name, "state": "online", "role": "normal"},
                {"id": bob.id, "name": bob.name, "state": "online", "role": "creator"},
            ],
        }
    ]
