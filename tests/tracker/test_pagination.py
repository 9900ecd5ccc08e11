"""Keyset pagination of the tracker's lists over real HTTP (uvicorn on 127.0.0.1, httpx), on
SQLite and on a throwaway PostgreSQL: ``GET /api/v1/devices``, ``.../{id}/history`` and
``/api/v1/campaigns`` take ``?limit=N&after=CURSOR`` and answer ``next`` (``null`` at the end).

Each test has its own database (exact counts): every page holds what it should, pages cover the
list exactly once, a device registered between two fetches moves nothing, history pages keep
events and reports interleaved by ``seq``, bad parameters are 400, the history query reads one
page per table, and ``suitkit devices list/show`` follow the pages.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from pg import BACKENDS, backend_url
from suitkit.core import crypto
from suitkit.core.model import Digest
from suitkit.core.report import Record, Reference, Report, ResultFailure, encode_report
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.edges.http_api import REPORT_MEDIA_TYPE
from suitkit.tracker.service import TrackerDB, open_db

from helpers import run_cli

ADMIN = "admin-token-for-pagination-tests"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Tracker:
    url: str
    client: httpx.Client
    db: TrackerDB
    tmp: Path

    def register(self, name: str) -> dict[str, Any]:
        response = self.client.post("/api/v1/devices", json={"name": name}, headers=HEADERS)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params, headers=HEADERS)

    def pages(self, path: str, key: str, limit: int, **params: Any) -> list[list[Any]]:
        """Every page of a list, following ``next``."""
        pages: list[list[Any]] = []
        after: str | None = None
        while True:
            query = {**params, "limit": limit, **({"after": after} if after else {})}
            response = self.get(path, **query)
            assert response.status_code == 200, response.text
            doc = response.json()
            pages.append(doc[key])
            after = doc["next"]
            if after is None:
                return pages
            assert isinstance(after, str) and len(pages) < 100


@pytest.fixture(params=BACKENDS)
def tracker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tracker]:
    """A server on a fresh database for each test."""
    db_url = backend_url(request, tmp_path)
    db = open_db(db_url)
    request.addfinalizer(db.engine.dispose)
    router = create_router(TrackerConfig(db_url, ADMIN), db)
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, routers=(router,))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield Tracker(url, client, db, tmp_path)


def report_bytes() -> bytes:
    record = Record(manifest_id=(), manifest_section=20, section_offset=7, component_index=0)
    return encode_report(Report(
        reference=Reference("https://example.com/fw.suit", Digest(-16, bytes(32))),
        records=(record,), result=ResultFailure(code=1, record=record, reason=1)))


def with_history(tracker: Tracker) -> tuple[str, list[str]]:
    """A device with 11 history items, events and reports interleaved; their kinds/states."""
    dev = tracker.register("busy")
    path, headers = f"/api/v1/devices/{dev['id']}", {"Authorization": f"Bearer {dev['token']}"}
    expected: list[str] = []
    raw = report_bytes()
    # a device reports only for its current assignment, one report per update
    for state in ("notified", "downloading", "report", "failed", "notified", "downloading",
                  "report", "downloaded", "installing", "failed", "notified"):
        if state == "notified":
            response = tracker.client.post("/api/v1/deployments", headers=HEADERS, json={
                "release": "00" * 32, "envelope_url": "https://example.com/fw.suit",
                "devices": [dev["id"]]})
        elif state == "report":
            response = tracker.client.post(f"{path}/reports", content=raw, headers={
                **headers, "Content-Type": REPORT_MEDIA_TYPE})
        else:
            response = tracker.client.post(f"{path}/events", json={"state": state},
                                           headers=headers)
        assert response.status_code == 201, response.text
        expected.append(state)
    return dev["id"], expected


# ------------------------------------------------------------------------------- devices


def test_seven_devices_in_pages_of_three_come_as_three_three_one(tracker: Tracker) -> None:
    ids = [tracker.register(f"dev-{i}")["id"] for i in range(7)]
    pages = tracker.pages("/api/v1/devices", "devices", 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [d["id"] for p in pages for d in p] == ids  # oldest first, each once
    whole = tracker.get("/api/v1/devices").json()
    assert [d["id"] for d in whole["devices"]] == ids and whole["next"] is None
    exact = tracker.pages("/api/v1/devices", "devices", 7)  # a full last page: next is null
    assert [len(p) for p in exact] == [7]


def test_components_true_pages_carry_each_devices_components(tracker: Tracker) -> None:
    devs = [tracker.register(f"dev-{i}") for i in range(3)]
    for i, dev in enumerate(devs):
        inventory = {"components": [{"id": ["00"], "sequence": i, "digest": "ab" * 32},
                                    {"id": ["01"], "sequence": 10 + i}]}
        response = tracker.client.put(f"/api/v1/devices/{dev['id']}/inventory", json=inventory,
                                      headers={"Authorization": f"Bearer {dev['token']}"})
        assert response.status_code == 200, response.text
    pages = tracker.pages("/api/v1/devices", "devices", 2, components="true")
    assert [len(p) for p in pages] == [2, 1]
    listed = [d for p in pages for d in p]
    assert [d["id"] for d in listed] == [d["id"] for d in devs]
    assert [[c["sequence"] for c in d["components"]] for d in listed] == [[0, 10], [1, 11],
                                                                          [2, 12]]
    assert "components" not in tracker.get("/api/v1/devices", limit=1).json()["devices"][0]


def test_a_device_registered_between_two_pages_moves_no_other(tracker: Tracker) -> None:
    ids = [tracker.register(f"dev-{i}")["id"] for i in range(7)]
    first = tracker.get("/api/v1/devices", limit=3).json()
    late = tracker.register("late")["id"]
    seen = [d["id"] for d in first["devices"]]
    after = first["next"]
    while after is not None:
        doc = tracker.get("/api/v1/devices", limit=3, after=after).json()
        seen += [d["id"] for d in doc["devices"]]
        after = doc["next"]
    assert len(seen) == len(set(seen))  # nothing twice
    assert seen == [*ids, late]  # nothing skipped; the newcomer sorts after every older one


# ------------------------------------------------------------------------------- history


def test_history_pages_keep_events_and_reports_in_seq_order_one_page_per_query(
        tracker: Tracker) -> None:
    device_id, expected = with_history(tracker)
    path = f"/api/v1/devices/{device_id}/history"
    for limit in (2, 4, 11):  # 11: one full page, then next is null
        pages = tracker.pages(path, "history", limit)
        assert [len(p) for p in pages[:-1]] == [limit] * (len(pages) - 1)
        items = [h for p in pages for h in p]
        assert [h["seq"] for h in items] == list(range(1, 12)), limit
        assert [h.get("state", h["kind"]) for h in items] == expected
    doc = tracker.get(path, limit=4).json()
    assert doc["id"] == device_id and set(doc) == {"id", "history", "next"}
    assert len(doc["history"]) == 4 and doc["history"][2]["kind"] == "report"

    # the query reads one page from each table (ORDER BY seq, LIMIT), not the whole history
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(tracker.db.engine, "before_cursor_execute", seen)
    try:
        page = tracker.db.history_page(device_id, limit=3, after=2)
    finally:
        event.remove(tracker.db.engine, "before_cursor_execute", seen)
    assert [item["seq"] for item in page.items] == [3, 4, 5] and page.next == (5,)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    for table in ("device_events", "device_reports"):
        (query,) = [s for s in reads if f"FROM {table}" in s]
        assert "ORDER BY" in query and "LIMIT" in query and "seq >" in query

    # newest first: the same items in reverse, page after page, with the same bounded reads
    for limit in (2, 4, 11):
        pages = tracker.pages(path, "history", limit, order="newest")
        items = [h for p in pages for h in p]
        assert [h["seq"] for h in items] == list(range(11, 0, -1)), limit
        assert [h.get("state", h["kind"]) for h in items] == expected[::-1]
    statements.clear()
    event.listen(tracker.db.engine, "before_cursor_execute", seen)
    try:
        page = tracker.db.history_page(device_id, limit=3, after=9, newest=True)
    finally:
        event.remove(tracker.db.engine, "before_cursor_execute", seen)
    assert [item["seq"] for item in page.items] == [8, 7, 6] and page.next == (6,)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    for table in ("device_events", "device_reports"):
        (query,) = [s for s in reads if f"FROM {table}" in s]
        assert "ORDER BY" in query and "DESC" in query and "LIMIT" in query and "seq <" in query
    # a cursor of one order is not one of the other; an unknown order is refused
    oldest_next = tracker.get(path, limit=2).json()["next"]
    mixed = tracker.get(path, limit=2, after=oldest_next, order="newest")
    assert mixed.status_code == 400 and "cursor" in mixed.json()["error"]
    wrong = tracker.get(path, order="sideways")
    assert wrong.status_code == 400 and "order: expected oldest or newest" in wrong.json()["error"]

    # an unknown device: 404 as before
    plain = tracker.get("/api/v1/devices/no-such-device/history")
    paged = tracker.get("/api/v1/devices/no-such-device/history", limit=5, after=cursor(
        "history", 3))
    assert plain.status_code == paged.status_code == 404
    assert plain.json() == paged.json()
    assert plain.json()["error"] == "no device 'no-such-device'"


# ------------------------------------------------------------------------------- campaigns


def test_campaigns_page_newest_first(tracker: Tracker) -> None:
    made = []
    for i in range(5):
        response = tracker.client.post("/api/v1/campaigns", headers=HEADERS, json={
            "name": f"c{i}", "release": "ab" * 32,
            "envelope_url": "https://example.com/fw.suit", "target": {"tags": ["x"]}})
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    pages = tracker.pages("/api/v1/campaigns", "campaigns", 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    whole = [c["id"] for c in tracker.get("/api/v1/campaigns").json()["campaigns"]]
    assert [c["id"] for p in pages for c in p] == whole and sorted(whole) == sorted(made)
    assert whole[0] == made[-1]  # newest first


# ------------------------------------------------------------------------------- refusals


def cursor(*items: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(items)).encode()).decode().rstrip("=")


@pytest.mark.parametrize("tracker", ["sqlite"], indirect=True)  # refused before any query
def test_bad_limits_and_cursors_are_400_with_one_line(tracker: Tracker) -> None:
    dev = tracker.register("one")
    tracker.register("two")
    devices, history = "/api/v1/devices", f"/api/v1/devices/{dev['id']}/history"
    limits = ["0", "1001", "x", "-1", "", "1e3", "99999999999999999999"]
    for path, tried in ((devices, limits), (history, limits[:3]), ("/api/v1/campaigns",
                                                                    limits[:3])):
        for limit in tried:
            response = tracker.get(path, limit=limit)
            assert response.status_code == 400, (path, limit, response.text)
            message = response.json()["error"]
            assert message == f"limit: expected a whole number from 1 to 1000, got {limit!r}"
    time = "2026-01-01T00:00:00"
    bad = {devices: ["!!!", "x", "", cursor("history", 1), cursor("devices", 5, "a"),
                     cursor("devices", time), cursor("devices", "not a time", "a"),
                     cursor("devices", time, "a" * 37), cursor("devices", time + "+00:00", "a"),
                     cursor("devices", time, "a\x00"), cursor("devices", time, "\ud800"),
                     "A" * 300, base64.urlsafe_b64encode(b"\xff\xfe").decode(),
                     cursor({"a": 1}), cursor("devices", time, "a", "b")],
           history: [cursor("history", -1), cursor("history", 1 << 40), cursor("history", True),
                     cursor("history", "1"), cursor("devices", time, "a"), "%%"],
           "/api/v1/campaigns": [cursor("devices", time, "a"), cursor("campaigns", time)]}
    for path, cursors in bad.items():
        for after in cursors:
            response = tracker.get(path, after=after)
            assert response.status_code == 400, (path, after, response.text)
            assert response.json()["error"].startswith("after: expected the cursor 'next'")
    assert tracker.get(devices, after=cursor("devices", time, "a")).status_code == 200


# ------------------------------------------------------------------------------- the CLI


run = run_cli  # suitkit ARGS in-process (tests/helpers.py)


@pytest.mark.parametrize("tracker", ["sqlite"], indirect=True)  # the client, not the backend
def test_the_cli_follows_the_pages(tracker: Tracker, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("suitkit.cli.operator._PAGE", 3)  # several pages from a few items
    admin = tracker.tmp / "admin.token"
    admin.write_text(ADMIN + "\n")
    common = ["--server", tracker.url, "--token-file", admin]
    ids = [tracker.register(f"dev-{i}")["id"] for i in range(6)]
    device_id, expected = with_history(tracker)
    ids.append(device_id)
    code, out, err = run(capsys, "devices", "list", "--json", *common)
    assert code == 0, err
    assert [d["id"] for d in json.loads(out)] == ids
    code, out, err = run(capsys, "devices", "list", "--json", "--limit", "5", *common)
    assert code == 0 and [d["id"] for d in json.loads(out)] == ids[:5], err
    code, out, err = run(capsys, "devices", "show", device_id, "--json", *common)
    assert code == 0, err
    history = json.loads(out)["history"]
    assert [h.get("state", h["kind"]) for h in history] == expected
    # --limit N: the newest N (over two pages of 3), in the order they happened
    code, out, err = run(capsys, "devices", "show", device_id, "--json", "--limit", "4", *common)
    assert code == 0 and [h["seq"] for h in json.loads(out)["history"]] == [8, 9, 10, 11], err
    code, out, err = run(capsys, "devices", "list", "--limit", "0", *common)
    assert code == 2 and "--limit" in err
