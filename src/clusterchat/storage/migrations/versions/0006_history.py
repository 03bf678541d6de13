"""Message history (issue 16): every 1:1 and group message, kept for
``--history-days`` and paged newest first by id.

Group members see a group's history from when they joined: ``groupuser.joined``
(revision 0004) already records it. Members from before 0004 have 0 there and
so see the group's history from its start; no history exists before this
revision, so for every member that is the same as "from now".

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, sqlite

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sqlite.INTEGER(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "history",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("conva", sa.Integer, nullable=False),
        sa.Column("convb", sa.Integer, nullable=False),
        sa.Column("sender", sa.Integer, nullable=False),
        sa.Column("mid", sa.String(128), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column(
            "body",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
            nullable=False,
        ),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_history_conv_id", "history", ["conva", "convb", "id"])


def downgrade() -> None:
    op.drop_table("history")
