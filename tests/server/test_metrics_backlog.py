"""The offline backlog gauge is a count over the offline table, read before
each scrape; the HTTP port is public, so a flood of scrapes must not become a
flood of counts on the database."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from clusterchat.config import Settings
from clusterchat.server.metrics import NodeCollector
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from tests.conftest import FAST_HASH


async def test_scrapes_that_come_together_share_one_count(mariadb_url: str) -> None:
    store = SqlStore(mariadb_url, pool_size=2)
    await store.create_schema()
    counts: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "count(" in statement.lower():
            counts.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
    settings = Settings(
        host="127.0.0.1", port=0, db_url=mariadb_url, hash_cost=FAST_HASH, shed_lag=0.0
    )
    node = Node(settings, store=store)
    collector = NodeCollector(node)
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(collector.refresh() for _ in range(50)))
        assert len(counts) == 1 and collector.backlog is not None
        await collector.refresh()  # a later scrape counts again: nothing stale
        assert len(counts) == 2
    finally:
        await store.close()
