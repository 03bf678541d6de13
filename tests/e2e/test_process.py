"""The real `clusterchat` command in a child process: start, serve, stop on a signal."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat.client.connection import ChatConnection
from clusterchat.storage.tables import user
from tests.conftest import FAST_HASH, PASSWORD, unique

_LISTENING = re.compile(rb"listening on [\d.]+:(\d+), store (\S+?),")


@asynccontextmanager
async def server_process(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, str]]:
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    # Not shed by the loop lag of a busy test machine: these tests are not about load.
    quiet = {"CLUSTERCHAT_HASH_COST": cost, "CLUSTERCHAT_SHED_LAG": "0"}
    full_env = {**os.environ, **quiet, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "server", *args,
        env=full_env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while True:
                line = await proc.stderr.readline()
                if not line:
                    raise AssertionError("server exited before listening")
                if m := _LISTENING.search(line):
                    break
        yield proc, int(m.group(1)), m.group(2).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _online_count(db_url: str) -> int:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            q = select(func.count()).select_from(user).where(user.c.state == "online")
            return int((await conn.execute(q)).scalar_one())
    finally:
        await engine.dispose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_shuts_down_cleanly_and_leaves_nobody_online(
    db_url: str, sig: signal.Signals
) -> None:
    async with server_process("--port", "0", "--db", db_url) as (proc, port, _):
        conns = []
        for _ in range(3):
            c = await ChatConnection.open("127.0.0.1", port)
            uid = await c.register(unique(), PASSWORD)
            assert (await c.login(uid, PASSWORD))["errno"] == 0
            conns.append(c)
        async with asyncio.timeout(5):  # the state column is written a moment later
            while await _online_count(db_url) < 3:  # noqa: ASYNC110 - polled with a deadline
                await asyncio.sleep(0.02)
        proc.send_signal(sig)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        for c in conns:
            assert await c.at_eof()
            await c.close()
    assert await _online_count(db_url) == 0


async def test_default_store_is_an_sqlite_file_in_clusterchat_home(tmp_path: Path) -> None:
    env = {"CLUSTERCHAT_HOME": str(tmp_path), "CLUSTERCHAT_DB": ""}
    async with server_process("127.0.0.1", "0", env=env) as (proc, port, store):
        assert store == f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
        c = await ChatConnection.open("127.0.0.1", port)
        assert await c.register(unique(), PASSWORD) > 0
        await c.close()
        proc.terminate()
        assert await proc.wait() == 0
    assert (tmp_path / "chat.db").exists()


async def test_options_come_from_the_environment(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'env.db'}"
    async with server_process(env={"CLUSTERCHAT_DB": db, "CLUSTERCHAT_PORT": "0"}) as (
        proc,
        port,
        store,
    ):
        assert store == db and port > 0
        proc.terminate()
        assert await proc.wait() == 0


async def test_a_crashed_lone_node_frees_its_users_on_restart(db_url: str) -> None:
    async with server_process("--port", "0", "--db", db_url) as (proc, port, _):
        c = await ChatConnection.open("127.0.0.1", port)
        uid = await c.register(unique(), PASSWORD)
        await c.login(uid, PASSWORD)
        proc.kill()
        await proc.wait()
        await c.close()
    async with server_process("--port", "0", "--db", db_url) as (proc, port, _):
        c = await ChatConnection.open("127.0.0.1", port)
        assert (await c.login(uid, PASSWORD))["errno"] == 0
        await c.close()


async def test_db_init_creates_the_schema(tmp_path: Path, mariadb_url: str) -> None:
    for url in (f"sqlite+aiosqlite:///{tmp_path / 'init.db'}", mariadb_url + "_init"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterchat", "db", "init", "--db", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0 and b"schema ready" in out
        assert b"WARNING" not in err, err  # MariaDB's note on alembic's key name
        assert await _online_count(url) == 0
    engine = create_async_engine(mariadb_url.rsplit("/", 1)[0] + "/")
    try:
        async with engine.begin() as conn:
            name = mariadb_url.rsplit("/", 1)[1] + "_init"
            await conn.exec_driver_sql(f"DROP DATABASE `{name}`")
    finally:
        await engine.dispose()


async def test_a_positional_port_0_means_any_free_port(tmp_path: Path) -> None:
    """`clusterchat server IP 0` once fell back to the default port (6000),
    which a README node may hold: it must pick a free one."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    env = {"CLUSTERCHAT_HOME": str(tmp_path), "CLUSTERCHAT_DB": "", "CLUSTERCHAT_PORT": str(taken)}
    try:
        async with server_process("127.0.0.1", "0", env=env) as (proc, port, _):
            assert port not in (0, taken)
            proc.terminate()
            assert await proc.wait() == 0
    finally:
        busy.close()


async def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    env = {**os.environ, "CLUSTERCHAT_HOME": str(tmp_path), "CLUSTERCHAT_DB": ""}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterchat", "server", "--port", str(taken),
            env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
    finally:
        busy.close()
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text
    assert f"cannot listen: [Errno {errno.EADDRINUSE}]" in text and str(taken) in text


async def _one_line_error(*args: str) -> str:
    env = {**os.environ, "CLUSTERCHAT_DB": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    return text


async def test_an_unreachable_store_or_redis_is_a_one_line_error(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    try:
        db = f"mysql://root@127.0.0.1:{port}/chat"
        text = await _one_line_error("server", "--port", "0", "--db", db)
        assert "cannot start" in text and "Connection refused" in text
        text = await _one_line_error("db", "status", "--db", db)
        assert "Connection refused" in text
        sqlite = f"sqlite:///{tmp_path / 'x.db'}"  # no driver named: aiosqlite is taken
        text = await _one_line_error(
            "server", "--port", "0", "--db", sqlite, "--redis", f"redis://127.0.0.1:{port}/0"
        )
        assert "cannot start: redis unavailable" in text
    finally:
        closed.close()


async def test_a_url_without_a_driver_gets_the_async_one(tmp_path: Path) -> None:
    from clusterchat.storage.sql import async_url

    assert async_url("sqlite:///c.db").drivername == "sqlite+aiosqlite"
    assert async_url("mysql://root@h/chat").drivername == "mysql+asyncmy"
    assert async_url("mariadb://root@h/chat").drivername == "mariadb+asyncmy"
    assert async_url("mysql+aiomysql://root@h/chat").drivername == "mysql+aiomysql"
    db = f"sqlite:///{tmp_path / 'c.db'}"
    async with server_process("--port", "0", "--db", db) as (_proc, port, _):
        c = await ChatConnection.open("127.0.0.1", port)
        assert await c.register(unique(), PASSWORD) > 0
        await c.close()


async def test_a_second_lone_node_on_the_default_store_is_refused(tmp_path: Path) -> None:
    """Two `clusterchat server` with no --db and no --redis shared one SQLite
    file, each taking every user for its own (the second marked the first's
    users offline). The second is refused with the file, the first node's
    pid and the option to pass; once the first is gone, even killed, the
    file is free again."""
    env = {"CLUSTERCHAT_HOME": str(tmp_path), "CLUSTERCHAT_DB": "", "CLUSTERCHAT_REDIS": ""}
    full_env = {**os.environ, **env}
    async with server_process("--port", "0", env=env) as (first, _, _):
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterchat", "server", "--port", "0",
            env=full_env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            _, err = await second.communicate()
        text = err.decode()
        assert second.returncode == 1, text
        assert text.startswith("clusterchat server: cannot start: "), text
        assert f"{tmp_path / 'chat.db'} is in use by another node running without --redis" in text
        assert f"(pid {first.pid}, " in text and "--db sqlite+aiosqlite:///" in text, text
        assert "Traceback" not in text, text
        first.kill()  # a crash frees the file too
        await first.wait()
    async with server_process("--port", "0", env=env) as (again, _, store):
        assert store == f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
        again.terminate()
        assert await again.wait() == 0
