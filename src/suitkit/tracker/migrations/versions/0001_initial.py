"""The tracker's first schema: devices, inventory, state events, SUIT reports, assignments.

Exactly the tables ``Base.metadata.create_all`` made before migrations existed, so a database
from that time is stamped with this revision (see ``tracker.store.upgrade_schema``).

Revision ID: 0001_initial
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("credential_hash", sa.String(200), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=True),
        sa.Column("vendor_id", sa.String(36), nullable=True),
        sa.Column("class_id", sa.String(36), nullable=True),
        sa.Column("hardware", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("state_changed", sa.DateTime(), nullable=True),
        sa.Column("inventory_updated", sa.DateTime(), nullable=True),
        sa.Column("history_count", sa.Integer(), nullable=False),
    )
    op.create_table(
        "installed_components",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(36),
                  sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("component_id", sa.JSON(), nullable=False),
        sa.Column("sequence_number", sa.String(20), nullable=True),
        sa.Column("digest", sa.String(128), nullable=True),
    )
    op.create_index("ix_installed_components_device_id", "installed_components", ["device_id"])
    op.create_table(
        "device_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(36),
                  sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("previous", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_device_events_device_id", "device_events", ["device_id"])
    op.create_table(
        "device_reports",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(36),
                  sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("received", sa.DateTime(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
    )
    op.create_index("ix_device_reports_device_id", "device_reports", ["device_id"])
    op.create_table(
        "assignments",
        sa.Column("device_id", sa.String(36),
                  sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("release", sa.String(128), nullable=False),
        sa.Column("envelope_url", sa.String(2048), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("done", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("assignments")
    op.drop_index("ix_device_reports_device_id", table_name="device_reports")
    op.drop_table("device_reports")
    op.drop_index("ix_device_events_device_id", table_name="device_events")
    op.drop_table("device_events")
    op.drop_index("ix_installed_components_device_id", table_name="installed_components")
    op.drop_table("installed_components")
    op.drop_table("devices")
