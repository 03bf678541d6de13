"""Packed history rows (issue 16): a round's messages of one conversation
share one row, ``n`` of them (storage/history.py).

Rows already there are one message each: ``n`` = 1, the default. Message ids
become ``row id << 10 | index``, so an old row's message is ``id << 10``;
cursors handed out before the upgrade (old row ids) are not valid after it
(a client that pages on from one gets a page further back than it asked).
Downgrading drops ``n`` and does not unpack: a packed row then reads as
one message, its JSON.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("history", sa.Column("n", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("history") as batch:
        batch.drop_column("n")
