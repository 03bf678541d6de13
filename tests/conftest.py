"""Real-service fixtures: every store test runs on SQLite and on a real MariaDB.

MariaDB is expected on 127.0.0.1:3306 (root, no password), overridable with
CLUSTERCHAT_TEST_MYSQL. Each run creates its own database and drops it. If
MariaDB cannot be reached the run fails: a missing service is not a skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from clusterchat.service.passwords import HashCost
from tests.helpers import GIVEN_PREFIXES, SHARED_REDIS, OwnRedis, forget_prefixes

MYSQL_SERVER = os.environ.get("CLUSTERCHAT_TEST_MYSQL", "mysql+asyncmy://root@127.0.0.1:3306")
#: Cheap hashing so the suite is fast; users get the safe default.
FAST_HASH = HashCost(time_cost=1, memory_kib=8, parallelism=1)
PASSWORD = "s3cret"
# Tests register many users from 127.0.0.1; the per-address registration
# meter is tested on its own (tests/e2e/test_registration.py). Servers
# started as processes inherit this.
os.environ.setdefault("CLUSTERCHAT_REGISTRATIONS", "0")
# Processes started by tests (`python -m clusterchat ...`) run this checkout's
# code, as the test process does (pyproject.toml, pythonpath): a worktree's
# .venv may be main's, whose editable install would run main's.
_SRC = str(Path(__file__).resolve().parent.parent / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SRC, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _SRC)]
)


# In-process tests run on the standard event loop: uvloop's loop.close() was
# seen to hang, now and then, in pytest-asyncio's per-test teardown (CI stalled
# until its timeout). Every test that starts `clusterchat` as a process
# (cluster, process, client, bench, TLS client) runs the product on uvloop.


@pytest.fixture(scope="session", autouse=True)
def _shared_redis_left_as_found() -> Iterator[None]:
    """The keys under every prefix this process gave out (tests.helpers.redis_prefix)
    go at the end: about 77 were left on the shared Redis after each run."""
    yield
    if GIVEN_PREFIXES:
        forget_prefixes(SHARED_REDIS, GIVEN_PREFIXES)


async def _mysql(sql: str) -> None:
    engine = create_async_engine(MYSQL_SERVER + "/")
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    name = f"cc_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(_mysql("SELECT 1"))
    except Exception as exc:  # fail loudly: CI must not pass without MariaDB
        pytest.fail(f"MariaDB is not reachable at {MYSQL_SERVER}: {exc}", pytrace=False)
    # The database itself is created by the store on first start.
    yield f"{MYSQL_SERVER}/{name}"
    asyncio.run(_mysql(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    return str(request.getfixturevalue("mariadb_url"))


@pytest.fixture
def settings(request: pytest.FixtureRequest, db_url: str) -> Settings:
    limits = Limits(registrations_per_address=0, rejoin_after=0.0)
    if request.node.get_closest_marker("unmetered"):
        limits = replace(limits, message_rate=0)
    # Tests connect from loopback: trusting none of it keeps per-address limits on.
    return Settings(
        host="127.0.0.1",
        port=0,
        db_url=db_url,
        hash_cost=FAST_HASH,
        limits=limits,
        trusted_proxies=(),
        # Two test workers share two cores: a late loop here is the machine,
        # not the node. Tests of shedding set their own threshold.
        shed_lag=0.0,
    )


@pytest.fixture
async def node(settings: Settings) -> AsyncIterator[Node]:
    n = Node(settings)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


Connect = Callable[..., Awaitable[ChatConnection]]


@pytest.fixture
async def connect(node: Node) -> AsyncIterator[Connect]:
    """Open real TCP connections to the node; all closed at teardown."""
    opened: list[ChatConnection] = []

    async def _connect(legacy: bool = False) -> ChatConnection:
        conn = await ChatConnection.open("127.0.0.1", node.port, legacy=legacy)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        await conn.close()


def unique(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


class User:
    """A registered, logged-in user on its own connection."""

    def __init__(self, conn: ChatConnection, uid: int, name: str, login: dict[str, object]):
        self.conn = conn
        self.id = uid
        self.name = name
        self.login_ack = login


UserFactory = Callable[..., Awaitable[User]]


@pytest.fixture
def user(connect: Connect) -> UserFactory:
    async def _user(legacy: bool = False, name: str | None = None) -> User:
        conn = await connect(legacy=legacy)
        name = name or unique()
        uid = await conn.register(name, PASSWORD)
        ack = await conn.login(uid, PASSWORD)
        assert ack["errno"] == 0, ack
        return User(conn, uid, name, ack)

    return _user


__all__ = ["FAST_HASH", "PASSWORD", "User", "replace", "unique"]


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    """A redis-server of the test's own, which it may kill and bring back."""
    r = OwnRedis(tmp_path)
    await r.start()
    try:
        yield r
    finally:
        await r.kill()
