"""senders: the processes sending right now, to share rate limits among them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "senders",
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_senders")),
    )
    with op.batch_alter_table("senders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_senders_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("senders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_senders_expires_at"))
    op.drop_table("senders")
