"""The tracker's Alembic migrations, on SQLite and on a throwaway PostgreSQL.

``upgrade head`` on an empty database gives exactly the models' schema (``compare_metadata``
finds no difference: a model added or changed without a revision fails here); ``downgrade base``
removes every table; a database made by ``create_all`` before migrations existed is stamped and
keeps its rows; a database at a revision this suitkit does not know is refused.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from pg import BACKENDS, PostgresCluster, backend_url
from serve_kit import start_process, stop_process
from suitkit.errors import StorageError
from suitkit.tracker.model import Base
from suitkit.tracker.service import open_db
from suitkit.tracker.store import INITIAL_REVISION, alembic_config, downgrade_schema, upgrade_schema

INITIAL_TABLES = {"devices", "installed_components", "device_events", "device_reports",
                  "assignments"}


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    engine = create_engine(backend_url(request, tmp_path, migrated=False))
    request.addfinalizer(engine.dispose)
    return engine


def differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_the_revisions_form_one_line_from_0001_initial() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    assert [r.revision for r in script.walk_revisions()][-1] == INITIAL_REVISION


def test_upgrade_head_on_an_empty_database_gives_the_models_schema(engine: Engine) -> None:
    upgrade_schema(engine)
    assert current(engine) == head()
    assert differences(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert tables == {*Base.metadata.tables, "alembic_version"}


def test_downgrade_to_base_removes_every_table_and_upgrade_again_works(engine: Engine) -> None:
    upgrade_schema(engine)
    downgrade_schema(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert current(engine) is None
    upgrade_schema(engine)
    assert differences(engine) == []


def test_a_database_created_before_migrations_is_stamped_and_keeps_its_rows(
        engine: Engine) -> None:
    old = [t for t in Base.metadata.sorted_tables if t.name in INITIAL_TABLES
           and t.name != "assignments"]  # the very first slice had no assignments table
    Base.metadata.create_all(engine, tables=old)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO devices (id, name, credential_hash, created, hardware, history_count) "
            "VALUES ('d1', 'old device', 'x', '2026-01-01 00:00:00', '{}', 0)"))
    db = open_db(engine.url.render_as_string(hide_password=False))
    try:
        assert current(db.engine) == head()
        assert differences(db.engine) == []
        device = db.device("d1")
        assert device is not None and device["name"] == "old device"
        assert db.pending_update("d1") is None
    finally:
        db.engine.dispose()


def test_a_database_at_an_unknown_revision_is_refused(engine: Engine) -> None:
    upgrade_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(StorageError, match=r"cannot open the tracker database.*9999_future"):
        open_db(engine.url.render_as_string(hide_password=False))


def test_servers_starting_together_on_postgresql_migrate_once(postgres: PostgresCluster) -> None:
    """Four processes upgrade one empty database at the same moment (servers starting
    together): the advisory lock lets one migrate, the others wait and find the schema at head.
    (Without the lock, three of them fail on tables that already exist.)"""
    url = postgres.database()
    # a lock wait longer than 20 s is an error, so that a failure cannot hang the test
    waiting = f"{url}?options=-c%20lock_timeout%3D20000"
    code = ("import sys; from suitkit.tracker.store import migrate; print('ready', flush=True); "
            "sys.stdin.readline(); print(migrate(sys.argv[1])[1])")
    processes = [start_process([sys.executable, "-c", code, waiting], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE) for _ in range(4)]
    outcomes = []
    # A hung child would block readline() forever: a watchdog stops them all after 120 s.
    watchdog = threading.Timer(120, lambda: [stop_process(p, 5) for p in processes])
    watchdog.start()
    try:
        for process in processes:  # all imported: then go at once
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            out, err = process.communicate(timeout=60)
            outcomes.append((process.returncode, out.strip(), err.strip()[-300:]))
    finally:
        watchdog.cancel()
        for process in processes:
            stop_process(process)
    assert outcomes == [(0, head(), "")] * 4
    engine = create_engine(url)
    try:
        assert current(engine) == head()
        assert differences(engine) == []
    finally:
        engine.dispose()
