"""Notices across replicas: each device's notice serial lives in the database
(``device_notices``), bumped in the transaction of the change, instead of a counter each
process seeded from its own clock (a cursor from one replica meant nothing to another).

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
    # A database stamped 0001_initial by upgrade_schema may have had the table created from
    # the current models already.
    if "device_notices" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "device_notices",
            sa.Column("device_id", sa.String(36),
                      sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("serial", sa.BigInteger(), nullable=False))


def downgrade() -> None:
    op.drop_table("device_notices")
