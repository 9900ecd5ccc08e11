"""One report per update, whatever history was deleted: an assignment records the report of
its update (``assignments.reported``, the history seq) instead of the tracker finding it in the
history, which the quotas and retention passes trim.

Revision ID: 0006_reported
Revises: 0005_quotas
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_reported"
down_revision: str | None = "0005_quotas"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database stamped 0001_initial by upgrade_schema may have had the table created from
    # the current models (with the column already): add it only if missing.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("assignments")}
    if "reported" not in columns:
        with op.batch_alter_table("assignments") as batch:
            batch.add_column(sa.Column("reported", sa.Integer(), nullable=True))
    # an update in progress keeps the report it already sent: the first report after the
    # update's notified event, as the tracker found it before this revision
    op.execute(
        "UPDATE assignments SET reported = (SELECT min(r.seq) FROM device_reports r "
        "WHERE r.device_id = assignments.device_id AND r.seq > COALESCE(("
        "SELECT max(e.seq) FROM device_events e WHERE e.device_id = assignments.device_id "
        "AND e.state = 'notified'), 0)) WHERE done IS NULL AND reported IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("reported")
