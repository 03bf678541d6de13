"""A real cluster per test: two `clusterchat server` processes behind a real
nginx (stream module), sharing a real MariaDB and a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from clusterchat.client.connection import ChatConnection
from clusterchat.cluster import launcher
from clusterchat.protocol.messages import MsgId
from tests.conftest import FAST_HASH, PASSWORD, User, unique
from tests.helpers import SHARED_REDIS, OwnRedis, free_ports, redis_prefix

PRESENCE_TTL = 2.0


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[str]:
    try:
        redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {SHARED_REDIS}: {exc}", pytrace=False)
    yield SHARED_REDIS


@dataclass
class Cluster:
    run_dir: Path
    port: int
    state: launcher.ClusterState
    redis_url: str
    prefix: str
    opened: list[ChatConnection] = field(default_factory=list)

    def pid(self, node: str) -> int:
        return next(p.pid for p in self.state.procs if p.name == node)

    async def connect(self) -> tuple[ChatConnection, str]:
        conn = await ChatConnection.open("127.0.0.1", self.port)
        self.opened.append(conn)
        pong = await conn.request({"msgid": MsgId.PING}, MsgId.PONG)
        return conn, str(pong["node"])

    async def connect_to(self, node: str) -> ChatConnection:
        """nginx balances round robin: connect until one lands on ``node``."""
        for _ in range(10):
            conn, where = await self.connect()
            if where == node:
                return conn
            await conn.close()
        raise AssertionError(f"no connection landed on {node}")

    async def legacy_on(self, node: str) -> ChatConnection:
        """A connection speaking the original client's dialect (NUL-terminated)."""
        for _ in range(10):
            conn = await ChatConnection.open("127.0.0.1", self.port, legacy=True)
            self.opened.append(conn)
            # Register to learn nothing but the node: the original's replies
            # carry no node, so ask Redis who holds a throwaway login.
            name = unique()
            uid = await conn.register(name, PASSWORD)
            assert (await conn.login(uid, PASSWORD))["errno"] == 0
            holder = await self.holder_of(uid)
            if holder == node:
                conn.uid = uid  # type: ignore[attr-defined]
                return conn
            await conn.close()
        raise AssertionError(f"no connection landed on {node}")

    async def holder_of(self, uid: int) -> str | None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis_url)
        try:
            holder = await client.get(f"{self.prefix}user:{uid}")
        finally:
            await client.aclose()
        return holder.decode() if isinstance(holder, bytes) else holder

    async def user_on(self, node: str) -> User:
        conn = await self.connect_to(node)
        name = unique()
        uid = await conn.register(name, PASSWORD)
        ack = await conn.login(uid, PASSWORD)
        assert ack["errno"] == 0, ack
        return User(conn, uid, name, ack)

    async def kill(self, node: str, sig: signal.Signals = signal.SIGKILL) -> None:
        pid = self.pid(node)
        os.kill(pid, sig)
        async with asyncio.timeout(15):
            while launcher._alive(pid):
                launcher._reap(pid)
                await asyncio.sleep(0.05)


async def start_cluster(tmp_path: Path, db_url: str, redis_url: str) -> Cluster:
    base = free_ports(3)
    prefix = redis_prefix()
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    # Ordering and outage tests send bursts far past the default flood limit.
    args = ["--db", db_url, "--redis", redis_url, "--redis-prefix", prefix,
            "--presence-ttl", str(PRESENCE_TTL), "--hash-cost", cost,
            "--message-rate", "0"]  # fmt: skip
    state = await asyncio.to_thread(
        launcher.up, tmp_path / "cluster", 2, base + 2, base, "127.0.0.1", args
    )
    return Cluster(tmp_path / "cluster", base + 2, state, redis_url, prefix)


@asynccontextmanager
async def running_cluster(tmp_path: Path, db_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    c = await start_cluster(tmp_path, db_url, redis_url)
    try:
        yield c
    finally:
        for conn in c.opened:
            await conn.close()
        await asyncio.to_thread(launcher.down, c.run_dir)


@pytest.fixture
async def cluster(tmp_path: Path, mariadb_url: str, shared_redis: str) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, mariadb_url, shared_redis) as c:
        yield c


@pytest.fixture
async def cluster_on_own_redis(
    tmp_path: Path, mariadb_url: str, own_redis: OwnRedis
) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, mariadb_url, own_redis.url) as c:
        yield c


async def receipts_user_via(port: int, node: str) -> tuple[ChatConnection, int]:
    """A new user logged in with receipts on ``node``, connected to nginx's
    ``port`` (through a test's proxy, say): nginx's round robin is retried
    until a connection lands on that node."""
    for _ in range(10):
        conn = await ChatConnection.open("127.0.0.1", port)
        if (await conn.request({"msgid": MsgId.PING}, MsgId.PONG))["node"] == node:
            uid = await conn.register(unique(), PASSWORD)
            assert (await conn.login(uid, PASSWORD, receipts=True))["receipts"] is True
            return conn, uid
        await conn.close()
    raise AssertionError(f"10 connections through nginx, none landed on {node}")
