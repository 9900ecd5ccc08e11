"""Alembic environment for the status tracker (online mode only).

``tracker.store.upgrade_schema`` runs it with ``config.attributes["connection"]`` set to an open
connection; run by hand (``alembic -x url=... upgrade head``) it makes its own engine from the
``url`` argument or ``sqlalchemy.url``. ``target_metadata`` is the models' metadata, so
``alembic revision --autogenerate`` and ``compare_metadata`` see the tables of ``tracker.model``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from suitkit.tracker.model import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode (copy and rename the table) does it
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or \
        context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database URL: alembic -x url=URL upgrade head")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the tracker's migrations run online only (against a database)")
_online()
