"""Pages: indexes for keyset pagination of the device list (created, id) and of a device's
history (device_id, seq on events and on reports).

Revision ID: 0004_pages
Revises: 0003_campaigns
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_pages"
down_revision: str | None = "0003_campaigns"
branch_labels: str | None = None
depends_on: str | None = None

_INDEXES = (
    ("ix_devices_created_id", "devices", ["created", "id"]),
    ("ix_device_events_device_id_seq", "device_events", ["device_id", "seq"]),
    ("ix_device_reports_device_id_seq", "device_reports", ["device_id", "seq"]),
)


def _indexes(table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes(table)}


def upgrade() -> None:
    # A database stamped 0001_initial by upgrade_schema may have had a table created from the
    # current models (with these indexes already): create only what is missing.
    for name, table, columns in _INDEXES:
        if name not in _indexes(table):
            op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
