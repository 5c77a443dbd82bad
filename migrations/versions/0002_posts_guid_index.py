"""posts: index guid, to find a post already stored from another feed (issue 4)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 20:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.create_index("ix_posts_guid", ["guid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.drop_index("ix_posts_guid")
