"""The status tracker over real HTTP: uvicorn on 127.0.0.1 (``running_server``), httpx as the
client; every test runs twice, on SQLite in a temp directory and on a throwaway PostgreSQL.

One test per promise of docs/tracker.md: registration returns a secret once and stores only a
hash of it; every call is authenticated and a device's credential opens only its own records;
inventory, events and reports round-trip; the state machine refuses impossible transitions;
reports from untrusted devices are decoded strictly; a real report from the device's processor
is accepted and summarised.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from device.device_kit import VENDOR, Author, image_bytes, install, new_device
from pg import BACKENDS, backend_url
from suitkit.core import crypto
from suitkit.core.model import Digest
from suitkit.core.report import (
    Record,
    Reference,
    Report,
    ResultFailure,
    encode_report,
    reason_name,
)
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.edges.http_api import REPORT_MEDIA_TYPE
from suitkit.tracker.service import open_db

ADMIN = "admin-token-for-tests-0123"
CBOR = {"Content-Type": REPORT_MEDIA_TYPE}


@dataclass
class Tracker:
    url: str
    db_url: str
    db_file: Path | None
    """The SQLite file; ``None`` on PostgreSQL."""
    client: httpx.Client

    def query_one(self, sql: str, **params: Any) -> Any:
        """The first row of ``sql`` run on the tracker's database (directly, not over HTTP)."""
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as connection:
                return connection.execute(text(sql), params).one()
        finally:
            engine.dispose()

    def register(self, name: str = "dev") -> dict[str, Any]:
        response = self.client.post("/api/v1/devices", json={"name": name}, headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        return dict(response.json())


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


UNSIGNED_RELEASE = "00" * 32
"""The manifest digest ``failing_report`` names."""


def deploy(tracker: Tracker, device: dict[str, Any], release: str = UNSIGNED_RELEASE,
           *states: str) -> None:
    """Assign ``release`` to the device (admin), then report ``states`` as the device."""
    response = tracker.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
        "release": release, "envelope_url": "http://127.0.0.1:1/envelopes/x",
        "devices": [device["id"]]})
    assert response.status_code == 201, response.text
    for state in states:
        response = tracker.client.post(f"/api/v1/devices/{device['id']}/events",
                                       json={"state": state}, headers=auth(device["token"]))
        assert response.status_code == 201, response.text


@pytest.fixture(scope="module", params=BACKENDS)
def tracker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Tracker]:
    """One server per backend for the module: every test registers its own devices."""
    tmp_path = tmp_path_factory.mktemp("tracker")
    db_url = backend_url(request, tmp_path)
    db_file = tmp_path / "tracker.db" if db_url.startswith("sqlite") else None
    db = open_db(db_url)
    request.addfinalizer(db.engine.dispose)
    router = create_router(TrackerConfig(db_url, ADMIN), db)
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, routers=(router,))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield Tracker(url, db_url, db_file, client)


def failing_report(uri: str = "https://example.com/fw.suit") -> Report:
    record = Record(manifest_id=(), manifest_section=20, section_offset=7, component_index=0)
    return Report(reference=Reference(uri, Digest(-16, bytes(32))), records=(record,),
                  result=ResultFailure(code=1, record=record, reason=1))


def inventory() -> dict[str, Any]:
    return {"vendor_id": str(VENDOR), "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
            "components": [{"id": ["00"], "sequence": 3, "digest": "ab" * 32},
                           {"id": ["01", "6170"], "sequence": 18446744073709551615,
                            "digest": "CD" * 32}],
            "hardware": {"flash_bytes": 1048576, "ram_bytes": 262144, "board": "nrf52840",
                         "external_flash": False}}


# ---------------------------------------------------------------------------- registration


def test_registration_returns_the_secret_once_and_stores_only_a_hash(tracker: Tracker) -> None:
    dev = tracker.register("thermostat-1")
    assert dev["token"] == f"{dev['id']}.{dev['secret']}" and len(dev["secret"]) >= 40
    shown = tracker.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert shown["name"] == "thermostat-1" and shown["state"] is None
    assert "secret" not in shown and "credential_hash" not in shown
    listed = tracker.client.get("/api/v1/devices", headers=auth(ADMIN)).json()["devices"]
    assert [d["id"] for d in listed if d["id"] == dev["id"]] == [dev["id"]]
    assert all("secret" not in d for d in listed)
    # the device's own credential works; the database holds no trace of the secret
    assert tracker.client.get(f"/api/v1/devices/{dev['id']}",
                              headers=auth(dev["token"])).status_code == 200
    if tracker.db_file is not None:
        raw = tracker.db_file.read_bytes()
        for suffix in ("-wal", "-journal"):
            extra = tracker.db_file.with_name(tracker.db_file.name + suffix)
            raw += extra.read_bytes() if extra.exists() else b""
        assert dev["secret"].encode() not in raw
    (stored,) = tracker.query_one("SELECT credential_hash FROM devices WHERE id = :id",
                                  id=dev["id"])
    assert stored.startswith("sha256$") and dev["secret"] not in stored


def test_two_registrations_get_different_ids_and_secrets(tracker: Tracker) -> None:
    a, b = tracker.register("a"), tracker.register("b")
    assert a["id"] != b["id"] and a["secret"] != b["secret"]


@pytest.mark.parametrize("escaped", ["a\\u0000b", "a\\ud800b"])
def test_text_postgresql_cannot_store_is_refused_on_every_backend(tracker: Tracker,
                                                                  escaped: str) -> None:
    """NUL (PostgreSQL text cannot hold it) and a lone surrogate (not UTF-8): 400, not 500."""
    headers = {**auth(ADMIN), "Content-Type": "application/json"}
    body = f'{{"name": "{escaped}"}}'.encode()
    response = tracker.client.post("/api/v1/devices", content=body, headers=headers)
    assert response.status_code == 400 and "name: expected text" in response.json()["error"]
    dev = tracker.register()
    response = tracker.client.post(f"/api/v1/devices/{dev['id']}/events",
                                   content=f'{{"state": "notified", "detail": "{escaped}"}}',
                                   headers={**auth(dev["token"]),
                                            "Content-Type": "application/json"})
    assert response.status_code == 400 and "detail: expected text" in response.json()["error"]


# ---------------------------------------------------------------------------- round trips


def test_inventory_round_trips_and_marks_the_device_seen(tracker: Tracker) -> None:
    dev = tracker.register()
    response = tracker.client.put(f"/api/v1/devices/{dev['id']}/inventory", json=inventory(),
                                  headers=auth(dev["token"]))
    assert response.status_code == 200, response.text
    doc = tracker.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert doc["vendor_id"] == str(VENDOR)
    assert doc["components"] == [
        {"id": ["00"], "sequence": 3, "digest": "ab" * 32, "version": None},
        {"id": ["01", "6170"], "sequence": 18446744073709551615, "digest": "cd" * 32,
         "version": None}]
    assert doc["hardware"]["board"] == "nrf52840" and doc["last_seen"] is not None
    # a second PUT replaces the inventory; a component's version (update-management §4.4)
    smaller = {**inventory(), "components": [{"id": ["00"], "sequence": 4, "digest": "11",
                                              "version": [1, 2, -1]}]}
    tracker.client.put(f"/api/v1/devices/{dev['id']}/inventory", json=smaller,
                       headers=auth(dev["token"])).raise_for_status()
    doc = tracker.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(dev["token"])).json()
    assert doc["components"] == [{"id": ["00"], "sequence": 4, "digest": "11",
                                  "version": [1, 2, -1]}]
    # only the version changes: the inventory changed
    smaller["components"][0]["version"] = [1, 3]
    tracker.client.put(f"/api/v1/devices/{dev['id']}/inventory", json=smaller,
                       headers=auth(dev["token"])).raise_for_status()
    doc = tracker.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(dev["token"])).json()
    assert doc["components"][0]["version"] == [1, 3]


def test_an_inventory_whose_identity_contradicts_the_registration_is_refused(
        tracker: Tracker) -> None:
    """Issue #11 item 14: the vendor and class IDs a device registered with (or first
    reported) stay its identity; an inventory naming others, or none, is refused (409) and
    changes nothing."""
    klass = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
    response = tracker.client.post("/api/v1/devices", headers=auth(ADMIN), json={
        "name": "bound", "vendor_id": str(VENDOR), "class_id": klass})
    assert response.status_code == 201, response.text
    dev = response.json()
    url, headers = f"/api/v1/devices/{dev['id']}", auth(dev["token"])
    registered = tracker.client.get(url, headers=auth(ADMIN)).json()
    assert (registered["vendor_id"], registered["class_id"]) == (str(VENDOR), klass)
    other = "00000000-0000-5000-8000-000000000007"
    for changed in ({"class_id": other}, {"vendor_id": other}, {"class_id": None}):
        body = {**inventory(), **changed}
        response = tracker.client.put(f"{url}/inventory", json=body, headers=headers)
        assert response.status_code == 409, (changed, response.text)
        field = next(iter(changed))
        assert response.json()["error"].startswith(f"{field}: device {dev['id']} is "
                                                   "registered as")
    now = tracker.client.get(url, headers=auth(ADMIN)).json()
    assert {**now, "last_seen": None} == {**registered, "last_seen": None}  # seen, unchanged
    assert tracker.client.put(f"{url}/inventory", json=inventory(),
                              headers=headers).status_code == 200
    # registered without IDs: the first inventory gives them, later ones must keep them
    plain = tracker.register("plain")
    path, mine = f"/api/v1/devices/{plain['id']}/inventory", auth(plain["token"])
    assert tracker.client.put(path, json=inventory(), headers=mine).status_code == 200
    moved = tracker.client.put(path, json={**inventory(), "class_id": other}, headers=mine)
    assert moved.status_code == 409 and "is registered as" in moved.json()["error"]
    bad = tracker.client.post("/api/v1/devices", headers=auth(ADMIN),
                              json={"name": "x", "class_id": "not-a-uuid"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("class_id: expected a UUID")


@pytest.mark.parametrize(("body", "fragment"), [
    ({"components": [{"id": ["zz"], "sequence": 1}]}, "components[0].id[0]"),
    ({"components": [{"id": ["00"], "sequence": -1}]}, "components[0].sequence"),
    ({"components": [{"id": ["00"], "sequence": 1 << 64}]}, "components[0].sequence"),
    ({"components": [{"id": ["00"]}] * 65}, "at most 64"),
    ({"vendor_id": "not-a-uuid"}, "vendor_id"),
    ({"hardware": {"nested": {"a": 1}}}, "hardware.nested"),
    ({"hardware": {f"k{i}": i for i in range(65)}}, "hardware"),
    ({"firmware": "x"}, "unknown member 'firmware'"),
])
def test_inventory_is_bounded_and_checked(tracker: Tracker, body: dict[str, Any],
                                          fragment: str) -> None:
    dev = tracker.register()
    response = tracker.client.put(f"/api/v1/devices/{dev['id']}/inventory", json=body,
                                  headers=auth(dev["token"]))
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_oversized_bodies_are_refused_before_parsing(tracker: Tracker) -> None:
    dev = tracker.register()
    response = tracker.client.put(f"/api/v1/devices/{dev['id']}/inventory",
                                  content=b"{" + b" " * (64 * 1024) + b"}",
                                  headers={**auth(dev["token"]),
                                           "Content-Type": "application/json"})
    assert response.status_code == 413
    response = tracker.client.post(f"/api/v1/devices/{dev['id']}/reports",
                                   content=bytes(64 * 1024 + 1),
                                   headers={**auth(dev["token"]), **CBOR})
    assert response.status_code == 413


def test_a_full_update_walks_the_state_machine_and_history_keeps_the_order(
        tracker: Tracker) -> None:
    dev = tracker.register()
    path, headers = f"/api/v1/devices/{dev['id']}", auth(dev["token"])
    deploy(tracker, dev)
    for state in ("downloading", "downloaded", "installing"):
        response = tracker.client.post(f"{path}/events", json={"state": state,
                                                               "detail": f"now {state}"},
                                       headers=headers)
        assert response.status_code == 201, response.text
    report = encode_report(failing_report())
    response = tracker.client.post(f"{path}/reports", content=report,
                                   headers={**headers, **CBOR})
    assert response.status_code == 201, response.text
    for state in ("rebooting", "rolled-back"):
        tracker.client.post(f"{path}/events", json={"state": state},
                            headers=headers).raise_for_status()
    deploy(tracker, dev)
    history = tracker.client.get(f"{path}/history", headers=auth(ADMIN)).json()["history"]
    assert [h.get("state", "report") for h in history] == [
        "notified", "downloading", "downloaded", "installing", "report", "rebooting",
        "rolled-back", "notified"]
    assert [h["seq"] for h in history] == list(range(1, 9))
    assert history[1] == {**history[1], "previous": "notified", "detail": "now downloading"}
    assert history[4]["summary"]["failure"]["section_name"] == "install"
    assert history[4]["size"] == len(report)
    stamps = [h.get("timestamp") or h["received"] for h in history]
    assert stamps == sorted(stamps)
    doc = tracker.client.get(path, headers=headers).json()
    assert doc["state"] == "notified"
    assert tracker.client.get(f"{path}/history", headers=headers).json()["history"] == history


def test_the_raw_report_bytes_are_stored_as_received(tracker: Tracker) -> None:
    dev = tracker.register()
    deploy(tracker, dev, UNSIGNED_RELEASE, "downloading")
    report = encode_report(failing_report())
    tracker.client.post(f"/api/v1/devices/{dev['id']}/reports", content=report,
                        headers={**auth(dev["token"]),
                                 "Content-Type": "application/octet-stream"}
                        ).raise_for_status()
    (raw,) = tracker.query_one("SELECT raw FROM device_reports WHERE device_id = :id",
                               id=dev["id"])
    assert bytes(raw) == report


# ---------------------------------------------------------------------------- state machine


def test_impossible_transitions_are_refused_over_http(tracker: Tracker) -> None:
    dev = tracker.register()
    url, headers = f"/api/v1/devices/{dev['id']}/events", auth(dev["token"])
    deploy(tracker, dev, UNSIGNED_RELEASE, "downloading")
    for wanted in ("installing", "rolled-back", "downloading"):
        response = tracker.client.post(url, json={"state": wanted}, headers=headers)
        assert response.status_code == 409, wanted
        assert "from downloading a device may go to: downloaded, failed" in (
            response.json()["error"])
    states = [h["state"] for h in tracker.client.get(
        f"/api/v1/devices/{dev['id']}/history", headers=headers).json()["history"]]
    assert states == ["notified", "downloading"]


def test_a_device_with_nothing_assigned_cannot_report_success(tracker: Tracker) -> None:
    """Issue #11 item 10: a device that was given nothing cannot walk itself to succeeded
    (not even by claiming ``notified``, which only the tracker sets) nor store a success
    report for a release it was never given."""
    dev = tracker.register()
    url, headers = f"/api/v1/devices/{dev['id']}", auth(dev["token"])
    for state in ("notified", "downloading", "installing", "rebooting", "succeeded"):
        response = tracker.client.post(f"{url}/events", json={"state": state},
                                       headers=headers)
        assert response.status_code == 409, (state, response.text)
    assert "no update assigned" in response.json()["error"]
    claimed = tracker.client.post(f"{url}/events", json={"state": "notified"}, headers=headers)
    assert "the tracker sets it when it assigns a release" in claimed.json()["error"]
    success = Report(reference=Reference("https://example.com/fw.suit",
                                         Digest(-16, bytes.fromhex("11" * 32))))
    response = tracker.client.post(f"{url}/reports", content=encode_report(success),
                                   headers={**headers, **CBOR})
    assert response.status_code == 409, response.text
    assert "no update in progress" in response.json()["error"]
    doc = tracker.client.get(url, headers=auth(ADMIN)).json()
    assert doc["state"] is None
    assert tracker.client.get(f"{url}/history", headers=auth(ADMIN)).json()["history"] == []


def test_a_report_is_stored_only_for_the_assigned_release_and_once(tracker: Tracker) -> None:
    """A device working on release A cannot store a report about release B; the report of
    the update is stored once (a replay is refused), and not after the update ended."""
    dev = tracker.register()
    url, headers = f"/api/v1/devices/{dev['id']}", {**auth(dev["token"]), **CBOR}
    release = "11" * 32
    deploy(tracker, dev, release, "downloading", "downloaded", "installing")
    other = encode_report(failing_report())  # about manifest 00...00
    response = tracker.client.post(f"{url}/reports", content=other, headers=headers)
    assert response.status_code == 409, response.text
    assert response.json()["error"] == (
        f"the report is about manifest {UNSIGNED_RELEASE}; the device's current assignment is "
        f"release {release}")
    own = encode_report(Report(reference=Reference("u", Digest(-16, bytes.fromhex(release)))))
    assert tracker.client.post(f"{url}/reports", content=own,
                               headers=headers).status_code == 201
    replay = tracker.client.post(f"{url}/reports", content=own, headers=headers)
    assert replay.status_code == 409 and "one report per update" in replay.json()["error"]
    for state in ("rebooting", "succeeded"):
        tracker.client.post(f"{url}/events", json={"state": state},
                            headers=auth(dev["token"])).raise_for_status()
    late = tracker.client.post(f"{url}/reports", content=own, headers=headers)
    assert late.status_code == 409 and "no update in progress" in late.json()["error"]
    again = tracker.client.post(f"{url}/events", json={"state": "failed"},
                                headers=auth(dev["token"]))
    assert again.status_code == 409 and "no update assigned" in again.json()["error"]
    kinds = [h.get("state", "report") for h in tracker.client.get(
        f"{url}/history", headers=auth(ADMIN)).json()["history"]]
    assert kinds == ["notified", "downloading", "downloaded", "installing", "report",
                     "rebooting", "succeeded"]


def test_unknown_states_are_refused(tracker: Tracker) -> None:
    dev = tracker.register()
    for body in ({"state": "exploded"}, {"state": None}, {"detail": "x"},
                 {"state": "notified", "detail": 5}, {"state": "notified", "x": 1}):
        response = tracker.client.post(f"/api/v1/devices/{dev['id']}/events", json=body,
                                       headers=auth(dev["token"]))
        assert response.status_code == 400, body
    response = tracker.client.post(f"/api/v1/devices/{dev['id']}/events",
                                   json={"state": "exploded"}, headers=auth(dev["token"]))
    assert "expected one of notified, downloading" in response.json()["error"]
    history = tracker.client.get(f"/api/v1/devices/{dev['id']}/history",
                                 headers=auth(ADMIN)).json()["history"]
    assert history == []


# ---------------------------------------------------------------------------- reports


@pytest.mark.parametrize(("body", "path"), [
    (b"\xff\x00garbage", "report"),
    (b"\xa0", "report"),  # {}: no suit-reference
    (encode_report(failing_report())[:-3], "report"),
    (bytes.fromhex("a3"  # {99: ["u", [-16, h'00']], 3: [[]], 4: true}
                   "1863826175822f4100" "0381" "80" "04f5"), "report.records[0]"),
])
def test_garbage_reports_are_refused_with_the_decode_path(tracker: Tracker, body: bytes,
                                                          path: str) -> None:
    dev = tracker.register()
    response = tracker.client.post(f"/api/v1/devices/{dev['id']}/reports", content=body,
                                   headers={**auth(dev["token"]), **CBOR})
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith(f"the report is malformed: {path}")


def test_reports_need_a_cbor_media_type(tracker: Tracker) -> None:
    dev = tracker.register()
    response = tracker.client.post(f"/api/v1/devices/{dev['id']}/reports",
                                   content=encode_report(failing_report()),
                                   headers={**auth(dev["token"]),
                                            "Content-Type": "application/json"})
    assert response.status_code == 415


def test_a_report_from_the_device_processor_is_accepted_and_summarised(
        tracker: Tracker, tmp_path: Path) -> None:
    """A device refuses an envelope whose integrated payload was swapped (image digest
    mismatch); the SUIT report its processor produced goes to the tracker as is."""
    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "device", [author.anchor])
    image = image_bytes("app", 1000)
    envelope = author.envelope(1, [author.component("app.bin", image)],
                               payloads={"#app.bin": image_bytes("evil", 1000)})
    outcome = install(folder, envelope)
    assert not outcome.installed and outcome.report is not None
    assert outcome.report.result is not True
    raw = encode_report(outcome.report)

    dev = tracker.register("real-device")
    deploy(tracker, dev, outcome.report.reference.manifest_digest.value.hex(), "downloading",
           "downloaded", "installing")
    response = tracker.client.post(f"/api/v1/devices/{dev['id']}/reports", content=raw,
                                   headers={**auth(dev["token"]), **CBOR})
    assert response.status_code == 201, response.text
    summary = response.json()["summary"]
    assert summary["succeeded"] is False
    failure = summary["failure"]
    assert failure["reason"] == outcome.report.result.reason
    assert failure["reason_name"] == reason_name(outcome.report.result.reason) != "ok"
    assert failure["section"] == outcome.report.result.record.manifest_section
    assert failure["offset"] == outcome.report.result.record.section_offset
    assert failure["component_index"] == 0
    assert summary["manifest_digest"]["value"] == (
        outcome.report.reference.manifest_digest.value.hex())
    history = tracker.client.get(f"/api/v1/devices/{dev['id']}/history",
                                 headers=auth(ADMIN)).json()["history"]
    assert [h["summary"] for h in history if h["kind"] == "report"] == [summary]


# ---------------------------------------------------------------------------- authorization


def test_authorization_matrix(tracker: Tracker) -> None:
    """Every tracker endpoint with no token, a wrong token, the admin token, the device's own
    token and another device's token."""
    dev, other = tracker.register("dev"), tracker.register("other")
    deploy(tracker, dev)
    path = f"/api/v1/devices/{dev['id']}"
    report = encode_report(failing_report())
    endpoints: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/devices", {"json": {"name": "x"}}),
        ("GET", "/api/v1/devices", {}),
        ("GET", path, {}),
        ("PUT", f"{path}/inventory", {"json": inventory()}),
        ("POST", f"{path}/events", {"json": {"state": "downloading"}}),
        ("POST", f"{path}/reports", {"content": report, "headers": CBOR}),
        ("GET", f"{path}/history", {}),
    ]
    tokens = {"none": None, "wrong": f"{dev['id']}.not-the-secret", "garbage": "xyz",
              "admin": ADMIN, "own": dev["token"], "other": other["token"]}
    expected = {  # endpoint index -> status for each token
        0: {"admin": 201, "own": 403, "other": 403},
        1: {"admin": 200, "own": 403, "other": 403},
        2: {"admin": 200, "own": 200, "other": 403},
        3: {"admin": 403, "own": 200, "other": 403},
        4: {"admin": 403, "own": 201, "other": 403},
        5: {"admin": 403, "own": 201, "other": 403},
        6: {"admin": 200, "own": 200, "other": 403},
    }
    seen: dict[tuple[int, str], int] = {}
    for index, (method, url, kwargs) in enumerate(endpoints):
        for label, token in tokens.items():
            headers = {**kwargs.get("headers", {}), **auth(token)}
            extra = {k: v for k, v in kwargs.items() if k != "headers"}
            response = tracker.client.request(method, url, headers=headers, **extra)
            seen[index, label] = response.status_code
            assert "error" in response.json() or response.status_code < 400
            if response.status_code == 401:
                assert response.headers["WWW-Authenticate"] == "Bearer"
    want = {(i, label): expected[i].get(label, 401) for i in expected for label in tokens}
    assert seen == want
    # nothing the refused calls sent reached the records
    history = tracker.client.get(f"{path}/history", headers=auth(ADMIN)).json()["history"]
    assert [h["kind"] for h in history] == ["event", "event", "report"]


def test_the_admin_gets_404_for_an_unknown_device_and_a_device_gets_403(
        tracker: Tracker) -> None:
    dev = tracker.register()
    missing = "00000000-0000-4000-8000-000000000000"
    for suffix in ("", "/history"):
        url = f"/api/v1/devices/{missing}{suffix}"
        assert tracker.client.get(url, headers=auth(ADMIN)).status_code == 404
        assert tracker.client.get(url, headers=auth(dev["token"])).status_code == 403


def test_without_an_admin_token_the_admin_routes_are_closed(tmp_path: Path) -> None:
    router = create_router(TrackerConfig(f"sqlite:///{tmp_path / 't.db'}", admin_token=None))
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, routers=(router,))
    with running_server(config) as url:
        for token in (None, "None", "anything"):
            response = httpx.get(f"{url}/api/v1/devices", headers=auth(token), timeout=5)
            assert response.status_code == 401


def test_an_operator_resets_a_device_stuck_mid_update(tracker: Tracker) -> None:
    """A device that went silent after ``downloading`` holds its assignment; the admin (or an
    operator) ends that update as failed with the reason; the device's late report is refused
    and there is then nothing left to reset."""
    device = tracker.register("stuck")
    me = auth(device["token"])
    deployed = tracker.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
        "release": "ab" * 32, "envelope_url": "http://127.0.0.1:1/envelopes/x",
        "devices": [device["id"]]})
    assert deployed.status_code == 201, deployed.text
    url = f"/api/v1/devices/{device['id']}"
    assert tracker.client.post(f"{url}/events", headers=me,
                               json={"state": "downloading"}).status_code == 201
    assert tracker.client.get(f"{url}/update", headers=me).status_code == 200

    own = tracker.client.post(f"{url}/reset", headers=me, json={"reason": "self"})
    assert own.status_code == 403
    reset = tracker.client.post(f"{url}/reset", headers=auth(ADMIN),
                                json={"reason": "lost in the field"})
    assert reset.status_code == 201, reset.text
    assert reset.json()["state"] == "failed"
    assert reset.json()["detail"] == "reset by bootstrap-admin: lost in the field"

    assert tracker.client.get(f"{url}/update", headers=me).status_code == 204
    late = tracker.client.post(f"{url}/events", headers=me, json={"state": "downloaded"})
    assert late.status_code == 409
    for state in ("notified", "failed"):  # nor can it start over or end it by itself
        response = tracker.client.post(f"{url}/events", headers=me, json={"state": state})
        assert response.status_code == 409, (state, response.text)
    report = encode_report(Report(reference=Reference("u", Digest(-16, bytes.fromhex("ab" * 32)))))
    late_report = tracker.client.post(f"{url}/reports", content=report, headers={**me, **CBOR})
    assert late_report.status_code == 409, late_report.text
    again = tracker.client.post(f"{url}/reset", headers=auth(ADMIN), json={})
    assert again.status_code == 409 and "nothing to reset" in again.json()["error"]
    unknown = tracker.client.post("/api/v1/devices/nope/reset", headers=auth(ADMIN), json={})
    assert unknown.status_code == 404
    audit = tracker.client.get("/api/v1/audit", headers=auth(ADMIN)).json()
    entries = audit["entries"] if isinstance(audit, dict) else audit
    assert any(e["action"] == "device.reset" and e["target"] == device["id"] for e in entries)
