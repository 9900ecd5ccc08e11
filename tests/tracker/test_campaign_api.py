"""Campaigns over real HTTP: uvicorn on 127.0.0.1 (``running_server``), SQLite in a temp
directory, the campaign ticker running in the server (every second), operator and author API
tokens, real device agents (mcu shape) for the end-to-end rollout.

What each test shows: four-eyes approval and the audit log; one-line 4xx errors for bad bodies,
wrong roles and wrong statuses; a tagged rollout in two waves installed by real agents, the
second wave opening only after the first succeeded; the failure threshold pausing a campaign
by itself while devices hold back (204) until an operator resumes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

ADMIN = "admin-token-for-campaign-tests"
UPLOAD = "upload-token-for-campaign-tests"
RELEASE = "ab" * 32


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


@dataclass
class World:
    url: str
    client: httpx.Client
    author: Author
    tmp: Path
    tokens: dict[str, str]

    def token(self, name: str, role: str) -> str:
        if name not in self.tokens:
            made = self.client.post("/api/v1/tokens", headers=auth(ADMIN),
                                    json={"name": name, "role": role})
            assert made.status_code == 201, made.text
            self.tokens[name] = made.json()["token"]
        return self.tokens[name]

    def register(self, tags: list[str] | None = None) -> dict[str, Any]:
        made = self.client.post("/api/v1/devices", json={"name": "d"}, headers=auth(ADMIN))
        assert made.status_code == 201, made.text
        doc = dict(made.json())
        if tags is not None:
            put = self.client.put(f"/api/v1/devices/{doc['id']}/tags", json={"tags": tags},
                                  headers=auth(self.token("alice", "operator")))
            assert put.status_code == 200 and put.json()["tags"] == tags, put.text
        return doc

    def post(self, path: str, who: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.post(f"/api/v1/campaigns{path}", json=body,
                                headers=auth(self.tokens.get(who, who)))

    def campaign(self, campaign_id: str, who: str = "alice") -> dict[str, Any]:
        got = self.client.get(f"/api/v1/campaigns/{campaign_id}?limit=1000",
                              headers=auth(self.tokens[who]))
        assert got.status_code == 200, got.text
        return dict(got.json())

    def until(self, campaign_id: str, check: Callable[[dict[str, Any]], bool],
              timeout: float = 15.0) -> dict[str, Any]:
        """The campaign once ``check`` holds (the server's ticker runs every second)."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.campaign(campaign_id)
            if check(doc):
                return doc
            assert time.monotonic() < deadline, f"campaign never got there: {doc}"
            time.sleep(0.1)

    def started(self, body: dict[str, Any]) -> dict[str, Any]:
        made = self.post("", "alice", body)
        assert made.status_code == 201, made.text
        cid = made.json()["id"]
        assert self.post(f"/{cid}/approve", "bob").status_code == 200
        started = self.post(f"/{cid}/start", "bob")
        assert started.status_code == 200, started.text
        return dict(started.json())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("campaigns")
    author = Author.create(tmp / "author")
    router = create_router(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", ADMIN))
    config = ServerConfig(data_dir=tmp / "data", upload_token=UPLOAD, routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        w = World(url, client, author, tmp, {})
        w.token("alice", "operator")
        w.token("bob", "operator")
        w.token("ann", "author")
        yield w


def body(tag: str, **kw: Any) -> dict[str, Any]:
    return {"name": f"rollout {tag}", "release": RELEASE,
            "envelope_url": "http://127.0.0.1:9/e.suit", "target": {"tags": [tag]}, **kw}


# ---------------------------------------------------------------------------- operators


def test_four_eyes_approval_roles_and_the_audit_log(world: World) -> None:
    world.register(["four-eyes"])
    assert world.post("", "ann", body("four-eyes")).status_code == 403  # authors cannot
    assert world.post("", None, body("four-eyes")).status_code == 401  # type: ignore[arg-type]
    made = world.post("", "alice", body("four-eyes"))
    assert made.status_code == 201, made.text
    doc = made.json()
    assert (doc["status"], doc["created_by"], doc["waves"]) == ("draft", "alice", [100.0])
    cid = doc["id"]
    own = world.post(f"/{cid}/approve", "alice")
    assert own.status_code == 403
    assert own.json()["error"] == ("alice created this campaign and cannot approve it; "
                                   "another operator must (four-eyes)")
    assert world.post(f"/{cid}/approve", "ann").status_code == 403
    early = world.post(f"/{cid}/start", "bob")
    assert early.status_code == 409 and "must be approved" in early.json()["error"]
    approved = world.post(f"/{cid}/approve", "bob")
    assert approved.status_code == 200 and approved.json()["approved_by"] == "bob"
    wrong = world.post(f"/{cid}/pause", "bob")
    assert wrong.status_code == 409
    assert wrong.json()["error"] == ("campaign is approved; only running campaigns can be "
                                     "paused")
    assert world.post(f"/{cid}/start", "alice").json()["status"] == "running"
    assert world.post(f"/{cid}/cancel", "alice").json()["status"] == "cancelled"
    entries = world.client.get("/api/v1/audit", headers=auth(ADMIN)).json()["entries"]
    mine = [(e["actor"], e["action"]) for e in reversed(entries)
            if e["target"] == f"campaign {cid}"]
    assert mine == [("alice", "campaign.create"), ("bob", "campaign.approve"),
                    ("alice", "campaign.start"), ("alice", "campaign.cancel")]
    listed = world.client.get("/api/v1/campaigns", headers=auth(world.tokens["ann"]))
    assert cid in [c["id"] for c in listed.json()["campaigns"]]  # authors may read


def test_bad_requests_get_one_line_errors(world: World) -> None:
    cases = [
        (body("x", waves=[50, 10, 100]), "waves: expected increasing percentages"),
        (body("x", mode="now"), "mode: expected one of download-only, install-now"),
        (body("x", target={}), "target: give at least one of vendor_id, class_id, tags"),
        (body("x", target={"vendor_id": "nope"}), "target.vendor_id: expected a UUID"),
        (body("x", start_after="tomorrow"), "start_after: expected an ISO 8601 time"),
        (body("x", start_after="2026-03-02T22:00:00"), "give the time zone"),
        (body("x", window="22:00"), "window: expected 'HH:MM-HH:MM'"),
        (body("x", failure_threshold="high"), "failure_threshold: expected a number"),
        (body("x", colour="red"), "campaign: unknown member 'colour'"),
        (body("x", target={"devices": ["missing"]}), "target.devices: no device 'missing'"),
        ({**body("x"), "release": "zz"}, "release: expected hexadecimal bytes"),
    ]
    for doc, message in cases:
        refused = world.post("", "alice", doc)
        assert refused.status_code == 400, (doc, refused.text)
        assert message in refused.json()["error"] and "\n" not in refused.json()["error"]
    unknown = world.post("/nope/start", "alice")
    assert unknown.status_code == 404 and unknown.json()["error"] == "no campaign 'nope'"
    tags = world.client.put(f"/api/v1/devices/{world.register()['id']}/tags",
                            json={"tags": ["bad tag"]}, headers=auth(world.tokens["alice"]))
    assert tags.status_code == 400 and "'bad tag' is not a tag" in tags.json()["error"]


# ---------------------------------------------------------------------------- rollouts


def test_a_failed_device_pauses_the_campaign_and_the_others_wait(world: World) -> None:
    devices = [world.register(["threshold"]) for _ in range(4)]
    doc = world.started(body("threshold", failure_threshold=0.2))
    cid = doc["id"]
    first, rest = devices[0], devices[1:]
    for state, detail in (("downloading", ""), ("failed", "digest mismatch")):
        sent = world.client.post(f"/api/v1/devices/{first['id']}/events",
                                 headers=auth(first["token"]),
                                 json={"state": state, "detail": detail})
        assert sent.status_code == 201, sent.text
    doc = world.until(cid, lambda d: d["status"] == "paused")
    assert doc["pause_reason"] == ("failure threshold crossed: 1 of 1 finished devices "
                                   "failed (100% > 20%)")
    for dev in rest:
        held = world.client.get(f"/api/v1/devices/{dev['id']}/update",
                                headers=auth(dev["token"]))
        assert held.status_code == 204
    resumed = world.post(f"/{cid}/resume", "bob")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    given = world.client.get(f"/api/v1/devices/{rest[0]['id']}/update",
                             headers=auth(rest[0]["token"]))
    assert given.status_code == 200
    assert given.json() == {"release": RELEASE, "envelope_url": "http://127.0.0.1:9/e.suit",
                            "action": "install", "campaign": cid,
                            "nonce": given.json()["nonce"]}
    paused = world.post(f"/{cid}/pause", "alice", {"reason": "checking"})
    assert paused.json()["pause_reason"] == "paused by alice: checking"


def test_real_agents_install_a_campaign_wave_by_wave(world: World) -> None:
    image = image_bytes("app-2-", 2000)
    uri = f"{world.url}/firmware/{hashlib.sha256(image).hexdigest()}"
    envelope, _ = world.author.release(2, uri=uri)
    uploaded = world.client.post("/api/v1/releases", headers=auth(UPLOAD), files=[
        ("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
        ("image", ("app.bin", image, "application/octet-stream"))])
    assert uploaded.status_code == 201, uploaded.text
    release = uploaded.json()
    folders: dict[str, tuple[Path, str]] = {}
    for i in range(2):
        folder = new_device(world.tmp / f"agent-{i}", [world.author.anchor])
        base, _ = world.author.release(1, "base")
        assert install(folder, base).installed
        boot(folder)
        confirm(folder)
        dev = world.register(["agents"])
        folders[dev["id"]] = (folder, dev["token"])
    doc = world.started({"name": "agents", "release": release["id"],
                         "envelope_url": world.url + release["envelope"]["url"],
                         "target": {"tags": ["agents"]}, "waves": [50, 100]})
    cid = doc["id"]
    (first,) = [m["device_id"] for m in world.campaign(cid)["members"]
                if m["state"] == "notified"]
    (second,) = [d for d in folders if d != first]
    idle = run_once(folders[second][0], world.url, folders[second][1], fetcher=HttpFetcher())
    assert idle.outcome == "up-to-date"  # the second wave is not open yet
    done = run_once(folders[first][0], world.url, folders[first][1], fetcher=HttpFetcher())
    assert done.outcome == "succeeded", done.steps
    doc = world.until(cid, lambda d: d["current_wave"] == 2)
    assert doc["log"][-1]["detail"].startswith("wave 2 of 2 opened (100%) after 1 of 1")
    done = run_once(folders[second][0], world.url, folders[second][1], fetcher=HttpFetcher())
    assert done.outcome == "succeeded", done.steps
    doc = world.until(cid, lambda d: d["status"] == "completed")
    assert doc["counts"] == {"succeeded": 2}
    times = doc["members"][0]["times"]
    assert list(times) == ["notified", "downloading", "downloaded", "installing", "rebooting",
                           "succeeded"]


def test_retry_preview_progress_and_the_fleet_over_http(world: World) -> None:
    devices = [world.register(["retry-api"]) for _ in range(3)]
    preview = world.post("/preview", "alice", {"target": {"tags": ["retry-api"]},
                                              "waves": [34, 100]})
    assert preview.status_code == 200, preview.text
    assert preview.json() == {"devices": 3, "waves": [2, 1]}
    bad = world.post("/preview", "alice", {"target": {}})
    assert bad.status_code == 400 and "target: give at least one" in bad.json()["error"]
    assert world.post("/preview", "ann", {"target": {"tags": ["x"]}}).status_code == 403
    cid = world.started(body("retry-api", failure_threshold=0.2))["id"]
    early = world.post(f"/{cid}/retry", "bob")
    assert early.status_code == 409 and "no failed devices" in early.json()["error"]
    first = devices[0]
    for state in ("downloading", "failed"):
        world.client.post(f"/api/v1/devices/{first['id']}/events", headers=auth(first["token"]),
                          json={"state": state}).raise_for_status()
    world.until(cid, lambda d: d["status"] == "paused")
    retried = world.post(f"/{cid}/retry", "bob")
    assert retried.status_code == 200, retried.text
    assert retried.json()["counts"].get("pending") == 1
    assert world.post(f"/{cid}/resume", "bob").status_code == 200
    again = world.client.get(f"/api/v1/devices/{first['id']}/update",
                             headers=auth(first["token"]))
    assert again.status_code == 200 and again.json()["campaign"] == cid
    entries = world.client.get("/api/v1/audit", headers=auth(ADMIN)).json()["entries"]
    assert ("bob", "campaign.retry") in [(e["actor"], e["action"]) for e in entries
                                         if e["target"] == f"campaign {cid}"]
    progress = world.client.get(f"/api/v1/campaigns/{cid}/progress?points=10",
                                headers=auth(world.tokens["ann"]))
    assert progress.status_code == 200 and len(progress.json()["series"]) == 11
    assert progress.json()["devices"] == 3
    assert world.client.get(f"/api/v1/campaigns/{cid}/progress?points=0",
                            headers=auth(ADMIN)).status_code == 400
    fleet = world.client.get("/api/v1/fleet", headers=auth(world.tokens["alice"]))
    assert fleet.status_code == 200 and fleet.json()["tags"]["retry-api"] == 3
    assert world.client.get("/api/v1/fleet", headers=auth(world.tokens["ann"])).status_code == 403
