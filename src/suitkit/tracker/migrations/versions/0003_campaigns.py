"""Campaigns: campaigns, their members and log; device tags; assignments know their campaign
and action (install or download).

Revision ID: 0003_campaigns
Revises: 0002_roles
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_campaigns"
down_revision: str | None = "0002_roles"
branch_labels: str | None = None
depends_on: str | None = None


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    # A database stamped 0001_initial by upgrade_schema may have had tables created from the
    # current models (create_all before migrations): add only what is missing.
    if "tags" not in _columns("devices"):
        with op.batch_alter_table("devices") as batch:
            batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
    if "campaign_id" not in _columns("assignments"):
        with op.batch_alter_table("assignments") as batch:
            batch.add_column(sa.Column("campaign_id", sa.String(36), nullable=True))
            batch.add_column(sa.Column("action", sa.String(16), nullable=False,
                                       server_default="install"))
            batch.create_index("ix_assignments_campaign_id", ["campaign_id"])
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("release", sa.String(128), nullable=False),
        sa.Column("envelope_url", sa.String(2048), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("success_threshold", sa.Float(), nullable=False),
        sa.Column("failure_threshold", sa.Float(), nullable=False),
        sa.Column("mode", sa.String(24), nullable=False),
        sa.Column("start_after", sa.DateTime(), nullable=True),
        sa.Column("window", sa.String(11), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=True),
        sa.Column("approved", sa.DateTime(), nullable=True),
        sa.Column("started", sa.DateTime(), nullable=True),
        sa.Column("finished", sa.DateTime(), nullable=True),
        sa.Column("triggered", sa.DateTime(), nullable=True),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("member_count", sa.Integer(), nullable=False),
        sa.Column("failures_acknowledged", sa.Integer(), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_campaigns_status", "campaigns", ["status"])
    op.create_table(
        "campaign_members",
        sa.Column("campaign_id", sa.String(36),
                  sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.String(36),
                  sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("times", sa.JSON(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_campaign_members_device_id", "campaign_members", ["device_id"])
    op.create_table(
        "campaign_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("campaign_id", sa.String(36),
                  sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_campaign_log_campaign_id", "campaign_log", ["campaign_id"])


def downgrade() -> None:
    op.drop_index("ix_campaign_log_campaign_id", table_name="campaign_log")
    op.drop_table("campaign_log")
    op.drop_index("ix_campaign_members_device_id", table_name="campaign_members")
    op.drop_table("campaign_members")
    op.drop_index("ix_campaigns_status", table_name="campaigns")
    op.drop_table("campaigns")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_index("ix_assignments_campaign_id")
        batch.drop_column("action")
        batch.drop_column("campaign_id")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("tags")
