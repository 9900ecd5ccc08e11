"""The cheap check-in (``POST /api/v1/devices/{id}/checkin``): each device keeps the digest
of the inventory it last sent (``devices.inventory_digest``), so a check-in that names the same
digest writes nothing and reads no component.

Revision ID: 0008_checkin
Revises: 0007_notices
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_checkin"
down_revision: str | None = "0007_notices"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database made by create_all before migrations existed and stamped 0001_initial (the
    # tests make one from the current models) may have the column already: add it if missing.
    # NULL for every device: its first check-in is asked for the whole inventory once.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("devices")}
    if "inventory_digest" not in columns:
        with op.batch_alter_table("devices") as batch:
            batch.add_column(sa.Column("inventory_digest", sa.String(length=128),
                                       nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("inventory_digest")
