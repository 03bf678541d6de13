"""Test-owned real processes: a Redis we may kill, free ports, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import secrets
import shutil
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.engine import make_url

#: The Redis every developer and CI share (tests that need to stop Redis start their own).
SHARED_REDIS = os.environ.get("CLUSTERCHAT_TEST_REDIS", "redis://127.0.0.1:6379/0")

#: Key prefixes this test process gave out on the shared Redis. The session
#: removes their keys at its end (tests/conftest.py): nodes killed on
#: purpose leave their presence behind (the ``nodes`` set has no expiry),
#: and so do limit counters and metrics until they expire. Only these
#: prefixes: other runs use that Redis at the same time.
GIVEN_PREFIXES: set[str] = set()


def redis_prefix(kind: str = "cctest") -> str:
    """A fresh ``--redis-prefix`` on the shared Redis, cleaned up after the run."""
    prefix = f"{kind}:{secrets.token_hex(4)}:"
    GIVEN_PREFIXES.add(prefix)
    return prefix


def forget_prefixes(url: str, prefixes: set[str]) -> int:
    """Delete every key under ``prefixes`` (SCAN, not KEYS: the server stays
    responsive for everyone else); how many went."""
    gone = 0
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        for prefix in sorted(prefixes):
            pattern = re.sub(r"([\\[\]*?])", r"\\\1", prefix) + "*"
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    gone += client.unlink(*batch)
                    batch.clear()
            if batch:
                gone += client.unlink(*batch)
    finally:
        client.close()
    return gone


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_range() -> tuple[int, int]:
    """Below the kernel's ephemeral ports (32768 up), which it hands out to
    every outgoing connection and port-0 listener meanwhile; under
    pytest-xdist, a slice of its own for each worker."""
    low, high = 20000, 32000
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if worker.startswith("gw"):
        share = (high - low) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        low += int(worker[2:]) * share
        high = low + share
    return low, high


def free_ports(n: int) -> int:
    """A base port such that base .. base+n-1 are free."""
    low, high = _port_range()
    for _ in range(200):
        base = random.randrange(low, high - n)
        if all(port_is_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range")


async def wait_port(port: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            w.close()
            return


class OwnRedis:
    """A redis-server on its own port that a test can kill and bring back."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.extra = extra  # more redis-server options, e.g. a small pub/sub buffer limit
        self.port = free_ports(1)
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/services installs it)"
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
               *self.extra]  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
        await wait_port(self.port)

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await self.proc.wait()
            self.proc = None


class CuttableProxy:
    """Forwards 127.0.0.1:port to a target until cut; after start() it forwards
    again. Subclasses watch or delay the traffic by overriding ``_relay`` or
    ``_handle`` (tests/mysql_proxy.py, tests/cluster/test_cluster_up.py)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_ports(1)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and abort the open ones, as an outage would."""
        self._cut_now()
        if self._handlers:  # their pumps end on the aborted sockets
            await asyncio.wait(self._handlers, timeout=5)

    def _cut_now(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._pipes):
            w.transport.abort()
        self._pipes.clear()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        server = self._server
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        if self._server is not server or server is None:
            # Cut while this one was connecting: it must not survive the
            # outage (a node's pooled connection opened at the cut did, and
            # a "MariaDB down" test stored everything through it).
            w.transport.abort()
            uw.transport.abort()
            return
        self._pipes.update((w, uw))
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        me.add_done_callback(self._handlers.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay(r, w, ur, uw)

    async def _relay(
        self,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        ur: asyncio.StreamReader,
        uw: asyncio.StreamWriter,
    ) -> None:
        """Client (r, w) to upstream (ur, uw) and back, until either side ends."""
        await asyncio.gather(pump(r, uw), pump(ur, w))


async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    dst.close()


class _Relay:
    """What the relaying proxies below share: a port on 127.0.0.1, a flow to
    the target per connection, and a close that aborts every flow, also one
    whose upstream was being opened (left open, its transport was collected
    during a later test, which failed on the ResourceWarning)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self._writers):
            w.transport.abort()

    async def _upstream(
        self, w: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The target's end of a new flow; None if closed meanwhile."""
        if self._closed:
            w.transport.abort()
            return None
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((w, uw))
        if self._closed:  # closed while the upstream was being opened
            w.transport.abort()
            uw.transport.abort()
            return None
        return ur, uw

    def _run(self, *pumps: Coroutine[Any, Any, None]) -> None:
        for p in pumps:
            self._tasks.add(asyncio.ensure_future(p))

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class StallingProxy(_Relay):
    """Forwards 127.0.0.1:port to a target until stalled; then it forwards
    nothing more either way and closes nothing: no FIN, no RST. Both ends
    see a connection that is open and silent, as when a phone enters a
    tunnel or a NAT forgets the flow. What the server writes meanwhile is
    acknowledged by this process's kernel and never reaches the client."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._flowing = asyncio.Event()
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        """The held flows carry on, with what was held, as when the tunnel ends."""
        self._flowing.set()

    def stall_existing(self) -> None:
        """Hold the flows open now for ever; new ones flow (a NAT that lost
        its old mappings, not the route)."""
        self._flowing.clear()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ends = await self._upstream(w)
        if ends is None:
            return
        ur, uw = ends
        flowing = self._flowing  # a stall_existing() later holds this flow for ever

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    await flowing.wait()  # stalled: hold it, read no more
                    dst.write(data)
                    await dst.drain()

        self._run(pump(r, uw), pump(ur, w))


class ScriptGate(_Relay):
    """A TCP proxy to a redis-server that, once ``armed``, holds one command
    on the connection whose client sends ``marker`` (a script's SHA): its
    request before Redis runs it (``hold="request"``), or its reply after
    (``hold="reply"``), until :meth:`open`. Every other connection (a
    subscription among them) flows, so a test orders one node's script
    against what other nodes do meanwhile."""

    def __init__(self, target_port: int, marker: bytes, hold: str = "request") -> None:
        assert hold in ("request", "reply")
        super().__init__(target_port)
        self.marker = marker
        self.hold = hold
        self.armed = False
        self.held = asyncio.Event()  # the command is being held
        self._open = asyncio.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def open(self) -> None:
        self._open.set()

    async def close(self) -> None:
        self._open.set()
        await super().close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ends = await self._upstream(w)
        if ends is None:
            return
        ur, uw = ends
        gated = False

        async def up() -> None:
            nonlocal gated
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    if self.armed and not self._open.is_set() and self.marker in data:
                        gated = True  # before Redis can answer it
                        if self.hold == "request":
                            self.held.set()
                            await self._open.wait()
                    uw.write(data)
                    await uw.drain()

        async def down() -> None:
            with contextlib.suppress(OSError):
                while data := await ur.read(65536):
                    if gated and self.hold == "reply" and not self._open.is_set():
                        self.held.set()
                        await self._open.wait()
                    w.write(data)
                    await w.drain()

        self._run(up(), down())


async def stalling_mariadb(url: str) -> tuple[StallingProxy, str]:
    """A started :class:`StallingProxy` in front of the MariaDB of ``url``,
    and ``url`` through it."""
    u = make_url(url)
    proxy = StallingProxy(u.port or 3306)
    await proxy.start()
    return proxy, u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def server_cmd(port: int, db_url: str, *extra: str) -> list[str]:
    import sys

    from tests.conftest import FAST_HASH

    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    return [sys.executable, "-m", "clusterchat", "server", "--port", str(port),
            "--db", db_url, "--hash-cost", cost, *extra]  # fmt: skip


async def big_groups(store: object, uid: int, tag: str, groups: int, members: int) -> list[int]:
    """Puts user ``uid`` in ``groups`` new groups of ``members`` others each
    (rows written straight to the store: registering thousands of users over
    the protocol takes minutes). Names start with ``tag``. Returns the ids."""
    from sqlalchemy import insert, select

    from clusterchat.storage.sql import SqlStore
    from clusterchat.storage.tables import allgroup, groupuser, user

    assert isinstance(store, SqlStore)
    async with store.engine.begin() as db:
        names = [
            {"name": f"{tag}{i}", "namekey": f"{tag}{i}", "password": "x"} for i in range(members)
        ]
        await db.execute(insert(user), names)
        found = await db.execute(select(user.c.id).where(user.c.name.like(f"{tag}%")))
        others = found.scalars().all()
        rows = [{"groupname": f"{tag}g{i}", "groupkey": f"{tag}g{i}"} for i in range(groups)]
        await db.execute(insert(allgroup), rows)
        made = await db.execute(select(allgroup.c.id).where(allgroup.c.groupname.like(f"{tag}g%")))
        gids = sorted(made.scalars().all())
        await db.execute(
            insert(groupuser), [{"groupid": g, "userid": u} for g in gids for u in [*others, uid]]
        )
    return gids
