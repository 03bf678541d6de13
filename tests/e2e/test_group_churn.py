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

from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from tests.conftest import UserFactory
from tests.e2e.test_manage import done, event, group_of, roles

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
