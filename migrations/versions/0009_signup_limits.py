"""signup: undecided form requests, confirmation limits per address and per domain, and the
language a confirmation asks for

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("confirmations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("language", sa.String(length=16), nullable=True))
    op.create_table(
        "signup_requests",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("email_ct", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signup_requests")),
    )
    op.create_table(
        "signup_limits",
        sa.Column("email_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("email_index", name=op.f("pk_signup_limits")),
    )
    op.create_table(
        "signup_domains",
        sa.Column("domain_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("domain_index", "hour", name=op.f("pk_signup_domains")),
    )


def downgrade() -> None:
    op.drop_table("signup_domains")
    op.drop_table("signup_limits")
    op.drop_table("signup_requests")
    with op.batch_alter_table("confirmations", schema=None) as batch_op:
        batch_op.drop_column("language")
