"""The original C++ client (NUL-terminated requests, alphabetically sorted keys)
must see exactly the reply kinds the original server sent: 2, 5, 6 and 10."""

from __future__ import annotations

import json
from collections.abc import Mapping

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import LEGACY_REPLIES, MsgId
from tests.conftest import PASSWORD, Connect, UserFactory, unique


def nlohmann(doc: Mapping[str, object]) -> bytes:
    """What the original client puts on the wire: sorted keys, then NUL."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\x00"


async def sync(conn: ChatConnection) -> None:
    """A request with a known reply: whatever arrives first must be it."""
    await conn.send_raw(nlohmann({"msgid": 1, "id": 2_000_000_000, "password": "x"}))
    ack = await conn.recv()
    assert ack["msgid"] == MsgId.LOGIN_ACK and ack["errno"] in (1, 3), ack


async def test_original_client_session_sees_only_original_reply_types(
    connect: Connect, user: UserFactory
) -> None:
    modern = await user()
    legacy = await connect(legacy=True)
    name = unique()
    await legacy.send_raw(nlohmann({"msgid": 4, "name": name, "password": PASSWORD}))
    reg = await legacy.expect(MsgId.REG_ACK)
    assert reg["errno"] == 0
    uid = reg["id"]
    await legacy.send_raw(nlohmann({"msgid": 1, "id": uid, "password": PASSWORD}))
    login = await legacy.expect(MsgId.LOGIN_ACK)
    assert login["errno"] == 0 and login["name"] == name

    # Every request of the original that has no reply gets none.
    gname = unique("g")
    for req in (
        {"msgid": 6, "id": uid, "name": name, "toid": modern.id, "msg": "hi", "time": "t"},
        {"msgid": 7, "id": uid, "friendid": modern.id},
        {"msgid": 8, "id": uid, "groupname": gname, "groupdesc": "d"},
        {"msgid": 7, "id": uid, "friendid": uid},  # refused: logged, not answered
        {"msgid": 9, "id": uid, "groupid": 2_000_000_000},  # refused
        {"msgid": 10, "id": uid, "groupid": 2_000_000_000, "msg": "x", "time": "t"},
        {"msgid": 12},  # a ping is ours, not the original's
        {"msgid": 77},
    ):
        await legacy.send_raw(nlohmann(req))
    await legacy.send_raw(b"garbage\x00")
    await sync(legacy)
    assert (await modern.conn.expect(MsgId.ONE_CHAT))["msg"] == "hi"

    # Incoming chat reaches it in the original's shape.
    await modern.conn.send({"msgid": 6, "toid": uid, "msg": "back"})
    got = await legacy.recv()
    assert got["msgid"] == MsgId.ONE_CHAT and got["msg"] == "back" and got["id"] == modern.id

    # Logout: no reply, connection stays usable, login again works.
    await legacy.send_raw(nlohmann({"msgid": 3, "id": uid}))
    await sync(legacy)
    await legacy.send_raw(nlohmann({"msgid": 1, "id": uid, "password": PASSWORD}))
    again = await legacy.expect(MsgId.LOGIN_ACK)
    assert again["errno"] == 0
    (group,) = [json.loads(g) for g in again["groups"]]
    assert group["groupname"] == gname
    assert [json.loads(f)["id"] for f in again["friends"]] == [modern.id]


async def test_original_client_gets_login_and_register_refusals_in_its_own_shape(
    connect: Connect, user: UserFactory
) -> None:
    taken = await user()
    legacy = await connect(legacy=True)
    await legacy.send_raw(nlohmann({"msgid": 4, "name": taken.name, "password": "p"}))
    reg = await legacy.recv()
    assert reg["msgid"] == MsgId.REG_ACK and reg["errno"] == 1
    await legacy.send_raw(nlohmann({"msgid": 1, "id": taken.id, "password": PASSWORD}))
    dup = await legacy.recv()
    assert dup["msgid"] == MsgId.LOGIN_ACK and dup["errno"] == 2
    await legacy.send_raw(b'{"msgid":1,"id":"seven","password":"p"}\x00')
    bad = await legacy.recv()
    assert bad["msgid"] == MsgId.LOGIN_ACK and bad["errno"] == 1
    assert bad["msgid"] in LEGACY_REPLIES
