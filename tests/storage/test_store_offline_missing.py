"""Settling a store in doubt: a message already there is not stored twice,
one that is missing is stored, an unknown user is told (it was not known
whether the first attempt found them); SQLite and MariaDB."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.errors import NoSuchUser
from clusterchat.storage.sql import SqlStore


@pytest.fixture(params=["sqlite", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}"
    return str(request.getfixturevalue("mariadb_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(url)
    await s.create_schema()
    yield s
    await s.close()


async def test_only_what_is_missing_is_stored(store: SqlStore) -> None:
    bob = await store.create_user("bob", "x")
    await store.store_offline(bob, "m-1 kept before")
    with pytest.raises(NoSuchUser):
        await store.store_offline_missing(
            [(bob, "m-1 kept before"), (999_999, "x"), (bob, "m-2 lost")]
        )
    assert [m for _, m in await store.offline(bob)] == ["m-1 kept before", "m-2 lost"]
    assert await store.offline(999_999) == []
