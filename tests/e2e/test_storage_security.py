"""Passwords are stored only as slow salted hashes."""

from __future__ import annotations

from argon2 import PasswordHasher
from sqlalchemy import select

from clusterchat.server.node import Node
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import user as user_table
from tests.conftest import PASSWORD, UserFactory


async def test_password_is_an_argon2id_hash(user: UserFactory, node: Node) -> None:
    alice, bob = await user(), await user()
    assert isinstance(node.store, SqlStore)
    async with node.store.engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    select(user_table.c.password).where(user_table.c.id.in_([alice.id, bob.id]))
                )
            )
            .scalars()
            .all()
        )
    assert len(rows) == 2
    for stored in rows:
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
        assert PasswordHasher().verify(stored, PASSWORD)
    assert rows[0] != rows[1]  # salted
