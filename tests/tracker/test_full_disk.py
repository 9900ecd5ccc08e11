"""A full disk (issue #11, item 8), made for real: a small tmpfs mounted for the test (root
only: skipped with the reason where ``mount`` is not permitted) and filled up to the last byte.

- Reads keep working: authentication marked ``last_seen``/``last_used`` in the same transaction
  as the check, so on a full disk every call, a read too, failed with 500. The mark is now a
  transaction of its own that may fail.
- Writes answer 507 with one line, and nothing of them is kept (one transaction each); once
  space is freed, the same writes succeed.
- The firmware server's blob store: an upload to a full disk is 507 (was 500), and leaves no
  temporary file or partial blob.

On SQLite the database file is on the tmpfs; on PostgreSQL the tracker's tables and indexes
are moved to a tablespace on the tmpfs (the cluster itself stays on the big disk).
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from device.device_kit import Author
from pg import PostgresCluster
from suitkit.core import crypto
from suitkit.core.model import Digest
from suitkit.core.report import Reference, Report, encode_report
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.edges.http_api import REPORT_MEDIA_TYPE
from suitkit.tracker.service import open_db

ADMIN = "admin-token-for-full-disk-tests"
UPLOAD = "upload-token-for-full-disk-tests"
FULL = "storage is full"


@contextmanager
def small_filesystem(size_mib: int, owner: tuple[int, int] | None = None) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on a new directory (owned by ``owner`` (uid, gid)
    if given); unmounted and removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs mounted for the test: mount needs root")
    point = Path(tempfile.mkdtemp(prefix="suitkit-full-"))
    point.chmod(0o755)  # PostgreSQL (user postgres) reaches a tablespace in it
    options = f"size={size_mib}m"
    if owner is not None:
        options += f",uid={owner[0]},gid={owner[1]},mode=0700"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                             capture_output=True, text=True, timeout=60, check=False)
    if mounted.returncode != 0:
        point.rmdir()
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield point
    finally:
        for _ in range(30):
            if subprocess.run(["umount", str(point)], capture_output=True, timeout=60,
                              check=False).returncode == 0:
                break
            time.sleep(1)
        else:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60,
                           check=False)
        shutil.rmtree(point, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the filler file (unlink it to
    free the space)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            chunk = b"\xff" * size
            try:
                while True:
                    out.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return filler


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


RELEASE = bytes(32).hex()
"""The release the writer is given; the reports name it (their manifest digest)."""


def report(size: int) -> bytes:
    """A valid SUIT report of about ``size`` bytes (a random nonce: nothing compresses it)."""
    return encode_report(Report(reference=Reference("https://fw.example/e.suit",
                                                    Digest(-16, bytes(32))),
                                nonce=os.urandom(size)))


def register(client: httpx.Client) -> dict[str, Any]:
    made = client.post("/api/v1/devices", json={"name": "d"}, headers=auth(ADMIN))
    assert made.status_code == 201, made.text
    return dict(made.json())


Write = tuple[str, str, dict[str, Any]]


def writes(client: httpx.Client, device: dict[str, Any], *, all_kinds: bool
           ) -> list[Write]:
    """(method, path, request keywords) of writes that need new space."""
    device_path = f"/api/v1/devices/{device['id']}"
    found: list[Write] = [("POST", f"{device_path}/reports",
                           {"content": report(60_000), "headers": {
                               **auth(device["token"]), "Content-Type": REPORT_MEDIA_TYPE}})]
    if all_kinds:
        found += [("POST", f"{device_path}/events",
                   {"json": {"state": "downloaded"}, "headers": auth(device["token"])}),
                  ("POST", "/api/v1/devices", {"json": {"name": "late"},
                                               "headers": auth(ADMIN)}),
                  ("PUT", f"{device_path}/inventory",
                   {"json": {"hardware": {"board": "other"}}, "headers": auth(device["token"])})]
    return found


def exercise(client: httpx.Client, make_full: Callable[[], Path], *, all_kinds: bool) -> None:
    writer = register(client)
    reader = register(client)  # never authenticated yet: its first call marks last_seen
    made = client.post("/api/v1/tokens", json={"name": "ops", "role": "operator"},
                       headers=auth(ADMIN))
    assert made.status_code == 201, made.text
    operator = made.json()["token"]  # never used yet: its first call marks last_used
    assert client.put(f"/api/v1/devices/{writer['id']}/inventory", json={},
                      headers=auth(writer["token"])).status_code == 200
    # the writer is in the middle of an update, so its event and report would be accepted
    deployed = client.post("/api/v1/deployments", headers=auth(ADMIN), json={
        "release": RELEASE, "envelope_url": "https://fw.example/e.suit",
        "devices": [writer["id"]]})
    assert deployed.status_code == 201, deployed.text
    assert client.post(f"/api/v1/devices/{writer['id']}/events", json={"state": "downloading"},
                       headers=auth(writer["token"])).status_code == 201
    history = f"/api/v1/devices/{writer['id']}/history"
    devices_before = client.get("/api/v1/devices", headers=auth(ADMIN)).json()["devices"]
    history_before = client.get(history, headers=auth(ADMIN)).json()
    planned = writes(client, writer, all_kinds=all_kinds)
    filler = make_full()
    try:
        shown = client.get(f"/api/v1/devices/{reader['id']}", headers=auth(reader["token"]))
        assert shown.status_code == 200, shown.text
        listed = client.get("/api/v1/devices", headers=auth(operator))
        assert listed.status_code == 200, listed.text
        assert client.get(history, headers=auth(ADMIN)).json() == history_before
        for method, path, keywords in planned:
            refused = client.request(method, path, **keywords)
            assert refused.status_code == 507, (path, refused.status_code, refused.text)
            assert FULL in refused.json()["error"], refused.text
    finally:
        filler.unlink()
    # nothing of the refused writes was kept; with space again, they succeed
    assert client.get(history, headers=auth(ADMIN)).json() == history_before
    devices_after = client.get("/api/v1/devices", headers=auth(ADMIN)).json()["devices"]
    assert [d["id"] for d in devices_after] == [d["id"] for d in devices_before]
    for method, path, keywords in planned:
        done = client.request(method, path, **keywords)
        assert done.status_code in (200, 201), (path, done.text)


@contextmanager
def tracker_server(url: str, data: Path) -> Iterator[httpx.Client]:
    db = open_db(url)
    try:
        router = create_router(TrackerConfig(url, ADMIN), db)
        anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
        config = ServerConfig(data_dir=data, anchors=anchors, routers=(router,))
        with running_server(config) as base, httpx.Client(base_url=base, timeout=30) as client:
            yield client
    finally:
        db.engine.dispose()


def test_sqlite_on_a_full_disk_reads_work_and_writes_are_507_keeping_nothing(
        tmp_path: Path) -> None:
    with small_filesystem(8) as small:
        path = small / "tracker.db"
        with tracker_server(f"sqlite:///{path}", tmp_path / "data") as client:

            def make_full() -> Path:
                # the write-ahead log emptied first: every write must then grow a file
                connection = sqlite3.connect(path)
                try:
                    busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    connection.close()
                assert busy == 0, "the checkpoint was blocked by a reader"
                return fill(small)

            exercise(client, make_full, all_kinds=True)


def test_postgresql_on_a_full_disk_reads_work_and_writes_are_507_keeping_nothing(
        postgres: PostgresCluster, tmp_path: Path) -> None:
    user = pwd.getpwnam("postgres")
    url = postgres.tracker_database()
    name = url.rsplit("/", 1)[1]
    space = f"full_{uuid.uuid4().hex[:12]}"

    def sql(database: str, *statements: str) -> None:
        with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres "
                             f"dbname={database}", autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)  # type: ignore[arg-type]

    with small_filesystem(8, owner=(user.pw_uid, user.pw_gid)) as small:
        sql(name, f"CREATE TABLESPACE {space} LOCATION '{small}'",
            f"ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE {space}",
            f"ALTER INDEX ALL IN TABLESPACE pg_default SET TABLESPACE {space}")
        try:
            with tracker_server(url, tmp_path / "data") as client:
                exercise(client, lambda: fill(small), all_kinds=False)
        finally:
            sql("postgres", f"DROP DATABASE {name} WITH (FORCE)", f"DROP TABLESPACE {space}")


def test_an_upload_to_a_full_disk_is_507_and_leaves_no_partial_blob(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    envelope, image = author.release(1, "full", size=300_000,
                                     uri="https://fw.example.com/app.bin")
    files = [("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
             ("image-0", ("app.bin", image, "application/octet-stream"))]
    with small_filesystem(4) as small:
        data = small / "data"
        config = ServerConfig(data_dir=data, anchors=TrustAnchors.of(author.key.public_key()),
                              upload_token=UPLOAD, max_upload_bytes=1 << 20)
        with running_server(config) as base, httpx.Client(base_url=base, timeout=30) as client:
            filler = fill(small)
            try:
                refused = client.post("/api/v1/releases", files=files, headers=auth(UPLOAD))
                assert refused.status_code == 507, refused.text
                assert FULL in refused.json()["error"], refused.text
                assert [p for p in data.rglob("*") if p.is_file()] == []
            finally:
                filler.unlink()
            stored = client.post("/api/v1/releases", files=files, headers=auth(UPLOAD))
            assert stored.status_code == 201, stored.text
            assert client.get(stored.json()["components"][0]["url"]).content == image
