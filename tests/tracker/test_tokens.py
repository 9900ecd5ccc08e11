"""API tokens over real HTTP (issue #6): created by an admin with a role and an expiry, shown
once, stored as a hash, listed without secrets, expired by the configured clock, revoked; the
audit log records who created, revoked, registered and deployed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from suitkit.core import crypto
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

BOOTSTRAP = "bootstrap-admin-token-for-token-tests"
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Tracker:
    client: httpx.Client
    db_file: Path
    clock: Clock

    def create(self, name: str, role: str, token: str = BOOTSTRAP, **extra: Any
               ) -> httpx.Response:
        return self.client.post("/api/v1/tokens", json={"name": name, "role": role, **extra},
                                headers=bearer(token))

    def token(self, name: str, role: str, **extra: Any) -> dict[str, Any]:
        response = self.create(name, role, **extra)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def whoami(self, token: str) -> httpx.Response:
        return self.client.get("/api/v1/whoami", headers=bearer(token))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    clock = Clock()
    db_file = tmp_path / "tracker.db"
    router = create_router(TrackerConfig(f"sqlite:///{db_file}", BOOTSTRAP, clock=clock))
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, routers=(router,))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield Tracker(client, db_file, clock)


def test_a_token_is_shown_once_stored_as_a_hash_and_listed_without_secrets(
        tracker: Tracker) -> None:
    created = tracker.token("ci-author", "author")
    assert created["role"] == "author" and created["name"] == "ci-author"
    assert created["token"].startswith(f"tok_{created['id']}.")
    secret = created["token"].partition(".")[2]
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert created["expires"] == (START + timedelta(days=90)).isoformat()
    assert created["created_by"] == "bootstrap-admin"
    me = tracker.whoami(created["token"]).json()
    assert me == {"role": "author", "name": "ci-author", "token_id": created["id"],
                  "device_id": None}
    listed = tracker.client.get("/api/v1/tokens", headers=bearer(BOOTSTRAP)).json()["tokens"]
    (row,) = [t for t in listed if t["id"] == created["id"]]
    assert "token" not in row and "secret_hash" not in row and row["last_used"] is not None
    assert secret not in str(listed)
    with sqlite3.connect(tracker.db_file) as conn:
        (stored,) = conn.execute("SELECT secret_hash FROM api_tokens WHERE id = ?",
                                 (created["id"],)).fetchone()
    assert stored.startswith("sha256$") and secret not in stored
    raw = b"".join(p.read_bytes() for p in tracker.db_file.parent.glob("tracker.db*"))
    assert secret.encode() not in raw


def test_a_wrong_secret_or_an_unknown_id_is_not_a_credential(tracker: Tracker) -> None:
    created = tracker.token("op", "operator")
    token_id = created["id"]
    for token in (f"tok_{token_id}.{'A' * 43}", f"tok_{'0' * 16}.{'A' * 43}", f"tok_{token_id}",
                  "tok_", f"tok_{token_id}.{created['token'].partition('.')[2]}x"):
        response = tracker.whoami(token)
        assert response.status_code == 401, token
        assert response.json()["error"] == "the credential is not valid"
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_tokens_expire_by_the_configured_clock(tracker: Tracker) -> None:
    default = tracker.token("ninety", "operator")
    short = tracker.token("one", "operator", expires_in_days=1)
    longest = tracker.token("year", "operator", expires_in_days=366)
    tracker.clock.now = START + timedelta(days=1)
    response = tracker.whoami(short["token"])
    assert response.status_code == 401
    assert response.json()["error"] == f"the token tok_{short['id']} has expired"
    assert tracker.whoami(default["token"]).status_code == 200
    tracker.clock.now = START + timedelta(days=90)
    assert tracker.whoami(default["token"]).status_code == 401
    assert tracker.whoami(longest["token"]).status_code == 200
    tracker.clock.now = START + timedelta(days=366)
    assert tracker.whoami(longest["token"]).status_code == 401


@pytest.mark.parametrize(("body", "fragment"), [
    ({"name": "x", "role": "device"}, "role: expected one of admin, author, operator"),
    ({"name": "x", "role": "root"}, "role: expected"),
    ({"name": "", "role": "author"}, "name: expected a non-empty name"),
    ({"role": "author"}, "name: expected a string"),
    ({"name": "x", "role": "author", "expires_in_days": 0}, "expires_in_days"),
    ({"name": "x", "role": "author", "expires_in_days": 367}, "from 1 to 366"),
    ({"name": "x", "role": "author", "expires_in_days": True}, "expires_in_days"),
    ({"name": "x", "role": "author", "expires_in_days": 1.5}, "expires_in_days"),
    ({"name": "x", "role": "author", "secret": "mine"}, "unknown member 'secret'"),
])
def test_token_requests_are_checked(tracker: Tracker, body: dict[str, Any],
                                    fragment: str) -> None:
    response = tracker.client.post("/api/v1/tokens", json=body, headers=bearer(BOOTSTRAP))
    assert response.status_code == 400 and fragment in response.json()["error"]


def test_revoked_tokens_are_refused_and_only_an_admin_revokes(tracker: Tracker) -> None:
    admin = tracker.token("second-admin", "admin")
    victim = tracker.token("ci", "author")
    operator = tracker.token("op", "operator")
    url = f"/api/v1/tokens/{victim['id']}"
    assert tracker.client.delete(url, headers=bearer(operator["token"])).status_code == 403
    assert tracker.client.delete(url, headers=bearer(victim["token"])).status_code == 403
    assert tracker.whoami(victim["token"]).status_code == 200
    assert tracker.client.delete(url, headers=bearer(admin["token"])).status_code == 204
    response = tracker.whoami(victim["token"])
    assert response.status_code == 401
    assert response.json()["error"] == f"the token tok_{victim['id']} has been revoked"
    listed = tracker.client.get("/api/v1/tokens", headers=bearer(BOOTSTRAP)).json()["tokens"]
    assert [t["revoked"] for t in listed if t["id"] == victim["id"]] == [START.isoformat()]
    # revoking again is harmless; an unknown token is 404; tok_ prefixes are accepted
    assert tracker.client.delete(f"/api/v1/tokens/tok_{victim['id']}",
                                 headers=bearer(BOOTSTRAP)).status_code == 204
    missing = tracker.client.delete("/api/v1/tokens/0000000000000000",
                                    headers=bearer(BOOTSTRAP))
    assert missing.status_code == 404 and "no token" in missing.json()["error"]
    # an admin API token can make tokens too, and is named as their creator
    made = tracker.token("by-second", "operator", token=admin["token"])
    assert made["created_by"] == "second-admin"
    # a token of another role cannot
    assert tracker.create("nope", "admin", token=operator["token"]).status_code == 403


def test_the_audit_log_records_who_did_what(tracker: Tracker) -> None:
    admin = tracker.token("alice", "admin")
    operator = tracker.token("bob", "operator")
    author = tracker.token("carol", "author")
    device = tracker.client.post("/api/v1/devices", json={"name": "d1"},
                                 headers=bearer(admin["token"])).json()
    deployed = tracker.client.post("/api/v1/deployments", headers=bearer(operator["token"]),
                                   json={"release": "ab" * 32,
                                         "envelope_url": "https://fw.example/e.suit",
                                         "devices": [device["id"]]})
    assert deployed.status_code == 201, deployed.text
    assert tracker.client.delete(f"/api/v1/tokens/{author['id']}",
                                 headers=bearer(admin["token"])).status_code == 204
    refused = tracker.client.post("/api/v1/deployments", headers=bearer(author["token"]),
                                  json={})
    assert refused.status_code == 401  # revoked: refused before anything else
    assert tracker.client.get("/api/v1/audit", headers=bearer(author["token"])
                              ).status_code == 401
    entries = tracker.client.get("/api/v1/audit", headers=bearer(operator["token"])
                                 ).json()["entries"]
    seen = [(e["actor"], e["role"], e["action"], e["target"]) for e in entries]
    assert seen == [
        ("alice", "admin", "token.revoke", author["id"]),
        ("bob", "operator", "deployment.create", f"release {'ab' * 32}"),
        ("alice", "admin", "device.register", device["id"]),
        ("bootstrap-admin", "admin", "token.create", author["id"]),
        ("bootstrap-admin", "admin", "token.create", operator["id"]),
        ("bootstrap-admin", "admin", "token.create", admin["id"]),
    ]
    assert device["id"] in entries[1]["detail"] and "role author" in entries[3]["detail"]
    assert all(e["timestamp"] == START.isoformat() for e in entries)
    limited = tracker.client.get("/api/v1/audit", params={"limit": 2},
                                 headers=bearer(BOOTSTRAP)).json()["entries"]
    assert [e["action"] for e in limited] == ["token.revoke", "deployment.create"]
    assert tracker.client.get("/api/v1/audit", params={"limit": 0},
                              headers=bearer(BOOTSTRAP)).status_code == 400


def test_whoami_for_the_bootstrap_admin_and_a_device(tracker: Tracker) -> None:
    assert tracker.whoami(BOOTSTRAP).json() == {"role": "admin", "name": "bootstrap-admin",
                                                "token_id": None, "device_id": None}
    device = tracker.client.post("/api/v1/devices", json={"name": "d"},
                                 headers=bearer(BOOTSTRAP)).json()
    assert tracker.whoami(device["token"]).json() == {
        "role": "device", "name": device["id"], "token_id": None, "device_id": device["id"]}
