"""Ticket rotations arriving together share one transaction (a reconnect
storm): each user's still succeeds or fails on its own, and a ticket used
twice at once is replaced once. SQLite and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.storage.sql import SqlStore
from tests.conftest import unique


@pytest.fixture(params=["sqlite", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
    return str(request.getfixturevalue("mariadb_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(url, pool_size=4)
    await s.create_schema()
    yield s
    await s.close()


async def _with_ticket(store: SqlStore, digest: str) -> int:
    uid = await store.create_user(unique(), "x")
    await store.open_session(uid, digest)
    return uid


async def test_rotations_at_once_each_succeed_or_fail_alone(store: SqlStore) -> None:
    uids = [await _with_ticket(store, f"old{i}") for i in range(20)]
    # Every other one gives a ticket that is not (any longer) the stored one.
    olds = [f"old{i}" if i % 2 == 0 else "stale" for i in range(20)]
    got = await asyncio.gather(
        *(store.rotate_ticket(uids[i], olds[i], f"new{i}") for i in range(20))
    )
    assert got == [i % 2 == 0 for i in range(20)]
    for i, u in enumerate(uids):
        found = await store.resume(u)
        assert found is not None
        assert found.ticket_digest == (f"new{i}" if i % 2 == 0 else f"old{i}")


async def test_a_ticket_used_twice_at_once_is_replaced_once(store: SqlStore) -> None:
    uid = await _with_ticket(store, "old")
    other = await _with_ticket(store, "other")
    got = await asyncio.gather(
        store.rotate_ticket(uid, "old", "first"),
        store.rotate_ticket(other, "other", "other2"),
        store.rotate_ticket(uid, "old", "second"),
    )
    assert list(got) == [True, True, False]
    found = await store.resume(uid)
    assert found is not None and found.ticket_digest == "first"
