"""editions: subjects_json, the editors' own subject line per language

An edition's subject was always derived (the newsletter's name and date, or the post's title);
editors may now write one per language, kept beside the intro notes (``notes_json``).

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-02 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("editions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subjects_json", sa.Text(), nullable=False,
                                      server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("editions", schema=None) as batch_op:
        batch_op.drop_column("subjects_json")
