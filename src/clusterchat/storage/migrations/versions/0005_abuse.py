"""Abuse limits (issue 13): names unique by a byte-compared key (NFKC,
trimmed, case-folded; MariaDB's general_ci made "x😀" equal "x😎"), ticket
expiry, and the size of each offline message for per-receiver quotas.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from clusterchat.protocol import names

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def _exact(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def _keys(table: str, id_col: str, name_col: str, key_col: str) -> None:
    """Fill the key column from the names already there. Two old names with
    one key (possible before: "Alice" and "alice") keep their rows; the later
    one's key gets its id appended, so it stays unique."""
    conn = op.get_bind()
    seen: set[str] = set()
    rows = conn.execute(sa.text(f"SELECT {id_col}, {name_col} FROM {table} ORDER BY {id_col}"))
    for row_id, name in list(rows):
        key = names.key(str(name).strip())
        if key in seen:
            key = f"{key}#{row_id}"
        seen.add(key)
        conn.execute(
            sa.text(f"UPDATE {table} SET {key_col} = :k WHERE {id_col} = :i"),
            {"k": key, "i": row_id},
        )


def upgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.add_column(sa.Column("namekey", _exact(names.MAX_KEY), nullable=True))
        batch.add_column(sa.Column("ticketexpiry", sa.BigInteger, nullable=True))
        batch.alter_column(
            "name",
            existing_type=sa.String(50),
            type_=_exact(names.MAX_NAME),
            existing_nullable=False,
        )
    with op.batch_alter_table("allgroup") as batch:
        batch.add_column(sa.Column("groupkey", _exact(names.MAX_KEY), nullable=True))
        batch.alter_column(
            "groupname",
            existing_type=sa.String(50),
            type_=_exact(names.MAX_NAME),
            existing_nullable=False,
        )
    _keys("user", "id", "name", "namekey")
    _keys("allgroup", "id", "groupname", "groupkey")
    with op.batch_alter_table("user") as batch:
        batch.create_unique_constraint("uq_user_namekey", ["namekey"])
    with op.batch_alter_table("allgroup") as batch:
        batch.create_unique_constraint("uq_allgroup_groupkey", ["groupkey"])
    op.add_column(
        "offlinemessage", sa.Column("size", sa.Integer, nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("offlinemessage", "size")
    with op.batch_alter_table("allgroup") as batch:
        batch.drop_constraint("uq_allgroup_groupkey", type_="unique")
        batch.drop_column("groupkey")
    with op.batch_alter_table("user") as batch:
        batch.drop_constraint("uq_user_namekey", type_="unique")
        batch.drop_column("ticketexpiry")
        batch.drop_column("namekey")
