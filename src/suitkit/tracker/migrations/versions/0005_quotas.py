"""Quotas and retention: each report's size kept beside its bytes (a quota in bytes, and a
history page, read no report bytes), and indexes on when events and reports arrived (the
retention pass finds the old ones without a scan).

Revision ID: 0005_quotas
Revises: 0004_pages
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_quotas"
down_revision: str | None = "0004_pages"
branch_labels: str | None = None
depends_on: str | None = None

_INDEXES = (
    ("ix_device_events_timestamp", "device_events", ["timestamp"]),
    ("ix_device_reports_received", "device_reports", ["received"]),
)


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _indexes(table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes(table)}


def upgrade() -> None:
    # A database stamped 0001_initial by upgrade_schema may have had tables created from the
    # current models (with the column and indexes already): add only what is missing.
    if "size" not in _columns("device_reports"):
        with op.batch_alter_table("device_reports") as batch:
            batch.add_column(sa.Column("size", sa.Integer(), nullable=False,
                                       server_default="0"))
    op.execute("UPDATE device_reports SET size = length(raw) WHERE size = 0")
    for name, table, columns in _INDEXES:
        if name not in _indexes(table):
            op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
    with op.batch_alter_table("device_reports") as batch:
        batch.drop_column("size")
