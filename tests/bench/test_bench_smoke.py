"""`clusterchat bench`, briefly, against a real node: every scenario runs,
reports sane figures and loses nothing. (Full benchmarks are not tests.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.config import Settings
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import FAST_HASH


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(
        Settings(
            port=0,
            db_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}",
            hash_cost=FAST_HASH,
            shed_lag=0.0,
            # A benchmark floods and registers many users from one address, by design.
            limits=Limits(message_rate=0, registrations_per_address=0),
            http_port=0,
        )
    )
    await n.start()
    yield n
    await n.stop()


@pytest.mark.parametrize(
    "args",
    [
        ["chat", "-p", "3", "-w", "4", "-t", "1", "--warmup", "0.2"],
        ["chat", "-p", "3", "-w", "4", "-t", "1", "--warmup", "0.2", "--transport", "ws"],
        ["chat", "-p", "3", "-w", "4", "-t", "1", "--warmup", "0.2", "--dialect", "nul"],
        ["group", "-g", "5", "-t", "1", "--warmup", "0.2"],
        ["reg", "-n", "20", "-c", "4"],
        ["login", "-n", "20", "-c", "4"],
        ["reconnect", "-n", "50"],
        # The soak's CI-sized version (README: the long one).
        ["soak", "-n", "20", "-t", "4", "--rate", "5", "--server-pid", str(os.getpid())],
        ["soak", "-n", "20", "-t", "2", "--rate", "5", "--receipts"],
    ],
    ids=lambda a: "-".join(a[:1] + a[-1:] if {"ws", "nul", "--receipts"} & set(a) else a[:1]),
)
async def test_bench_scenario_reports_and_loses_nothing(node: Node, args: list[str]) -> None:
    port = node.http.port if "ws" in args else node.port
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "bench", *args,
        "--target", f"127.0.0.1:{port}", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["scenario"] == args[0]
    assert result["ops"] > 0 and result["ops_per_s"] > 0
    assert result["lost"] == 0 and result["errors"] == 0
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]
    if args[0] == "chat":
        assert result["notes"]["dialect"] == ("nul" if "nul" in args else "modern")
        assert result["notes"]["client CPU %"] > 0  # which side was the limit
    if args[0] == "soak":
        assert result["notes"]["comings and goings"] > 0
        if "--receipts" in args:  # every login asked for them and got them
            assert result["notes"]["logins with receipts"] >= 20
        else:
            assert "rss_growth_kib" in result["notes"]


@pytest.mark.parametrize("args", [["chat", "--transport", "ws"], ["group"], ["soak"]])
async def test_the_original_dialect_is_refused_where_it_cannot_work(args: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "bench", *args, "--dialect", "nul",
        "--target", "127.0.0.1:1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"--dialect nul" in err


async def _bench_error(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "bench", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    return text


async def test_a_server_with_its_default_limits_is_a_one_line_error(tmp_path: Path) -> None:
    """A newcomer benchmarking a node started as the README's first command
    (registration limit 20 an address) is told which flags the benchmark
    needs, and an unreachable target is named."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
    n = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0))
    await n.start()
    try:
        text = await _bench_error("chat", "-p", "15", "-t", "1", "--target", f"127.0.0.1:{n.port}")
        assert "too many registrations" in text and "--registrations 0" in text
        # reg, every one refused: it printed a table of 0 ops and 3 errors, not why.
        text = await _bench_error("reg", "-n", "3", "--target", f"127.0.0.1:{n.port}")
        assert "every registration" in text and "--registrations 0" in text
    finally:
        await n.stop()
    text = await _bench_error("login", "-n", "2", "--target", f"127.0.0.1:{n.port}")
    assert f"127.0.0.1:{n.port}" in text and "refused" in text


async def test_bench_aims_where_the_client_does(tmp_path: Path) -> None:
    """With `clusterchat cluster up` running here, the client connects to nginx
    (8000); the benchmark used to measure the lone node's 6000 instead."""
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text("{}")
    env = {**os.environ, "CLUSTERCHAT_HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from clusterchat.config import default_port; print(default_port())",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out.strip() == b"8000"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "bench", "--help",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert b"127.0.0.1:8000 (nginx" in out


async def test_registrations_partly_refused_say_why_under_the_table(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    n = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0))
    await n.start()  # 20 registrations an address a day
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterchat", "bench", "reg", "-n", "22", "-c", "1",
            "--json", "--target", f"127.0.0.1:{n.port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await n.stop()
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got["ops"] == 20 and got["errors"] == 2, (got, err)
    assert [v for k, v in got["notes"].items() if "too many registrations" in k] == [2], got


@pytest.mark.parametrize("args", [["chat", "-p", "5"], ["group", "-g", "5", "-s", "4"]])
async def test_a_server_with_its_flood_limit_stops_the_bench_with_a_line(
    tmp_path: Path, args: list[str]
) -> None:
    """A node with the default --message-rate closes a flooding benchmark's
    connections (ERROR 170); the chat senders then waited forever for window
    slots the closed connections held, printing nothing until killed."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'f.db'}"
    limits = Limits(registrations_per_address=0)  # the flood limit as a newcomer's node has it
    n = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0, limits=limits))
    await n.start()
    try:
        text = await _bench_error(*args, "-t", "2", "--target", f"127.0.0.1:{n.port}")
    finally:
        await n.stop()
    assert "too many requests" in text and "--message-rate 0" in text, text


async def test_a_soak_started_with_its_server_waits_for_it(tmp_path: Path) -> None:
    """The README's soak is `clusterchat server … & clusterchat bench soak …
    --server-pid $!`: the benchmark started before the node listened and
    failed at once, "Connection refused". With --server-pid it now waits for
    the target while that process lives; once it is gone, it says so."""
    from tests.helpers import free_ports, server_cmd

    port = free_ports(1)
    db = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    server = await asyncio.create_subprocess_exec(
        *server_cmd(port, db, "--registrations", "0"), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        bench = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterchat", "bench", "soak", "-n", "4", "-t", "1",
            "--target", f"127.0.0.1:{port}", "--server-pid", str(server.pid), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(bench.communicate(), 90)
        assert bench.returncode == 0, err.decode()
        assert json.loads(out)["lost"] == 0
    finally:
        server.terminate()
        await server.wait()
    text = await _bench_error(
        "soak", "-n", "4", "-t", "1", "--target", f"127.0.0.1:{port}",
        "--server-pid", str(server.pid),
    )  # fmt: skip
    assert "not accepting connections" in text and f"process {server.pid} gone" in text
