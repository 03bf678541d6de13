"""Offline messages stored for one user by transactions that commit out of
id order (MariaDB assigns an id at insert, not at commit) are all delivered:
none is skipped or deleted unseen because a later id was delivered first.
A lost message in a soak run was traced to this."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from clusterchat.storage.tables import offlinemessage
from tests.conftest import FAST_HASH, PASSWORD, unique


@pytest.fixture
async def maria_node(mariadb_url: str) -> AsyncIterator[Node]:
    n = Node(Settings(port=0, db_url=mariadb_url, hash_cost=FAST_HASH, shed_lag=0.0))
    await n.start()
    yield n
    await n.stop()


def _chat(toid: int, text: str) -> bytes:
    return codec.one_chat(1, "x", toid, text, "", 0, f"t-{text}")


async def test_a_store_committing_late_with_a_lower_id_is_still_delivered(
    maria_node: Node, mariadb_url: str
) -> None:
    bob = await ChatConnection.open("127.0.0.1", maria_node.port)
    bob_id = await bob.register(unique(), PASSWORD)
    assert (await bob.login(bob_id, PASSWORD))["errno"] == 0
    other = create_async_engine(mariadb_url)
    try:
        async with other.connect() as conn:
            await conn.begin()
            # First in: takes the lower id, but commits last.
            late = _chat(bob_id, "late").decode().strip()
            await conn.execute(insert(offlinemessage).values(userid=bob_id, message=late))
            # Meanwhile a store for bob commits with a higher id and is delivered.
            await maria_node.service.store_offline_each(bob_id, [_chat(bob_id, "early")])
            assert (await bob.expect(MsgId.ONE_CHAT))["msg"] == "early"
            await conn.commit()
        maria_node.service.nudged(bob_id)  # what the storing node's nudge does
        assert (await bob.expect(MsgId.ONE_CHAT))["msg"] == "late"
        # Rows are deleted once written to bob, which may be just after he read them.
        async with asyncio.timeout(5):
            while await maria_node.store.offline(bob_id):  # noqa: ASYNC110 - polled with a deadline
                await asyncio.sleep(0.01)
    finally:
        await other.dispose()
        await bob.close()
