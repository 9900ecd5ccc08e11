"""A throwaway PostgreSQL for tests and benchmarks: initdb + pg_ctl in a temp dir, on a free
loopback port (docs: /work/shared/notes/dependencies.md §8).

``PostgresCluster`` starts one server (as the ``postgres`` OS user when run as root: initdb
refuses root), ``database()`` creates a fresh empty database and returns its SQLAlchemy URL
(``postgresql+psycopg://postgres@127.0.0.1:PORT/NAME``), ``stop()`` stops it and removes the
directory. ``postgres`` is the session fixture (imported by conftest.py): the cluster starts once,
on first use, and each test that wants a clean database calls ``postgres.database()``. Tests skip
with a message naming the package when PostgreSQL is not installed.

``backend_url(request, tmp_path)`` is the helper for tests parametrized over
``params=BACKENDS``: a fresh SQLite file or a fresh PostgreSQL database (a copy of a template
that holds the migrated tracker schema; ``migrated=False`` for an empty one).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine

from suitkit.tracker.store import upgrade_schema

BACKENDS = ["sqlite", "postgresql"]
INSTALL = "install postgresql (apt-get install postgresql)"
TIMEOUT = 60


class PostgresMissing(Exception):
    """initdb/pg_ctl are not installed (or, as root, there is no ``postgres`` user)."""


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    if not candidates:
        raise PostgresMissing(INSTALL)
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL server in a temp dir, fsync off (for tests and benchmarks only)."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresMissing(f"{INSTALL}: no 'postgres' user to run it as root") from e
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="suitkit-pg-"))
        if self.run_as:
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.port = free_port()
        self.started = False
        self._tracker_template: str | None = None
        try:
            self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust",
                      "--no-sync", "-E", "UTF8")
            self.start()
        except BaseException:
            self.stop()
            raise

    def start(self) -> None:
        """Start the server (again, after ``halt``) on the same port and data."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                  "-w", "-t", "30", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                  "-c max_connections=200", "start")
        self.started = True

    def halt(self) -> None:
        """Stop the server as a crash would (``-m immediate``), keeping its data for
        ``start``."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "-t", "30",
                  "stop")
        self.started = False

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run([*self.run_as, str(self.bin / program), *args],
                                capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if result.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): "
                               f"{result.stderr.strip()} {tail}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self, template: str = "template1") -> str:
        """A new database (empty, or a copy of ``template``); its SQLAlchemy URL.

        CREATE DATABASE needs the template to have no other session, and waits only 5 s for
        one to go: a backend whose client has just closed (the migration of the tracker
        template, a connection a test leaked) can take longer to exit on a loaded machine.
        So sessions left on the template are ended first, and the copy is tried again for up
        to ``TIMEOUT`` seconds."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        deadline = time.monotonic() + TIMEOUT
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True, connect_timeout=TIMEOUT) as connection:
            while True:
                connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = %s AND pid <> pg_backend_pid()",
                                   (template,))
                try:
                    connection.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
                    return self.url(name)
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def tracker_database(self) -> str:
        """A new database holding the tracker's migrated, empty schema (copied from a template
        migrated once, which is faster than migrating each one)."""
        if self._tracker_template is None:
            url = self.database()
            engine = create_engine(url)
            try:
                upgrade_schema(engine)
            finally:
                engine.dispose()
            self._tracker_template = url.rsplit("/", 1)[1]
        return self.database(self._tracker_template)

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w",
                          "-t", "30", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The session's throwaway PostgreSQL (skips when it is not installed)."""
    try:
        cluster = PostgresCluster()
    except PostgresMissing as e:
        pytest.skip(str(e))
    try:
        yield cluster
    finally:
        cluster.stop()


def backend_url(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool = True
                ) -> str:
    """A fresh database for ``request.param`` ("sqlite" or "postgresql"): on PostgreSQL with
    the tracker's schema already migrated unless ``migrated=False`` (then empty)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tracker.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.tracker_database() if migrated else cluster.database()
