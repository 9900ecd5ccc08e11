"""Campaigns that send deltas (docs/delta.md, issue #16): ``campaigns.deltas`` lists the delta
releases of the campaign's release, each with the digest of the image it applies to; a member
whose inventory runs that image is assigned the delta instead of the full release.

Revision ID: 0010_compress
Revises: 0009_health
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_compress"
down_revision: str | None = "0009_health"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database made by create_all from the current models may have the column already.
    # NULL for every existing campaign: it offers no delta.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("campaigns")}
    if "deltas" not in columns:
        with op.batch_alter_table("campaigns") as batch:
            batch.add_column(sa.Column("deltas", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("deltas")
