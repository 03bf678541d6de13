"""The original C++ system's schema (its chat.sql), where every history starts.

Revision ID: 0000
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0000"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("password", sa.String(50), nullable=False),
        sa.Column(
            "state", sa.Enum("online", "offline", name="user_state"), server_default="offline"
        ),
    )
    op.create_table(
        "friend",
        sa.Column("userid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("friendid", sa.Integer, primary_key=True, autoincrement=False),
    )
    op.create_table(
        "allgroup",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("groupname", sa.String(50), nullable=False, unique=True),
        sa.Column("groupdesc", sa.String(200), server_default=""),
    )
    op.create_table(
        "groupuser",
        sa.Column("groupid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("userid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(
            "grouprole", sa.Enum("creator", "normal", name="group_role"), server_default="normal"
        ),
    )
    op.create_table(
        "offlinemessage",
        sa.Column("userid", sa.Integer, nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
    )


def downgrade() -> None:
    for name in ("offlinemessage", "groupuser", "allgroup", "friend", "user"):
        op.drop_table(name)
