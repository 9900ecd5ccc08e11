"""Lists: indexes for the devices list's server-side filters and sorts (``GET
/api/v1/devices?state=&class=&sort=``): by state (then the default order, created and id), by
class, by last seen and by name (each then id, the keyset's tie-break); a campaign's members
by position. Self-contained: only indexes, each created when missing.

Revision ID: 0012_lists
Revises: 0011_reports
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_lists"
down_revision: str | None = "0011_reports"
branch_labels: str | None = None
depends_on: str | None = None

_INDEXES = (
    ("ix_devices_state_created_id", "devices", ["state", "created", "id"]),
    ("ix_devices_class_id_created_id", "devices", ["class_id", "created", "id"]),
    ("ix_devices_last_seen_id", "devices", ["last_seen", "id"]),
    ("ix_devices_name_id", "devices", ["name", "id"]),
    # a campaign's members in pages by position (GET /api/v1/campaigns/{id}/members)
    ("ix_campaign_members_campaign_id_position", "campaign_members", ["campaign_id",
                                                                       "position"]),
)


def _indexes(table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes(table)}


def upgrade() -> None:
    # a database stamped by upgrade_schema may have tables made from the current models (with
    # these indexes already): create only what is missing
    for name, table, columns in _INDEXES:
        if name not in _indexes(table):
            op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        if name in _indexes(table):
            op.drop_index(name, table_name=table)
