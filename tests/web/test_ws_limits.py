"""What protects a node protects it over WebSocket too: Origin, message size,
connection limits, timeouts and pings, the flood limit, a reader that stalls."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.server.websocket import WsConnection
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique
from tests.web.conftest import WsChat, ws_settings


async def _node(settings: Settings, **kw: object) -> Node:
    n = Node(ws_settings(settings, **kw))
    await n.start()
    return n


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    yield started
    for n in started:
        await n.stop()


async def test_origin_allow_list(settings: Settings, nodes: list[Node]) -> None:
    same = await _node(settings)
    nodes.append(same)
    port = same.http.port
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{port}/ws", origin="http://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    ok = await connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}")  # type: ignore[arg-type]
    await ok.close()

    listed = await _node(settings, http_origins=("https://chat.example.com",))
    nodes.append(listed)
    port = listed.http.port
    ok = await connect(f"ws://127.0.0.1:{port}/ws", origin="https://chat.example.com")  # type: ignore[arg-type]
    await ok.close()
    with pytest.raises(InvalidStatus):
        await connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}")  # type: ignore[arg-type]


async def test_unreadable_handshakes_get_a_clear_status_not_a_traceback(
    ws_node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """Two Origin (or Host) headers: which would the browser have meant? An
    unclosed IPv6 bracket in the path or the Origin: no address at all.
    Before, each raised (in data_received): the connection was dropped with
    no reply and every such request logged a traceback at ERROR; a POST got
    no reply."""
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    twice = b"one Origin header and one Host header"
    ok = "Host: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\n"
    cases = (
        ("/ws", ok + "Origin: http://evil.example\r\n", b"400", twice),
        ("/ws", ok + "Host: evil.example\r\n", b"400", twice),
        ("//[x", "Host: 127.0.0.1\r\n", b"400", b"unreadable path"),
        ("/ws", "Host: 127.0.0.1\r\nOrigin: http://[::1\r\n", b"403", b"origin may not"),
    )  # fmt: skip
    raw = [(f"GET {p} HTTP/1.1\r\n{h}{upgrade}", status, text) for p, h, status, text in cases]
    # Not a GET at all (pipelined requests: tests/web/test_http_pipelining.py).
    raw.append(
        ("POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi", b"400", b"GET")
    )
    for request, status, text in raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", ws_node.http.port)
        writer.write(request.encode())
        async with asyncio.timeout(10):
            reply = await reader.read()  # the node closes after its answer
        writer.close()
        assert reply.startswith(b"HTTP/1.1 " + status + b" "), (request, reply[:100])
        assert text in reply
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_request_headers_over_32_kib_get_431_and_the_close(ws_node: Node) -> None:
    """Before, the library's own bounds (128 headers of 8 KiB) let each
    unfinished handshake hold ~1 MiB for the login timeout: 100 connections
    from one address took the node from 78 to 182 MiB, 500 from five
    addresses to 546 MiB. A browser's handshake fits many times over."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ws_node.http.port)
    # 34 KB, never finished, in one write: the node reads all of it before
    # its close (unread bytes would make the close a reset, losing the reply).
    header = b"X-A: " + b"a" * 1000 + b"\r\n"
    writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header * 34)
    async with asyncio.timeout(10):
        reply = await reader.read()  # the node answers and closes
    writer.close()
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
    assert b"headers over 32 KiB" in reply
    # A big but ordinary handshake (18 KB of headers) still opens.
    big = {f"X-Big-{i}": "c" * 6000 for i in range(3)}
    web = await WsChat.open_ws(ws_node.http.port, additional_headers=big)
    assert (await web.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    await web.close()


async def test_message_over_max_frame_closes_with_1009(
    settings: Settings, nodes: list[Node]
) -> None:
    n = await _node(settings, max_frame=1024)
    nodes.append(n)
    web = await WsChat.open_ws(n.http.port)
    assert (await web.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    await web.send({"msgid": MsgId.REG, "name": "x" * 2000, "password": PASSWORD})
    await web.at_eof()
    assert web.ws.close_code == 1009
    assert n.connections == set()


_NOT_UTF8 = b'{"msgid":6,"toid":1,"msg":"caf\xe9"}'  # Latin-1, not UTF-8


@pytest.mark.parametrize("path", ["bulk", "fragmented"])
async def test_a_text_message_not_utf8_closes_with_1007(ws_node: Node, path: str) -> None:
    # Before: answered ERROR 100 "not valid JSON in UTF-8", the connection kept
    # (RFC 6455 section 8.1: an endpoint receiving such text fails it, 1007).
    web = await WsChat.open_ws(ws_node.http.port)
    ping = json.dumps({"msgid": MsgId.PING}).encode()
    if path == "bulk":  # the node's own frame reader (protocol/wsframes.py) takes the first
        frames = [Frame(Opcode.TEXT, ping), Frame(Opcode.TEXT, _NOT_UTF8)]
    else:  # the library's parser, a fragmented message after a control frame
        frames = [
            Frame(Opcode.TEXT, ping),
            Frame(Opcode.PING, b""),
            Frame(Opcode.TEXT, _NOT_UTF8[:18], fin=False),
            Frame(Opcode.CONT, _NOT_UTF8[18:]),
        ]
    after = Frame(Opcode.TEXT, ping)  # not read: nothing after the bad one is
    web.ws.transport.write(b"".join(f.serialize(mask=True) for f in [*frames, after]))
    assert (await web.recv())["msgid"] == MsgId.PONG
    with pytest.raises(ConnectionClosed):
        await web.recv()
    await web.at_eof()
    assert web.ws.close_code == 1007
    assert web.ws.close_reason == "text message is not valid UTF-8"


async def test_a_binary_message_not_utf8_is_error_100(ws_node: Node) -> None:
    """Binary messages carry no promise of UTF-8: the request is refused as
    not JSON, as on TCP, and the connection stays."""
    web = await WsChat.open_ws(ws_node.http.port)
    web.ws.transport.write(Frame(Opcode.BINARY, _NOT_UTF8).serialize(mask=True))
    err = await web.recv()
    assert err["errno"] == ErrCode.MALFORMED and "UTF-8" in err["errmsg"], err
    assert (await web.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    await web.close()


async def test_connection_limits_count_websockets(settings: Settings, nodes: list[Node]) -> None:
    n = await _node(settings, max_connections=2)
    nodes.append(n)
    tcp = await ChatConnection.open("127.0.0.1", n.port)
    web = await WsChat.open_ws(n.http.port)
    with pytest.raises(InvalidStatus) as full:
        await WsChat.open_ws(n.http.port)
    assert full.value.response.status_code == 503
    assert json.loads(full.value.response.body)["errno"] == ErrCode.SERVER_FULL
    await web.close()
    await tcp.close()

    per = await _node(settings, max_connections_per_address=1)
    nodes.append(per)
    one = await WsChat.open_ws(per.http.port)
    with pytest.raises(InvalidStatus) as same_address:
        await WsChat.open_ws(per.http.port)
    assert b"your address" in same_address.value.response.body
    await one.close()


async def test_login_timeout(settings: Settings, nodes: list[Node]) -> None:
    n = await _node(settings, login_timeout=0.3)
    nodes.append(n)
    web = await WsChat.open_ws(n.http.port)
    assert (await web.expect(MsgId.ERROR, timeout=10))["errno"] == ErrCode.TIMEOUT
    await web.at_eof()


async def test_headers_too_slow_get_408_before_the_close(
    settings: Settings, nodes: list[Node]
) -> None:
    # Before: a bare close, no status line.
    n = await _node(settings, login_timeout=0.3)
    nodes.append(n)
    reader, writer = await asyncio.open_connection("127.0.0.1", n.http.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
    async with asyncio.timeout(10):
        reply = await reader.read()  # to EOF
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
    assert reply.endswith(b"the request's headers did not arrive in time\n")


@pytest.mark.serial  # times the idle timeout
async def test_pongs_keep_a_quiet_browser_and_a_vanished_one_is_closed(
    settings: Settings, nodes: list[Node]
) -> None:
    idle = 0.8
    n = await _node(settings, idle_timeout=idle)
    nodes.append(n)
    # A live browser: it sends nothing itself, but answers the node's pings.
    quiet = await WsChat.open_ws(n.http.port, ping_interval=None)
    uid = await quiet.register(unique(), PASSWORD)
    assert (await quiet.login(uid, PASSWORD))["errno"] == 0

    # A vanished one: logged in, then never reads or answers again.
    proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{n.http.port}/ws"))
    proto.send_request(proto.connect())
    reader, writer = await asyncio.open_connection("127.0.0.1", n.http.port)
    for chunk in proto.data_to_send():
        writer.write(chunk)
    while proto.state is not State.OPEN:
        proto.receive_data(await reader.read(65536))
    vid = await quiet.register(unique(), PASSWORD)
    proto.send_text(json.dumps({"msgid": 1, "id": vid, "password": PASSWORD}).encode())
    for chunk in proto.data_to_send():
        writer.write(chunk)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.timeout(20):
        while await reader.read(65536):  # the node pings, gets nothing back, closes
            pass
    assert loop.time() - t0 < idle * 4
    writer.close()

    # Three idle timeouts later the live one is still there.
    await asyncio.sleep(idle * 3)  # the quiet period is the point of the test
    assert (await quiet.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    await quiet.close()


async def test_a_message_dribbled_in_fragments_is_cut_off(
    settings: Settings, nodes: list[Node]
) -> None:
    """--frame-timeout holds over WebSocket too: a message sent in
    fragments, one byte every 0.2 s, is refused and the connection closed,
    as a request dribbled over TCP is; before, the node held it (up to
    --max-frame per connection) for as long as the bytes kept coming."""
    n = await _node(settings, frame_timeout=1.0)
    nodes.append(n)
    web = await WsChat.open_ws(n.http.port)
    uid = await web.register(unique(), PASSWORD)
    assert (await web.login(uid, PASSWORD))["errno"] == 0

    async def dribble() -> AsyncIterator[str]:
        for char in '{"msgid":12,"pad":"' + "x" * 100 + '"}':
            yield char
            await asyncio.sleep(0.2)

    sending = asyncio.ensure_future(web.ws.send(dribble()))
    try:
        err = await web.expect(MsgId.ERROR, timeout=10)
        assert err["errno"] == ErrCode.TIMEOUT and "too long to arrive" in err["errmsg"]
        await web.at_eof()
    finally:
        sending.cancel()
    await web.abort()


async def test_flood_limit(ws_node: Node) -> None:
    web = await WsChat.open_ws(ws_node.http.port)
    uid = await web.register(unique(), PASSWORD)
    await web.login(uid, PASSWORD)
    for _ in range(80):
        await web.send({"msgid": MsgId.LIST_FRIENDS})
    replies = [await web.recv() for _ in range(80)]
    refused = [r for r in replies if r["msgid"] == MsgId.ERROR]
    assert refused and all(r["errno"] == ErrCode.TOO_FAST for r in refused)
    assert len(replies) - len(refused) >= 50  # the burst
    await web.close()


async def test_stalled_reader_is_cut_off_and_nothing_is_lost(
    settings: Settings, nodes: list[Node]
) -> None:
    # One sender leaves 12 MB on purpose: past its share of a mailbox (4 MiB).
    limits = Limits(message_rate=0, offline_share=0)
    n = await _node(settings, output_limit=64 * 1024, limits=limits)
    nodes.append(n)
    stalled = await WsChat.open_ws(n.http.port, max_queue=4)
    uid = await stalled.register(unique(), PASSWORD)
    assert (await stalled.login(uid, PASSWORD))["errno"] == 0
    sender = await ChatConnection.open("127.0.0.1", n.port)
    sid = await sender.register(unique(), PASSWORD)
    await sender.login(sid, PASSWORD)
    texts = [f"{i:05d}:" + "x" * 8000 for i in range(1500)]  # 12 MB, past every buffer
    for text in texts:
        await sender.send({"msgid": 6, "toid": uid, "msg": text})
        assert (await sender.expect(MsgId.CHAT_ACK))["status"] in ("delivered", "stored")

    got: list[str] = []
    try:
        while True:
            got.append((await stalled.recv(timeout=5))["msg"])
    except (ConnectionClosed, TimeoutError):
        pass
    await stalled.close()
    assert len(got) < len(texts), "it was cut off before everything was written"

    again = await WsChat.open_ws(n.http.port)
    async with asyncio.timeout(10):
        while True:  # the cut-off session's logout is processed a moment later
            ack = await again.login(uid, PASSWORD)
            if ack["errno"] == 0:
                break
            await asyncio.sleep(0.05)
    stored = [json.loads(m)["msg"] for m in ack.get("offlinemsg", [])]
    assert stored, "the unsent tail must have been stored"
    async with asyncio.timeout(20):
        while len(set(got) | set(stored)) < len(texts):
            stored.append((await again.expect(MsgId.ONE_CHAT))["msg"])
    assert sorted(set(got) | set(stored)) == texts
    await again.close()
    await sender.close()


async def test_static_files_and_extra_routes(ws_node: Node) -> None:
    async def healthz() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    ws_node.http.routes["/healthz"] = healthz

    async def get(path: str) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", ws_node.http.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)  # the node closes after it
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return head, body

    head, body = await get("/")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Security-Policy" in head
    assert b'<script type="module" src="/app.js">' in body
    head, body = await get("/app.js")
    assert b"text/javascript" in head and b"textContent" in body
    head, body = await get("/icon.svg")  # the page's icon: no 404 in the console
    assert head.startswith(b"HTTP/1.1 200") and b"image/svg+xml" in head and b"<svg" in body
    assert b"innerHTML" not in body
    head, _ = await get("/nope")
    assert head.startswith(b"HTTP/1.1 404")
    head, body = await get("/healthz?x=1")
    assert head.startswith(b"HTTP/1.1 200") and body == b"ok\n"


async def test_ops_endpoints_only_for_ops_from(settings: Settings, nodes: list[Node]) -> None:
    """/metrics and /readyz share the public web port: only --ops-from may read them;
    behind a trusted proxy the client's forwarded address is the one judged."""

    async def get(port: int, path: str, *headers: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extra = "".join(f"{h}\r\n" for h in headers)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)  # the node closes after it
        writer.close()
        return raw

    default = await _node(settings, trusted_proxies=("127.0.0.1",))  # ops: the default
    nodes.append(default)
    assert (await get(default.http.port, "/readyz")).startswith(b"HTTP/1.1 200")
    public = await get(default.http.port, "/metrics", "X-Forwarded-For: 203.0.113.9")
    assert public.startswith(b"HTTP/1.1 403") and b"--ops-from" in public
    private = await get(default.http.port, "/healthz", "X-Forwarded-For: 10.1.2.3")
    assert private.startswith(b"HTTP/1.1 200")

    elsewhere = await _node(settings, ops_from=("10.0.0.0/8",))
    nodes.append(elsewhere)
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await get(elsewhere.http.port, path)).startswith(b"HTTP/1.1 403"), path
    assert (await get(elsewhere.http.port, "/")).startswith(b"HTTP/1.1 200")  # the page is public


@pytest.mark.unmetered  # else closed past the flood limit (test_ws_frame_flood.py)
async def test_a_message_in_countless_empty_fragments_holds_no_more_than_its_bytes(
    ws_node: Node,
) -> None:
    """Empty continuation frames add nothing to a message's size, which is
    what --max-frame bounds: the node held one list slot for each (8 bytes
    for every 6 the peer sent, for as long as --frame-timeout let it go on),
    past any limit. It holds the bytes of the message so far, and no more."""
    web = await WsChat.open_ws(ws_node.http.port)
    (conn,) = [c for c in ws_node.connections if isinstance(c, WsConnection)]
    ping = json.dumps({"msgid": MsgId.PING}).encode()
    empty = Frame(Opcode.CONT, b"", fin=False).serialize(mask=True)
    web.ws.transport.write(Frame(Opcode.TEXT, ping[:5], fin=False).serialize(mask=True))
    for _ in range(20):
        web.ws.transport.write(empty * 10_000)
    pong = await web.ws.ping()  # a control frame in the midst: its pong says all was read
    await asyncio.wait_for(pong, 10)
    held = conn.fragments
    assert held is not None and sys.getsizeof(held) < 1024, sys.getsizeof(held)
    web.ws.transport.write(Frame(Opcode.CONT, ping[5:]).serialize(mask=True))
    assert (await web.recv())["msgid"] == MsgId.PONG  # still one message, served
    await web.close()


async def test_a_shedding_node_serves_its_files_and_refuses_sessions(
    settings: Settings, nodes: list[Node]
) -> None:
    """While its loop is late the node takes no new session (503 for a
    WebSocket, ERROR on TCP) but still serves the page and its files: a page
    refused its script could not retry by itself (tests/browser/test_web_shedding.py)."""
    node = await _node(settings, shed_lag=0.1)
    nodes.append(node)

    async def get(path: str, *headers: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http.port)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
        writer.write("\r\n".join(lines).encode())
        async with asyncio.timeout(10):
            raw = await reader.readuntil(b"\r\n\r\n")
            if not raw.startswith(b"HTTP/1.1 101"):
                raw += await reader.read()  # the node closes after it
        writer.close()
        return raw

    upgrade = (
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    )
    assert (await get("/ws", *upgrade)).startswith(b"HTTP/1.1 101")  # keeping up: taken
    loop = asyncio.get_running_loop()
    lagging = asyncio.Event()

    def block() -> None:  # the loop runs 0.3 s late
        time.sleep(0.3)
        lagging.set()

    loop.call_soon(block)
    await lagging.wait()
    async with asyncio.timeout(5):
        while not node.lag.overloaded:  # noqa: ASYNC110 (its next lag sample finds it late)
            await asyncio.sleep(0.01)
    shed = node.lag.shed
    for path in ("/", "/app.js", "/chat.js", "/style.css"):
        assert (await get(path)).startswith(b"HTTP/1.1 200"), path
    refused = await get("/ws", *upgrade)
    assert refused.startswith(b"HTTP/1.1 503") and b'"errno":160' in refused
    tcp = await ChatConnection.open("127.0.0.1", node.port)
    assert (await tcp.recv())["errno"] == ErrCode.SERVER_FULL
    await tcp.close()
    assert node.lag.shed == shed + 2
