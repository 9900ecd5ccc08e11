"""Every route of the combined application (firmware server + status tracker, as ``suitkit
serve --admin-token-file`` wires them) with every kind of caller, over real uvicorn.

The routes are read from ``app.routes`` (method and path as the application has them), not
from a hand list: a route that is not in ``EXPECTED`` or ``PUBLIC`` fails the test. When you
add a route, add it to ``EXPECTED`` (who may call it, and how to call it so that it succeeds)
or, for a deliberately public route, to ``PUBLIC``.

Callers: no token, a garbage token, an expired and a revoked API token (401 for all four);
the bootstrap admin token; API tokens with the roles admin, author and operator; device A on
its own id; device B on device A's id (403 like every other caller outside the route's roles).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from device.device_kit import VENDOR, Author
from suitkit.cli.notices import release_artifacts, tracker_routes
from suitkit.core.model import Digest
from suitkit.core.report import Record, Reference, Report, ResultFailure, encode_report
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig, create_app
from suitkit.server.background import running_server
from suitkit.tracker.config import DdiOptions, TrackerConfig
from suitkit.tracker.edges.http_api import REPORT_MEDIA_TYPE
from suitkit.tracker.service import open_db

BOOTSTRAP = "bootstrap-admin-token-for-authz-tests"
CALLERS = ("none", "garbage", "expired", "revoked", "bootstrap", "admin", "author", "operator",
           "device", "other_device")
UNAUTHENTICATED = frozenset({"none", "garbage", "expired", "revoked"})
STAFF = frozenset({"bootstrap", "admin"})  # the admin role, two ways


@dataclass
class World:
    """What the requests need: ids to put in paths and bodies, tokens by caller."""

    url: str
    client: httpx.Client
    tokens: dict[str, str | None]
    device_a: str
    device_b: str
    release: dict[str, Any]
    envelope: bytes
    image: bytes
    fresh_token: Callable[[], str]
    values: dict[str, str] = field(default_factory=dict)


Call = Callable[[World], dict[str, Any]]
"""``World -> httpx request keyword arguments`` (json, content, files, params, headers)."""


def nothing(world: World) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Rule:
    """Who may call a route (caller labels; "admin" includes the bootstrap token) and how."""

    allowed: frozenset[str]
    call: Call = nothing
    ok: frozenset[int] = frozenset({200, 201, 204})


def roles(*names: str) -> frozenset[str]:
    labels = set(names)
    if "admin" in labels:
        labels |= STAFF
    return frozenset(labels)


def report_body(world: World) -> dict[str, Any]:
    record = Record(manifest_id=(), manifest_section=20, section_offset=7, component_index=0)
    report = Report(reference=Reference("https://example.com/fw.suit", Digest(-16, bytes(32))),
                    records=(record,), result=ResultFailure(code=1, record=record, reason=1))
    return {"content": encode_report(report), "headers": {"Content-Type": REPORT_MEDIA_TYPE}}


def upload_body(world: World) -> dict[str, Any]:
    return {"files": [("envelope", ("e.suit", world.envelope, "application/suit-envelope+cose")),
                      ("image", ("app.bin", world.image, "application/octet-stream"))]}


def deployment_body(world: World) -> dict[str, Any]:
    return {"json": {"release": world.release["id"],
                     "envelope_url": world.url + world.release["envelope"]["url"],
                     "devices": [world.device_a]}}


def revoke_target(world: World) -> dict[str, Any]:
    world.values["token_id"] = world.fresh_token()
    return {}


def ddi_action(world: World) -> dict[str, Any]:
    """Device A's current DDI action id in ``values["action"]`` (its base poll; the walk
    redeploys it on the way), and a DDI feedback that changes no state."""
    poll = world.client.get(f"/DEFAULT/controller/v1/{world.device_a}",
                            headers=bearer(world.tokens["device"]))
    href = poll.json()["_links"].get("deploymentBase", {}).get("href", "/1")
    world.values["action"] = href.rsplit("/", 1)[1].split("?")[0]
    return {"json": {"id": world.values["action"],
                     "status": {"execution": "scheduled", "result": {"finished": "none"}}}}


DEVICE = "/api/v1/devices/{device_id}"
CAMPAIGN = "/api/v1/campaigns/{campaign_id}"
DDI = "/{tenant}/controller/v1/{controller_id}"
# (method, path as the application declares it) -> Rule. EXTEND THIS TABLE when you add a route
# (the test fails for any route of the application missing here). Path parameters are filled
# from World.values: device_id (device A), token_id, release_id, digest, campaign_id.
EXPECTED: dict[tuple[str, str], Rule] = {
    # firmware server
    ("POST", "/api/v1/releases"): Rule(roles("admin", "author"), upload_body),
    ("GET", "/api/v1/releases"): Rule(roles("admin", "author", "operator")),
    ("GET", "/api/v1/releases/{release_id}"): Rule(roles("admin", "author", "operator")),
    # status tracker: devices
    ("POST", "/api/v1/devices"): Rule(roles("admin"), lambda w: {"json": {"name": "x"}}),
    ("GET", "/api/v1/devices"): Rule(roles("admin", "operator")),
    ("GET", DEVICE): Rule(roles("admin", "operator", "device")),
    ("GET", f"{DEVICE}/history"): Rule(roles("admin", "operator", "device")),
    ("PUT", f"{DEVICE}/inventory"): Rule(roles("device"), lambda w: {"json": {
        "vendor_id": str(VENDOR), "components": [{"id": ["00"], "sequence": 1}]}}),
    # a device's states and reports: 409 unless they are about its current assignment
    ("POST", f"{DEVICE}/events"): Rule(roles("device"),
                                       lambda w: {"json": {"state": "failed"}},
                                       frozenset({201, 409})),
    ("POST", f"{DEVICE}/reports"): Rule(roles("device"), report_body, frozenset({201, 409})),
    ("GET", f"{DEVICE}/update"): Rule(roles("device")),
    # what the device supports (404 until it sent a capability report): authors read it too
    ("GET", f"{DEVICE}/capabilities"): Rule(roles("admin", "operator", "author", "device"),
                                            ok=frozenset({200, 404})),
    ("PUT", f"{DEVICE}/report-key"): Rule(roles("admin"),
                                          lambda w: {"json": {"report_key": None}}),
    # health after an update (merged from main without an entry here): the device says it,
    # staff read it; 409 for a release the device has not confirmed
    ("POST", f"{DEVICE}/health"): Rule(roles("device"), lambda w: {"json": {
        "release": "00" * 32, "status": "healthy"}}, frozenset({200, 409})),
    ("GET", f"{DEVICE}/health"): Rule(roles("admin", "operator", "device")),
    ("POST", f"{DEVICE}/checkin"): Rule(roles("device"), lambda w: {"json": {
        "inventory_digest": "ab" * 32}}),
    ("POST", f"{DEVICE}/reset"): Rule(roles("admin", "operator"),
                                      lambda w: {"json": {"reason": "walked"}},
                                      frozenset({201, 409})),
    ("GET", f"{DEVICE}/notifications"): Rule(roles("device"),
                                             lambda w: {"params": {"wait": "0"}}),
    ("POST", "/api/v1/deployments"): Rule(roles("admin", "operator"), deployment_body),
    # tokens, whoami, audit
    ("POST", "/api/v1/tokens"): Rule(roles("admin"), lambda w: {"json": {
        "name": "walked", "role": "author", "expires_in_days": 1}}),
    ("GET", "/api/v1/tokens"): Rule(roles("admin")),
    ("DELETE", "/api/v1/tokens/{token_id}"): Rule(roles("admin"), revoke_target),
    ("GET", "/api/v1/whoami"): Rule(roles("admin", "author", "operator", "device",
                                          "other_device")),
    ("GET", "/api/v1/audit"): Rule(roles("admin", "operator")),
    # the class registry (issue #17; tests/tracker/test_names.py has its behaviour)
    ("GET", "/api/v1/classes"): Rule(roles("admin", "operator", "author")),
    ("PUT", "/api/v1/classes/{class_id}"): Rule(roles("admin", "operator"), lambda w: {
        "json": {"class_name": "walked", "vendor_id": str(VENDOR)}}),
    # campaigns (tests/tracker/test_campaign_api.py has their behaviour; here: who may call.
    # An unknown campaign id: 404 once the caller is through the role check)
    ("POST", "/api/v1/campaigns"): Rule(roles("admin", "operator"), lambda w: {"json": {
        "name": "walked", "release": w.release["id"],
        "envelope_url": w.url + w.release["envelope"]["url"],
        "target": {"devices": [w.device_a]}}}),
    ("GET", "/api/v1/campaigns"): Rule(roles("admin", "operator", "author")),
    ("GET", CAMPAIGN): Rule(roles("admin", "operator", "author"), ok=frozenset({404})),
    ("GET", f"{CAMPAIGN}/members"): Rule(roles("admin", "operator", "author"),
                                         ok=frozenset({404})),
    **{("POST", f"{CAMPAIGN}/{action}"): Rule(roles("admin", "operator"), ok=frozenset({404}))
       for action in ("approve", "start", "pause", "resume", "cancel", "trigger", "retry")},
    ("POST", "/api/v1/campaigns/preview"): Rule(roles("admin", "operator"), lambda w: {
        "json": {"target": {"tags": ["walked"]}}}),
    ("GET", f"{CAMPAIGN}/progress"): Rule(roles("admin", "operator", "author"),
                                          ok=frozenset({404})),
    ("GET", "/api/v1/fleet"): Rule(roles("admin", "operator")),
    ("PUT", f"{DEVICE}/tags"): Rule(roles("admin", "operator"),
                                    lambda w: {"json": {"tags": ["walked"]}}),
    # hawkBit DDI (tests/tracker/test_ddi.py has their behaviour): the controller alone, with
    # its device credential (as a bearer token here; TargetToken in the DDI tests)
    ("GET", DDI): Rule(roles("device")),
    ("GET", f"{DDI}/deploymentBase/{{action}}"): Rule(roles("device"), ddi_action,
                                                      frozenset({200, 404})),
    ("POST", f"{DDI}/deploymentBase/{{action}}/feedback"): Rule(roles("device"), ddi_action,
                                                                frozenset({200, 409})),
    ("GET", f"{DDI}/installedBase/{{action}}"): Rule(roles("device"), ddi_action,
                                                     frozenset({200, 404})),
    ("GET", f"{DDI}/cancelAction/{{action}}"): Rule(roles("device"), ddi_action,
                                                    frozenset({404})),
    ("POST", f"{DDI}/cancelAction/{{action}}/feedback"): Rule(roles("device"), ddi_action,
                                                              frozenset({409})),
    ("PUT", f"{DDI}/configData"): Rule(roles("device"),
                                       lambda w: {"json": {"data": {"walked": "yes"}}}),
    ("GET", f"{DDI}/softwaremodules/{{action}}/artifacts/{{filename}}"): Rule(
        roles("device"), ddi_action, frozenset({200, 404})),
}

# the device API (issue #17): the routes a device calls, under their own prefix, for the same
# callers as their deprecated twins under /api/v1/devices (which keep answering)
DEVICE_API = "/device/v1/{device_id}"
EXPECTED.update({(method, DEVICE_API + suffix): EXPECTED[(method, DEVICE + suffix)]
                 for method, suffix in (("POST", "/checkin"), ("GET", "/update"),
                                        ("PUT", "/inventory"), ("POST", "/events"),
                                        ("POST", "/reports"), ("POST", "/health"),
                                        ("GET", "/notifications"))})

# Deliberately public: content-addressed immutable downloads (the device verifies everything
# it fetches; CDN-cacheable) and the API's own documentation.
PUBLIC: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/firmware/{digest}"), ("HEAD", "/firmware/{digest}"),
    ("GET", "/envelopes/{digest}"), ("HEAD", "/envelopes/{digest}"),
    ("GET", "/openapi.json"), ("HEAD", "/openapi.json"),
    ("GET", "/docs"), ("HEAD", "/docs"),
    ("GET", "/redoc"), ("HEAD", "/redoc"),
})


def app_routes(config: ServerConfig) -> list[tuple[str, str]]:
    """(method, path) of every route of the application ``config`` builds."""
    found = []
    # FastAPI keeps included routers whole in app.routes; iter_route_contexts flattens them
    for context in iter_route_contexts(create_app(config).routes):
        assert context.path is not None, f"a route without a path: {context!r}"
        for method in sorted(context.methods or ()):
            found.append((method, context.path))
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ServerConfig]]:
    tmp = tmp_path_factory.mktemp("authz")
    author = Author.create(tmp / "author")
    url = f"sqlite:///{tmp / 'tracker.db'}"
    tracker = TrackerConfig(url, BOOTSTRAP, artifacts=release_artifacts(tmp / "data"))
    wiring = tracker_routes(tracker, ddi=DdiOptions())
    config = ServerConfig(data_dir=tmp / "data", anchors=TrustAnchors.of(author.key.public_key()),
                          routers=wiring.routers, authorizer=wiring.authorizer)
    db = open_db(url)  # a second handle on the same database, to make the test tokens
    now = datetime.now(UTC)
    tokens: dict[str, str | None] = {"none": None, "garbage": "garbage", "bootstrap": BOOTSTRAP}
    for role in ("admin", "author", "operator"):
        token_id, secret = db.create_token(f"{role}-token", role, now + timedelta(days=1), "t")
        tokens[role] = f"tok_{token_id}.{secret}"
    token_id, secret = db.create_token("old", "admin", now - timedelta(seconds=1), "t")
    tokens["expired"] = f"tok_{token_id}.{secret}"
    token_id, secret = db.create_token("gone", "admin", now + timedelta(days=1), "t")
    assert db.revoke_token(token_id)
    tokens["revoked"] = f"tok_{token_id}.{secret}"
    device_a, secret_a = db.register("a")
    device_b, secret_b = db.register("b")
    tokens["device"], tokens["other_device"] = f"{device_a}.{secret_a}", f"{device_b}.{secret_b}"

    def fresh_token() -> str:
        return db.create_token("to-revoke", "operator", now + timedelta(days=1), "t")[0]

    try:
        with running_server(config) as base, httpx.Client(base_url=base, timeout=10) as client:
            envelope, image = author.release(1, uri=f"{base}/firmware/placeholder")
            uploaded = client.post("/api/v1/releases", headers=bearer(tokens["author"]),
                                   **upload_body_of(envelope, image))
            assert uploaded.status_code == 201, uploaded.text
            release = uploaded.json()
            w = World(base, client, tokens, device_a, device_b, release, envelope, image,
                      fresh_token)
            w.values.update(device_id=device_a, release_id=release["id"],
                            campaign_id="00000000-0000-4000-8000-000000000000",
                            digest=hashlib.sha256(envelope).hexdigest(), tenant="DEFAULT",
                            controller_id=device_a, action="1", filename="x.MD5SUM",
                            class_id="9b1f3c5e-2a4d-4e6f-8a0b-1c2d3e4f5a6b")
            # device A starts with an assignment, so its own events and redeploys succeed
            assert client.post("/api/v1/deployments", headers=bearer(BOOTSTRAP),
                               **deployment_body(w)).status_code == 201
            yield w, config
    finally:
        wiring.close()
        db.engine.dispose()


def upload_body_of(envelope: bytes, image: bytes) -> dict[str, Any]:
    return {"files": [("envelope", ("e.suit", envelope, "application/suit-envelope+cose")),
                      ("image", ("app.bin", image, "application/octet-stream"))]}


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def test_every_route_is_in_the_table() -> None:
    """The table names no route twice and every entry names known callers."""
    assert not set(EXPECTED) & PUBLIC
    for rule in EXPECTED.values():
        assert rule.allowed <= set(CALLERS) and not rule.allowed & UNAUTHENTICATED


def test_every_route_with_every_caller(world: tuple[World, ServerConfig]) -> None:
    w, config = world
    routes = app_routes(config)
    missing = [r for r in routes if r not in EXPECTED and r not in PUBLIC]
    assert not missing, (f"routes without an entry in EXPECTED or PUBLIC of {__file__}: "
                         f"{missing}; add who may call them")
    stale = [r for r in [*EXPECTED, *PUBLIC] if r not in routes]
    assert not stale, f"entries for routes the application does not have: {stale}"
    wrong: list[str] = []
    for method, path in routes:
        for caller in CALLERS:
            rule = EXPECTED.get((method, path))
            kwargs = rule.call(w) if rule is not None else {}
            headers = {**kwargs.pop("headers", {}), **bearer(w.tokens[caller])}
            target = path.format(**w.values)
            response = w.client.request(method, target, headers=headers, **kwargs)
            status = response.status_code
            if rule is None:  # public
                expected = "2xx"
                good = 200 <= status < 300
            elif caller in UNAUTHENTICATED:
                expected, good = "401", status == 401
                good = good and response.headers.get("www-authenticate") == "Bearer"
            elif caller in rule.allowed:
                expected, good = f"one of {sorted(rule.ok)}", status in rule.ok
            else:
                expected, good = "403", status == 403
            if status >= 400 and method != "HEAD":
                good = good and "error" in response.json()
            if not good:
                wrong.append(f"{method} {path} as {caller}: {status} (expected {expected}) "
                             f"{response.text[:120]}")
    assert not wrong, "\n".join(wrong)


def test_expired_and_revoked_tokens_say_so(world: tuple[World, ServerConfig]) -> None:
    w, _ = world
    expired = w.client.get("/api/v1/whoami", headers=bearer(w.tokens["expired"]))
    revoked = w.client.get("/api/v1/whoami", headers=bearer(w.tokens["revoked"]))
    assert expired.status_code == revoked.status_code == 401
    assert "has expired" in expired.json()["error"]
    assert "has been revoked" in revoked.json()["error"]
    # the firmware server's hook refuses them too (401), and the operator cannot upload
    upload = w.client.post("/api/v1/releases", headers=bearer(w.tokens["expired"]),
                           **upload_body(w))
    assert upload.status_code == 401
    upload = w.client.post("/api/v1/releases", headers=bearer(w.tokens["operator"]),
                           **upload_body(w))
    assert upload.status_code == 403 and "admin or author" in upload.json()["error"]
    deploy = w.client.post("/api/v1/deployments", headers=bearer(w.tokens["author"]),
                           **deployment_body(w))
    assert deploy.status_code == 403 and "admin or operator" in deploy.json()["error"]


def test_a_device_credential_opens_nothing_but_its_own_records(
        world: tuple[World, ServerConfig]) -> None:
    w, _ = world
    other = w.client.get(f"/api/v1/devices/{w.device_a}", headers=bearer(w.tokens["other_device"]))
    assert other.status_code == 403 and "own records" in other.json()["error"]
    assert w.client.get("/api/v1/devices", headers=bearer(w.tokens["device"])).status_code == 403
    assert w.client.get("/api/v1/releases", headers=bearer(w.tokens["device"])).status_code == 403
    # a device's credential with the id of another device is not a credential at all
    secret = str(w.tokens["device"]).partition(".")[2]
    forged = f"{w.device_b}.{secret}"
    response = w.client.get(f"/api/v1/devices/{w.device_b}", headers=bearer(forged))
    assert response.status_code == 401


def test_openapi_documents_a_bearer_scheme_and_summaries(
        world: tuple[World, ServerConfig]) -> None:
    w, _ = world
    doc = w.client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme") == "bearer" for s in schemes.values())
    for (method, path), _rule in EXPECTED.items():
        operation = doc["paths"][path][method.lower()]
        assert operation.get("security"), f"{method} {path} documents no security"
        assert operation.get("summary"), f"{method} {path} has no summary"


def test_the_static_upload_token_still_works_for_a_server_alone(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    config = ServerConfig(data_dir=tmp_path / "data", upload_token="static-upload-token",
                          anchors=TrustAnchors.of(author.key.public_key()))
    envelope, _ = author.release(1)
    with running_server(config) as base:
        files = upload_body_of(envelope, b"")["files"][:1]
        refused = httpx.post(f"{base}/api/v1/releases", files=files, timeout=10,
                             headers=bearer("not-it"))
        assert refused.status_code == 403
        stored = httpx.post(f"{base}/api/v1/releases", files=files, timeout=10,
                            headers=bearer("static-upload-token"))
        assert stored.status_code == 201, stored.text
        # alone, the server has no roles: its metadata is as public as its blobs
        assert httpx.get(f"{base}/api/v1/releases", timeout=10).status_code == 200
