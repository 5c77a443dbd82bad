"""domain caps and provider blocks: messages sent per capped domain and hour or day, and the
provider families that answered "blocklisted" (issue 21)

Revision ID: 0014
Revises: 0009
Create Date: 2026-12-02 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domain_sends",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("span", sa.String(length=1), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "span", "starts_at", name=op.f("pk_domain_sends")),
    )
    op.create_table(
        "provider_blocks",
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("family", name=op.f("pk_provider_blocks")),
    )


def downgrade() -> None:
    op.drop_table("provider_blocks")
    op.drop_table("domain_sends")
