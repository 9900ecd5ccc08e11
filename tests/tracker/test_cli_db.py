"""``suitkit db upgrade`` (in process) and ``suitkit serve --db`` (the real CLI process) on
SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from device.device_kit import Author
from pg import PostgresCluster
from serve_kit import serving
from suitkit.cli.main import app as cli
from suitkit.tracker.model import Base
from suitkit.tracker.store import INITIAL_REVISION, upgrade_schema


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


def suitkit(*args: str) -> Done:
    """The CLI in this process (``db upgrade`` does its work in the caller's thread)."""
    result = CliRunner().invoke(cli, list(args))
    return Done(result.exit_code, result.stdout, result.stderr)


def head() -> str:
    from alembic.script import ScriptDirectory

    from suitkit.tracker.store import alembic_config
    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def test_db_upgrade_migrates_a_postgresql_database_then_has_nothing_to_do(
        postgres: PostgresCluster) -> None:
    url = postgres.database()
    done = suitkit("db", "upgrade", "--db", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tracker database upgraded from no revision to {head()}"
    engine = create_engine(url)
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    again = suitkit("db", "upgrade", "--db", url)
    assert again.returncode == 0 and again.stdout.strip() == f"tracker database already at {head()}"


def test_db_upgrade_of_a_data_dir_steps_from_a_given_revision(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'tracker.db'}")
    try:
        upgrade_schema(engine, INITIAL_REVISION)
    finally:
        engine.dispose()
    done = suitkit("db", "upgrade", "--data", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tracker database upgraded from {INITIAL_REVISION} to {head()}"


def test_db_upgrade_refusals_are_one_line_usage_errors(tmp_path: Path) -> None:
    missing = suitkit("db", "upgrade", "--data", str(tmp_path))
    assert missing.returncode != 0 and "no tracker database in" in missing.stderr
    both = suitkit("db", "upgrade")
    assert both.returncode != 0 and "exactly one of --db URL or --data DIR" in both.stderr
    refused = suitkit("db", "upgrade", "--db", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x")
    assert refused.returncode != 0 and "hunter2" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "cannot migrate the tracker database" in \
        refused.stderr
    unknown = suitkit("db", "upgrade", "--db", f"sqlite:///{tmp_path / 'x.db'}",
                      "--revision", "9999_future")
    assert unknown.returncode != 0 and "9999_future" in unknown.stderr


def test_serve_with_db_serves_the_tracker_on_postgresql(tmp_path: Path,
                                                        postgres: PostgresCluster) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text("cli-admin-token\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token"), "--db", postgres.database()]
    with serving(argv) as server:
        url = server.url
        admin = {"Authorization": "Bearer cli-admin-token"}
        registered = httpx.post(f"{url}/api/v1/devices", json={"name": "pg"}, headers=admin,
                                timeout=5)
        assert registered.status_code == 201, registered.text
        listed = httpx.get(f"{url}/api/v1/devices", headers=admin, timeout=5).json()
        assert [d["name"] for d in listed["devices"]] == ["pg"]
    assert not (tmp_path / "data" / "tracker.db").exists()  # the data lives in PostgreSQL
