"""Mailbox tallies: each user's stored offline count and bytes in one row,
so the quota check of a store (a group's fan-out above all) reads one row
per receiver instead of counting every stored message of each.

Filled from the rows already stored. A node still on 0007 code during a
rolling upgrade stores and deletes without tallying: tallies then drift,
which the store tolerates (it recounts a user exactly before refusing one,
and a tally below the truth only lets the bound overshoot).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mailbox",
        sa.Column("userid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("n", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "bytes",
            sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"),
            nullable=False,
            server_default="0",
        ),
        sa.Column("checked", sa.Integer, nullable=False, server_default="0"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.execute(
        "INSERT INTO mailbox (userid, n, bytes)"
        " SELECT userid, COUNT(*), COALESCE(SUM(size), 0) FROM offlinemessage GROUP BY userid"
    )


def downgrade() -> None:
    op.drop_table("mailbox")
