"""inbound: handled messages, soft-bounce scores, replies to readers per day

Revision ID: 0010
Revises: 0011 (relinked at merge: it was made on 0009)
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_seen",
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_inbound_seen")),
    )
    op.create_table(
        "soft_bounces",
        sa.Column("subscriber_id", sa.BigInteger(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id", name=op.f("pk_soft_bounces")),
    )
    op.create_table(
        "inbound_replies",
        sa.Column("key_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("warned", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key_index", "day", name=op.f("pk_inbound_replies")),
    )


def downgrade() -> None:
    op.drop_table("inbound_replies")
    op.drop_table("soft_bounces")
    op.drop_table("inbound_seen")
