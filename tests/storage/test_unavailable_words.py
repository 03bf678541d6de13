"""A store that cannot serve says why in the driver's own words: the log
line of a lock wait timeout must not read like one of a lost connection."""

from __future__ import annotations

import pytest

from clusterchat import errors
from clusterchat.storage.sql import SqlStore


async def test_an_unavailable_store_names_the_drivers_reason(mariadb_url: str) -> None:
    missing = mariadb_url.rsplit("/", 1)[0] + "/ccb_no_such_database"
    store = SqlStore(missing, pool_size=1)
    try:
        with pytest.raises(errors.Unavailable, match=r"OperationalError: .*Unknown database"):
            await store.user_name(1)
    finally:
        await store.close()
