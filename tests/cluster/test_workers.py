"""`clusterchat server --workers N`: N processes share one port, joined through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.e2e.test_process import server_process
from tests.helpers import free_ports, redis_prefix, wait_port


async def test_workers_share_the_port_and_relay_between_each_other(
    mariadb_url: str, shared_redis: str
) -> None:
    port = free_ports(1)
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "server", "--port", str(port), "--workers", "2",
        "--db", mariadb_url, "--redis", shared_redis,
        "--redis-prefix", redis_prefix(), "--hash-cost", cost,
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["starting", "serving"])
async def test_a_signal_stops_the_workers_quietly_and_with_status_0(
    mariadb_url: str, shared_redis: str, sig: signal.Signals, when: str
) -> None:
    """Ctrl-C reaches the supervisor and every worker at once (one process
    group), whether the workers still start (no handler of their own yet:
    they printed a KeyboardInterrupt traceback each) or serve."""
    port = free_ports(1)
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "server", "--port", str(port), "--workers", "2",
        "--db", mariadb_url, "--redis", shared_redis,
        "--redis-prefix", redis_prefix(), "--hash-cost", cost,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    said: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            wanted, seen = (
                (b"supervising 2 workers", 1) if when == "starting" else (b"listening on", 2)
            )
            while seen:
                line = await proc.stderr.readline()
                assert line, b"".join(said)
                said.append(line)
                seen -= wanted in line
        os.killpg(proc.pid, sig)
        async with asyncio.timeout(30):
            said.append(await proc.stderr.read())
            assert await proc.wait() == 0, b"".join(said)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = b"".join(said).decode()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert f"{sig.name} received, stopping 2 workers" in text, text
    assert text.rstrip().endswith("workers stopped"), text


async def test_cluster_nodes_may_share_an_sqlite_store_but_not_with_a_lone_one(
    tmp_path: Path, shared_redis: str
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    joined = ("--port", "0", "--db", db, "--redis", shared_redis, "--redis-prefix")
    async with (
        server_process(*joined, redis_prefix()) as (a, _, _),
        server_process(*joined, redis_prefix()) as (b, _, _),
    ):
        lone = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterchat", "server", "--port", "0", "--db", db,
            env={**os.environ, "CLUSTERCHAT_REDIS": ""}, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            _, err = await lone.communicate()
        assert lone.returncode == 1 and "is in use by nodes of a cluster (--redis)" in err.decode()
        for p in (a, b):
            p.terminate()
            assert await p.wait() == 0
