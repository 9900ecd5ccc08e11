"""One device credential must not fill the disk (issue #11, item 7): 3,699 reports of 64 KiB
in 30 s were all stored, each twice (the bytes, and the nonce again as hex in the summary).

Per-device rates (429 with Retry-After), quotas on what is kept (the oldest trimmed), a
report stored once with a summary of bounded size, and retention that runs by itself, bounded
per pass; on SQLite and PostgreSQL; the ``suitkit serve`` options that set them.

A device stores a report or a state only for its current assignment, and one report per update
(issue #11): each stored report here is the report of an update of its own (``World.update``),
which the tracker assigns (``notified`` is the tracker's event, not the device's).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from device.device_kit import Author
from pg import BACKENDS, backend_url
from serve_kit import serving
from suitkit.core import crypto
from suitkit.core.model import Digest
from suitkit.core.report import Reference, Report, encode_report
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.api import REPORT_MEDIA_TYPE, TrackerConfig, create_router
from suitkit.tracker.db import TrackerDB, open_db
from suitkit.tracker.quotas import Quotas, RateLimiter

from helpers import run_cli

ADMIN = "admin-token-for-quota-tests"
RELEASE = bytes(32).hex()
"""The release the reports of ``report()`` name (their manifest digest)."""
OFF = Quotas(reports_per_minute=0, events_per_minute=0, inventory_per_minute=0,
             max_reports=0, max_report_bytes=0, max_events=0, history_days=0, report_days=0)
WAIT = 30.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def report(nonce_bytes: int = 8, uri: str = "https://fw.example/e.suit",
           release: str = RELEASE) -> bytes:
    """A valid SUIT report about ``release``; its nonce random (nothing compresses it)."""
    return encode_report(Report(reference=Reference(uri, Digest(-16, bytes.fromhex(release))),
                                nonce=os.urandom(nonce_bytes)))


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    client: httpx.Client
    db: TrackerDB
    url: str

    def register(self) -> dict[str, Any]:
        made = self.client.post("/api/v1/devices", json={"name": "d"}, headers=auth(ADMIN))
        assert made.status_code == 201, made.text
        return dict(made.json())

    def send_report(self, device: dict[str, Any], body: bytes) -> httpx.Response:
        return self.client.post(f"/api/v1/devices/{device['id']}/reports", content=body,
                                headers={**auth(device["token"]),
                                         "Content-Type": REPORT_MEDIA_TYPE})

    def event(self, device: dict[str, Any], state: str) -> httpx.Response:
        return self.client.post(f"/api/v1/devices/{device['id']}/events",
                                json={"state": state}, headers=auth(device["token"]))

    def assign(self, device: dict[str, Any]) -> None:
        """Deploy ``RELEASE`` to the device (the tracker records ``notified``)."""
        made = self.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
            "release": RELEASE, "envelope_url": "https://fw.example/e.suit",
            "devices": [device["id"]]})
        assert made.status_code == 201, made.text

    def update(self, device: dict[str, Any], body: bytes) -> dict[str, Any]:
        """One whole update that stores the report ``body``: assigned, downloading, the
        report, failed (the update ends; the next one may be assigned). The stored report."""
        self.assign(device)
        assert self.event(device, "downloading").status_code == 201
        stored = self.send_report(device, body)
        assert stored.status_code == 201, stored.text
        assert self.event(device, "failed").status_code == 201
        return dict(stored.json())

    def rows(self, sql: str, **params: Any) -> list[Any]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql), params))
        finally:
            engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path)


@contextmanager
def world(url: str, tmp_path: Path, quotas: Quotas, clock: Clock | None = None
          ) -> Iterator[World]:
    db = open_db(url, quotas=quotas, **({"clock": clock} if clock is not None else {}))
    try:
        router = create_router(TrackerConfig(url, ADMIN, quotas=quotas), db)
        anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
        config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, routers=(router,))
        with running_server(config) as base, httpx.Client(base_url=base, timeout=30) as client:
            yield World(client, db, url)
    finally:
        db.engine.dispose()


# ---------------------------------------------------------------------------- rates


def test_a_device_over_its_rate_gets_429_with_retry_after_per_kind(backend: str,
                                                                  tmp_path: Path) -> None:
    quotas = replace(OFF, reports_per_minute=3, events_per_minute=2, inventory_per_minute=2)
    with world(backend, tmp_path, quotas) as w:
        flooder, other = w.register(), w.register()
        for device in (flooder, other):
            w.assign(device)
            assert w.event(device, "downloading").status_code == 201
        # a refused report counts too: one is stored per update, the next two are 409
        assert [w.send_report(flooder, report()).status_code for _ in range(3)] == [201, 409,
                                                                                   409]
        refused = w.send_report(flooder, report())
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one report per 20 s
        assert refused.json()["error"].startswith("too many reports from this device: at "
                                                  "most 3 a minute; retry in ")
        assert w.send_report(other, report()).status_code == 201  # a bucket per device
        # each kind has its own bucket (the first event was "downloading")
        assert w.event(flooder, "failed").status_code == 201
        assert w.event(flooder, "downloading").status_code == 429
        inventory = f"/api/v1/devices/{flooder['id']}/inventory"
        assert [w.client.put(inventory, json={}, headers=auth(flooder["token"])).status_code
                for _ in range(3)] == [200, 200, 429]
        kept = w.rows("SELECT count(*) FROM device_reports WHERE device_id = :id",
                      id=flooder["id"])
        assert kept[0][0] == 1  # a refused report is not stored


def test_the_rate_limiter_refills_and_holds_a_bounded_table() -> None:
    now = [0.0]
    limiter = RateLimiter(replace(OFF, reports_per_minute=6), max_devices=2,
                          clock=lambda: now[0])
    assert [limiter.take("a", "reports") for _ in range(6)] == [None] * 6
    assert limiter.take("a", "reports") == pytest.approx(10.0)  # 6 a minute: one per 10 s
    now[0] += 10.0
    assert limiter.take("a", "reports") is None
    for device in ("b", "c", "d"):
        limiter.take(device, "reports")
    assert len(limiter._buckets) <= 2 * 3
    assert limiter.take("x", "events") is None  # events unlimited here (0)


# ---------------------------------------------------------------------------- quotas


def test_reports_beyond_the_quota_trim_the_oldest_by_count_and_by_bytes(
        backend: str, tmp_path: Path) -> None:
    quotas = replace(OFF, max_reports=3, max_report_bytes=150_000)
    with world(backend, tmp_path, quotas) as w:
        small, big = w.register(), w.register()
        sent = [w.update(small, report())["seq"] for _ in range(5)]
        big_sent = [w.update(big, report(60_000))["seq"] for _ in range(4)]
        seqs = w.rows("SELECT seq FROM device_reports WHERE device_id = :id ORDER BY seq",
                      id=small["id"])
        assert [s for (s,) in seqs] == sent[2:]  # the newest three
        sizes = w.rows("SELECT seq, size FROM device_reports WHERE device_id = :id "
                       "ORDER BY seq", id=big["id"])
        assert [s for s, _ in sizes] == big_sent[2:] and sum(n for _, n in sizes) <= 150_000
        history = w.client.get(f"/api/v1/devices/{big['id']}/history",
                               headers=auth(ADMIN)).json()["history"]
        reports = [h for h in history if h["kind"] == "report"]
        assert [h["seq"] for h in reports] == big_sent[2:]
        assert all(h["size"] > 60_000 for h in reports)
        # the newest report is kept even when it alone is over the byte quota
        w.db.quotas = replace(quotas, max_report_bytes=1000)
        last = w.update(big, report(60_000))["seq"]
        assert [s for (s,) in w.rows("SELECT seq FROM device_reports WHERE device_id = :id",
                                     id=big["id"])] == [last]


def test_events_beyond_the_quota_trim_the_oldest_and_the_state_machine_goes_on(
        backend: str, tmp_path: Path) -> None:
    with world(backend, tmp_path, replace(OFF, max_events=4)) as w:
        device = w.register()
        for _ in range(5):
            w.assign(device)  # the tracker's "notified"
            assert w.event(device, "failed").status_code == 201
        history = w.client.get(f"/api/v1/devices/{device['id']}/history",
                               headers=auth(device["token"])).json()["history"]
        assert [(h["seq"], h["state"]) for h in history] == [
            (7, "notified"), (8, "failed"), (9, "notified"), (10, "failed")]
        shown = w.client.get(f"/api/v1/devices/{device['id']}", headers=auth(ADMIN)).json()
        assert shown["state"] == "failed"


def test_a_report_is_stored_once_and_its_summary_is_bounded(backend: str,
                                                            tmp_path: Path) -> None:
    with world(backend, tmp_path, OFF) as w:
        device = w.register()
        body = report(60_000, uri="https://fw.example/" + "a" * 3000)
        summary = w.update(device, body)["summary"]
        assert summary["truncated"] is True and len(summary["nonce"]) == 128
        assert summary["manifest_uri"].startswith("https://fw.example/aaa")
        assert len(summary["manifest_uri"]) == 512
        ((raw, size, kept),) = w.rows("SELECT raw, size, summary FROM device_reports "
                                      "WHERE device_id = :id", id=device["id"])
        assert bytes(raw) == body and size == len(body)
        kept_text = kept if isinstance(kept, str) else json.dumps(kept)
        assert len(kept_text) < 2048, "the summary repeats the report"
        # a report of ordinary size is summarised whole
        plain = w.update(device, report())["summary"]
        assert "truncated" not in plain and len(plain["nonce"]) == 16


# ---------------------------------------------------------------------------- retention


def test_retention_deletes_old_history_bounded_per_pass(backend: str) -> None:
    clock = Clock()
    quotas = replace(OFF, history_days=30, report_days=10, retention_batch=3)
    db = open_db(backend, clock=clock, quotas=quotas)
    try:
        device_id, _ = db.register("d")
        for _ in range(4):
            db.add_event(device_id, "notified", "")
            db.add_event(device_id, "failed", "")
            db.add_report(device_id, report(), {"succeeded": True})
        clock.now += timedelta(days=20)  # reports are old now, events not yet
        db.add_report(device_id, report(), {"succeeded": True})
        assert db.prune() == {"events": 0, "reports": 3}  # bounded: 3 per pass
        assert db.prune() == {"events": 0, "reports": 1}
        assert db.prune() == {"events": 0, "reports": 0}
        clock.now += timedelta(days=15)
        db.add_event(device_id, "notified", "")
        assert db.prune(chunk=2) == {"events": 3, "reports": 1}
        assert db.prune(limit=100) == {"events": 5, "reports": 0}
        history = db.history(device_id)
        assert [(h["kind"], h["state"]) for h in history] == [("event", "notified")]
    finally:
        db.engine.dispose()


def test_retention_runs_by_itself_while_the_server_runs(backend: str,
                                                        tmp_path: Path) -> None:
    clock = Clock()
    quotas = replace(OFF, history_days=1, report_days=1, retention_interval=0.2)
    with world(backend, tmp_path, quotas, clock) as w:
        device = w.register()
        w.update(device, report())
        clock.now += timedelta(days=2)
        deadline = time.monotonic() + WAIT
        while w.rows("SELECT count(*) FROM device_reports")[0][0] \
                + w.rows("SELECT count(*) FROM device_events")[0][0]:
            assert time.monotonic() < deadline, \
                f"waited {WAIT} s for the retention pass to delete the old history"
            time.sleep(0.1)


# ---------------------------------------------------------------------------- suitkit serve


def test_serve_options_set_the_rates_and_quotas(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token"),
            "--device-reports-per-minute", "2", "--max-reports-per-device", "1"]
    with serving(argv, timeout=60) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        envelope, image = author.release(1, uri="https://fw.example/app.bin")
        uploaded = client.post("/api/v1/releases", headers=auth(ADMIN), files=[
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
            ("image", ("app.bin", image, "application/octet-stream"))])
        assert uploaded.status_code == 201, uploaded.text
        release = uploaded.json()["id"]
        made = client.post("/api/v1/devices", json={"name": "d"}, headers=auth(ADMIN))
        device = made.json()
        device_url = f"/api/v1/devices/{device['id']}"
        sent = []
        for _ in range(3):  # an update each (one report per update)
            deployed = client.post("/api/v1/deployments", headers=auth(ADMIN), json={
                "release": release, "devices": [device["id"]]})
            assert deployed.status_code == 201, deployed.text
            for state in ("downloading", "failed"):
                if state == "failed":
                    sent.append(client.post(
                        f"{device_url}/reports", content=report(release=release),
                        headers={**auth(device["token"]),
                                 "Content-Type": REPORT_MEDIA_TYPE}).status_code)
                assert client.post(f"{device_url}/events", json={"state": state},
                                   headers=auth(device["token"])).status_code == 201
        assert sent == [201, 201, 429]
        history = client.get(f"{device_url}/history", headers=auth(ADMIN)).json()["history"]
        assert [h["seq"] for h in history if h["kind"] == "report"] == [7]  # the second
    code, _, err = run_cli(capsys, "serve", *argv[:6], "--max-events-per-device", "-1")
    assert code == 2
    assert err.strip().splitlines() == [
        "suitkit: error: --max-events-per-device must be 0 (off) or a positive number below "
        "1e9, got -1"]
