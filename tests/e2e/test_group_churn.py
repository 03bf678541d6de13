"""Joining and leaving a group in a loop is held back: each change rereads
the group's roster under its lock, drops every node's cached member list
and tells every member, so a few accounts churning a big group slowed its
members' chats from 2 ms to 220 ms (/tmp/attack/groupstorm.py in the
commit message). After leaving, one waits ``--rejoin-after`` to join again."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import pytest
from sqlalchemy import event as sa_event

from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from tests.conftest import UserFactory
from tests.e2e.test_manage import done, event, group_of, refused, roles

REJOIN_AFTER = 3.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, limits=replace(settings.limits, rejoin_after=REJOIN_AFTER))


async def test_leaving_then_joining_again_waits(user: UserFactory) -> None:
    ann, bob, carol = await user(), await user(), await user()
    gid = await group_of(ann, bob)
    join = {"msgid": MsgId.ADD_GROUP, "groupid": gid}
    await done(bob, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid})
    left = time.monotonic()
    await event(ann, event="left", id=bob.id)
    err = await bob.conn.request(join, MsgId.ERROR)
    assert err["errno"] == ErrCode.TOO_FAST and err["re"] == MsgId.ADD_GROUP, err
    assert re.search(r"join it again in [1-3] s$", err["errmsg"]), err
    # Nothing happened: ann was told nothing, bob is not a member.
    assert (await ann.conn.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    assert set(await roles(ann, gid)) == {ann.id}
    # Others are not held back, nor is bob with another group.
    await carol.conn.request(join, MsgId.ADD_GROUP_ACK)
    other = await group_of(carol)
    await bob.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": other}, MsgId.ADD_GROUP_ACK)
    # Once the wait is over, bob joins again.
    await asyncio.sleep(max(0.0, left + REJOIN_AFTER - time.monotonic()))
    await bob.conn.request(join, MsgId.ADD_GROUP_ACK)
    assert set(await roles(ann, gid)) == {ann.id, bob.id, carol.id}


async def test_refusals_the_actor_decides_take_no_lock_and_read_no_roster(
    user: UserFactory, node: Node
) -> None:
    """A non-member leaving, a normal member editing or removing, anyone
    targeting themselves: refused from the actor's own row. Before, each
    read the whole roster under the group's lock first (20 accounts doing
    it to a 1,000-member group: others' store 23 -> 76 ms, login 28 -> 164 ms)."""
    ann, bob, eve = await user(), await user(), await user()
    gid = await group_of(ann, bob)
    assert isinstance(node.store, SqlStore)
    statements: list[str] = []

    def seen(_conn: object, _cur: object, sql: str, *_: object) -> None:
        statements.append(sql)

    engine = node.store.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", seen)
    try:
        await refused(eve, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid}, ErrCode.NOT_GROUP_MEMBER)
        edit = {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupdesc": "mine now"}
        await refused(bob, edit, ErrCode.NOT_ALLOWED)
        remove = {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": ann.id}
        await refused(bob, remove, ErrCode.NOT_ALLOWED)
        await refused(ann, {**remove, "userid": ann.id}, ErrCode.SELF_TARGET)
        await refused(eve, {"msgid": MsgId.LEAVE_GROUP, "groupid": 2_000_000_000}, 130)
    finally:
        sa_event.remove(engine, "before_cursor_execute", seen)
    roster = [s for s in statements if "groupuser.joined" in s or "FOR UPDATE" in s]
    assert roster == [] and len(statements) <= 10, statements
    # What the roster decides still goes through it: ann removes bob.
    await done(ann, {**remove, "userid": bob.id})
    assert set(await roles(ann, gid)) == {ann.id}


async def test_befriending_again_waits(user: UserFactory) -> None:
    """Adding and removing a user in a loop pushed them an event each time
    (and the web client refreshed its lists for each): once a friendship
    ends, by either, befriending again waits --rejoin-after."""
    eve, carol, dave = await user(), await user(), await user()
    add = {"msgid": MsgId.ADD_FRIEND, "friendid": carol.id}
    await eve.conn.request(add, MsgId.ADD_FRIEND_ACK)
    await carol.conn.expect(MsgId.FRIEND_ADDED)
    await done(eve, {"msgid": MsgId.REMOVE_FRIEND, "friendid": carol.id})
    assert (await carol.conn.expect(MsgId.FRIEND_EVENT))["event"] == "unfriended"
    err = await refused(eve, add, ErrCode.TOO_FAST)
    assert re.search(r"ended moments ago; you may add them again in \d+ s$", err["errmsg"]), err
    # Either way round, and nothing reached carol.
    await refused(carol, {"msgid": MsgId.ADD_FRIEND, "friendid": eve.id}, ErrCode.TOO_FAST)
    assert (await carol.conn.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    # Others are not held back.
    await dave.conn.request(add, MsgId.ADD_FRIEND_ACK)
    await carol.conn.expect(MsgId.FRIEND_ADDED)
