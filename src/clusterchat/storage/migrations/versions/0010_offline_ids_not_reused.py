"""Offline message ids are never reused (SQLite).

SQLite without AUTOINCREMENT gives a new row the highest id + 1, so once
the newest row is deleted its id comes back. A client with receipts has
its offline rows deleted by id when it confirms them, maybe late; a reused
id would then delete, or skip, a newer message. MariaDB's InnoDB keeps its
counter (since 10.2.4): nothing to do there.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "offlinemessage", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "offlinemessage", recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ):
            pass
