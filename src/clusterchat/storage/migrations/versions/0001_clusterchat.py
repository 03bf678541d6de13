"""clusterchat's first schema: argon2id-sized passwords (plaintext ones marked
for rehashing at login), ordered offline messages of any length, utf8mb4.

Revision ID: 0001
Revises: 0000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, sqlite

revision = "0001"
down_revision: str | None = "0000"
branch_labels = None
depends_on = None

#: Marks a password the original stored in plaintext; the login that proves
#: it replaces it with an argon2id hash (clusterchat.service.passwords).
PLAIN = "plain$"

_TABLES = ("user", "friend", "allgroup", "groupuser")


def upgrade() -> None:
    is_mysql = op.get_bind().dialect.name in ("mysql", "mariadb")
    if is_mysql:
        for name in _TABLES:
            op.execute(f"ALTER TABLE `{name}` ENGINE=InnoDB")
            op.execute(f"ALTER TABLE `{name}` CONVERT TO CHARACTER SET utf8mb4")
    op.execute("UPDATE user SET state = 'offline' WHERE state IS NULL")
    op.execute("UPDATE allgroup SET groupdesc = '' WHERE groupdesc IS NULL")
    op.execute("UPDATE groupuser SET grouprole = 'normal' WHERE grouprole IS NULL")
    user_state = sa.Enum("online", "offline", name="user_state")
    with op.batch_alter_table("user") as batch:
        batch.alter_column("password", type_=sa.String(255), existing_nullable=False)
        batch.alter_column("state", existing_type=user_state, nullable=False,
                           existing_server_default="offline")  # fmt: skip
    with op.batch_alter_table("allgroup") as batch:
        batch.alter_column("groupdesc", existing_type=sa.String(200), nullable=False,
                           existing_server_default="")  # fmt: skip
    role = sa.Enum("creator", "normal", name="group_role")
    with op.batch_alter_table("groupuser") as batch:
        batch.alter_column("grouprole", existing_type=role, nullable=False,
                           existing_server_default="normal")  # fmt: skip
    concat = "CONCAT(:p, password)" if is_mysql else "(:p || password)"
    op.get_bind().execute(
        sa.text(f"UPDATE user SET password = {concat} WHERE password NOT LIKE '$argon2%'"),
        {"p": PLAIN},
    )
    op.create_index("ix_groupuser_userid", "groupuser", ["userid"])
    # Offline messages gain an id (delivery order); rebuilt as a new table,
    # which works the same on SQLite and MySQL.
    big_id = sa.BigInteger().with_variant(sqlite.INTEGER(), "sqlite")
    op.create_table(
        "offlinemessage_new",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("userid", sa.Integer, nullable=False),
        sa.Column(
            "message",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
            nullable=False,
        ),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.execute(
        "INSERT INTO offlinemessage_new (userid, message) "
        "SELECT userid, message FROM offlinemessage"
    )
    op.drop_table("offlinemessage")
    op.rename_table("offlinemessage_new", "offlinemessage")
    op.create_index("ix_offlinemessage_userid_id", "offlinemessage", ["userid", "id"])


def downgrade() -> None:
    raise NotImplementedError("clusterchat does not go back to the original's schema")
