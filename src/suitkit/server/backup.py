"""Backup and restore of a ``suitkit serve`` data directory (issue #13 item 5).

``backup(data, target, db_url=...)`` writes, while the server keeps serving:

1. the status tracker's database: SQLite through its online backup API in one step (a
   consistent snapshot; with WAL, writers are not blocked meanwhile), checked with
   ``PRAGMA integrity_check``; PostgreSQL through ``pg_dump --format=custom`` (the connection's
   parts in ``PG*`` variables, never a password on a command line);
2. the release records (``releases/*.json``, and those the tracker's database keeps since
   0007_notices, written out as such files: a restored server imports them once);
3. the blobs (``blobs/xx/<sha256>``), each checked against its name while it is copied.

In that order, everything a copied row or record refers to is copied after it: a deployment
names a release that was stored before it, a release record is written after its blobs. A
backup is made in a hidden sibling folder and renamed into place once complete and fsynced:
a killed backup leaves no folder that looks like a backup. ``backup.json`` says what it holds.

``restore(source, data, db_url=...)`` fills a new (absent or empty) data directory the same
way (blobs checked again, release records parsed and their blobs present) and the database:
the SQLite file copied to ``DATA/tracker.db`` (or the path of a ``sqlite:///`` URL), or the
dump given to ``pg_restore`` into an existing, empty PostgreSQL database. ``serve`` migrates the
restored schema when it starts, so a backup of an older version restores into a newer one.

Not here: incremental backups, encryption, backing up the tokens' files or the keys (they live
outside the data directory: copy them apart).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suitkit.errors import StorageError
from suitkit.fileio import fsync_dir
from suitkit.server.store import ReleaseRecord, is_digest, is_release_id

__all__ = ["MANIFEST", "BackupSummary", "backup", "restore"]

MANIFEST = "backup.json"
FORMAT = 1
_CHUNK = 1024 * 1024
_SQLITE_FILE = "tracker.db"
_PG_FILE = "tracker.pgdump"
_TIMEOUT = 3600


@dataclass(frozen=True, slots=True)
class BackupSummary:
    """What a backup holds (or a restore restored)."""

    path: Path
    releases: int
    blobs: int
    blob_bytes: int
    database: str | None  # "sqlite", "postgresql" or None (no tracker database)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "releases": self.releases, "blobs": self.blobs, "blob_bytes": self.blob_bytes,
                "database": self.database}


def _database(data: Path, db_url: str | None) -> tuple[str | None, Path | None, str | None]:
    """(kind, SQLite path, PostgreSQL URL) of the tracker database of ``data``."""
    if db_url is None:
        path = data / _SQLITE_FILE
        return ("sqlite", path, None) if path.is_file() else (None, None, None)
    if db_url.startswith("sqlite:///"):
        return "sqlite", Path(db_url.removeprefix("sqlite:///")), None
    if db_url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return "postgresql", None, db_url
    raise StorageError(f"--db: expected a sqlite:/// or postgresql:// URL, got "
                       f"{db_url.split(':', 1)[0][:20]}:...")


def _pg_environment(url: str) -> dict[str, str]:
    """libpq's ``PG*`` variables for ``url`` (the password never on a command line)."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    parts = make_url(url)
    env = dict(os.environ)
    for variable, value in (("PGHOST", parts.host), ("PGPORT", parts.port),
                            ("PGUSER", parts.username), ("PGPASSWORD", parts.password),
                            ("PGDATABASE", parts.database)):
        if value is not None:
            env[variable] = str(value)
    return env


def _run(argv: list[str], env: Mapping[str, str], what: str) -> None:
    program = shutil.which(argv[0])
    if program is None:
        raise StorageError(f"{what} needs {argv[0]} (install the PostgreSQL client: "
                           "apt-get install postgresql-client)")
    try:
        done = subprocess.run([program, *argv[1:]], env=dict(env), capture_output=True,  # noqa: S603
                              text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StorageError(f"{what} failed: {e}") from e
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0][:300]
        raise StorageError(f"{what} failed (exit {done.returncode}): {first}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file(source: Path, target: Path, *, sha256: str | None = None) -> int:
    """Copy ``source`` to ``target`` (new), fsynced; with ``sha256``, the bytes must hash to
    it. Returns the size."""
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as src, target.open("xb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if sha256 is not None and digest.hexdigest() != sha256:
        raise StorageError(f"blob {source} is damaged: its bytes hash to "
                           f"{digest.hexdigest()}, its name says {sha256}")
    return size


def _copy_blobs(source: Path, target: Path) -> tuple[int, int]:
    """Every blob of ``source/blobs`` into ``target/blobs``, checked; (count, bytes)."""
    count = size = 0
    folder = source / "blobs"
    if not folder.is_dir():
        return 0, 0
    for shard in sorted(folder.iterdir()):
        if not shard.is_dir() or len(shard.name) != 2:
            continue
        made = False
        for blob in sorted(shard.iterdir()):
            if not is_digest(blob.name) or not blob.name.startswith(shard.name):
                continue  # not a blob (the store writes nothing else here)
            if not made:
                (target / "blobs" / shard.name).mkdir(parents=True, exist_ok=True)
                made = True
            size += _copy_file(blob, target / "blobs" / shard.name / blob.name,
                               sha256=blob.name)
            count += 1
        if made:
            fsync_dir(target / "blobs" / shard.name)
    if count:
        fsync_dir(target / "blobs")
    return count, size


def _database_releases(target: Path, snapshot: Path | None, pg_url: str | None) -> int:
    """The release records of the tracker's database (its ``releases`` table: the SQLite
    ``snapshot``, or the PostgreSQL database of ``pg_url``) into ``target/releases`` as
    ``releases/<id>.json`` files, those not there already; how many were added. A database
    without the table (a schema before 0007_notices) has none."""
    rows: list[tuple[str, Any]] = []
    try:
        if snapshot is not None and snapshot.is_file():
            with contextlib.closing(sqlite3.connect(snapshot)) as connection:
                rows = [(i, json.loads(r)) for i, r in connection.execute(
                    "SELECT id, record FROM releases")]
        elif pg_url is not None:
            from sqlalchemy import create_engine, text  # noqa: PLC0415
            from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

            engine = create_engine(pg_url)
            try:
                with engine.connect() as connection:
                    rows = [(i, r) for i, r in connection.execute(
                        text("SELECT id, record FROM releases"))]
            except SQLAlchemyError as e:
                if "releases" not in str(e):
                    raise StorageError(f"cannot read the release records of the tracker "
                                       f"database: {str(e).splitlines()[0][:200]}") from e
            finally:
                engine.dispose()
    except sqlite3.OperationalError as e:
        if "no such table" not in str(e):
            raise StorageError(f"cannot read the release records of {snapshot}: {e}") from e
    folder = target / "releases"
    folder.mkdir(parents=True, exist_ok=True)
    added = 0
    for release_id, record in rows:
        path = folder / f"{release_id}.json"
        if not is_release_id(str(release_id)) or path.exists():
            continue
        path.write_bytes(json.dumps(record, indent=2, sort_keys=True).encode())
        _fsync_file(path)
        added += 1
    fsync_dir(folder)
    return added


def _copy_releases(source: Path, target: Path, *, check_blobs: Path | None = None) -> int:
    """Every release record of ``source/releases`` into ``target/releases``; with
    ``check_blobs``, each is parsed and its blobs must be in that data directory."""
    (target / "releases").mkdir(parents=True, exist_ok=True)
    count = 0
    folder = source / "releases"
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not is_release_id(record.stem):
            continue
        if check_blobs is not None:
            try:
                parsed = ReleaseRecord.from_json(json.loads(record.read_bytes()))
            except (ValueError, KeyError, TypeError) as e:
                raise StorageError(f"release record {record} is not one: {e}") from e
            blobs = [parsed.envelope, *(c.blob for c in parsed.components if c.blob),
                     *parsed.integrated.values()]
            for blob in blobs:
                if not (check_blobs / "blobs" / blob[:2] / blob).is_file():
                    raise StorageError(f"release {record.stem} needs blob {blob}, which the "
                                       "backup does not hold")
        _copy_file(record, target / "releases" / record.name)
        count += 1
    fsync_dir(target / "releases")
    return count


def _sqlite_snapshot(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database ``source`` (online backup API, one step)."""
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # all pages in one step: one read transaction, one snapshot
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                (result,) = dst.execute("PRAGMA integrity_check").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as e:
        raise StorageError(f"cannot back up the database {source}: {e}") from e
    if result != "ok":
        raise StorageError(f"the copy of the database {source} is damaged: {result}")
    _fsync_file(target)


@contextlib.contextmanager
def _building(target: Path) -> Any:
    """A hidden sibling folder renamed to ``target`` when the block ends without error
    (removed otherwise)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StorageError(f"{target} already exists and is not empty: give a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        if target.exists():
            target.rmdir()  # empty (checked above)
        work.rename(target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def backup(data: Path, target: Path, *, db_url: str | None = None) -> BackupSummary:
    """Back up the data directory ``data`` (and its tracker database: ``db_url``, or
    ``DATA/tracker.db`` when there is one) to the new folder ``target``.

    Raises:
        StorageError: a file cannot be read or written, a blob is damaged, pg_dump failed.
    """
    if not (data / "blobs").is_dir() and not (data / "releases").is_dir():
        raise StorageError(f"{data} is not a suitkit data directory (no blobs/ or releases/)")
    kind, sqlite_path, pg_url = _database(data, db_url)
    try:
        with _building(target) as work:
            if kind == "sqlite" and sqlite_path is not None:
                if not sqlite_path.is_file():
                    raise StorageError(f"no database at {sqlite_path}")
                _sqlite_snapshot(sqlite_path, work / _SQLITE_FILE)
            elif kind == "postgresql" and pg_url is not None:
                _run(["pg_dump", "--format=custom", "--no-owner", "--file",
                      str(work / _PG_FILE)], _pg_environment(pg_url), "pg_dump")
                _fsync_file(work / _PG_FILE)
            releases = _copy_releases(data, work)
            # the tracker's database keeps the release records since 0007_notices (replicas):
            # written out as records too, read after the database's snapshot, before the blobs
            releases += _database_releases(
                work, work / _SQLITE_FILE if kind == "sqlite" else None, pg_url)
            blobs, size = _copy_blobs(data, work)
            summary = BackupSummary(target, releases, blobs, size, kind)
            manifest = work / MANIFEST
            manifest.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
            _fsync_file(manifest)
            fsync_dir(work)
    except OSError as e:
        raise StorageError(f"cannot back up {data} to {target}: {e.strerror or e}"
                           f"{f' ({e.filename})' if e.filename else ''}") from e
    return summary


def read_manifest(source: Path) -> dict[str, Any]:
    """The ``backup.json`` of a backup folder.

    Raises:
        StorageError: not a backup of a format this version reads.
    """
    try:
        doc = json.loads((source / MANIFEST).read_bytes())
    except OSError as e:
        raise StorageError(f"{source} is not a suitkit backup (no readable {MANIFEST}: "
                           f"{e.strerror or e})") from e
    except ValueError as e:
        raise StorageError(f"{source / MANIFEST} is not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StorageError(f"{source / MANIFEST}: expected backup format {FORMAT}, got "
                           f"{doc.get('format') if isinstance(doc, dict) else doc!r}")
    return doc


def restore(source: Path, data: Path, *, db_url: str | None = None) -> BackupSummary:
    """Restore the backup ``source`` into the new (absent or empty) data directory ``data``
    and its database (``db_url``; default ``DATA/tracker.db``).

    Raises:
        StorageError: not a backup, the data directory is not empty, a blob is damaged, a
            record names a missing blob, the database cannot be restored.
    """
    doc = read_manifest(source)
    kind = doc.get("database")
    target_kind, sqlite_path, pg_url = (("sqlite", data / _SQLITE_FILE, None)
                                        if db_url is None else _database(data, db_url))
    if kind is not None and kind != target_kind:
        raise StorageError(f"the backup holds a {kind} database; restore it into a {kind} "
                           f"one (--db), not {target_kind}")
    if (kind == "sqlite" and sqlite_path is not None and db_url is not None
            and sqlite_path.exists()):
        raise StorageError(f"{sqlite_path} already exists: restore into a new database")
    try:
        with _building(data) as work:
            (work / "tmp").mkdir()
            blobs, size = _copy_blobs(source, work)
            releases = _copy_releases(source, work, check_blobs=work)
            if kind == "sqlite" and sqlite_path is not None:
                snapshot = source / _SQLITE_FILE
                if db_url is None:
                    _sqlite_snapshot(snapshot, work / _SQLITE_FILE)
                else:
                    _sqlite_snapshot(snapshot, sqlite_path)
            elif kind == "postgresql" and pg_url is not None:
                _run(["pg_restore", "--no-owner", "--single-transaction", "--exit-on-error",
                      "--dbname", _pg_environment(pg_url).get("PGDATABASE", ""),
                      str(source / _PG_FILE)], _pg_environment(pg_url), "pg_restore")
            fsync_dir(work)
    except OSError as e:
        raise StorageError(f"cannot restore {source} into {data}: {e.strerror or e}"
                           f"{f' ({e.filename})' if e.filename else ''}") from e
    return BackupSummary(data, releases, blobs, size, kind)
