"""Names (issue #17): the class registry (``device_classes``: vendor and class names of a
class ID, from a release's manifest text or an operator).

Revision ID: 0013_names
Revises: 0012_lists
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_names"
down_revision: str | None = "0012_lists"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Tolerant of a table that exists already (a database made by create_all from the current
    # models and stamped, as 0008 is). Release versions and notes need no column: they are
    # members of the release record (releases.record, JSON).
    if "device_classes" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "device_classes",
        sa.Column("class_id", sa.String(length=36), primary_key=True),
        sa.Column("vendor_id", sa.String(length=36), nullable=False),
        sa.Column("vendor_name", sa.String(length=128), nullable=True),
        sa.Column("class_name", sa.String(length=128), nullable=True),
        sa.Column("vendor_domain", sa.String(length=253), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("device_classes")
