"""A SIGKILL at any statement of a schema migration loses nothing (issue #11, item 1).

SQLite's Python driver committed before each CREATE/ALTER on its own, so a kill between two
statements of a revision left its tables at the old version number, and every later ``suitkit
serve`` or ``suitkit db upgrade`` failed with "table ... already exists". The first ``suitkit
serve`` on a new data directory is in that window.

Here a child process (``migration_killer.py``, forked once per case) runs the upgrade and kills
itself with SIGKILL before its Nth statement or commit, for every N, from an empty database,
from a database made before migrations existed, and from each older revision. Each time the
next ``suitkit db upgrade`` must succeed, give exactly the models' schema, and keep every row
that was there before. On SQLite for every N; on PostgreSQL (transactional DDL of its own)
for every N from an empty database and from the oldest revision.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from pg import PostgresCluster
from suitkit.tracker.model import Base
from suitkit.tracker.store import alembic_config, upgrade_schema

from helpers import run_cli

KILLER = Path(__file__).with_name("migration_killer.py")
WAIT = 120.0  # one migration on a loaded machine, generously
REVISIONS = [r.revision for r in reversed(list(
    ScriptDirectory.from_config(alembic_config()).walk_revisions()))]
HEAD = REVISIONS[-1]
INITIAL_TABLES = ("devices", "installed_components", "device_events", "device_reports",
                  "assignments")
REPORT = bytes(range(256)) * 4

SEED_0001 = [
    "INSERT INTO devices (id, name, credential_hash, created, hardware, history_count) "
    "VALUES ('d-1', 'thermostat', 'sha256$00', '2026-01-02 03:04:05', '{\"board\": \"x\"}', 2)",
    "INSERT INTO installed_components (device_id, position, component_id, sequence_number, "
    "digest) VALUES ('d-1', 0, '[\"00\"]', '18446744073709551615', 'ab')",
    "INSERT INTO device_events (device_id, seq, state, previous, detail, timestamp) VALUES "
    "('d-1', 1, 'notified', NULL, 'release ab', '2026-01-02 03:04:06')",
    "INSERT INTO device_reports (device_id, seq, received, raw, summary) VALUES "
    "('d-1', 2, '2026-01-02 03:04:07', :raw, '{\"succeeded\": true}')",
    "INSERT INTO assignments (device_id, release, envelope_url, created, done) VALUES "
    "('d-1', 'ab', 'https://fw.example/e', '2026-01-02 03:04:06', NULL)",
]
SEED_0002 = [
    "INSERT INTO api_tokens (id, name, role, secret_hash, created, expires, created_by) VALUES "
    "('0123456789abcdef', 'ci', 'author', 'sha256$00', '2026-01-01 00:00:00', "
    "'2027-01-01 00:00:00', 'bootstrap-admin')",
    "INSERT INTO audit_log (timestamp, actor, role, action, target, detail) VALUES "
    "('2026-01-01 00:00:00', 'bootstrap-admin', 'admin', 'token.create', "
    "'0123456789abcdef', '')",
]


class Killer:
    """The forking child process of migration_killer.py, stopped by its pid at the end."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(KILLER)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, kill_at: int, url: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{kill_at} {url}\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], WAIT)
        assert ready, f"waited {WAIT} s for the migration child to be killed or finish"
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def killer() -> Iterator[Killer]:
    child = Killer()
    try:
        yield child
    finally:
        child.stop()


def seed(engine: Engine, start: str | None) -> dict[str, int]:
    """Bring ``engine``'s database to ``start`` (``None``: leave it empty; ``"legacy"``: the
    tables ``create_all`` made before migrations) and put rows in it; the row counts."""
    if start is None:
        return {}
    if start == "legacy":
        Base.metadata.create_all(engine, tables=[Base.metadata.tables[name]
                                                  for name in INITIAL_TABLES])
    else:
        upgrade_schema(engine, start)
    statements = SEED_0001 + (SEED_0002 if start not in ("legacy", REVISIONS[0]) else [])
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement), {"raw": REPORT} if ":raw" in statement else {})
        if "size" in {c["name"] for c in inspect(connection).get_columns("device_reports")}:
            # from 0005_quotas on the tracker writes each report's size with it
            connection.execute(text("UPDATE device_reports SET size = length(raw)"))
        if "reported" in {c["name"] for c in inspect(connection).get_columns("assignments")}:
            # from 0006_reported on the tracker records the report of the update with it (a
            # start at 0006 or later has no migration left that would)
            connection.execute(text("UPDATE assignments SET reported = 2 WHERE done IS NULL"))
    tables = {s.split()[2] for s in statements}
    return {table: 1 for table in tables}


def check(url: str, rows: dict[str, int]) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert context.get_current_revision() == HEAD
            assert list(compare_metadata(context, Base.metadata)) == []
            for table, count in rows.items():
                assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() \
                    == count, f"rows of {table} lost"
            if rows:
                name, raw, size = connection.execute(text(
                    "SELECT d.name, r.raw, r.size FROM devices d JOIN device_reports r "
                    "ON r.device_id = d.id")).one()
                assert (name, bytes(raw), size) == ("thermostat", REPORT, len(REPORT))
                # the seeded update in progress sent its report (seq 2): 0006 records it
                reported = connection.execute(text("SELECT reported FROM assignments")).one()
                assert reported == (2,)
    finally:
        engine.dispose()


def kill_everywhere(killer: Killer, capsys: pytest.CaptureFixture[str],
                    fresh: Callable[[], str], rows: dict[str, int],
                    done: Callable[[str], None] = lambda url: None) -> int:
    """Kill the upgrade of a ``fresh()`` copy before each of its statements; after each kill
    ``suitkit db upgrade`` must succeed and lose nothing. The number of kill points."""
    url = fresh()
    answer = killer.run(10**9, url)
    assert answer.startswith("done "), answer
    total = int(answer.split()[1])
    check(url, rows)
    done(url)
    for kill_at in range(1, total + 1):
        url = fresh()
        assert killer.run(kill_at, url) == f"killed {kill_at}"
        code, out, err = run_cli(capsys, "db", "upgrade", "--db", url)
        assert code == 0, f"after a kill before statement {kill_at} of {total}: {err}"
        assert out.strip().endswith(HEAD), out
        check(url, rows)
        done(url)
    return total


@pytest.mark.parametrize("start", [None, "legacy", *REVISIONS[:-1]])
def test_sqlite_a_kill_at_any_statement_of_a_migration_loses_nothing(
        killer: Killer, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        start: str | None) -> None:
    template = tmp_path / "template.db"
    engine = create_engine(f"sqlite:///{template}")
    try:
        rows = seed(engine, start)
    finally:
        engine.dispose()
    copies = iter(range(10**6))

    def fresh() -> str:
        path = tmp_path / f"copy-{next(copies)}.db"
        if template.exists():
            shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    def done(url: str) -> None:
        Path(url.removeprefix("sqlite:///")).unlink()

    assert kill_everywhere(killer, capsys, fresh, rows, done) > 10


@pytest.mark.parametrize("start", [None, REVISIONS[0]])
def test_postgresql_a_kill_at_any_statement_of_a_migration_loses_nothing(
        killer: Killer, capsys: pytest.CaptureFixture[str], postgres: PostgresCluster,
        start: str | None) -> None:
    template_url = postgres.database()
    engine = create_engine(template_url)
    try:
        rows = seed(engine, start)
    finally:
        engine.dispose()
    template = template_url.rsplit("/", 1)[1]

    def drop(url: str) -> None:
        with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres "
                             "dbname=postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")

    try:
        assert kill_everywhere(killer, capsys, lambda: postgres.database(template), rows,
                               drop) > 10
    finally:
        drop(template_url)
