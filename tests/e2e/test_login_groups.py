"""A login reply's groups: members encoded once per group, not per login
(service/rosters.py), and still what the store holds after every change.

The documents must be exactly what building each member's document per
login gave (codec.group_doc of codec.member_doc), on SQLite and MariaDB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, User, UserFactory, unique


@contextmanager
def member_reads(node: Node) -> Iterator[list[str]]:
    """The statements that read groups' members, while inside."""
    seen: list[str] = []
    engine = node.service.store.engine.sync_engine  # type: ignore[attr-defined]

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "groupuser.grouprole" in statement:  # the members query's own column
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


async def ask(u: User, doc: dict[str, Any], reply: int) -> dict[str, Any]:
    """The reply to ``doc``, past the group events pushed before it."""
    await u.conn.send(doc)
    while (got := await u.conn.recv())["msgid"] == MsgId.GROUP_EVENT:
        pass
    assert got["msgid"] == reply and got.get("errno", 0) == 0, got
    return got


async def relogin(u: User) -> dict[str, Any]:
    await ask(u, {"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    ack = await u.conn.login(u.id, PASSWORD)
    assert ack["errno"] == 0, ack
    return ack


def expected_doc(gid: int, name: str, desc: str, members: list[tuple[User, str, bool]]) -> str:
    """The group document as built per member before rosters (by user id)."""
    docs = [
        codec.member_doc(u.id, u.name, online, role)
        for u, role, online in sorted(members, key=lambda m: m[0].id)
    ]
    return codec.group_doc(gid, name, desc, docs)


async def test_second_login_reads_no_members_and_shows_the_same(
    node: Node, user: UserFactory
) -> None:
    ann, bob, carol = await user(), await user(name=unique('q"\\é')), await user()
    gname = unique("g")
    gid = (
        await ann.conn.request(
            {"msgid": MsgId.CREATE_GROUP, "groupname": gname, "groupdesc": 'a "desc"'},
            MsgId.CREATE_GROUP_ACK,
        )
    )["groupid"]
    for u in (bob, carol):
        await u.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await ask(carol, {"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    want = expected_doc(
        gid,
        gname,
        'a "desc"',
        [(ann, "creator", True), (bob, "normal", True), (carol, "normal", False)],
    )
    with member_reads(node) as reads:
        first = await relogin(bob)
        assert first["groups"] == [want]
        assert len(reads) == 1  # the group's members, read once
        second = await relogin(bob)
        assert second["groups"] == [want]
        assert len(reads) == 1, "the second login read the members again"


async def test_changes_show_at_the_next_login(node: Node, user: UserFactory) -> None:
    ann, bob, carol, dave = await user(), await user(), await user(), await user()
    gname = unique("g")
    gid = (
        await ann.conn.request(
            {"msgid": MsgId.CREATE_GROUP, "groupname": gname, "groupdesc": "d"},
            MsgId.CREATE_GROUP_ACK,
        )
    )["groupid"]
    await bob.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)

    async def users_seen() -> dict[int, tuple[str, str]]:
        (doc,) = (await relogin(bob))["groups"]
        return {m["id"]: (m["role"], m["state"]) for m in map(json.loads, json.loads(doc)["users"])}

    assert await users_seen() == {ann.id: ("creator", "online"), bob.id: ("normal", "online")}
    # A join.
    await ask(carol, {"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await ask(dave, {"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    assert set(await users_seen()) == {ann.id, bob.id, carol.id, dave.id}
    # A role.
    role = {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": carol.id, "role": "admin"}
    await ask(ann, role, MsgId.DONE)
    assert (await users_seen())[carol.id] == ("admin", "online")
    # Presence is per login, not cached: carol goes away.
    await ask(carol, {"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    assert (await users_seen())[carol.id] == ("admin", "offline")
    # A removal and a departure.
    remove = {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": carol.id}
    await ask(ann, remove, MsgId.DONE)
    await ask(dave, {"msgid": MsgId.LEAVE_GROUP, "groupid": gid}, MsgId.DONE)
    assert await users_seen() == {ann.id: ("creator", "online"), bob.id: ("normal", "online")}
    # A new name and description.
    edit = {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupname": gname + "x", "groupdesc": "e"}
    await ask(ann, edit, MsgId.DONE)
    (doc,) = (await relogin(bob))["groups"]
    assert (json.loads(doc)["groupname"], json.loads(doc)["groupdesc"]) == (gname + "x", "e")
