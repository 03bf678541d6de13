"""The command line as a newcomer meets it: `clusterchat admin` takes where
to look (--db, --redis, --redis-prefix) after its action too, as people type
it (`admin users --db URL` used to end in "unrecognized arguments"), and
each --help names what its arguments are."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from clusterchat.cli import build_parser
from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.server.node import Node
from tests.conftest import FAST_HASH, PASSWORD, unique


async def _admin(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERCHAT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "admin", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_where_to_look_may_follow_the_action(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    node = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0))
    await node.start()
    try:
        conn = await ChatConnection.open("127.0.0.1", node.port)
        name = unique("ann")
        uid = await conn.register(name, PASSWORD)
        await conn.close()
    finally:
        await node.stop()
    other = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    for args in (
        ("users", "--db", db),  # after the action
        ("--db", db, "users"),  # before it, as always
        ("--db", other, "users", "--db", db),  # after wins
        ("group", "--db", db, "--redis-prefix", "x:", "999"),
    ):
        rc, out, err = await _admin(*args)
        if args[0] == "group":
            assert rc == 1 and "unrecognized" not in err and "999" in err, (args, err)
        else:
            assert rc == 0 and f"{uid}  {name}" in out, (args, out, err)


def _help(*words: str) -> str:
    parser = build_parser()
    for word in words:  # down the subcommands
        sub = next(a for a in parser._actions if a.choices and word in a.choices)
        parser = sub.choices[word]  # type: ignore[index]
    return parser.format_help()


def test_each_help_says_what_its_arguments_are() -> None:
    kick = _help("admin", "kick")
    assert "End the user's session" in kick and "USER_ID" in kick and "--db URL" in kick
    assert "GROUP_ID" in _help("admin", "group")
    assert "SCENARIO" in _help("bench") and "{reg,login" not in _help("bench")
    # The README's soak is `bench soak -n 200 -t 3600`: both said they were for others.
    assert "reconnect, soak)" in _help("bench") and "soak: how long it runs" in _help("bench")
    assert "-- SERVER_OPTION" in _help("cluster", "up") and "server_args" not in _help(
        "cluster", "up"
    )


async def test_output_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """`clusterchat admin users | head` ended in a BrokenPipeError traceback;
    now it ends as a C program killed by SIGPIPE would: silent, 141."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'many.db'}"
    node = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0))
    await node.start()
    await node.stop()  # the schema, then rows enough to fill a pipe many times
    import sqlite3

    with sqlite3.connect(tmp_path / "many.db") as rows:
        rows.executemany(
            "INSERT INTO user (name, namekey, password, state) VALUES (?, ?, 'x', 'offline')",
            [(f"u{i}", f"u{i}") for i in range(5000)],
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERCHAT_")}
    read, write = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "admin", "users", "--db", db,
        stdout=write, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(write)
    with os.fdopen(read, "rb") as head:
        assert head.read(100).startswith(b"      id  name")  # then the reader goes away
    assert proc.stderr is not None
    async with asyncio.timeout(60):
        err = await proc.stderr.read()
        assert await proc.wait() == 141
    assert err == b"", err.decode()


async def _db(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERCHAT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "db", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_missing_database_is_named_and_not_created(tmp_path: Path) -> None:
    """A MariaDB database that does not exist was "database unavailable:
    OperationalError: (1049, ...)"; an SQLite file that does not exist was
    created, then reported as "the database is empty"."""
    from tests.conftest import MYSQL_SERVER

    missing = f"{MYSQL_SERVER}/cc_missing_{os.urandom(4).hex()}"  # never created
    rc, _, err = await _db("status", "--db", missing)
    assert rc == 1 and "does not exist" in err and "clusterchat db init" in err, err
    rc, _, err = await _admin("users", "--db", missing)
    assert rc == 1 and "does not exist" in err, err
    nowhere = tmp_path / "no" / "such.db"
    for run in (_admin("users", "--db", f"sqlite+aiosqlite:///{nowhere}"),
                _db("status", "--db", f"sqlite+aiosqlite:///{nowhere}")):  # fmt: skip
        rc, _, err = await run
        assert rc == 1 and f"no such database file: {nowhere}" in err, err
    assert not nowhere.parent.exists()


async def test_kick_under_a_prefix_with_no_live_nodes_fails(tmp_path: Path) -> None:
    """`admin kick 3` with the nodes' --redis-prefix not given printed "user
    3: was not online" and exited 0 while the user was online under the
    other prefix; `users --online` listed no one. Both now say no node lives
    under that prefix, and fail."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    node = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0))
    await node.start()
    try:
        conn = await ChatConnection.open("127.0.0.1", node.port)
        uid = await conn.register(unique("kim"), PASSWORD)
        await conn.close()
    finally:
        await node.stop()
    prefix = f"nobody{os.urandom(4).hex()}:"
    where = ("--db", db, "--redis", "redis://127.0.0.1:6379/0", "--redis-prefix", prefix)
    for args in (("kick", str(uid)), ("users", "--online")):
        rc, out, err = await _admin(*args, *where)
        assert rc == 1 and f"no live nodes under prefix {prefix!r}" in err, (args, out, err)
        assert "CLUSTERCHAT_REDIS_PREFIX" in err and "was not online" not in out
    # Ban and delete still act (with every node down nobody is online), but
    # say that a session under another prefix is not ended.
    for args in (("ban", str(uid)), ("delete", str(uid))):
        rc, out, err = await _admin(*args, *where)
        assert rc == 0 and f"warning: no live nodes under prefix {prefix!r}" in err, (args, err)


def test_a_bench_target_that_is_not_host_port_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """`bench chat --target nonsense` ended in a traceback (int('nonsense')),
    and a port past 65535 in "Connection refused"."""
    for bad in ("nonsense", "127.0.0.1:99999", "127.0.0.1:6000,:x"):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["bench", "chat", "--target", bad])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "is not HOST:PORT" in err and "Traceback" not in err, err
    args = build_parser().parse_args(["bench", "chat", "--target", "10.0.0.5:8000,:6001"])
    assert args.target == [("10.0.0.5", 8000), ("127.0.0.1", 6001)]
