"""editions: sent_reported_at, so the editors hear once that an edition was sent

The daemon and several workers can each see an edition finish; the one that sets this column
sends the report.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("editions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_reported_at", sa.DateTime(timezone=True), nullable=True))
    # Editions already sent were reported when they finished.
    op.execute("UPDATE editions SET sent_reported_at = finished_at WHERE state = 'sent'")


def downgrade() -> None:
    with op.batch_alter_table("editions", schema=None) as batch_op:
        batch_op.drop_column("sent_reported_at")
