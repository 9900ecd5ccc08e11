"""The tracker's lists in one style, filtered and sorted by the server (issue #17), over real
HTTP (uvicorn on 127.0.0.1, httpx), on SQLite and on a throwaway PostgreSQL.

Every list is ``limit`` + ``after`` with ``{<kind>: [...], "next": cursor|null}`` and, asked
with ``?total=true``, ``"total"`` counted with the same filters. ``GET /api/v1/devices`` filters
by ``state`` (repeatable, comma lists, ``none``), ``class``, ``tag`` (all of them),
``version``, ``last_seen_before``/``last_seen_after`` and sorts by ``sort`` with a cursor that
holds the sort key; campaigns filter by ``state``, history by ``kind``; tokens and the audit
log come in pages. An unknown query parameter or a bad value is 400 with one line naming the
parameter (it was silently ignored: a list that looked filtered and was not).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import Author
from pg import BACKENDS, backend_url
from suitkit.core import crypto
from suitkit.core.model import Digest
from suitkit.core.report import Record, Reference, Report, ResultFailure, encode_report
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.service import TrackerDB, open_db

from helpers import run_cli

ADMIN = "admin-token-for-list-tests"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
CLASS_A = str(uuid.UUID(int=0xA))
CLASS_B = str(uuid.UUID(int=0xB))
RELEASE = "00" * 32


@dataclass
class Tracker:
    url: str
    client: httpx.Client
    db: TrackerDB

    def register(self, name: str, class_id: str | None = None) -> dict[str, Any]:
        body = {"name": name, **({"class_id": class_id} if class_id else {})}
        response = self.client.post("/api/v1/devices", json=body, headers=HEADERS)
        assert response.status_code == 201, response.text
        return {**response.json(), "name": name, "class_id": class_id}

    def get(self, path: str, params: Any = None) -> httpx.Response:
        return self.client.get(path, params=params, headers=HEADERS)

    def ok(self, path: str, params: Any = None) -> dict[str, Any]:
        response = self.get(path, params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ids(self, params: Any = None) -> list[str]:
        return [d["id"] for d in self.ok("/api/v1/devices", params)["devices"]]

    def walk(self, path: str, key: str, params: list[tuple[str, Any]], limit: int
             ) -> list[dict[str, Any]]:
        """Every item of a list in pages of ``limit``, following ``next``."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(100):
            query = [*params, ("limit", limit), *([("after", after)] if after else [])]
            doc = self.ok(path, query)
            assert len(doc[key]) <= limit
            items += doc[key]
            after = doc["next"]
            if after is None:
                return items
        raise AssertionError("more than 100 pages")

    def device_call(self, dev: dict[str, Any], method: str, suffix: str, **kwargs: Any
                    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {dev['token']}", **kwargs.pop("headers", {})}
        return self.client.request(method, f"/device/v1/{dev['id']}{suffix}",
                                   headers=headers, **kwargs)

    def deploy(self, *devices: dict[str, Any]) -> None:
        response = self.client.post("/api/v1/deployments", headers=HEADERS, json={
            "release": RELEASE, "envelope_url": "https://example.com/fw.suit",
            "devices": [d["id"] for d in devices]})
        assert response.status_code == 201, response.text

    def move(self, dev: dict[str, Any], *states: str) -> None:
        for state in states:
            response = self.device_call(dev, "POST", "/events", json={"state": state})
            assert response.status_code == 201, response.text

    def tag(self, dev: dict[str, Any], *tags: str) -> None:
        response = self.client.put(f"/api/v1/devices/{dev['id']}/tags", headers=HEADERS,
                                   json={"tags": list(tags)})
        assert response.status_code == 200, response.text

    def seen(self, dev: dict[str, Any], moment: datetime | None) -> None:
        """Set the device's last_seen (naive UTC) as its check-ins would have."""
        with self.db.store.transaction() as tx:
            row = tx.device(dev["id"])
            assert row is not None
            row.last_seen = moment


def _server(db_url: str, tmp_path: Path) -> Iterator[Tracker]:
    db = open_db(db_url)
    try:
        router = create_router(TrackerConfig(db_url, ADMIN), db)
        anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
        config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, routers=(router,))
        with running_server(config) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Tracker(url, client, db)
    finally:
        db.engine.dispose()


@pytest.fixture(params=BACKENDS)
def tracker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tracker]:
    """A server on a fresh database for each test."""
    yield from _server(backend_url(request, tmp_path), tmp_path)


def report_bytes() -> bytes:
    record = Record(manifest_id=(), manifest_section=20, section_offset=7, component_index=0)
    return encode_report(Report(
        reference=Reference("https://example.com/fw.suit", Digest(-16, bytes(32))),
        records=(record,), result=ResultFailure(code=1, record=record, reason=1)))


@dataclass
class Fleet:
    """Eight devices with known states, classes, tags, versions and last-seen times."""

    devs: list[dict[str, Any]]
    t0: datetime

    def ids(self, *indexes: int) -> list[str]:
        return [self.devs[i]["id"] for i in indexes]


def make_fleet(tracker: Tracker) -> Fleet:
    names = ["hotel", "alpha", "golf", "bravo", "foxtrot", "charlie", "echo", "delta"]
    devs = [tracker.register(name, CLASS_A if i % 2 == 0 else CLASS_B)
            for i, name in enumerate(names)]
    # states: 0 failed, 1 succeeded, 2 failed, 3 downloading, 4..7 never updated
    tracker.deploy(devs[0], devs[1], devs[2], devs[3])
    tracker.move(devs[0], "downloading", "failed")
    tracker.move(devs[1], "downloading", "downloaded", "installing", "rebooting", "succeeded")
    tracker.move(devs[2], "failed")
    tracker.move(devs[3], "downloading")
    tracker.tag(devs[0], "lab", "eu")
    tracker.tag(devs[1], "eu")
    tracker.tag(devs[2], "lab")
    tracker.tag(devs[5], "eu", "lab", "rack:7")
    for i, version in ((0, [1, 2, 0]), (1, [1, 3]), (4, [1, 2, 0]), (6, [2])):
        inventory = {"class_id": devs[i]["class_id"],
                     "components": [{"id": ["00"], "sequence": 1, "version": version},
                                    {"id": ["01"], "sequence": 2}]}
        response = tracker.device_call(devs[i], "PUT", "/inventory", json=inventory)
        assert response.status_code == 200, response.text
    t0 = datetime(2026, 3, 1, 12, 0, 0)
    # last seen: 0..5 an hour apart each (5 the latest), 6 and 7 never
    for i, dev in enumerate(devs):
        tracker.seen(dev, t0 + timedelta(hours=i) if i < 6 else None)
    return Fleet(devs, t0)


# ------------------------------------------------------------------------------- filters


def test_devices_filtered_by_state_class_tag_version_and_last_seen_with_totals(
        tracker: Tracker) -> None:
    fleet = make_fleet(tracker)
    f = fleet.ids
    assert tracker.ids([("state", "failed")]) == f(0, 2)
    assert tracker.ids([("state", "failed,succeeded")]) == f(0, 1, 2)
    assert tracker.ids([("state", "failed"), ("state", "downloading")]) == f(0, 2, 3)
    assert tracker.ids([("state", "none")]) == f(4, 5, 6, 7)
    assert tracker.ids([("class", CLASS_B)]) == f(1, 3, 5, 7)
    assert tracker.ids([("class", CLASS_A), ("state", "failed")]) == f(0, 2)
    assert tracker.ids([("tag", "lab")]) == f(0, 2, 5)
    assert tracker.ids([("tag", "lab"), ("tag", "eu")]) == f(0, 5)  # every tag given
    assert tracker.ids([("tag", "rack:7")]) == f(5)
    assert tracker.ids([("tag", "la")]) == []  # a whole tag, not a part of one
    assert tracker.ids([("version", "1.2.0")]) == f(0, 4)
    assert tracker.ids([("version", "1.2.0,2")]) == f(0, 4, 6)
    assert tracker.ids([("version", "1.2")]) == []
    at = (fleet.t0 + timedelta(hours=2)).isoformat() + "Z"
    assert tracker.ids([("last_seen_before", at)]) == f(0, 1)
    assert tracker.ids([("last_seen_after", at)]) == f(2, 3, 4, 5)
    plus_one = (fleet.t0 + timedelta(hours=3)).isoformat() + "+01:00"  # = 2 h UTC
    assert tracker.ids([("last_seen_after", plus_one)]) == f(2, 3, 4, 5)
    assert tracker.ids([("last_seen_after", at), ("tag", "lab")]) == f(2, 5)

    # totals: the whole list with the same filters, in pages of one
    doc = tracker.ok("/api/v1/devices", [("state", "failed,none"), ("limit", 1),
                                         ("total", "true")])
    assert doc["total"] == 6 and len(doc["devices"]) == 1 and doc["next"] is not None
    assert tracker.ok("/api/v1/devices", [("total", "true"), ("tag", "eu")])["total"] == 3
    assert tracker.ok("/api/v1/devices", [("total", "true")])["total"] == 8
    assert "total" not in tracker.ok("/api/v1/devices")  # only when asked
    walked = tracker.walk("/api/v1/devices", "devices", [("state", "failed,none")], 4)
    assert [d["id"] for d in walked] == f(0, 2, 4, 5, 6, 7)
    assert all(d["state"] in ("failed", None) for d in walked)


def test_devices_sorted_with_a_cursor_that_holds_the_sort_key(tracker: Tracker) -> None:
    fleet = make_fleet(tracker)
    f = fleet.ids
    by_name = sorted(range(8), key=lambda i: fleet.devs[i]["name"])
    cases = {
        "name": f(*by_name),
        "-name": f(*reversed(by_name)),
        # never seen first ascending, last descending; ties by id
        "last_seen": sorted(f(6, 7)) + f(0, 1, 2, 3, 4, 5),
        "-last_seen": f(5, 4, 3, 2, 1, 0) + sorted(f(6, 7), reverse=True),
        "created": f(*range(8)),
        "-created": f(*reversed(range(8))),
        "state": (sorted(f(4, 5, 6, 7)) + f(3) + sorted(f(0, 2)) + f(1)),
        "-state": f(1) + sorted(f(0, 2), reverse=True) + f(3)
        + sorted(f(4, 5, 6, 7), reverse=True),
    }
    for sort, expected in cases.items():
        for limit in (1, 3, 8):
            walked = tracker.walk("/api/v1/devices", "devices", [("sort", sort)], limit)
            assert [d["id"] for d in walked] == expected, (sort, limit)
    # a sort and a filter together, in pages
    walked = tracker.walk("/api/v1/devices", "devices",
                          [("sort", "-last_seen"), ("tag", "lab")], 1)
    assert [d["id"] for d in walked] == f(5, 2, 0)
    # a cursor of one sort is refused by another
    cursor = tracker.ok("/api/v1/devices", [("sort", "name"), ("limit", 2)])["next"]
    for other in ("-name", "created", "last_seen"):
        response = tracker.get("/api/v1/devices", [("sort", other), ("after", cursor)])
        assert response.status_code == 400, (other, response.text)
        assert response.json()["error"].startswith("after: expected the cursor 'next'")
    # a first version's cursor (["devices", created, id]) still pages the default order
    first = tracker.ok("/api/v1/devices", [("limit", 3)])["next"]
    assert tracker.ids([("after", first)]) == f(3, 4, 5, 6, 7)


def test_campaigns_by_state_history_by_kind_tokens_and_audit_in_pages(
        tracker: Tracker) -> None:
    devs = [tracker.register(f"d{i}") for i in range(3)]
    campaigns = []
    for i in range(3):
        response = tracker.client.post("/api/v1/campaigns", headers=HEADERS, json={
            "name": f"c{i}", "release": RELEASE,
            "envelope_url": "https://example.com/fw.suit",
            "target": {"devices": [devs[i]["id"]]}})
        assert response.status_code == 201, response.text
        campaigns.append(response.json()["id"])
    response = tracker.client.post(f"/api/v1/campaigns/{campaigns[1]}/cancel", headers=HEADERS)
    assert response.status_code == 200, response.text
    listed = tracker.ok("/api/v1/campaigns", [("state", "draft"), ("total", "true")])
    assert [c["id"] for c in listed["campaigns"]] == [campaigns[2], campaigns[0]]
    assert listed["total"] == 2
    cancelled = tracker.ok("/api/v1/campaigns", [("state", "cancelled")])["campaigns"]
    assert [c["id"] for c in cancelled] == [campaigns[1]]
    walked = tracker.walk("/api/v1/campaigns", "campaigns", [("state", "draft,cancelled")], 1)
    assert [c["id"] for c in walked] == list(reversed(campaigns))

    # history: events only, reports only (a device with both)
    dev = devs[0]
    tracker.deploy(dev)
    tracker.move(dev, "downloading", "failed")
    tracker.deploy(dev)
    tracker.move(dev, "downloading")
    response = tracker.device_call(dev, "POST", "/reports", content=report_bytes(),
                                   headers={"Content-Type": "application/suit-report+cbor"})
    assert response.status_code == 201, response.text
    path = f"/api/v1/devices/{dev['id']}/history"
    everything = tracker.ok(path, [("total", "true")])
    assert [h["kind"] for h in everything["history"]] == ["event"] * 5 + ["report"]
    assert everything["total"] == 6
    events = tracker.ok(path, [("kind", "event"), ("total", "true")])
    assert [h.get("state") for h in events["history"]] == ["notified", "downloading",
                                                            "failed", "notified",
                                                            "downloading"]
    assert events["total"] == 5
    reports = tracker.ok(path, [("kind", "report"), ("total", "1")])
    assert [h["kind"] for h in reports["history"]] == ["report"] and reports["total"] == 1
    assert [h["seq"] for h in tracker.walk(path, "history", [("kind", "event")], 1)] == [
        h["seq"] for h in events["history"]]
    both = tracker.ok(path, [("kind", "event,report"), ("order", "newest")])["history"]
    assert [h["kind"] for h in both] == ["report"] + ["event"] * 5

    # tokens: pages, oldest first; the audit log: pages, newest first
    made = []
    for i in range(3):
        response = tracker.client.post("/api/v1/tokens", headers=HEADERS,
                                       json={"name": f"t{i}", "role": "operator"})
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    tokens = tracker.walk("/api/v1/tokens", "tokens", [], 2)
    assert [t["id"] for t in tokens] == made
    assert tracker.ok("/api/v1/tokens", [("total", "true"), ("limit", 1)])["total"] == 3
    entries = tracker.walk("/api/v1/audit", "entries", [], 4)
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    whole = tracker.ok("/api/v1/audit", [("total", "true")])
    assert whole["total"] == len(entries) == len(whole["entries"]) and whole["next"] is None
    assert entries[0]["action"] == "token.create"


# ------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("tracker", ["sqlite"], indirect=True)  # refused before any query
def test_unknown_parameters_and_bad_values_are_400_naming_the_parameter(
        tracker: Tracker) -> None:
    dev = tracker.register("one")
    history = f"/api/v1/devices/{dev['id']}/history"
    cases: list[tuple[str, list[tuple[str, str]], str]] = [
        ("/api/v1/devices", [("stat", "failed")], "'stat': not a query parameter"),
        ("/api/v1/devices", [("state", "broken")], "state: expected one of"),
        ("/api/v1/devices", [("state", "failed,")], "state: expected a value"),
        ("/api/v1/devices", [("state", ",".join(["failed"] * 21))], "state: at most 20"),
        ("/api/v1/devices", [("class", "not-a-uuid")], "class: expected a class id"),
        ("/api/v1/devices", [("tag", "a b")], "tag: 'a b' is not a tag"),
        ("/api/v1/devices", [("version", "1.x")], "version: expected 1 to"),
        ("/api/v1/devices", [("version", "1." + "9" * 25)], "version: expected 1 to"),
        ("/api/v1/devices", [("last_seen_before", "yesterday")], "last_seen_before: expected"),
        ("/api/v1/devices", [("last_seen_after", "2026-01-01T00:00:00")],
         "last_seen_after: expected an RFC 3339 date-time with its offset"),
        ("/api/v1/devices", [("last_seen_before", "0001-01-01T00:00:00+01:00")],
         "last_seen_before: expected an RFC 3339"),  # beyond the range once in UTC
        ("/api/v1/devices", [("last_seen_after", "9999-12-31T23:59:59-01:00")],
         "last_seen_after: expected an RFC 3339"),
        ("/api/v1/devices", [("sort", "colour")], "sort: expected one of"),
        ("/api/v1/devices", [("sort", "name"), ("sort", "state")], "sort: given more than once"),
        ("/api/v1/devices", [("limit", "2"), ("limit", "3")], "limit: given more than once"),
        ("/api/v1/devices", [("total", "maybe")], "total: expected true or false"),
        ("/api/v1/devices", [("components", "2")], "components: expected true or false"),
        ("/api/v1/campaigns", [("state", "failed")], "state: expected one of draft"),
        ("/api/v1/campaigns", [("status", "draft")], "'status': not a query parameter"),
        (history, [("kind", "note")], "kind: expected one of event, report"),
        (history, [("type", "event")], "'type': not a query parameter"),
        ("/api/v1/tokens", [("role", "admin")], "'role': not a query parameter"),
        ("/api/v1/audit", [("actor", "x")], "'actor': not a query parameter"),
        ("/api/v1/audit", [("limit", "0")], "limit: expected a whole number from 1 to 1000"),
        ("/api/v1/audit", [("limit", "1001")], "limit: expected a whole number from 1 to 1000"),
    ]
    for path, params, message in cases:
        response = tracker.get(path, params)
        assert response.status_code == 400, (path, params, response.text)
        error = response.json()["error"]
        assert error.startswith(message), (path, params, error)
        assert "\n" not in error and len(error) < 400
    # the bound is on values, not on how they are spelled
    twenty = [("state", s) for s in ["failed", "succeeded"] * 10]
    assert tracker.get("/api/v1/devices", twenty).status_code == 200
    assert tracker.get("/api/v1/devices", [*twenty, ("state", "rebooting")]).status_code == 400
    bad_audit = tracker.get("/api/v1/audit", [("after", "AAAA")])
    assert bad_audit.status_code == 400 and "after: expected the cursor" in bad_audit.text


@pytest.mark.parametrize("tracker", ["sqlite"], indirect=True)
def test_openapi_documents_each_lists_parameters(tracker: Tracker) -> None:
    paths = tracker.client.get("/openapi.json").json()["paths"]

    def names(path: str) -> set[str]:
        return {p["name"] for p in paths[path]["get"].get("parameters", [])}

    assert names("/api/v1/devices") >= {"limit", "after", "total", "state", "class", "tag",
                                        "version", "last_seen_before", "last_seen_after",
                                        "sort", "components"}
    assert names("/api/v1/campaigns") >= {"limit", "after", "total", "state"}
    assert names("/api/v1/devices/{device_id}/history") >= {"limit", "after", "total",
                                                            "kind", "order"}
    assert names("/api/v1/tokens") >= {"limit", "after", "total"}
    assert names("/api/v1/audit") >= {"limit", "after", "total"}
    state = next(p for p in paths["/api/v1/devices"]["get"]["parameters"]
                 if p["name"] == "state")
    assert state["schema"]["type"] == "array" and state["schema"]["maxItems"] == 20


# ------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("tracker", ["sqlite"], indirect=True)  # the client, not the backend
def test_the_cli_lists_filtered_sorted_with_totals(
        tracker: Tracker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("suitkit.cli.operator._PAGE", 1)  # several pages, the total once
    fleet = make_fleet(tracker)
    admin = tmp_path / "admin.token"
    admin.write_text(ADMIN + "\n")
    common = ["--server", tracker.url, "--token-file", admin]
    code, out, err = run_cli(capsys, "devices", "list", "--state", "failed,none", "--tag",
                             "lab", "--sort", "-last_seen", "--total", "--json", *common)
    assert code == 0, err
    doc = json.loads(out)
    assert [d["id"] for d in doc["devices"]] == fleet.ids(5, 2, 0) and doc["total"] == 3
    code, out, err = run_cli(capsys, "devices", "list", "--class", CLASS_B, "--state",
                             "none", "--state", "downloading", "--json", *common)
    assert code == 0, err
    assert [d["id"] for d in json.loads(out)] == fleet.ids(3, 5, 7)  # a list, as before
    code, out, err = run_cli(capsys, "devices", "list", "--version", "1.2.0",
                             "--last-seen-after", "2026-03-01T13:00:00Z", "--total", *common)
    assert code == 0, err
    assert fleet.devs[4]["id"] in out and fleet.devs[0]["id"] not in out
    assert "1 device(s) match" in out
    code, out, err = run_cli(capsys, "devices", "list", "--sort", "colour", *common)
    assert code != 0 and "sort: expected one of created, -created" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    response = tracker.client.post("/api/v1/campaigns", headers=HEADERS, json={
        "name": "c", "release": RELEASE, "envelope_url": "https://example.com/fw.suit",
        "target": {"tags": ["lab"]}})
    assert response.status_code == 201, response.text
    code, out, err = run_cli(capsys, "campaign", "list", "--state", "draft", "--total",
                             "--json", *common)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["total"] == 1 and [c["id"] for c in doc["campaigns"]] == [response.json()["id"]]
    code, out, err = run_cli(capsys, "campaign", "list", "--state", "running", "--json",
                             *common)
    assert code == 0 and json.loads(out) == [], err
    code, out, err = run_cli(capsys, "token", "list", "--json", *common)
    assert code == 0 and json.loads(out) == [], err


# ------------------------------------------------------------------------------- releases


def test_releases_come_in_pages_with_a_total(tmp_path: Path) -> None:
    """``GET /api/v1/releases`` (the firmware server's list) in the same style: it was every
    release in one answer."""
    author = Author.create(tmp_path / "author")
    upload = "upload-token-for-list-tests"
    config = ServerConfig(data_dir=tmp_path / "data", upload_token=upload,
                          anchors=TrustAnchors.of(author.key.public_key()))
    auth = {"Authorization": f"Bearer {upload}"}
    with running_server(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        ids = []
        for sequence in (3, 1, 2, 5, 4):
            envelope, image = author.release(sequence, size=64)
            response = client.post("/api/v1/releases", headers=auth, files=[
                ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
                ("image", ("app.bin", image, "application/octet-stream"))])
            assert response.status_code == 201, response.text
            ids.append((sequence, response.json()["id"]))
        expected = [i for _, i in sorted(ids)]
        seen: list[str] = []
        after: str | None = None
        for _ in range(10):
            doc = client.get("/api/v1/releases", headers=auth, params={
                "limit": 2, "total": "true", **({"after": after} if after else {})}).json()
            assert len(doc["releases"]) <= 2 and doc["total"] == 5
            seen += [r["id"] for r in doc["releases"]]
            after = doc["next"]
            if after is None:
                break
        assert seen == expected  # by sequence number, each once
        whole = client.get("/api/v1/releases", headers=auth).json()
        assert [r["id"] for r in whole["releases"]] == expected and whole["next"] is None
        assert "total" not in whole
        for params, message in (({"limit": "0"}, "limit: expected a whole number"),
                                ({"after": "xyz"}, "after: expected the cursor"),
                                ({"sequence": "1"}, "'sequence': not a query parameter"),
                                ({"total": "perhaps"}, "total: expected true or false")):
            response = client.get("/api/v1/releases", headers=auth, params=params)
            assert response.status_code == 400, (params, response.text)
            assert response.json()["error"].startswith(message), response.text


# ------------------------------------------------------------------------------- device API


@pytest.mark.parametrize("tracker", ["sqlite"], indirect=True)
def test_the_device_api_has_its_own_prefix_and_the_old_routes_still_answer(
        tracker: Tracker) -> None:
    dev = tracker.register("field")
    headers = {"Authorization": f"Bearer {dev['token']}"}
    body = {"inventory_digest": "ab" * 32}
    for prefix in ("/device/v1", "/api/v1/devices"):  # new, and the agents in the field
        answer = tracker.client.post(f"{prefix}/{dev['id']}/checkin", json=body,
                                     headers=headers)
        assert answer.status_code == 200 and answer.json()["release"] is None, answer.text
        assert tracker.client.get(f"{prefix}/{dev['id']}/update",
                                  headers=headers).status_code == 204
    tracker.deploy(dev)
    tracker.move(dev, "downloading")  # /device/v1/{id}/events
    assert tracker.client.post(f"/api/v1/devices/{dev['id']}/events", headers=headers,
                               json={"state": "failed"}).status_code == 201
    # the device API is the device's: staff tokens get 403 there, another device too
    other = tracker.register("other")
    for token in (ADMIN, other["token"]):
        refused = tracker.client.post(f"/device/v1/{dev['id']}/checkin", json=body,
                                      headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403, refused.text
    # no operator route under the device prefix
    assert tracker.get(f"/device/v1/{dev['id']}").status_code in (404, 405)
    assert tracker.get("/device/v1/devices").status_code == 404

    paths = tracker.client.get("/openapi.json").json()["paths"]
    for method, suffix in (("post", "/checkin"), ("get", "/update"), ("put", "/inventory"),
                           ("post", "/events"), ("post", "/reports"), ("post", "/health")):
        # (notifications: the push routes' wiring; tests/tracker/test_authz.py walks them)
        new = paths[f"/device/v1/{{device_id}}{suffix}"][method]
        old = paths[f"/api/v1/devices/{{device_id}}{suffix}"][method]
        assert not new.get("deprecated") and old["deprecated"] is True, suffix
        assert "device API" in new["tags"]
    assert not paths["/api/v1/devices"]["get"].get("deprecated")
    assert not paths["/api/v1/devices/{device_id}/health"]["get"].get("deprecated")


def test_campaign_members_in_pages_by_state_with_a_total(tracker: Tracker) -> None:
    """``GET /api/v1/campaigns/{id}/members``: the members in the lists' style (the campaign's
    own answer pages them by offset)."""
    devs = [tracker.register(f"m{i}") for i in range(5)]
    for dev in devs[:4]:
        tracker.tag(dev, "wave")
    response = tracker.client.post("/api/v1/tokens", headers=HEADERS,
                                   json={"name": "second", "role": "operator"})
    assert response.status_code == 201, response.text
    second = {"Authorization": f"Bearer {response.json()['token']}"}
    created = tracker.client.post("/api/v1/campaigns", headers=HEADERS, json={
        "name": "members", "release": RELEASE, "envelope_url": "https://example.com/fw.suit",
        "target": {"tags": ["wave"]}})
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    for action in ("approve", "start"):
        answer = tracker.client.post(f"/api/v1/campaigns/{cid}/{action}", headers=second)
        assert answer.status_code == 200, answer.text
    tracker.move(devs[1], "downloading", "failed")
    tracker.move(devs[2], "failed")
    path = f"/api/v1/campaigns/{cid}/members"
    walked = tracker.walk(path, "members", [], 1)
    assert len(walked) == 4  # each member once, by position
    assert {m["device_id"] for m in walked} == {d["id"] for d in devs[:4]}
    failed = tracker.ok(path, [("state", "failed"), ("total", "true")])
    assert {m["device_id"] for m in failed["members"]} == {devs[1]["id"], devs[2]["id"]}
    assert failed["total"] == 2 and failed["next"] is None
    assert tracker.ok(path, [("state", "notified,failed"), ("total", "1")])["total"] == 4
    for params, message in (([("state", "lost")], "state: expected one of pending"),
                            ([("offset", "1")], "'offset': not a query parameter")):
        answer = tracker.get(path, params)
        assert answer.status_code == 400 and answer.json()["error"].startswith(message)
    other = tracker.ok("/api/v1/campaigns/" + cid + "/members", [("limit", 1)])["next"]
    assert tracker.get("/api/v1/audit", [("after", other)]).status_code == 400
    assert tracker.get(f"/api/v1/campaigns/{'0' * 8}-0000-4000-8000-{'0' * 12}/members"
                       ).status_code == 404
