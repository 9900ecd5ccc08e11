"""Health-gated rollouts (issue #13): what devices say of the health of a release they
confirmed (``device_health``), the campaign's health thresholds
(``campaigns.unhealthy_threshold``, ``health_window``, ``unhealthy_acknowledged``), each
member's health (``campaign_members.health``, ``unhealthy``, ``confirmed``) and the tracker's
order to roll an update back (``assignments.rollback``).

Revision ID: 0009_health
Revises: 0008_checkin
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_health"
down_revision: str | None = "0008_checkin"
branch_labels: str | None = None
depends_on: str | None = None


def _add(table: str, *columns: sa.Column) -> None:  # type: ignore[type-arg]
    # A database made by create_all from the current models and stamped 0001_initial (the
    # tests make one) may have the columns already: add only the missing ones.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
    missing = [c for c in columns if c.name not in have]
    if missing:
        with op.batch_alter_table(table) as batch:
            for column in missing:
                batch.add_column(column)


def upgrade() -> None:
    if "device_health" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "device_health",
            sa.Column("device_id", sa.String(length=36), nullable=False),
            sa.Column("release", sa.String(length=128), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("confirmed", sa.DateTime(), nullable=False),
            sa.Column("window", sa.Float(), nullable=False),
            sa.Column("checks", sa.Integer(), nullable=False),
            sa.Column("failures", sa.Integer(), nullable=False),
            sa.Column("crashes", sa.Integer(), nullable=False),
            sa.Column("records", sa.JSON(), nullable=False),
            sa.Column("detail", sa.Text(), nullable=False),
            sa.Column("unhealthy", sa.DateTime(), nullable=True),
            sa.Column("updated", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("device_id", "release"),
        )
    _add("campaigns",
         sa.Column("unhealthy_threshold", sa.Float(), nullable=True),
         sa.Column("health_window", sa.Float(), nullable=True),
         sa.Column("unhealthy_acknowledged", sa.Integer(), nullable=False,
                   server_default="0"))
    _add("campaign_members",
         sa.Column("health", sa.String(length=16), nullable=True),
         sa.Column("unhealthy", sa.DateTime(), nullable=True),
         sa.Column("confirmed", sa.DateTime(), nullable=True))
    _add("assignments", sa.Column("rollback", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("rollback")
    with op.batch_alter_table("campaign_members") as batch:
        batch.drop_column("confirmed")
        batch.drop_column("unhealthy")
        batch.drop_column("health")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("unhealthy_acknowledged")
        batch.drop_column("health_window")
        batch.drop_column("unhealthy_threshold")
    op.drop_table("device_health")
