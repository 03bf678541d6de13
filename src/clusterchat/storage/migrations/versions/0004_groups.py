"""Friends and groups a person manages (issue 18): the ``admin`` group role,
each member's join time (a creator who leaves hands over to the longest
member), invite-only groups and their invitations, and blocks.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

_OLD_ROLE = sa.Enum("creator", "normal", name="group_role")
_NEW_ROLE = sa.Enum("creator", "normal", "admin", name="group_role")


def upgrade() -> None:
    with op.batch_alter_table("groupuser") as batch:
        batch.alter_column(
            "grouprole",
            existing_type=_OLD_ROLE,
            type_=_NEW_ROLE,
            existing_nullable=False,
            existing_server_default="normal",
        )
        # Members from before: all joined at 0, so the lowest user id counts as longest.
        batch.add_column(sa.Column("joined", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column(
        "allgroup",
        sa.Column("inviteonly", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "blocked",
        sa.Column("userid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("blockedid", sa.Integer, primary_key=True, autoincrement=False),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_blocked_blockedid", "blocked", ["blockedid"])
    op.create_table(
        "groupinvite",
        sa.Column("groupid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("userid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("inviter", sa.Integer, nullable=False),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_groupinvite_userid", "groupinvite", ["userid"])


def downgrade() -> None:
    op.drop_table("groupinvite")
    op.drop_table("blocked")
    with op.batch_alter_table("allgroup") as batch:
        batch.drop_column("inviteonly")
    op.execute("UPDATE groupuser SET grouprole = 'normal' WHERE grouprole = 'admin'")
    with op.batch_alter_table("groupuser") as batch:
        batch.drop_column("joined")
        batch.alter_column(
            "grouprole",
            existing_type=_NEW_ROLE,
            type_=_OLD_ROLE,
            existing_nullable=False,
            existing_server_default="normal",
        )
