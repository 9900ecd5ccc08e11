"""Replicas on one database (issue #12): each device's notice serial lives in the database
(``device_notices``), bumped in the transaction of the change, instead of a counter each
process seeded from its own clock (a cursor from one replica meant nothing to another); the
firmware server's releases are recorded in the database (``releases``), not only on one
replica's disk.

Revision ID: 0007_notices
Revises: 0006_reported
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_notices"
down_revision: str | None = "0006_reported"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database stamped 0001_initial by upgrade_schema may have had the tables created from
    # the current models already.
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "releases" not in tables:
        op.create_table(
            "releases",
            sa.Column("id", sa.String(128), primary_key=True),
            sa.Column("sequence_number", sa.BigInteger(), nullable=False),
            sa.Column("envelope", sa.String(64), nullable=False),
            sa.Column("record", sa.JSON(), nullable=False),
            sa.Column("created", sa.DateTime(), nullable=False))
    if "device_notices" not in tables:
        op.create_table(
            "device_notices",
            sa.Column("device_id", sa.String(36),
                      sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("serial", sa.BigInteger(), nullable=False))


def downgrade() -> None:
    op.drop_table("device_notices")
    op.drop_table("releases")
