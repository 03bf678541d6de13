"""Accounts and mailbox counts shared by the full-mailbox tests (one node
and across nodes)."""

from __future__ import annotations

from sqlalchemy import func, select

from clusterchat.client.connection import ChatConnection
from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import offlinemessage
from tests.conftest import PASSWORD, unique


async def registered(node: Node) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    return conn, await conn.register(unique(), PASSWORD)


async def logged_in(node: Node) -> tuple[ChatConnection, int]:
    """A new account, logged in."""
    conn, uid = await registered(node)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return conn, uid


async def stored_rows(node: Node, uid: int) -> int:
    """Messages stored for ``uid``, counted in the table (not the tally)."""
    store = node.service.store
    assert isinstance(store, SqlStore)
    async with store.engine.connect() as conn:
        q = select(func.count()).where(offlinemessage.c.userid.in_((uid, -uid)))
        return int((await conn.execute(q)).scalar_one())
