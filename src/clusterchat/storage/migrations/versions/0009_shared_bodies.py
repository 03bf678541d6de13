"""Offline texts kept once for many receivers, and per-sender shares.

``offlinebody`` holds a text a fan-out keeps for many receivers once; their
``offlinemessage`` rows name it (``bodyid``) with ``userid`` = minus the
receiver's id, so code from before this revision never reads them.
``offlinemessage.sender`` and ``mailboxshare`` count what each sender has
stored for each receiver, for the per-sender share of the offline quota.

Rows stored before it keep their text and sender 0 (not known): they count
toward the receiver's quota, toward no sender's share. Nothing is copied.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.INTEGER(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("offlinemessage") as batch:
        batch.add_column(sa.Column("bodyid", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("sender", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "offlinebody",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "message",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("size", sa.Integer, nullable=False, server_default="0"),
        sa.Column("refs", sa.Integer, nullable=False, server_default="0"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "mailboxshare",
        sa.Column("userid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sender", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("n", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bytes", _BigId, nullable=False, server_default="0"),
        sa.Column("checked", sa.Integer, nullable=False, server_default="0"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    """Shared rows get their text back under their receiver's id first."""
    op.execute(
        "UPDATE offlinemessage SET userid = -userid, message ="
        " (SELECT b.message FROM offlinebody b WHERE b.id = offlinemessage.bodyid)"
        " WHERE bodyid IS NOT NULL"
    )
    op.drop_table("mailboxshare")
    op.drop_table("offlinebody")
    with op.batch_alter_table("offlinemessage") as batch:
        batch.drop_column("sender")
        batch.drop_column("bodyid")
