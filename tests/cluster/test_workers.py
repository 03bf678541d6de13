"""`clusterchat server --workers N`: N processes share one port, joined through Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.helpers import free_ports, wait_port


async def test_workers_share_the_port_and_relay_between_each_other(
    mariadb_url: str, shared_redis: str
) -> None:
    port = free_ports(1)
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "server", "--port", str(port), "--workers", "2",
        "--db", mariadb_url, "--redis", shared_redis,
        "--redis-prefix", f"cctest:{secrets.token_hex(4)}:", "--hash-cost", cost,
        env={**os.environ}, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    conns: list[ChatConnection] = []
    try:
        await wait_port(port, timeout=20)
        by_node: dict[str, tuple[ChatConnection, int]] = {}
        async with asyncio.timeout(20):
            while len(by_node) < 2:
                conn = await ChatConnection.open("127.0.0.1", port)
                conns.append(conn)
                try:
                    pong = await conn.request({"msgid": MsgId.PING}, MsgId.PONG)
                except (ConnectionError, OSError):
                    continue  # a worker still starting
                if pong["node"] not in by_node:
                    uid = await conn.register(unique(), PASSWORD)
                    assert (await conn.login(uid, PASSWORD))["errno"] == 0
                    by_node[pong["node"]] = (conn, uid)
        (a, a_id), (b, b_id) = by_node.values()
        await a.send({"msgid": 6, "toid": b_id, "msg": "other worker"})
        got = await b.expect(MsgId.ONE_CHAT)
        assert (got["id"], got["msg"]) == (a_id, "other worker")
        assert (await a.expect(MsgId.CHAT_ACK))["status"] == "delivered"
    finally:
        for c in conns:
            await c.close()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
