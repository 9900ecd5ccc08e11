"""Reports and inventory (issue #15): a component's version, a device's capability report,
its published recipient keys and its registered report key, and the nonce issued with each
update (signed reports).

Revision ID: 0011_reports
Revises: 0010_compress
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0011_reports"
down_revision: str | None = "0010_compress"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS: dict[str, tuple[tuple[str, Any], ...]] = {
    "installed_components": (("version", sa.JSON()),),
    "devices": (("capabilities", sa.LargeBinary()), ("recipient_keys", sa.JSON()),
                ("report_key", sa.Text())),
    "assignments": (("nonce", sa.String(length=32)),),
}


def upgrade() -> None:
    # Tolerant of columns that exist already (a database made by create_all from the current
    # models and stamped, as 0008 is): each is added only if missing. NULL everywhere: no
    # version known, no capability report, no key; an update assigned before this revision
    # has no nonce (its reports are checked without one).
    inspector = sa.inspect(op.get_bind())
    for table, columns in _COLUMNS.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        missing = [(name, kind) for name, kind in columns if name not in have]
        if missing:
            with op.batch_alter_table(table) as batch:
                for name, kind in missing:
                    batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    for table, columns in _COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for name, _ in columns:
                batch.drop_column(name)
