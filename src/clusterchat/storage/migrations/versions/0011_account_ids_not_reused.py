"""Account and group ids are never reused (SQLite).

SQLite without AUTOINCREMENT gives a new row the highest id + 1, so the
id of a newest account deleted by ``clusterchat admin delete`` (or of a
newest group deleted by its creator) came back at the next registration:
a message still on its way to the old account, or a chat a friend sends it
from a stale list, went to a stranger, and what the old account wrote
after its delete showed under the new one's name. MariaDB's InnoDB keeps
its counter (since 10.2.4): nothing to do there.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None

_TABLES = ("user", "allgroup")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in _TABLES:
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
            ):
                pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in _TABLES:
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_autoincrement": False}
            ):
                pass
