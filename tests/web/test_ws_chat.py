"""The service over WebSocket is the service over TCP: chat, offline, groups,
errors and tickets, between WebSocket and TCP users on one node."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.utils import apply_mask

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.server.websocket import WsConnection, between_frames
from tests.conftest import PASSWORD, unique
from tests.web.conftest import WsChat


async def _logged_in(conn: ChatConnection) -> tuple[int, str]:
    name = unique()
    uid = await conn.register(name, PASSWORD)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return uid, name


async def test_web_and_tcp_users_chat_both_ways_and_offline(ws_node: Node) -> None:
    web = await WsChat.open_ws(ws_node.http.port)
    tcp = await ChatConnection.open("127.0.0.1", ws_node.port)
    web_id, web_name = await _logged_in(web)
    tcp_id, _ = await _logged_in(tcp)

    ack = await web.request({"msgid": MsgId.ADD_FRIEND, "friendid": tcp_id}, MsgId.ADD_FRIEND_ACK)
    assert ack["friend"]["state"] == "online"
    added = await tcp.expect(MsgId.FRIEND_ADDED)
    assert added["friend"] == {"id": web_id, "name": web_name, "state": "online"}
    ack = await web.request({"msgid": 6, "toid": tcp_id, "msg": "hi tcp"}, MsgId.CHAT_ACK)
    assert ack["status"] == "delivered"
    got = await tcp.expect(MsgId.ONE_CHAT)
    assert (got["id"], got["name"], got["msg"], got["mid"]) == (
        web_id,
        web_name,
        "hi tcp",
        ack["mid"],
    )
    await tcp.send({"msgid": 6, "toid": web_id, "msg": "hi web\nsecond line"})
    assert (await tcp.expect(MsgId.CHAT_ACK))["status"] == "delivered"
    assert (await web.expect(MsgId.ONE_CHAT))["msg"] == "hi web\nsecond line"

    # Many at once: each is its own WebSocket message, in order.
    for i in range(30):
        await tcp.send({"msgid": 6, "toid": web_id, "msg": f"n{i}"})
    got_texts: list[str] = []
    acks = 0
    while len(got_texts) < 30 or acks < 30:
        if acks < 30:
            assert (await tcp.expect(MsgId.CHAT_ACK))["status"] == "delivered"
            acks += 1
        if len(got_texts) < 30:
            got_texts.append((await web.expect(MsgId.ONE_CHAT))["msg"])
    assert got_texts == [f"n{i}" for i in range(30)]

    # The web user leaves; what it is sent waits for its next login.
    await web.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    await web.close()
    ack = await tcp.request({"msgid": 6, "toid": web_id, "msg": "later"}, MsgId.CHAT_ACK)
    assert ack["status"] == "stored"
    again = await WsChat.open_ws(ws_node.http.port)
    login = await again.login(web_id, PASSWORD)
    assert [json.loads(m)["msg"] for m in login["offlinemsg"]] == ["later"]
    await again.close()
    await tcp.close()


async def test_groups_across_transports(ws_node: Node) -> None:
    web = await WsChat.open_ws(ws_node.http.port)
    tcp = await ChatConnection.open("127.0.0.1", ws_node.port)
    await _logged_in(web)
    tcp_id, _ = await _logged_in(tcp)
    made = await web.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g"), "groupdesc": "d"},
        MsgId.CREATE_GROUP_ACK,
    )
    gid = made["groupid"]
    await tcp.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    ack = await web.request({"msgid": 10, "groupid": gid, "msg": "hello all"}, MsgId.CHAT_ACK)
    assert ack["status"] == "sent"
    assert (await tcp.expect(MsgId.GROUP_CHAT))["msg"] == "hello all"
    await tcp.send({"msgid": 10, "groupid": gid, "msg": "hello web"})
    await tcp.expect(MsgId.CHAT_ACK)
    got = await web.expect(MsgId.GROUP_CHAT)
    assert (got["id"], got["msg"]) == (tcp_id, "hello web")
    listed = await web.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
    assert {u["id"] for u in listed["groups"][0]["users"]} >= {tcp_id}
    await web.close()
    await tcp.close()


async def test_errors_and_tickets(ws_node: Node) -> None:
    web = await WsChat.open_ws(ws_node.http.port)
    await web.send_raw(b"not json\n")
    assert (await web.expect(MsgId.ERROR))["errno"] == ErrCode.MALFORMED
    ack = await web.request({"msgid": 6, "toid": 1, "msg": "x"}, MsgId.ERROR)
    assert ack["errno"] == ErrCode.NOT_LOGGED_IN
    assert (await web.request({"msgid": MsgId.PING}, MsgId.PONG))["node"] == ws_node.node_id
    uid, _ = await _logged_in(web)
    login = await web.login(uid, PASSWORD)  # again on the same connection
    assert login["errno"] == 3
    await web.close()

    first = await WsChat.open_ws(ws_node.http.port)
    ack = await first.login(uid, PASSWORD)
    ticket = ack["ticket"]
    await first.abort()  # the browser's connection drops
    again = await WsChat.open_ws(ws_node.http.port)
    for _ in range(100):  # the dropped session's logout is processed a moment later
        resumed = await again.request(
            {"msgid": MsgId.LOGIN, "id": uid, "ticket": ticket}, MsgId.LOGIN_ACK
        )
        if resumed["errno"] != 2:
            break
        await asyncio.sleep(0.05)
    assert resumed["errno"] == 0 and resumed["resumed"] is True
    await again.close()


async def test_web_user_and_original_client_user(ws_node: Node) -> None:
    web = await WsChat.open_ws(ws_node.http.port)
    old = await ChatConnection.open("127.0.0.1", ws_node.port, legacy=True)
    web_id, web_name = await _logged_in(web)
    old_id, _ = await _logged_in(old)
    ack = await web.request({"msgid": 6, "toid": old_id, "msg": "hello, C++"}, MsgId.CHAT_ACK)
    assert ack["status"] == "delivered"
    got = await old.expect(MsgId.ONE_CHAT)
    assert (got["id"], got["name"], got["msg"]) == (web_id, web_name, "hello, C++")
    await old.send({"msgid": 6, "id": old_id, "from": "x", "toid": web_id, "msg": "hi, web"})
    assert (await web.expect(MsgId.ONE_CHAT))["msg"] == "hi, web"  # no ack for the original
    await web.close()
    await old.close()


async def test_web_user_is_told_of_a_new_friend_and_a_join_names_the_group(
    ws_node: Node,
) -> None:
    """Issue 12: FRIEND_ADDED reaches WebSocket users too; ADD_GROUP_ACK says the name."""
    web = await WsChat.open_ws(ws_node.http.port)
    tcp = await ChatConnection.open("127.0.0.1", ws_node.port)
    web_id, _ = await _logged_in(web)
    tcp_id, tcp_name = await _logged_in(tcp)
    await tcp.request({"msgid": MsgId.ADD_FRIEND, "friendid": web_id}, MsgId.ADD_FRIEND_ACK)
    added = await web.expect(MsgId.FRIEND_ADDED)
    assert added["friend"] == {"id": tcp_id, "name": tcp_name, "state": "online"}
    gname = unique("g")
    created = await tcp.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": gname}, MsgId.CREATE_GROUP_ACK
    )
    joined = await web.request(
        {"msgid": MsgId.ADD_GROUP, "groupid": created["groupid"]}, MsgId.ADD_GROUP_ACK
    )
    assert (joined["errno"], joined["groupid"], joined["groupname"]) == (
        0,
        created["groupid"],
        gname,
    )
    await web.close()
    await tcp.close()


async def test_frames_of_every_kind_in_one_read_and_split_across_reads(ws_node: Node) -> None:
    """Chat frames are read in bulk (protocol/wsframes.py); a ping, a
    fragmented message or a frame cut between reads in their midst still
    goes through the library, in order."""
    web = await WsChat.open_ws(ws_node.http.port)  # offers permessage-deflate, as browsers do
    assert web.ws.protocol.extensions == []  # never negotiated: it would cost per message
    ping = json.dumps({"msgid": MsgId.PING}).encode()
    frames = [
        Frame(Opcode.TEXT, ping),
        Frame(Opcode.PING, b"are you there"),
        Frame(Opcode.TEXT, ping[:5], fin=False),
        Frame(Opcode.CONT, ping[5:]),
        Frame(Opcode.TEXT, ping),
        Frame(Opcode.BINARY, ping),
    ]
    data = b"".join(f.serialize(mask=True) for f in frames)
    transport = web.ws.transport
    transport.write(data)
    for _ in range(4):
        got = await web.recv()
        assert got["msgid"] == MsgId.PONG, got
    # One chat frame, then one cut in two: its second half comes in a later read.
    first = frames[0].serialize(mask=True)
    transport.write(first + data[: len(first) + 3])
    assert (await web.recv())["msgid"] == MsgId.PONG
    transport.write(data[len(first) + 3 :])
    for _ in range(4):
        got = await web.recv()
        assert got["msgid"] == MsgId.PONG, got
    await web.close()


async def test_a_frame_whose_header_came_alone_is_finished_by_the_library(ws_node: Node) -> None:
    """The library took the header of a frame cut right after it: the next
    read is that frame's payload, even one whose bytes look like a frame."""
    web = await WsChat.open_ws(ws_node.http.port)
    ping = json.dumps({"msgid": MsgId.PING}).encode()
    n = len(ping)
    assert 6 < n < 126
    # A mask that makes the masked payload a whole masked text frame of its own.
    mask = bytes((ping[0] ^ 0x81, ping[1] ^ (0x80 | (n - 6)), 0, 0))
    header = bytes((0x81, 0x80 | n)) + mask
    transport = web.ws.transport
    # A whole frame first: its PONG says the node has read the header too.
    transport.write(Frame(Opcode.TEXT, ping).serialize(mask=True) + header)
    assert (await web.recv())["msgid"] == MsgId.PONG
    transport.write(apply_mask(ping, mask))
    assert (await web.recv())["msgid"] == MsgId.PONG
    await web.close()


async def test_an_open_websocket_keeps_no_handshake_request(ws_node: Node) -> None:
    """The library's server parser would hold the request (2 KB of
    headers) as long as the connection lives; an idle one should not."""
    web = await WsChat.open_ws(ws_node.http.port)
    (conn,) = [c for c in ws_node.connections if isinstance(c, WsConnection)]
    assert between_frames(conn.ws)
    g: Any = conn.ws.parser
    while g is not None:
        assert not any(isinstance(v, Request) for v in g.gi_frame.f_locals.values())
        g = g.gi_yieldfrom
    await web.send({"msgid": MsgId.PING})  # and it still reads
    assert (await web.recv())["msgid"] == MsgId.PONG
    await web.close()
