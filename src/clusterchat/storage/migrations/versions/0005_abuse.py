"""Abuse resistance (issue 13): names unique by a normalised key compared byte
for byte on every backend, ticket expiry, and each offline message's size for
per-receiver quotas.

Existing names keep their text; their key is computed here. Two names that
now collide (``Bob`` and ``bob``) keep working: the later one's key gets its
id appended, so it stays unique. Tickets from before have no expiry recorded
and so need the password once.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from clusterchat.protocol import names
from clusterchat.protocol.names import MAX_KEY, MAX_NAME

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def _exact(length: int) -> sa.String:
    return sa.String(length).with_variant(
        sa.dialects.mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"),
        "mysql",
        "mariadb",
    )


def _keys(table: str, id_col: str, name_col: str, key_col: str) -> None:
    conn = op.get_bind()
    seen: set[str] = set()
    rows = conn.execute(sa.text(f"SELECT {id_col}, {name_col} FROM {_q(table)} ORDER BY {id_col}"))
    for ident, name in rows.fetchall():
        key = names.key(str(name))[: MAX_KEY - 12]
        if key in seen:
            key = f"{key}#{ident}"
        seen.add(key)
        conn.execute(
            sa.text(f"UPDATE {_q(table)} SET {key_col} = :k WHERE {id_col} = :i"),
            {"k": key, "i": ident},
        )


def _q(table: str) -> str:
    return str(op.get_bind().dialect.identifier_preparer.quote(table))


def upgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.alter_column(
            "name", existing_type=sa.String(50), type_=_exact(MAX_NAME), existing_nullable=False
        )
        batch.add_column(sa.Column("namekey", _exact(MAX_KEY), nullable=True))
        batch.add_column(sa.Column("ticketexpiry", sa.BigInteger, nullable=True))
    _keys("user", "id", "name", "namekey")
    with op.batch_alter_table("user") as batch:
        batch.alter_column("namekey", existing_type=_exact(MAX_KEY), nullable=False)
        batch.create_unique_constraint("uq_user_namekey", ["namekey"])
    with op.batch_alter_table("allgroup") as batch:
        batch.alter_column(
            "groupname",
            existing_type=sa.String(50),
            type_=_exact(MAX_NAME),
            existing_nullable=False,
        )
        batch.add_column(sa.Column("groupkey", _exact(MAX_KEY), nullable=True))
    _keys("allgroup", "id", "groupname", "groupkey")
    with op.batch_alter_table("allgroup") as batch:
        batch.alter_column("groupkey", existing_type=_exact(MAX_KEY), nullable=False)
        batch.create_unique_constraint("uq_allgroup_groupkey", ["groupkey"])
    op.add_column(
        "offlinemessage", sa.Column("size", sa.Integer, nullable=False, server_default="0")
    )
    op.execute("UPDATE offlinemessage SET size = LENGTH(message)")


def downgrade() -> None:
    op.drop_column("offlinemessage", "size")
    with op.batch_alter_table("allgroup") as batch:
        batch.drop_constraint("uq_allgroup_groupkey", type_="unique")
        batch.drop_column("groupkey")
    with op.batch_alter_table("user") as batch:
        batch.drop_constraint("uq_user_namekey", type_="unique")
        batch.drop_column("ticketexpiry")
        batch.drop_column("namekey")
