"""Browsers reach a cluster through nginx's HTTP proxy: the web client's files
and WebSockets on any node, chatting with each other and with TCP clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clusterchat.client.connection import ChatConnection
from clusterchat.cluster import launcher
from clusterchat.protocol.messages import MsgId
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.helpers import free_ports, redis_prefix
from tests.web.conftest import WsChat


async def _user(conn: ChatConnection) -> int:
    uid = await conn.register(unique(), PASSWORD)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return uid


async def test_websockets_through_nginx_reach_every_node(
    tmp_path: Path, mariadb_url: str, shared_redis: str
) -> None:
    base = free_ports(6)
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    args = ["--db", mariadb_url, "--redis", shared_redis, "--hash-cost", cost,
            "--redis-prefix", redis_prefix()]  # fmt: skip
    run_dir = tmp_path / "cluster"
    state = await asyncio.to_thread(
        launcher.up, run_dir, 2, base + 2, base, "127.0.0.1", args,
        web_port=base + 5, http_base_port=base + 3,
    )  # fmt: skip
    opened: list[ChatConnection] = []
    try:
        assert state.web == f"127.0.0.1:{base + 5}"
        origin = f"http://127.0.0.1:{base + 5}"
        # Round robin: consecutive WebSockets land on different nodes.
        a = WsChat(await connect(f"ws://{state.web}/ws", origin=origin))  # type: ignore[arg-type]
        b = WsChat(await connect(f"ws://{state.web}/ws", origin=origin))  # type: ignore[arg-type]
        tcp = await ChatConnection.open("127.0.0.1", base + 2)
        opened += [a, b, tcp]
        nodes = {(await c.request({"msgid": MsgId.PING}, MsgId.PONG))["node"] for c in (a, b)}
        assert nodes == {"node0", "node1"}
        a_id, b_id, t_id = await _user(a), await _user(b), await _user(tcp)

        ack = await a.request({"msgid": 6, "toid": b_id, "msg": "across nodes"}, MsgId.CHAT_ACK)
        assert ack["status"] == "delivered"
        assert (await b.expect(MsgId.ONE_CHAT))["msg"] == "across nodes"
        await b.send({"msgid": 6, "toid": t_id, "msg": "to the terminal"})
        await b.expect(MsgId.CHAT_ACK)
        assert (await tcp.expect(MsgId.ONE_CHAT))["msg"] == "to the terminal"
        await tcp.send({"msgid": 6, "toid": a_id, "msg": "back to the web"})
        await tcp.expect(MsgId.CHAT_ACK)
        assert (await a.expect(MsgId.ONE_CHAT))["msg"] == "back to the web"

        # The page itself comes through nginx too.
        reader, writer = await asyncio.open_connection("127.0.0.1", base + 5)
        writer.write(f"GET / HTTP/1.1\r\nHost: {state.web}\r\nConnection: close\r\n\r\n".encode())
        page = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert page.startswith(b"HTTP/1.1 200") and b"/app.js" in page
    finally:
        for conn in opened:
            await conn.close()
        await asyncio.to_thread(launcher.down, run_dir)


async def test_cluster_up_passes_browsers_real_addresses(tmp_path: Path) -> None:
    """`cluster up`'s nginx and the --trusted-proxy it gives the nodes: a
    browser is counted under its own address, not nginx's."""
    base = free_ports(4)
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    args = ["--db", f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", "--hash-cost", cost,
            "--max-connections-per-address", "1"]  # fmt: skip
    run_dir = tmp_path / "cluster"
    state = await asyncio.to_thread(
        launcher.up, run_dir, 1, base + 1, base, "127.0.0.1", args,
        web_port=base + 3, http_base_port=base + 2,
    )  # fmt: skip
    url = f"ws://{state.web}/ws"
    opened: list[WsChat] = []
    try:
        first = WsChat(await connect(url, local_addr=("127.0.0.2", 0)))
        opened.append(first)
        assert (await first.request({"msgid": MsgId.PING}, MsgId.PONG))["node"] == "node0"
        with pytest.raises(InvalidStatus) as refused:  # its address is at its cap...
            await connect(url, local_addr=("127.0.0.2", 0), additional_headers={
                "X-Forwarded-For": "127.0.0.4"})  # fmt: skip
        assert refused.value.response.status_code == 503
        other = WsChat(await connect(url, local_addr=("127.0.0.3", 0)))  # ...not another's
        opened.append(other)
        assert (await other.request({"msgid": MsgId.PING}, MsgId.PONG))["node"] == "node0"
    finally:
        for conn in opened:
            await conn.close()
        await asyncio.to_thread(launcher.down, run_dir)


def test_nginx_conf_prints_the_http_block_too() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "clusterchat", "cluster", "nginx-conf", "127.0.0.1:6000",
         "--http", "127.0.0.1:6100,127.0.0.1:6101", "--http-listen", "8080"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert out.startswith("stream {") and "\nhttp {" in out
    assert "server 127.0.0.1:6101 " in out and "listen 8080;" in out
    assert "proxy_set_header Upgrade $http_upgrade;" in out
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in out
