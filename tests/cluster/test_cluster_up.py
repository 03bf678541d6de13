"""`cluster up` as operators meet it: a port already taken fails clearly and
leaves nothing running; a node slow to start (its database answers late) is
waited for until its /readyz says so."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from clusterchat.cluster import launcher
from tests.conftest import FAST_HASH
from tests.helpers import CuttableProxy, free_ports, redis_prefix


class LateProxy(CuttableProxy):
    """Accepts at once but forwards to the target only from ``opens_at``: a
    database that takes its time to come up."""

    def __init__(self, target_port: int, delay: float) -> None:
        super().__init__(target_port)
        self.opens_at = time.monotonic() + delay

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(max(0.0, self.opens_at - time.monotonic()))
        await super()._handle(r, w)


@pytest.fixture
async def late_db(mariadb_url: str) -> AsyncIterator[tuple[str, LateProxy]]:
    url = make_url(mariadb_url)
    proxy = LateProxy(url.port or 3306, delay=4.0)
    await proxy.start()
    yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy
    await proxy.cut()


def _args(db: str, redis_url: str) -> list[str]:
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    return ["--db", db, "--redis", redis_url, "--hash-cost", cost,
            "--redis-prefix", redis_prefix("ccup")]  # fmt: skip


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
        # A node that died is named as such by `down`, not silently left out.
        os.kill(next(p.pid for p in state.procs if p.name == "node1"), signal.SIGKILL)
        stopped, gone = await asyncio.to_thread(launcher.down, run_dir)
        assert gone == ["node1"] and sorted(stopped) == ["nginx", "node0"], (stopped, gone)
    finally:
        if (run_dir / launcher.STATE).exists():
            await asyncio.to_thread(launcher.down, run_dir)


async def test_a_port_taken_fails_clearly_and_starts_nothing(
    tmp_path: Path, mariadb_url: str, shared_redis: str
) -> None:
    base = free_ports(6)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        with pytest.raises(
            RuntimeError,
            match=rf"127.0.0.1:{base + 1} \(node1\) is already in use.*with --base-port",
        ):
            await asyncio.to_thread(
                launcher.up, tmp_path / "cluster", 2, base + 2, base, "127.0.0.1",
                _args(mariadb_url, shared_redis), web_port=base + 5, http_base_port=base + 3,
            )  # fmt: skip
    assert not (tmp_path / "cluster" / launcher.STATE).exists()
    assert launcher._port_free("127.0.0.1", base)  # node0 never started


async def test_every_port_taken_is_named_in_one_message(tmp_path: Path) -> None:
    """Conflicts were told one per try (free one, run again, hear of the
    next); now all of them at once, each with the option that moves it."""
    base = free_ports(6)
    with socket.socket() as a, socket.socket() as b:
        for s, port in ((a, base), (b, base + 2)):
            s.bind(("127.0.0.1", port))
            s.listen()
        with pytest.raises(RuntimeError) as refused:
            await asyncio.to_thread(
                launcher.up, tmp_path / "cluster", 2, base + 2, base, "127.0.0.1", [],
                web_port=base + 5, http_base_port=base + 3,
            )  # fmt: skip
    text = str(refused.value)
    assert text.startswith("2 ports are already in use"), text
    assert f"127.0.0.1:{base} (node0, --base-port)" in text, text
    assert f"127.0.0.1:{base + 2} (nginx, --listen-port)" in text, text
    assert "--base-port, --listen-port" in text and "nothing started" in text, text
    assert not (tmp_path / "cluster" / launcher.STATE).exists()


async def test_a_port_answered_by_another_program_is_not_taken_for_our_node(
    tmp_path: Path,
) -> None:
    """`cluster up` checks the PONG's node id: a program that grabbed the port
    between the free-port check and the node's start is not our node."""

    async def impostor(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.write(b'{"msgid":13,"node":"someone-else"}\n')
        await w.drain()
        w.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(RuntimeError, match="answers as 'someone-else', not node0"):
            await asyncio.to_thread(
                launcher._check_node, "127.0.0.1", port, "node0", tmp_path / "node-0.log"
            )


async def test_ctrl_c_during_up_says_so_and_leaves_nothing_running(
    tmp_path: Path, late_db: tuple[str, LateProxy], shared_redis: str
) -> None:
    """Interrupted while it waits for its nodes (their store answers late),
    `cluster up` stops what it started and says it was interrupted, in one
    line and with status 130, not a traceback and not 0: it did not come up."""
    db, proxy = late_db
    proxy.opens_at = time.monotonic() + 3600  # never, here: `up` is still waiting at the signal
    base = free_ports(3)
    run_dir = tmp_path / "cluster"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "cluster", "up", "--nodes", "2",
        "--base-port", str(base), "--listen-port", str(base + 2), "--web-port", "0",
        "--dir", str(run_dir), "--db", db, "--redis", shared_redis,
        "--", *_args(db, shared_redis)[4:],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):  # both nodes started: `up` waits for them now
            while not (run_dir / "node-1.log").exists():  # noqa: ASYNC110 - polled with a deadline
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends it (the nodes have their own session)
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if (run_dir / launcher.STATE).exists():  # it came up after all: leave nothing running
            await asyncio.to_thread(launcher.down, run_dir)
    assert proc.returncode == 130, (out, err)
    assert err.decode().strip() == "clusterchat cluster: interrupted", err
    assert not (run_dir / launcher.STATE).exists()
    assert launcher._port_free("127.0.0.1", base) and launcher._port_free("127.0.0.1", base + 1)


async def test_no_nginx_is_said_before_anything_starts(tmp_path: Path) -> None:
    """`cluster up --nginx /no/such/nginx` (or no nginx installed) started the
    nodes, then ended in a FileNotFoundError traceback."""
    base = free_ports(3)
    with pytest.raises(RuntimeError, match=r"no nginx at /no/such/nginx: install it.*--nginx"):
        await asyncio.to_thread(
            launcher.up, tmp_path / "cluster", 2, base + 2, base, "127.0.0.1", [],
            nginx="/no/such/nginx",
        )  # fmt: skip
    assert not (tmp_path / "cluster" / "node-0.log").exists()  # nothing started


async def test_a_node_that_exits_at_start_is_told_with_its_reason(
    tmp_path: Path, mariadb_url: str
) -> None:
    """A node that could not start (here: no Redis on that port) was reported
    as "node-0.log: exited with 1; see …/node-0.log"; its reason is in the
    message now."""
    base = free_ports(4)
    no_redis = f"redis://127.0.0.1:{base + 3}/0"
    with pytest.raises(RuntimeError, match=r"exited with 1: .*redis unavailable.*; see "):
        await asyncio.to_thread(
            launcher.up, tmp_path / "cluster", 1, base + 2, base, "127.0.0.1",
            _args(mariadb_url, no_redis),
        )  # fmt: skip
    assert not (tmp_path / "cluster" / launcher.STATE).exists()
