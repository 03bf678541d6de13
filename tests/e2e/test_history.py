"""HISTORY over real TCP, on SQLite and MariaDB: 1:1 and group pages newest
first, stable while others write, membership rules, the legacy dialect, a
node with history off, and a tiny retention purged in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from clusterchat.admin import Admin
from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import PUSHED, ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD, Connect, User, UserFactory, unique
from tests.e2e.test_legacy_dialect import nlohmann, sync

pytestmark = pytest.mark.unmetered  # bursts past the flood limit


async def reply(conn: ChatConnection) -> dict[str, Any]:
    """The next reply, skipping chats and events pushed meanwhile."""
    while True:
        msg = await conn.recv()
        if msg["msgid"] not in PUSHED:
            return msg


async def history(conn: ChatConnection, **req: Any) -> dict[str, Any]:
    await conn.send({"msgid": MsgId.HISTORY, **req})
    return await reply(conn)


async def chat(sender: User, toid: int, msg: str) -> dict[str, Any]:
    await sender.conn.send({"msgid": MsgId.ONE_CHAT, "toid": toid, "msg": msg})
    ack = await reply(sender.conn)
    assert ack["msgid"] == MsgId.CHAT_ACK, ack
    return ack


async def group_chat(sender: User, gid: int, msg: str) -> dict[str, Any]:
    await sender.conn.send({"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": msg})
    ack = await reply(sender.conn)
    assert ack["msgid"] == MsgId.CHAT_ACK, ack
    return ack


async def everything(conn: ChatConnection, limit: int, **req: Any) -> list[dict[str, Any]]:
    """Every page back to the start, concatenated (newest first)."""
    out: list[dict[str, Any]] = []
    before = 0
    while True:
        page = await history(conn, before=before, limit=limit, **req)
        assert page["msgid"] == MsgId.HISTORY_PAGE, page
        out += page["messages"]
        if not page["more"]:
            return out
        before = page["messages"][-1]["id"]


async def test_one_to_one_pages_newest_first_for_both_sides(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    acks = [await chat(alice, bob.id, f"a{i}") for i in range(5)]
    acks.append(await chat(bob, alice.id, "b0"))
    await bob.conn.close()  # offline: stored, and kept in history all the same
    acks.append(await chat(alice, bob.id, "while away"))
    assert acks[-1]["status"] == "stored"
    first = await history(alice.conn, userid=bob.id, limit=3)
    assert first["userid"] == bob.id and first["more"] is True
    msgs = first["messages"]
    assert [m["msg"] for m in msgs] == ["while away", "b0", "a4"]
    assert [m["mid"] for m in msgs] == [acks[-1]["mid"], acks[-2]["mid"], acks[-3]["mid"]]
    assert msgs[1]["from"] == bob.id and msgs[1]["name"] == bob.name
    assert msgs[0]["ts"] == acks[-1]["ts"]
    rest = await everything(alice.conn, 3, userid=bob.id)
    assert [m["msg"] for m in rest] == ["while away", "b0", "a4", "a3", "a2", "a1", "a0"]
    ids = [m["id"] for m in rest]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)


async def test_paging_is_stable_while_messages_keep_arriving(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    for i in range(30):
        await chat(alice, bob.id, f"old {i}")
    stop = asyncio.Event()

    async def keep_writing() -> int:
        n = 0
        while not stop.is_set():
            await chat(bob, alice.id, f"new {n}")
            n += 1
        return n

    writer = asyncio.ensure_future(keep_writing())
    try:
        seen: list[dict[str, Any]] = []
        page = await history(alice.conn, userid=bob.id, limit=7)
        seen += page["messages"]
        while page["more"]:
            page = await history(alice.conn, userid=bob.id, limit=7, before=seen[-1]["id"])
            seen += page["messages"]
    finally:
        stop.set()
        written = await writer
    assert written > 0
    ids = [m["id"] for m in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)  # no repeats
    olds = [m["msg"] for m in seen if m["msg"].startswith("old")]
    assert olds == [f"old {i}" for i in reversed(range(30))]  # none skipped


async def test_group_history_is_for_members_from_when_they_joined(
    user: UserFactory, node: Node
) -> None:
    owner, early, late, outsider = await user(), await user(), await user(), await user()
    created = await owner.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g"), "groupdesc": ""},
        MsgId.CREATE_GROUP_ACK,
    )
    gid = created["groupid"]
    await early.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await group_chat(owner, gid, "before late joined")
    await group_chat(early, gid, "still before")
    await asyncio.sleep(0.002)  # join times are kept to the microsecond, chats to the ms
    await late.conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await group_chat(owner, gid, "after late joined")
    page = await history(early.conn, groupid=gid)
    assert page["groupid"] == gid and page["more"] is False
    assert [m["msg"] for m in page["messages"]] == [
        "after late joined",
        "still before",
        "before late joined",
    ]
    assert [m["msg"] for m in (await history(late.conn, groupid=gid))["messages"]] == [
        "after late joined"
    ]
    refused = await history(outsider.conn, groupid=gid)
    assert refused["msgid"] == MsgId.ERROR and refused["errno"] == ErrCode.HISTORY_NOT_MEMBER
    no_group = await history(outsider.conn, groupid=2_000_000_000)
    assert no_group["errno"] == ErrCode.NO_SUCH_GROUP
    # A 1:1 conversation one is not part of is not readable: one only names the other side.
    assert (await history(outsider.conn, userid=owner.id))["messages"] == []
    assert node.service.history is not None and node.service.history.written == 3


async def test_bad_history_requests_get_a_specific_refusal(user: UserFactory) -> None:
    alice = await user()
    for req, code in (
        ({}, ErrCode.HISTORY_TARGET),
        ({"userid": alice.id, "groupid": 1}, ErrCode.HISTORY_TARGET),
        ({"userid": 2_000_000_000}, ErrCode.NO_SUCH_USER),
        ({"userid": alice.id, "limit": 201}, ErrCode.INVALID_FIELD),
        ({"userid": alice.id, "limit": 0}, ErrCode.INVALID_FIELD),
        ({"userid": alice.id, "before": -1}, ErrCode.INVALID_FIELD),
    ):
        got = await history(alice.conn, **req)
        assert got["msgid"] == MsgId.ERROR and got["errno"] == code and got["re"] == 60, (req, got)
    # Talking to oneself is a conversation like another.
    await chat(alice, alice.id, "note to self")
    (mine,) = (await history(alice.conn, userid=alice.id))["messages"]
    assert mine["msg"] == "note to self"


async def test_a_deleted_accounts_messages_are_not_served(user: UserFactory, node: Node) -> None:
    """``clusterchat admin delete`` takes an account's history away (on SQLite
    its id may be given again). What it said after the delete is not served
    either: a lone node without Redis is not told to end the session, and in a
    cluster a node writes what it had queued after the delete. Before, HISTORY
    served those messages with an empty name, and the conversation with the
    gone account to its partner."""
    alice, bob = await user(), await user()
    made = await alice.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g"), "groupdesc": ""},
        MsgId.CREATE_GROUP_ACK,
    )
    gid = made["groupid"]
    await bob.conn.send({"msgid": MsgId.ADD_GROUP, "groupid": gid})
    assert (await reply(bob.conn))["errno"] == 0
    await chat(bob, alice.id, "before")
    await group_chat(bob, gid, "before")
    # Written first (the writer's rounds are its own): else the delete can
    # find one of the two and the other is written after it.
    assert node.service.history is not None and await node.service.history.drain(10)
    async with Admin(node.settings.db_url, None) as admin:
        gone = await admin.delete_user(bob.id)
    assert gone["history_messages"] == 2
    await chat(bob, alice.id, "after")  # nobody told the node: bob's session goes on
    await group_chat(bob, gid, "after")
    await group_chat(alice, gid, "mine")
    await chat(alice, bob.id, "to the gone account")
    page = await history(alice.conn, groupid=gid)
    assert [(m["from"], m["msg"]) for m in page["messages"]] == [(alice.id, "mine")], page
    refused = await history(alice.conn, userid=bob.id)
    assert refused["msgid"] == MsgId.ERROR and refused["errno"] == ErrCode.NO_SUCH_USER, refused


async def test_the_original_client_gets_what_any_unknown_msgid_gets(
    connect: Connect, node: Node
) -> None:
    legacy = await connect(legacy=True)
    await legacy.send_raw(nlohmann({"msgid": 4, "name": unique(), "password": PASSWORD}))
    uid = (await legacy.expect(MsgId.REG_ACK))["id"]
    await legacy.send_raw(nlohmann({"msgid": 1, "id": uid, "password": PASSWORD}))
    assert (await legacy.expect(MsgId.LOGIN_ACK))["errno"] == 0
    before = node.service.counts.refusals.get(("error", ErrCode.UNKNOWN_MSGID), 0)
    await legacy.send_raw(nlohmann({"msgid": 60, "userid": uid}))
    await sync(legacy)  # nothing came before the sync's reply
    assert node.service.counts.refusals[("error", ErrCode.UNKNOWN_MSGID)] == before + 1


@pytest.fixture
async def node_without_history(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, history_days=0))
    await n.start()
    yield n
    await n.stop()


async def test_with_history_off_nothing_is_written_and_requests_are_refused(
    node_without_history: Node,
) -> None:
    node = node_without_history
    assert node.service.history is None
    conns = [await ChatConnection.open("127.0.0.1", node.port) for _ in range(2)]
    try:
        uids = [await c.register(unique(), PASSWORD) for c in conns]
        for c, uid in zip(conns, uids, strict=True):
            assert (await c.login(uid, PASSWORD))["errno"] == 0
        await conns[0].send({"msgid": MsgId.ONE_CHAT, "toid": uids[1], "msg": "hi"})
        assert (await conns[0].expect(MsgId.CHAT_ACK))["status"] == "delivered"
        got = await history(conns[0], userid=uids[1])
        assert got["msgid"] == MsgId.ERROR and got["errno"] == ErrCode.HISTORY_OFF
        store = node.store
        assert getattr(store, "history_rows", 0) == 0
    finally:
        for c in conns:
            await c.close()


@pytest.fixture
async def short_lived(settings: Settings) -> AsyncIterator[Node]:
    n = Node(replace(settings, history_days=1.5 / 86_400))  # 1.5 seconds
    await n.start()
    yield n
    await n.stop()


async def test_a_tiny_retention_is_purged_in_the_background(short_lived: Node) -> None:
    node = short_lived
    conns = [await ChatConnection.open("127.0.0.1", node.port) for _ in range(2)]
    try:
        uids = [await c.register(unique(), PASSWORD) for c in conns]
        for c, uid in zip(conns, uids, strict=True):
            assert (await c.login(uid, PASSWORD))["errno"] == 0
        await conns[0].send({"msgid": MsgId.ONE_CHAT, "toid": uids[1], "msg": "soon gone"})
        await conns[0].expect(MsgId.CHAT_ACK)
        (kept,) = (await history(conns[0], userid=uids[1]))["messages"]
        assert kept["msg"] == "soon gone"
        async with asyncio.timeout(20):  # polled with a deadline
            while not await _purged(node, uids):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert (await history(conns[0], userid=uids[1]))["messages"] == []
    finally:
        for c in conns:
            await c.close()


async def _purged(node: Node, uids: list[int]) -> bool:
    a, b = sorted(uids)
    return not await node.store.history(a, b, 0, 1, 0)  # read without the retention's filter


def test_history_options_come_from_the_command_line_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clusterchat.cli import build_parser

    args = build_parser().parse_args(["server"])
    assert (args.history_days, args.history_queue) == (90.0, 100_000)
    args = build_parser().parse_args(["server", "--history-days", "0", "--history-queue", "9"])
    assert (args.history_days, args.history_queue) == (0.0, 9)
    monkeypatch.setenv("CLUSTERCHAT_HISTORY_DAYS", "0.5")
    monkeypatch.setenv("CLUSTERCHAT_HISTORY_QUEUE", "100")
    args = build_parser().parse_args(["server"])
    assert (args.history_days, args.history_queue) == (0.5, 100)


async def test_a_page_of_long_messages_is_cut_to_what_clients_can_read(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    long = "x" * 15_000  # under the 16 KiB a stored message may have
    for i in range(12):
        await chat(alice, bob.id, f"{i} {long}")
    page = await history(alice.conn, userid=bob.id, limit=200)
    n = len(page["messages"])
    assert 0 < n < 12 and page["more"] is True  # 128 KiB of text at most, not 12 x 15 KB
    rest = await everything(alice.conn, 200, userid=bob.id)
    assert [m["msg"].split()[0] for m in rest] == [str(i) for i in reversed(range(12))]


async def test_a_history_request_does_not_wait_for_the_writers_pace(
    node: Node, user: UserFactory
) -> None:
    # Read-your-writes: a sender's messages still queued (rounds paced 30 s
    # apart here) are in its page at once; the request sends the round now
    # rather than waiting for the pace or its 1 s patience.
    writer = node.service.history
    assert writer is not None
    writer.pace = 30.0
    alice, bob = await user(), await user()
    await chat(alice, bob.id, "first")  # the first round goes at once
    async with asyncio.timeout(10):
        while writer.written < 1:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    await chat(alice, bob.id, "second")
    await chat(bob, alice.id, "third")
    assert writer.pending(alice.id, bob.id) and len(writer) == 2
    loop = asyncio.get_running_loop()
    start = loop.time()
    page = await history(alice.conn, userid=bob.id)
    assert loop.time() - start < 0.5
    assert [m["msg"] for m in page["messages"]] == ["third", "second", "first"]
    # A conversation with nothing queued waits for nothing (a round queued
    # for another is left to its pace).
    carol = await user()
    await chat(alice, carol.id, "elsewhere")
    start = loop.time()
    page = await history(bob.conn, userid=alice.id)
    assert loop.time() - start < 0.5 and len(page["messages"]) == 3
    assert writer.pending(alice.id, carol.id) and len(writer) == 1
    # Shutting down writes it at once, not after the pace (which, longer than
    # the deadline, left it unwritten and the node 10 s in stopping).
    start = loop.time()
    assert await writer.close(5.0) == 0
    assert loop.time() - start < 1.0 and len(writer) == 0
