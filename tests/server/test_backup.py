"""``suitkit backup`` / ``suitkit restore`` (issue #13 item 5): a backup taken while a real
server is under load (uploads, registrations, check-ins), restored into a new data directory
(and a new PostgreSQL database), served by a new server that then serves the same fleet."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from pg import PostgresCluster, PostgresMissing
from serve_kit import SUITKIT, serving

ADMIN = "admin-token-for-backup-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SUITKIT, *args], capture_output=True, text=True, timeout=300,
                          check=False)


@dataclass
class Fleet:
    """What the server acknowledged: release ids with their blobs, devices with tokens."""

    releases: dict[str, dict[str, str]] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        with self.lock:
            return dict(self.releases), dict(self.devices)


def upload(client: httpx.Client, author: Author, sequence: int, fleet: Fleet) -> None:
    envelope, image = author.release(sequence, f"b{sequence}", size=2000 + sequence,
                                     uri=f"https://fw.example/{sequence}.bin")
    stored = client.post("/api/v1/releases", headers=AUTH,
                         files=[("envelope", ("e.suit", envelope)),
                                ("image-0", ("i.bin", image))])
    assert stored.status_code == 201, stored.text
    doc = stored.json()
    with fleet.lock:
        fleet.releases[doc["id"]] = {
            doc["envelope"]["url"]: hashlib.sha256(envelope).hexdigest(),
            doc["components"][0]["url"]: hashlib.sha256(image).hexdigest()}


def register(client: httpx.Client, name: str, fleet: Fleet) -> None:
    made = client.post("/api/v1/devices", json={"name": name}, headers=AUTH)
    assert made.status_code == 201, made.text
    with fleet.lock:
        fleet.devices[made.json()["id"]] = made.json()["token"]


@contextmanager
def load(url: str, author: Author, fleet: Fleet, first: int) -> Iterator[list[int]]:
    """Uploads, registrations and check-ins in a thread until the block ends; yields the
    count of rounds done (one at least before the block's body runs)."""
    stop = threading.Event()
    rounds = [0]
    errors: list[BaseException] = []
    started = threading.Event()

    def work() -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                sequence = first
                while not stop.is_set():
                    upload(client, author, sequence, fleet)
                    register(client, f"load-{sequence}", fleet)
                    _, devices = fleet.snapshot()
                    for device, token in list(devices.items())[-3:]:
                        checked = client.get(f"/api/v1/devices/{device}/update",
                                             headers={"Authorization": f"Bearer {token}"})
                        assert checked.status_code in (200, 204), checked.text
                    sequence += 1
                    rounds[0] += 1
                    started.set()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
            errors.append(e)
            started.set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        assert started.wait(60), "waited 60 s for the first round of load"
        yield rounds
    finally:
        stop.set()
        thread.join(120)
    assert not thread.is_alive(), "the load thread did not stop within 120 s"
    assert not errors, errors


def check_serves(url: str, releases: dict[str, dict[str, str]],
                 devices: dict[str, str]) -> None:
    """The server at ``url`` lists every release and serves its blobs, knows every device and
    takes its token."""
    with httpx.Client(base_url=url, timeout=60) as client:
        listed = {r["id"] for r in client.get("/api/v1/releases", headers=AUTH)
                  .json()["releases"]}
        assert set(releases) <= listed
        for blobs in releases.values():
            for path, digest in blobs.items():
                got = client.get(path)
                assert got.status_code == 200, path
                assert hashlib.sha256(got.content).hexdigest() == digest
        for device, token in devices.items():
            checked = client.get(f"/api/v1/devices/{device}/update",
                                 headers={"Authorization": f"Bearer {token}"})
            assert checked.status_code in (200, 204), (device, checked.text)
            assert client.get(f"/api/v1/devices/{device}", headers=AUTH).status_code == 200


def serve_argv(tmp_path: Path, author: Author, data: Path, db: str | None) -> list[str]:
    token = tmp_path / "admin.token"
    token.write_text(ADMIN + "\n")
    argv = ["--data", str(data), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(token)]
    return [*argv, "--db", db] if db else argv


def backup_under_load_and_restore(tmp_path: Path, db: str | None,
                                  restored_db: str | None) -> None:
    author = Author.create(tmp_path / "author")
    fleet = Fleet()
    with serving(serve_argv(tmp_path, author, tmp_path / "data", db), timeout=60) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for n in range(1, 4):
                upload(client, author, n, fleet)
                register(client, f"before-{n}", fleet)
        before_releases, before_devices = fleet.snapshot()
        with load(server.url, author, fleet, first=100) as rounds:
            done = run("backup", str(tmp_path / "backup"), "--data", str(tmp_path / "data"),
                       *(["--db", db] if db else []))
            during = rounds[0]
        assert done.returncode == 0, done.stderr
        assert during >= 1  # the server was under load while the backup ran
    assert done.stdout.startswith(f"backup {tmp_path / 'backup'}: "), done.stdout
    assert not list(tmp_path.glob(".backup.partial-*"))
    restored = run("restore", str(tmp_path / "backup"), "--data", str(tmp_path / "restored"),
                   *(["--db", restored_db] if restored_db else []), "--json")
    assert restored.returncode == 0, restored.stderr
    summary = json.loads(restored.stdout)
    assert summary["restored"] == str(tmp_path / "backup") and summary["releases"] >= 1
    assert summary["database"] == ("postgresql" if restored_db else "sqlite")
    if restored_db is None:
        with sqlite3.connect(tmp_path / "restored" / "tracker.db") as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # everything acknowledged before the backup started is in it; whatever of the load the
    # backup holds is whole (every listed release's blobs verify: check_serves)
    backed = {p.stem for p in (tmp_path / "backup" / "releases").glob("*.json")}
    assert set(before_releases) <= backed
    all_releases, _ = fleet.snapshot()
    with serving(serve_argv(tmp_path, author, tmp_path / "restored", restored_db),
                 timeout=60) as new:
        check_serves(new.url, {r: all_releases[r] for r in backed}, before_devices)
        # and the restored server takes new work
        with httpx.Client(base_url=new.url, timeout=60) as client:
            upload(client, author, 10_000, Fleet())
            register(client, "after-restore", Fleet())


def test_a_sqlite_backup_under_load_restores_into_a_server_of_the_same_fleet(
        tmp_path: Path) -> None:
    backup_under_load_and_restore(tmp_path, None, None)


def test_a_postgresql_backup_under_load_restores_into_a_new_database(tmp_path: Path) -> None:
    try:
        cluster = PostgresCluster()
    except PostgresMissing as e:
        pytest.skip(str(e))
    try:
        backup_under_load_and_restore(tmp_path, cluster.tracker_database(), cluster.database())
    finally:
        cluster.stop()


def test_backup_and_restore_refuse_what_would_lose_data(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    fleet = Fleet()
    with serving(serve_argv(tmp_path, author, tmp_path / "data", None), timeout=60) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            upload(client, author, 1, fleet)
    assert run("backup", str(tmp_path / "b"), "--data", str(tmp_path / "data")).returncode == 0
    again = run("backup", str(tmp_path / "b"), "--data", str(tmp_path / "data"))
    assert again.returncode == 3
    assert again.stderr.strip() == (f"suitkit: error: {tmp_path / 'b'} already exists and is "
                                    "not empty: give a new folder")
    into_data = run("restore", str(tmp_path / "b"), "--data", str(tmp_path / "data"))
    assert into_data.returncode == 3
    assert "already exists and is not empty" in into_data.stderr
    # a blob damaged in the backup is found at restore; nothing is left half-restored
    blob = next(p for p in (tmp_path / "b" / "blobs").rglob("*") if p.is_file())
    damaged = bytearray(blob.read_bytes())
    damaged[0] ^= 1
    blob.write_bytes(bytes(damaged))
    bad = run("restore", str(tmp_path / "b"), "--data", str(tmp_path / "new"))
    assert bad.returncode == 3
    assert f"blob {blob} is damaged: its bytes hash to " in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    assert not list(tmp_path.glob(".new.partial-*"))
    nothing = run("restore", str(tmp_path / "data"), "--data", str(tmp_path / "new"))
    assert nothing.returncode == 3
    assert "is not a suitkit backup (no readable backup.json" in nothing.stderr
