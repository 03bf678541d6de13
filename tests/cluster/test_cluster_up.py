"""`cluster up` as operators meet it: a port already taken fails clearly and
leaves nothing running; a node slow to start (its database answers late) is
waited for until its /readyz says so."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from clusterchat.cluster import launcher
from tests.conftest import FAST_HASH
from tests.helpers import free_ports


class LateProxy:
    """Accepts at once but forwards to the target only from ``opens_at``: a
    database that takes its time to come up."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.opens_at = time.monotonic() + delay
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(max(0.0, self.opens_at - time.monotonic()))
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))


@pytest.fixture
async def late_db(mariadb_url: str) -> AsyncIterator[tuple[str, LateProxy]]:
    url = make_url(mariadb_url)
    proxy = LateProxy(url.port or 3306, delay=4.0)
    await proxy.start()
    yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy
    await proxy.close()


def _args(db: str, redis_url: str) -> list[str]:
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    return ["--db", db, "--redis", redis_url, "--hash-cost", cost,
            "--redis-prefix", f"ccup:{secrets.token_hex(4)}:"]  # fmt: skip


async def test_a_slow_node_is_waited_for_until_ready(
    tmp_path: Path, late_db: tuple[str, LateProxy], shared_redis: str
) -> None:
    db, proxy = late_db
    base = free_ports(6)
    run_dir = tmp_path / "cluster"
    state = await asyncio.to_thread(
        launcher.up, run_dir, 2, base + 2, base, "127.0.0.1", _args(db, shared_redis),
        web_port=base + 5, http_base_port=base + 3,
    )  # fmt: skip
    try:
        assert time.monotonic() >= proxy.opens_at  # it did not return before the store answered
        for i in range(2):
            url = f"http://127.0.0.1:{base + 3 + i}/readyz"
            with await asyncio.to_thread(urllib.request.urlopen, url, None, 5) as res:
                assert res.status == 200
        assert len([p for p in state.procs if p.name.startswith("node")]) == 2
    finally:
        await asyncio.to_thread(launcher.down, run_dir)


async def test_a_port_taken_fails_clearly_and_starts_nothing(
    tmp_path: Path, mariadb_url: str, shared_redis: str
) -> None:
    base = free_ports(6)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        with pytest.raises(
            RuntimeError, match=rf"127.0.0.1:{base + 1} \(node1\) is already in use"
        ):
            await asyncio.to_thread(
                launcher.up, tmp_path / "cluster", 2, base + 2, base, "127.0.0.1",
                _args(mariadb_url, shared_redis), web_port=base + 5, http_base_port=base + 3,
            )  # fmt: skip
    assert not (tmp_path / "cluster" / launcher.STATE).exists()
    assert launcher._port_free("127.0.0.1", base)  # node0 never started
