"""One device credential must not fill the disk (issue #11, item 7): 3,699 reports of 64 KiB
in 30 s were all stored, each twice (the bytes, and the nonce again as hex in the summary).

Per-device rates (429 with Retry-After), quotas on what is kept (the oldest trimmed), a
report stored once with a summary of bounded size, and retention that runs by itself, bounded
per pass; on SQLite and PostgreSQL; the ``suitkit serve`` options that set them.

The tracker takes a device's states and reports only for its current assignment, and one
report per update (docs/tracker.md, "What a device may report"): the tests deploy a release
(``RELEASE``, the manifest digest the reports name) and walk the device through updates
(deployed -> ``downloading`` -> report -> ``failed``) to make many reports. Trimming and
retention must not break that rule either way: the report of the current update is accepted
once, whatever history of it was deleted.
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
from suitkit.tracker.campaigns import CampaignEngine, CampaignSpec
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.edges.http_api import REPORT_MEDIA_TYPE
from suitkit.tracker.quotas import Quotas, RateLimiter
from suitkit.tracker.service import NotAssigned, TrackerDB, open_db
from suitkit.tracker.store import downgrade_schema, upgrade_schema

from helpers import run_cli

ADMIN = "admin-token-for-quota-tests"
OFF = Quotas(reports_per_minute=0, events_per_minute=0, inventory_per_minute=0,
             max_reports=0, max_report_bytes=0, max_events=0, history_days=0, report_days=0)
WAIT = 30.0
RELEASE = bytes(32).hex()
"""The release deployed in these tests; ``report()`` names it (its manifest digest)."""


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def report(nonce_bytes: int = 8, uri: str = "https://fw.example/e.suit", *,
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

    def deploy(self, device: dict[str, Any]) -> None:
        """Assign ``RELEASE`` to the device (an operator's deployment): it is ``notified``."""
        deployed = self.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
            "release": RELEASE, "envelope_url": "https://fw.example/e.suit",
            "devices": [device["id"]]})
        assert deployed.status_code == 201, deployed.text

    def start(self, device: dict[str, Any]) -> None:
        """Deploy to the device and let it start: it may send its report now."""
        self.deploy(device)
        started = self.event(device, "downloading")
        assert started.status_code == 201, started.text

    def update(self, device: dict[str, Any], body: bytes) -> dict[str, Any]:
        """One whole update whose report is ``body`` (stored: its history item); the
        device ends it ``failed``, free for the next deployment."""
        self.start(device)
        sent = self.send_report(device, body)
        assert sent.status_code == 201, sent.text
        ended = self.event(device, "failed")
        assert ended.status_code == 201, ended.text
        return dict(sent.json())

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
    # one report per update: 3 updates (2 events each) for 3 reports; 8 events a minute
    quotas = replace(OFF, reports_per_minute=3, events_per_minute=8, inventory_per_minute=2)
    with world(backend, tmp_path, quotas) as w:
        flooder, other = w.register(), w.register()
        for _ in range(3):
            w.update(flooder, report())
        w.start(flooder)  # the 7th event: the 4th report would be accepted but for the rate
        refused = w.send_report(flooder, report())
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 20  # one report per 20 s
        assert refused.json()["error"].startswith("too many reports from this device: at "
                                                  "most 3 a minute; retry in ")
        w.start(other)
        assert w.send_report(other, report()).status_code == 201  # a bucket per device
        # each kind has its own bucket: the 8th event is taken, the 9th is not
        assert w.event(flooder, "failed").status_code == 201
        w.deploy(flooder)
        over = w.event(flooder, "downloading")
        assert over.status_code == 429, over.text
        assert 1 <= int(over.headers["Retry-After"]) <= 8  # one event per 7.5 s
        assert over.json()["error"].startswith("too many events from this device: at most 8 "
                                               "a minute; retry in ")
        inventory = f"/api/v1/devices/{flooder['id']}/inventory"
        assert [w.client.put(inventory, json={}, headers=auth(flooder["token"])).status_code
                for _ in range(3)] == [200, 200, 429]
        kept = w.rows("SELECT count(*) FROM device_reports WHERE device_id = :id",
                      id=flooder["id"])
        assert kept[0][0] == 3  # a refused report is not stored


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
        sent = [w.update(small, report())["seq"] for _ in range(5)]  # one per update
        seqs = w.rows("SELECT seq FROM device_reports WHERE device_id = :id ORDER BY seq",
                      id=small["id"])
        assert [s for (s,) in seqs] == sent[-3:]  # the newest three
        sent = [w.update(big, report(60_000))["seq"] for _ in range(4)]
        sizes = w.rows("SELECT seq, size FROM device_reports WHERE device_id = :id "
                       "ORDER BY seq", id=big["id"])
        assert [s for s, _ in sizes] == sent[-2:] and sum(n for _, n in sizes) <= 150_000
        history = w.client.get(f"/api/v1/devices/{big['id']}/history",
                               headers=auth(ADMIN)).json()["history"]
        reports = [h for h in history if h["kind"] == "report"]
        assert [h["seq"] for h in reports] == sent[-2:]
        assert all(h["size"] > 60_000 for h in reports)
        assert [h["state"] for h in history if h["kind"] == "event"] == [
            "notified", "downloading", "failed"] * 4  # events are not a report's quota
        # the newest report is kept even when it alone is over the byte quota
        w.db.quotas = replace(quotas, max_report_bytes=1000)
        newest = w.update(big, report(60_000))["seq"]
        assert [s for (s,) in w.rows("SELECT seq FROM device_reports WHERE device_id = :id",
                                     id=big["id"])] == [newest]


def test_events_beyond_the_quota_trim_the_oldest_and_the_state_machine_goes_on(
        backend: str, tmp_path: Path) -> None:
    with world(backend, tmp_path, replace(OFF, max_events=4)) as w:
        device = w.register()
        for _ in range(5):  # 5 updates of 3 events: notified (the deployment), the device's 2
            w.start(device)
            assert w.event(device, "failed").status_code == 201
        history = w.client.get(f"/api/v1/devices/{device['id']}/history",
                               headers=auth(device["token"])).json()["history"]
        assert [(h["seq"], h["state"]) for h in history] == [
            (12, "failed"), (13, "notified"), (14, "downloading"), (15, "failed")]
        shown = w.client.get(f"/api/v1/devices/{device['id']}", headers=auth(ADMIN)).json()
        assert shown["state"] == "failed"
        # the state machine goes on: the next update runs, its report is taken once
        w.start(device)
        assert w.send_report(device, report()).status_code == 201
        assert w.event(device, "downloaded").status_code == 201
        assert w.send_report(device, report()).status_code == 409
        assert w.event(device, "installing").status_code == 201
        history = w.client.get(f"/api/v1/devices/{device['id']}/history",
                               headers=auth(ADMIN)).json()["history"]
        assert [(h["seq"], h["kind"], h["state"] if h["kind"] == "event" else None)
                for h in history] == [
            (16, "event", "notified"), (17, "event", "downloading"), (18, "report", None),
            (19, "event", "downloaded"), (20, "event", "installing")]


def test_a_report_is_stored_once_and_its_summary_is_bounded(backend: str,
                                                            tmp_path: Path) -> None:
    with world(backend, tmp_path, OFF) as w:
        device = w.register()
        w.start(device)
        body = report(60_000, uri="https://fw.example/" + "a" * 3000)
        stored = w.send_report(device, body)
        assert stored.status_code == 201, stored.text
        summary = stored.json()["summary"]
        assert summary["truncated"] is True and len(summary["nonce"]) == 128
        assert summary["manifest_uri"].startswith("https://fw.example/aaa")
        assert len(summary["manifest_uri"]) == 512
        ((raw, size, kept),) = w.rows("SELECT raw, size, summary FROM device_reports "
                                      "WHERE device_id = :id", id=device["id"])
        assert bytes(raw) == body and size == len(body)
        kept_text = kept if isinstance(kept, str) else json.dumps(kept)
        assert len(kept_text) < 2048, "the summary repeats the report"
        # a report of ordinary size is summarised whole (the next update's)
        assert w.event(device, "failed").status_code == 201
        plain = w.update(device, report())["summary"]
        assert "truncated" not in plain and len(plain["nonce"]) == 16


def test_the_report_of_an_update_is_taken_once_whatever_trimming_and_retention_deleted(
        backend: str, tmp_path: Path) -> None:
    """The tracker found the start of the current update by its ``notified`` event and the
    report already taken by the reports after it: trimming events deleted that ``notified``
    (the first report of the next update was refused: the previous update's report seemed to
    be this one's), and retention deleting the report let a second one through."""
    clock = Clock()
    quotas = replace(OFF, max_events=1, report_days=1)
    with world(backend, tmp_path, quotas, clock) as w:
        device = w.register()
        w.update(device, report())  # the previous update, with its report
        w.start(device)  # notified, then downloading: only the newest event is kept
        assert [s for (s,) in w.rows("SELECT state FROM device_events WHERE device_id = :id",
                                     id=device["id"])] == ["downloading"]
        first = w.send_report(device, report())
        assert first.status_code == 201, first.text
        second = w.send_report(device, report())
        assert second.status_code == 409, second.text
        assert "one report per update" in second.json()["error"]
        clock.now += timedelta(days=2)
        assert w.db.prune() == {"events": 0, "reports": 2}  # its report is gone now
        replayed = w.send_report(device, report())
        assert replayed.status_code == 409, replayed.text
        assert "one report per update" in replayed.json()["error"]
        # the next update takes its report again
        assert w.event(device, "failed").status_code == 201
        w.update(device, report())


def test_a_campaigns_update_takes_its_report_after_an_earlier_update_sent_one(
        backend: str) -> None:
    """The report recorded on the assignment is cleared when a campaign starts the next
    update on it (as a deployment does)."""
    db = open_db(backend)
    try:
        device_id, _ = db.register("d")
        db.deploy(RELEASE, "https://fw.example/e.suit", [device_id])
        db.add_event(device_id, "downloading", "", by_device=True)
        db.add_report(device_id, report(), {}, release=RELEASE)
        db.add_event(device_id, "failed", "", by_device=True)
        engine = CampaignEngine(db)
        made = engine.create(CampaignSpec(name="c", release=RELEASE,
                                          envelope_url="https://fw.example/e.suit",
                                          devices=(device_id,)), "alice")
        engine.approve(made["id"], "bob")
        engine.start(made["id"], "carol")
        assert db.pending_update(device_id)["campaign"] == made["id"]  # type: ignore[index]
        db.add_event(device_id, "downloading", "", by_device=True)
        db.add_report(device_id, report(), {}, release=RELEASE)
        with pytest.raises(NotAssigned, match="one report per update"):
            db.add_report(device_id, report(), {}, release=RELEASE)
    finally:
        db.engine.dispose()


def test_upgrading_keeps_the_report_an_update_in_progress_already_sent(backend: str) -> None:
    """Revision 0006 records the report of each update in progress from the history, as the
    tracker found it before: after the upgrade a device that already sent it is refused a
    second one, and one that has not sent it yet (its earlier update's report is older than
    its notified event) may send it."""
    db = open_db(backend)
    try:
        sent, waiting = db.register("sent")[0], db.register("waiting")[0]
        for device_id in (sent, waiting):
            db.deploy(RELEASE, "https://fw.example/e.suit", [device_id])
            db.add_event(device_id, "downloading", "", by_device=True)
        db.add_report(waiting, report(), {}, release=RELEASE)  # its previous update's
        db.add_event(waiting, "failed", "", by_device=True)
        db.deploy(RELEASE, "https://fw.example/e.suit", [waiting])
        db.add_event(waiting, "downloading", "", by_device=True)
        first = db.add_report(sent, report(), {}, release=RELEASE)["seq"]
        downgrade_schema(db.engine, "0005_quotas")  # the column is gone: as before 0006
        upgrade_schema(db.engine)
        with pytest.raises(NotAssigned, match=rf"history item {first}\); one report per "):
            db.add_report(sent, report(), {}, release=RELEASE)
        db.add_report(waiting, report(), {}, release=RELEASE)
        with pytest.raises(NotAssigned, match="one report per update"):
            db.add_report(waiting, report(), {}, release=RELEASE)
    finally:
        db.engine.dispose()


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
        w.start(device)
        assert w.send_report(device, report()).status_code == 201
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
        envelope, image = author.release(1)
        uploaded = client.post("/api/v1/releases", headers=auth(ADMIN), files=[
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
            ("image", ("app.bin", image, "application/octet-stream"))])
        assert uploaded.status_code == 201, uploaded.text
        release = uploaded.json()["id"]
        made = client.post("/api/v1/devices", json={"name": "d"}, headers=auth(ADMIN))
        device = made.json()
        events = f"/api/v1/devices/{device['id']}/events"
        sent: list[int] = []
        for _ in range(3):  # one report per update: 3 updates
            deployed = client.post("/api/v1/deployments", headers=auth(ADMIN), json={
                "release": release, "devices": [device["id"]]})
            assert deployed.status_code == 201, deployed.text
            assert client.post(events, json={"state": "downloading"},
                               headers=auth(device["token"])).status_code == 201
            sent.append(client.post(f"/api/v1/devices/{device['id']}/reports",
                                    content=report(release=release),
                                    headers={**auth(device["token"]),
                                             "Content-Type": REPORT_MEDIA_TYPE}).status_code)
            assert client.post(events, json={"state": "failed"},
                               headers=auth(device["token"])).status_code == 201
        assert sent == [201, 201, 429]
        history = client.get(f"/api/v1/devices/{device['id']}/history",
                             headers=auth(ADMIN)).json()["history"]
        assert [h["seq"] for h in history if h["kind"] == "report"] == [7]  # the 2nd update's
    code, _, err = run_cli(capsys, "serve", *argv[:6], "--max-events-per-device", "-1")
    assert code == 2
    assert err.strip().splitlines() == [
        "suitkit: error: --max-events-per-device must be 0 (off) or a positive number below "
        "1e9, got -1"]
