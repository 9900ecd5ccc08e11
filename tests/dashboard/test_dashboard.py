"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real
firmware server with the status tracker's and the dashboard's routers mounted (as
``suitkit serve`` wires them), on 127.0.0.1. Devices, tokens, events and a real SUIT report
from the device's processor are seeded through the real API.

One browser for the module, a fresh context (so a fresh sessionStorage) per test. Every page
records console errors and page errors (a CSP violation shows up there): each test ends by
asserting there were none but the 401/403 refusals it provoked. Screenshots go to
``$SUITKIT_ARTIFACTS`` or ``tests/artifacts/``.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import CLASS, VENDOR, Author, image_bytes, install, new_device
from suitkit.core.report import encode_report, reason_name
from suitkit.core.verify import TrustAnchors
from suitkit.dashboard import CONTENT_SECURITY_POLICY, create_dashboard_router
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.auth import Authenticator, release_authorizer
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router
from suitkit.tracker.edges.http_api import REPORT_MEDIA_TYPE
from suitkit.tracker.service import open_db

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "install chromium (apt-get install chromium) and playwright (pip install playwright)"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ADMIN = "dashboard-admin-token-0123456789"
UPLOAD = "dashboard-upload-token-0123456789"
OTHER_CLASS = uuid.uuid5(VENDOR, "valve")
PUMP = uuid.uuid5(VENDOR, "pump")  # devices the tests that change states register themselves
XSS_NAME = '<img src=x onerror="window.__xss=1">'
UPDATE_TEXT = 'Fixes the <b>display</b> <img src=x onerror="window.__xss=2">'
WAIT_MS = 30_000  # generous: several test runs share 2 cores
TOKEN_KEY = "suitkit.dashboard.token"
REFUSED = ("Failed to load resource: the server responded with a status of 401",
           "Failed to load resource: the server responded with a status of 403")
SUCCESS = ("notified", "downloading", "downloaded", "installing", "rebooting", "succeeded")
POLL_MS = 500  # the dashboard polls every 2 s; the tests need not wait that long

if importlib.util.find_spec("playwright") is None or not CHROMIUM.exists():
    pytest.skip(INSTALL, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=WAIT_MS)  # every wait is bounded; generous for a loaded CI machine


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Fleet:
    """The running server, its client and what was seeded."""

    url: str
    client: httpx.Client
    operator_a: str = ""
    operator_b: str = ""
    author_token: str = ""
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: dict[str, Any] = field(default_factory=dict)
    release: dict[str, Any] = field(default_factory=dict)
    assigned: dict[str, str] = field(default_factory=dict)
    """The release (manifest digest) a device's ``notified`` deploys; default ``ab...``."""

    def token(self, name: str, role: str) -> dict[str, Any]:
        response = self.client.post("/api/v1/tokens", json={"name": name, "role": role},
                                    headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def register(self, name: str, klass: uuid.UUID, sequence: int) -> dict[str, Any]:
        response = self.client.post("/api/v1/devices", json={"name": name},
                                    headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        dev = dict(response.json())
        body = {"vendor_id": str(VENDOR), "class_id": str(klass),
                "components": [{"id": ["00"], "sequence": sequence, "digest": "ab" * 32,
                                "version": [sequence, 1, 0]}],
                "hardware": {"board": "nrf52840"}, "capabilities": CAPABILITIES}
        self.client.put(f"/api/v1/devices/{dev['id']}/inventory", json=body,
                        headers=auth(dev["token"])).raise_for_status()
        self.devices[name] = dev
        return dev

    def event(self, name: str, state: str, detail: str = "") -> None:
        dev = self.devices[name]
        if state == "notified":  # only the tracker sets it: a deployment
            response = self.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
                "release": self.assigned.get(name, "ab" * 32),
                "envelope_url": "http://127.0.0.1:1/envelopes/x", "devices": [dev["id"]]})
            assert response.status_code == 201, response.text
            return
        response = self.client.post(f"/api/v1/devices/{dev['id']}/events",
                                    json={"state": state, "detail": detail},
                                    headers=auth(dev["token"]))
        assert response.status_code == 201, response.text

    def listed(self) -> list[dict[str, Any]]:
        response = self.client.get("/api/v1/devices", headers=auth(ADMIN))
        assert response.status_code == 200, response.text
        return list(response.json()["devices"])

    def walk(self, name: str, *states: str) -> None:
        for state in states:
            self.event(name, state)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("SUITKIT_ARTIFACTS")
                  or Path(__file__).resolve().parents[1] / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("dashboard")
    author = Author.create(base / "author")
    tracker_config = TrackerConfig(f"sqlite:///{base / 'tracker.db'}", ADMIN)
    db = open_db(tracker_config.db_url)
    authenticator = Authenticator(tracker_config, db)
    config = ServerConfig(data_dir=base / "data", anchors=TrustAnchors.of(author.key.public_key()),
                          upload_token=UPLOAD, authorizer=release_authorizer(authenticator),
                          routers=(create_router(tracker_config, db, authenticator),
                                   create_dashboard_router(redirect_root=True)))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        fleet = Fleet(url, client)
        fleet.operator_a = fleet.token("operator-a", "operator")["token"]
        fleet.operator_b = fleet.token("operator-b", "operator")["token"]
        fleet.author_token = fleet.token("author-1", "author")["token"]
        _seed(fleet, author, base)
        yield fleet


def _seed(fleet: Fleet, author: Author, base: Path) -> None:
    """Four thermostats (sequence 1, one of them updated to 2 and one failed with a real
    report), two valves (sequence 5) and one device with a hostile name."""
    for i in range(4):
        fleet.register(f"thermostat-{i}", CLASS, 2 if i == 0 else 1)
    for i in range(2):
        fleet.register(f"valve-{i}", OTHER_CLASS, 5)
    fleet.register(XSS_NAME, CLASS, 1)
    fleet.walk("thermostat-0", *SUCCESS)
    # thermostat-1: the device's processor refuses a swapped integrated payload; its SUIT
    # report goes to the tracker as is
    image = image_bytes("app", 1000)
    envelope = author.envelope(2, [author.component("app.bin", image)],
                               payloads={"#app.bin": image_bytes("evil", 1000)})
    outcome = install(new_device(base / "device", [author.anchor]), envelope)
    assert outcome.report is not None and outcome.report.result is not True
    fleet.assigned["thermostat-1"] = outcome.report.reference.manifest_digest.value.hex()
    fleet.walk("thermostat-1", "notified", "downloading", "downloaded")
    dev = fleet.devices["thermostat-1"]
    response = fleet.client.post(f"/api/v1/devices/{dev['id']}/reports",
                                 content=encode_report(outcome.report),
                                 headers={**auth(dev["token"]),
                                          "Content-Type": REPORT_MEDIA_TYPE})
    assert response.status_code == 201, response.text
    fleet.failure = response.json()["summary"]["failure"]
    assert fleet.failure["reason_name"] == reason_name(outcome.report.result.reason)
    fleet.event("thermostat-1", "failed", "image digest mismatch")
    # a release on the firmware server
    component = {**author.component("app-3.bin", image_bytes("app-3", 2000)),
                 "text": {"model-name": "Thermostat T3", "component-version": "3.0.0"}}
    good = author.envelope(3, [component], top={"text": {"update-description": UPDATE_TEXT}})
    response = fleet.client.post("/api/v1/releases", headers=auth(UPLOAD), files=[
        ("envelope", ("r.suit", good, "application/suit-envelope+cose"))])
    assert response.status_code == 201, response.text
    fleet.release = dict(response.json())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, fleet: Fleet) -> Iterator[Page]:
    context = browser.new_context(base_url=fleet.url, viewport={"width": 1200, "height": 860})
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(f"sessionStorage.setItem('suitkit.dashboard.poll-ms', '{POLL_MS}')")
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: problems.append(str(e)))
    yield opened
    context.close()
    # refusals the tests provoke (401, 403) are logged as failed loads; anything else (a script
    # error, a Content-Security-Policy violation) fails the test
    assert not [p for p in problems if not p.startswith(REFUSED)], problems


def login(page: Page, token: str) -> None:
    page.goto("/dashboard/")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"dashboard-{name}.png"), full_page=True)


# ---------------------------------------------------------------------------- HTTP


def test_the_pages_carry_a_strict_policy_and_revalidate(fleet: Fleet) -> None:
    page = fleet.client.get("/dashboard/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-cache"
    assert "<script" in page.text and "<script>" not in page.text  # only src= scripts
    script = fleet.client.get("/dashboard/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert ".innerHTML" not in script.text and "eval(" not in script.text
    again = fleet.client.get("/dashboard/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert fleet.client.get("/dashboard/style.css").headers["content-type"].startswith("text/css")
    for sneaky in ("/dashboard/..%2Fapi%2Fv1%2Fdevices", "/dashboard/%2e%2e%2F__init__.py",
                   "/dashboard/index.html"):
        assert fleet.client.get(sneaky).status_code == 404, sneaky
    assert fleet.client.get("/dashboard/secret.txt").status_code == 404
    for path in ("/dashboard", "/"):
        moved = fleet.client.get(path)
        assert moved.status_code in (307, 308) and moved.headers["location"] == "/dashboard/"


# ---------------------------------------------------------------------------- login


def test_login_refuses_bad_tokens_and_shows_the_fleet(page: Page, fleet: Fleet,
                                                      artifacts: Path) -> None:
    login(page, "tok_0000.not-a-secret")
    expect(page.locator("#login-message")).to_contain_text("The token was refused")
    expect(page.locator("#view")).to_be_hidden()
    login(page, fleet.devices["valve-0"]["token"])
    expect(page.locator("#login-message")).to_contain_text("role device cannot use")
    login(page, fleet.author_token)
    expect(page.locator("#login-message")).to_contain_text("role author cannot use")
    shot(page, artifacts, "login")
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    login(page, fleet.operator_a)
    expect(page.locator("#whoami")).to_contain_text("operator-a")
    expect(page.locator("[data-testid=device-total]")).to_have_text(str(len(fleet.listed())))
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""


def count_cell(page: Page, card: str, key: str) -> Any:
    return page.locator(f"[data-count='{card}'] tr", has_text=key).locator("td").nth(1)


def test_the_overview_counts_states_classes_and_versions(page: Page, fleet: Fleet,
                                                         artifacts: Path) -> None:
    login(page, fleet.operator_a)
    listed = fleet.listed()
    succeeded = sum(d["state"] == "succeeded" for d in listed)
    expect(count_cell(page, "state", "succeeded")).to_have_text(str(succeeded))
    expect(count_cell(page, "state", "failed")).to_have_text("1")
    expect(count_cell(page, "class", str(CLASS))).to_have_text("5")
    expect(count_cell(page, "class", str(OTHER_CLASS))).to_have_text("2")
    expect(count_cell(page, "component-00", "sequence 1")).to_have_text("4")
    expect(count_cell(page, "component-00", "sequence 2")).to_have_text("1")
    expect(count_cell(page, "component-00", "sequence 5")).to_have_text("2")
    expect(page.locator(".devices tbody tr")).to_have_count(len(listed))
    shot(page, artifacts, "overview")


def test_the_overview_follows_device_events_without_reloading(page: Page, fleet: Fleet) -> None:
    fleet.register("pump-live", PUMP, 7)
    login(page, fleet.operator_a)
    pumps = count_cell(page, "class", str(PUMP))
    expect(pumps).to_have_text("1")
    succeeded = count_cell(page, "state", "succeeded")
    before = sum(d["state"] == "succeeded" for d in fleet.listed())
    expect(succeeded).to_have_text(str(before))
    page.evaluate("window.__same_page = 'yes'")
    fleet.walk("pump-live", *SUCCESS)
    fleet.register("pump-late", PUMP, 8)
    expect(succeeded).to_have_text(str(before + 1))
    expect(pumps).to_have_text("2")
    expect(count_cell(page, "component-00", "sequence 8")).to_have_text("1")
    assert page.evaluate("window.__same_page") == "yes"  # no reload happened


def test_polling_pauses_while_the_tab_is_hidden(page: Page, fleet: Fleet) -> None:
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/api/v1/devices?" in r.url else None)
    login(page, fleet.operator_a)
    expect(page.locator("#live")).to_contain_text("updated")
    page.evaluate("""() => {
        Object.defineProperty(document, "hidden", {value: true, configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    expect(page.locator("#live")).to_have_text("paused (tab hidden)")
    page.wait_for_timeout(200)  # a poll already on the wire may still land
    seen = len(polls)
    page.wait_for_timeout(3 * POLL_MS)  # three polling periods
    assert len(polls) == seen
    with page.expect_request(lambda r: "/api/v1/devices?" in r.url):
        page.evaluate("""() => {
            Object.defineProperty(document, "hidden", {value: false, configurable: true});
            document.dispatchEvent(new Event("visibilitychange"));
        }""")
    expect(page.locator("#live")).to_contain_text("updated")


# ---------------------------------------------------------------------------- device

CAPABILITIES = base64.b64encode(bytes.fromhex(
    "a4" "01" "81" "8141" "00"  # 1: [[h'00']]
    "02" "83" "01" "0c" "390100"  # 2: commands 1, 12, -257
    "03" "81" "03" "04" "81" "28")).decode()  # 3: [3], 4: [-9]
"""A capability report written by hand (draft-ietf-suit-report §6), as a device sends it."""


def test_a_device_page_shows_its_inventory_history_and_report(page: Page, fleet: Fleet,
                                                              artifacts: Path) -> None:
    login(page, fleet.operator_b)
    page.click("text=thermostat-1")
    expect(page.locator("#view h1")).to_have_text("thermostat-1")
    failure = page.locator("[data-testid=failure]")
    expect(failure).to_contain_text(f"{fleet.failure['reason_name']} "
                                    f"(reason {fleet.failure['reason']})")
    expect(failure).to_contain_text(f"{fleet.failure['section_name']} "
                                    f"({fleet.failure['section']})")
    expect(failure.locator("dd").nth(1)).to_have_text(str(fleet.failure["offset"]))
    expect(page.locator("ol.timeline li.event")).to_have_count(4)
    expect(page.locator("ol.timeline")).to_contain_text("image digest mismatch")
    expect(page.locator("#view")).to_contain_text("nrf52840")
    expect(page.locator("[data-testid=version]").first).to_have_text(re.compile(r"^\d+\.1\.0$"))
    capabilities = page.locator("[data-testid=capabilities]")
    expect(capabilities).to_contain_text("1, 12, -257")  # the commands it runs
    expect(capabilities).to_contain_text("-9")
    assert page.url.endswith(f"#/devices/{fleet.devices['thermostat-1']['id']}")
    shot(page, artifacts, "device")


def test_hostile_device_names_render_as_text(page: Page, fleet: Fleet) -> None:
    login(page, fleet.operator_a)
    cell = page.locator(".devices tbody a", has_text="<img")
    expect(cell).to_have_text(XSS_NAME)
    assert page.locator(".devices img").count() == 0
    page.fill("#view input.filter", "<img")
    expect(page.locator(".devices tbody tr")).to_have_count(1)
    cell.click()
    expect(page.locator("#view h1")).to_have_text(XSS_NAME)
    assert page.locator("#view img").count() == 0
    assert page.evaluate("window.__xss") is None


# ---------------------------------------------------------------------------- firmware


def test_the_firmware_list_shows_the_release(page: Page, fleet: Fleet, artifacts: Path) -> None:
    login(page, fleet.operator_a)
    page.click("nav >> text=Firmware")
    release = page.locator(f"[data-release='{fleet.release['id']}']")
    # named by its version (the manifest's component-version text) and its sequence number
    expect(release.locator("h2")).to_have_text("Version 3.0.0 (sequence number 3)")
    expect(release).to_contain_text(fleet.release["id"])
    component = fleet.release["components"][0]
    expect(release.locator("tbody tr").first).to_contain_text(f"{component['size']} bytes")
    link = release.get_by_role("link", name=fleet.release["envelope"]["sha256"])
    expect(link).to_have_attribute("href", fleet.release["envelope"]["url"])
    # manifest details: identifiers, signer and text (the text rendered as text)
    for shown in (str(VENDOR), str(CLASS), "author (ES256", "Thermostat T3", "3.0.0"):
        expect(release).to_contain_text(shown)
    expect(release.locator("dd", has_text="Fixes the")).to_have_text(UPDATE_TEXT)
    assert release.locator("img, b").count() == 0 and page.evaluate("window.__xss") is None
    shot(page, artifacts, "firmware")


# ---------------------------------------------------------------------------- campaigns


def test_an_operator_approves_and_starts_a_campaign_and_watches_it(
        page: Page, fleet: Fleet, artifacts: Path) -> None:
    names = ["pump-0", "pump-1", "pump-2"]
    ids = [fleet.register(name, PUMP, 7)["id"] for name in names]
    made = fleet.client.post("/api/v1/campaigns", headers=auth(fleet.operator_a), json={
        "name": "pumps to 3", "release": fleet.release["id"],
        "envelope_url": f"{fleet.url}{fleet.release['envelope']['url']}",
        "target": {"devices": ids}, "waves": [100]})
    assert made.status_code == 201, made.text
    campaign = made.json()["id"]

    # its author may not approve it: the API's refusal is shown in one line
    login(page, fleet.operator_a)
    page.click("nav >> text=Campaigns")
    page.click("text=pumps to 3")
    expect(page.locator("[data-testid=status]")).to_have_text("draft")
    page.click("[data-action=approve]")
    expect(page.locator("#view .error")).to_contain_text("approve refused: operator-a created "
                                                         "this campaign and cannot approve it")
    page.click("#logout")

    login(page, fleet.operator_b)
    page.goto(f"/dashboard/#/campaigns/{campaign}")
    expect(page.locator("[data-testid=status]")).to_have_text("draft")
    page.click("[data-action=approve]")
    expect(page.locator("[data-testid=status]")).to_have_text("approved")
    expect(page.locator("#view")).to_contain_text("operator-b")
    page.click("[data-action=start]")
    expect(page.locator("[data-testid=status]")).to_have_text("running")
    expect(page.locator("[data-action=pause]")).to_be_visible()
    expect(page.locator("[data-testid=total]")).to_have_text("3")
    expect(page.locator("[data-testid=done]")).to_have_text("0")
    expect(page.locator("[data-state=notified]")).to_have_text("3")
    page.evaluate("window.__same_page = 'yes'")

    fleet.walk("pump-0", *SUCCESS[1:])  # the campaign notified them
    expect(page.locator("[data-testid=done]")).to_have_text("1")
    fleet.walk("pump-1", "downloading")
    expect(page.locator("[data-state=downloading]")).to_have_text("1")
    expect(page.locator("[data-state=notified]")).to_have_text("1")
    fleet.walk("pump-1", *SUCCESS[2:])
    expect(page.locator("[data-testid=done]")).to_have_text("2")
    shot(page, artifacts, "campaign")
    page.click("[data-action=pause]")
    expect(page.locator("[data-testid=status]")).to_have_text("paused")
    page.click("[data-action=resume]")
    expect(page.locator("[data-testid=status]")).to_have_text("running")
    fleet.walk("pump-2", "downloading", "failed")
    expect(page.locator("[data-testid=failed]")).to_have_text("1")
    assert page.evaluate("window.__same_page") == "yes"  # no reload happened
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-action=cancel]")
    expect(page.locator("[data-testid=status]")).to_have_text("cancelled")
    expect(page.locator("[data-action]")).to_have_count(0)
    actions = [e["action"] for e in fleet.client.get(
        "/api/v1/audit?limit=20", headers=auth(ADMIN)).json()["entries"]
        if e["target"] == f"campaign {campaign}"]
    assert actions[:5] == ["campaign.cancel", "campaign.resume", "campaign.pause",
                           "campaign.start", "campaign.approve"]
    page.click("text=pump-0")
    expect(page.locator("#view h1")).to_have_text("pump-0")
    page.go_back()
    page.click("nav >> text=Campaigns")
    expect(page.locator("#view tbody tr", has_text="pumps to 3")).to_contain_text("operator-b")
    shot(page, artifacts, "campaigns")


def test_a_health_gated_campaign_shows_its_gate_and_each_device_s_health(
        page: Page, fleet: Fleet, artifacts: Path) -> None:
    """Health-gated rollouts (issue #13): the campaign page shows the gate and each member's
    health, the pause by the health threshold and why; the device page its health reports."""
    names = ["valve-h0", "valve-h1"]
    ids = [fleet.register(name, PUMP, 7)["id"] for name in names]
    made = fleet.client.post("/api/v1/campaigns", headers=auth(fleet.operator_a), json={
        "name": "valves, health-gated", "release": fleet.release["id"],
        "envelope_url": f"{fleet.url}{fleet.release['envelope']['url']}",
        "target": {"devices": ids}, "waves": [100], "failure_threshold": 1.0,
        "unhealthy_threshold": 0.02, "health_window": 600})
    assert made.status_code == 201, made.text
    campaign = made.json()["id"]
    for step in ("approve", "start"):
        done = fleet.client.post(f"/api/v1/campaigns/{campaign}/{step}",
                                 headers=auth(fleet.operator_b))
        assert done.status_code == 200, done.text
    for name in names:
        fleet.walk(name, *SUCCESS[1:])  # the campaign notified them
    release = fleet.release["id"]

    def health(name: str, status: str, **extra: Any) -> dict[str, Any]:
        dev = fleet.devices[name]
        response = fleet.client.post(f"/api/v1/devices/{dev['id']}/health",
                                     headers=auth(dev["token"]), json={
                                         "release": release, "status": status, "window": 600,
                                         **extra})
        assert response.status_code == 200, response.text
        return dict(response.json())

    health("valve-h0", "watching", checks=1)
    login(page, fleet.operator_a)
    page.goto(f"/dashboard/#/campaigns/{campaign}")
    expect(page.locator("[data-testid=health-gate]")).to_contain_text(
        "window 600 s after confirming, pause at > 2 % unhealthy")
    expect(page.locator("[data-health=watching]")).to_have_count(1)
    checks = {"checks": 2, "failures": 1, "records": [
        {"check": "command", "ok": False, "detail": "health.sh exited with status 1"}]}
    answer = health("valve-h1", "unhealthy", **checks)
    assert answer["rollback"] is True
    expect(page.locator("[data-testid=status]")).to_have_text("paused")
    expect(page.locator("#view")).to_contain_text("health threshold crossed: 1 of 2 devices "
                                                  "that confirmed turned unhealthy")
    expect(page.locator("[data-health=unhealthy]")).to_have_count(1)
    expect(page.locator("[data-testid=health-gate]")).to_contain_text(
        "now 1 unhealthy of 2 confirmed")
    shot(page, artifacts, "campaign-health")
    # as the agent does: the counts and records of its window, with the rollback
    health("valve-h1", "rolled-back", detail="reverted to the previous image", **checks)
    expect(page.locator("[data-health=rolled-back]")).to_have_count(1)
    page.click("text=valve-h1")
    expect(page.locator("#view h1")).to_have_text("valve-h1")
    shown = page.locator("[data-testid=health]")
    expect(shown).to_contain_text("rolled-back")
    expect(shown).to_contain_text("command: health.sh exited with status 1")
    expect(shown).to_contain_text("2 / 1 / 0")
    shot(page, artifacts, "device-health")


# ---------------------------------------------------------------------------- session


def test_a_revoked_token_returns_to_the_login_view(page: Page, fleet: Fleet) -> None:
    made = fleet.token("short-lived", "operator")
    login(page, made["token"])
    expect(page.locator("[data-testid=device-total]")).to_be_visible()
    fleet.client.delete(f"/api/v1/tokens/{made['id']}", headers=auth(ADMIN)).raise_for_status()
    expect(page.locator("#login-message")).to_contain_text("has been revoked")
    expect(page.locator("#view")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None


def test_sign_out_forgets_the_token(page: Page, fleet: Fleet) -> None:
    login(page, fleet.operator_a)
    expect(page.locator("#whoami")).to_contain_text("operator-a")
    page.reload()  # the token survives a reload of the tab (sessionStorage)
    expect(page.locator("#whoami")).to_contain_text("operator-a")
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    page.reload()
    expect(page.locator("#login")).to_be_visible()
