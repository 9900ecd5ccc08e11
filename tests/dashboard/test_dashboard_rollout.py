"""A whole rollout through the dashboard only (issue #17), in Debian's chromium driven by
Playwright, against one uvicorn server wired the way ``suitkit serve --admin-token-file`` wires
it (``cli.notices.tracker_routes`` with the firmware server's releases, the dashboard's router)
on 127.0.0.1, with real device agents (mcu folders, ``run_once`` in a loop) installing what the
tracker assigns.

Every operator step is a click or a form in the page: the admin uploads a signed envelope and
its detached image, registers three devices (their credentials are read off the page, shown
once) and tags them; operator alice creates the campaign from lists (release, tag) and sees the
engine's wave preview, and is refused approval (four-eyes); operator bob approves, starts,
pauses and resumes it. One device's first download breaks (a fetcher that fails once, on the
device's side): the failure threshold pauses the campaign, bob retries the failed device and
resumes, and the campaign completes. The audit log, the progress chart and the fleet's version
chart show it. The fleet, campaign and other pages at 390 px have no horizontal scroll. A
device stuck in an update is tagged and reset from its page.

The tests set up only what an operator does not: tokens for alice and bob, the device folders
and their agents. Screenshots of each step go to ``$SUITKIT_ARTIFACTS`` or ``tests/artifacts/``
(``dashboard-rollout-*.png``). Console errors and CSP violations fail the tests.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard.test_dashboard import ARGS, CHROMIUM, REFUSED, artifacts  # noqa: F401 (fixture)
from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from suitkit.cli.notices import tracker_routes
from suitkit.core.verify import TrustAnchors
from suitkit.dashboard import create_dashboard_router
from suitkit.device.agent import run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.errors import FetchError
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig

ADMIN = "rollout-admin-token-0123456789abcdef"

# after test_dashboard's import: it skips the module without chromium or playwright
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

WAIT_MS = 30_000
"""Every wait in the page (generous: a loaded 2-core machine)."""
POLL_MS = 400
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=WAIT_MS)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Rollout:
    url: str
    client: httpx.Client
    author: Author
    tmp: Path
    alice: str = ""
    bob: str = ""
    envelope: Path = Path()
    image: Path = Path()


@pytest.fixture(scope="module")
def rollout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    tmp = tmp_path_factory.mktemp("rollout")
    author = Author.create(tmp / "author")
    data = tmp / "data"
    data.mkdir()
    # as `suitkit serve --admin-token-file`: the tracker over the firmware server's releases
    wiring = tracker_routes(TrackerConfig(f"sqlite:///{data / 'tracker.db'}", ADMIN),
                            heartbeat=0.5, data=data)
    config = ServerConfig(data_dir=data, anchors=TrustAnchors.of(author.key.public_key()),
                          routers=(*wiring.routers, create_dashboard_router(redirect_root=True)),
                          authorizer=wiring.authorizer, releases=wiring.releases)
    try:
        with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
            world = Rollout(url, client, author, tmp)
            for name in ("alice", "bob"):
                made = client.post("/api/v1/tokens", headers=auth(ADMIN),
                                   json={"name": name, "role": "operator"})
                assert made.status_code == 201, made.text
                setattr(world, name, made.json()["token"])
            # release 2: a signed envelope whose image is detached (fetched by the devices
            # from the firmware server), both written where the operator's browser picks them
            image = image_bytes("rollout-2", 3000)
            uri = f"{url}/firmware/{hashlib.sha256(image).hexdigest()}"
            world.image = tmp / "app-2.bin"
            world.image.write_bytes(image)
            world.envelope = tmp / "release-2.suit"
            world.envelope.write_bytes(author.envelope(
                2, [author.component("app-2.bin", image, uri=uri)]))
            yield world
    finally:
        wiring.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, rollout: Rollout) -> Iterator[Page]:
    context = browser.new_context(base_url=rollout.url, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(f"sessionStorage.setItem('suitkit.dashboard.poll-ms', '{POLL_MS}')")
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: problems.append(str(e)))
    yield opened
    context.close()
    assert not [p for p in problems if not p.startswith(REFUSED)], problems


def sign_in(page: Page, token: str, who: str) -> None:
    page.goto("/dashboard/")
    # the page first asks who a kept token belongs to: the sign-in form or the app, then
    page.wait_for_selector("#login:not([hidden]), #top:not([hidden])")
    if page.locator("#logout").is_visible():
        page.click("#logout")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#whoami")).to_contain_text(who)


def shot(page: Page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"dashboard-rollout-{name}.png"), full_page=True)


def no_sideways_scroll(page: Page, what: str) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    # the elements that stick out, to name them if any does
    wide = page.evaluate("""[...document.querySelectorAll('body *')]
        .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
        .slice(0, 5).map((e) => `${e.tagName.toLowerCase()}.${e.className}`
          + ` ${Math.round(e.getBoundingClientRect().right)}px`)""")
    assert width[0] <= width[1], f"{what} at {PHONE['width']} px scrolls sideways: {width}, {wide}"


# ---------------------------------------------------------------------------- devices


@dataclass
class FailsOnce:
    """A device-side fault: the device's first payload download breaks (a reset connection),
    later ones go through."""

    inner: HttpFetcher
    failed: bool = False

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]:
        if not self.failed:
            self.failed = True
            raise FetchError(f"{uri}: connection reset by peer (injected once by the test)")
        return self.inner.fetch(uri, max_bytes=max_bytes, offset=offset, arguments=arguments)


@dataclass
class Agents:
    """One thread per device polling the tracker (``run_once``) until stopped."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def start(self, name: str, folder: Path, credential: str, fetcher: Any) -> None:
        self.outcomes[name] = []

        def loop() -> None:
            while not self.stop.is_set():
                try:
                    result = run_once(folder, self.url, credential, fetcher=fetcher)
                    if result.outcome != "up-to-date":
                        self.outcomes[name].append(result.outcome)
                except Exception as e:  # noqa: BLE001 - reported by the test
                    self.errors.append(f"{name}: {e!r}")
                self.stop.wait(0.3)

        thread = threading.Thread(target=loop, name=f"agent-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not [t.name for t in self.threads if t.is_alive()], "an agent did not stop"


def device_folder(rollout: Rollout, name: str) -> Path:
    """An mcu device running (confirmed) base release 1."""
    folder = rollout.tmp / name
    new_device(folder, [rollout.author.anchor])
    base = rollout.author.envelope(1, [rollout.author.component(
        f"{name}-1.bin", f"base image of {name}".encode() * 40)])
    assert install(folder, base).installed
    boot(folder)
    confirm(folder)
    return folder


# ---------------------------------------------------------------------------- the rollout


def test_a_whole_rollout_through_the_dashboard(page: Page, rollout: Rollout,
                                               artifacts: Path) -> None:  # noqa: F811
    began = time.monotonic()
    names = ["kiln-a", "kiln-b", "kiln-c"]
    folders = {name: device_folder(rollout, name) for name in names}

    # the admin uploads the signed envelope with its detached image
    sign_in(page, ADMIN, "admin")
    page.click("nav >> text=Firmware")
    page.set_input_files("[data-form=upload] input[name=envelope]", str(rollout.envelope))
    page.set_input_files("[data-form=upload] input[name=images]", str(rollout.image))
    page.click("[data-form=upload] button[type=submit]")
    expect(page.locator("[data-testid=upload-result]")).to_contain_text(
        "Uploaded sequence 2")
    expect(page.locator("[data-testid=upload-result]")).to_contain_text("and 1 image(s)")
    release = rollout.client.get("/api/v1/releases", headers=auth(ADMIN)).json()["releases"]
    (uploaded,) = release
    expect(page.locator(f"[data-release='{uploaded['id']}']")).to_contain_text(
        "Sequence number 2")
    shot(page, artifacts, "1-upload")

    # registers the devices (each credential shown once) and tags them
    page.click("nav >> text=Fleet")
    credentials: dict[str, str] = {}
    for name in names:
        if not page.locator("[data-form=register]").is_visible():
            page.click("details.register > summary")
        page.fill("[data-form=register] input[name=name]", name)
        page.click("[data-form=register] button[type=submit]")
        shown = page.locator("[data-testid=credential]")
        expect(shown).to_be_visible()
        credentials[name] = shown.inner_text().strip()
        if name == names[0]:
            shot(page, artifacts, "2-register")
        page.click("text=Done, hide it")
        expect(shown).to_have_count(0)
    ids = {name: token.split(".")[0] for name, token in credentials.items()}
    for name in names:
        box = page.locator(f"[data-select='{ids[name]}']")
        expect(box).to_be_visible()
        box.check()
    page.fill("[data-testid=bulk-tag]", "kilns")
    page.click("[data-action=tag-selected]")
    expect(page.locator(".devices [role=status]")).to_contain_text("Tagged 3 device(s) kilns")
    for name in names:
        expect(page.locator(".devices tr", has_text=name)).to_contain_text("kilns")
    shot(page, artifacts, "3-tagged")

    # alice creates the campaign from lists and sees the engine's wave split
    sign_in(page, rollout.alice, "alice")
    page.click("nav >> text=Campaigns")
    page.click("[data-action=new-campaign]")
    form = page.locator("[data-form=campaign]")
    form.locator("input[name=name]").fill("kilns to 2")
    form.locator("select[name=release]").select_option(uploaded["id"])
    form.locator("select[name=target-kind]").select_option("tags")
    form.locator("select[name=tags]").select_option("kilns")
    form.locator("input[name=waves]").fill("34, 100")
    expect(page.locator("[data-testid=preview]")).to_have_text(
        "3 devices match now: wave 1 (34 %) gets 2, wave 2 (100 %) gets 1.")
    shot(page, artifacts, "4-new-campaign")
    form.locator("button[type=submit]").click()
    expect(page.locator("[data-testid=status]")).to_have_text("draft")
    expect(page.locator("[data-testid=thresholds]")).to_have_text(
        "success ≥ 100 % per wave, pause at > 20 % failed")
    campaign_url = page.url
    page.click("[data-action=approve]")
    expect(page.locator("#view .error")).to_contain_text(
        "approve refused: alice created this campaign and cannot approve it")
    shot(page, artifacts, "5-four-eyes")

    # bob approves, starts, pauses and resumes it
    sign_in(page, rollout.bob, "bob")
    page.goto(campaign_url)
    page.click("[data-action=approve]")
    expect(page.locator("[data-testid=status]")).to_have_text("approved")
    page.click("[data-action=start]")
    expect(page.locator("[data-testid=status]")).to_have_text("running")
    expect(page.locator("[data-testid=total]")).to_have_text("3")
    page.click("[data-action=pause]")
    expect(page.locator("[data-testid=status]")).to_have_text("paused")
    expect(page.locator("#view")).to_contain_text("paused by bob")
    page.click("[data-action=resume]")
    expect(page.locator("[data-testid=status]")).to_have_text("running")

    # the devices' agents run; the first device of wave 1 fails its first download
    cid = campaign_url.rsplit("/", 1)[1]
    members = rollout.client.get(f"/api/v1/campaigns/{cid}", headers=auth(ADMIN)).json()
    first_wave = [m["device_id"] for m in members["members"] if m["wave"] == 1]
    assert len(first_wave) == 2, members
    flaky = next(name for name in names if ids[name] == first_wave[0])
    agents = Agents(rollout.url)
    try:
        for name in names:
            fetcher = HttpFetcher(timeout=10)
            agents.start(name, folders[name], credentials[name],
                         FailsOnce(fetcher) if name == flaky else fetcher)
        expect(page.locator("[data-testid=status]")).to_have_text("paused")
        expect(page.locator("#view")).to_contain_text("failure threshold crossed")
        expect(page.locator("[data-testid=failed]")).to_have_text("1")
        shot(page, artifacts, "6-paused-by-a-failure")
        page.click("[data-action=retry]")
        expect(page.locator("[data-testid=failed]")).to_have_text("0")
        expect(page.locator("[data-action=retry]")).to_have_count(0)
        page.click("[data-action=resume]")
        expect(page.locator("[data-testid=status]")).to_have_text("completed")
        expect(page.locator("[data-testid=done]")).to_have_text("3")
        expect(page.locator("[data-chart=progress] polyline")).to_have_count(2)
        expect(page.locator("[data-chart=progress] svg")).to_have_attribute(
            "aria-label", re.compile(r"^3 succeeded and 0 failed of 3 devices"))
        shot(page, artifacts, "7-completed")
    finally:
        agents.close()
    assert not agents.errors, agents.errors
    assert agents.outcomes[flaky][:1] == ["failed"] and "succeeded" in agents.outcomes[flaky]
    for name in names:
        assert agents.outcomes[name][-1] == "succeeded", agents.outcomes

    # the audit log has each of bob's steps
    page.click("nav >> text=Audit")
    rows = page.locator("#view tbody tr", has_text=f"campaign {cid}")
    for action in ("campaign.approve", "campaign.start", "campaign.pause", "campaign.resume",
                   "campaign.retry"):
        expect(rows.filter(has_text=action).first).to_contain_text("bob")
    expect(page.locator("#view tbody tr", has_text="device.tags")).to_have_count(3)
    shot(page, artifacts, "8-audit")

    # the fleet: every device runs sequence 2 now
    page.click("nav >> text=Fleet")
    expect(page.locator("[data-count='component-00'] tr", has_text="sequence 2")
           .locator("td").nth(1)).to_have_text("3")
    expect(page.locator("[data-chart=versions] svg")).to_have_attribute(
        "aria-label", "sequence 2: 3 devices")
    shot(page, artifacts, "9-fleet")

    # at phone width nothing scrolls sideways
    page.set_viewport_size(PHONE)
    for where, ready in (("#/", "[data-testid=device-total]"),
                         (campaign_url.split("/dashboard/")[1], "[data-testid=status]"),
                         ("#/campaigns", "#view tbody tr"),
                         ("#/new-campaign", "[data-testid=preview]"),
                         ("#/firmware", "[data-release]"),
                         ("#/audit", "#view tbody tr"),
                         (f"#/devices/{ids[flaky]}", "#view h1")):
        page.goto(f"/dashboard/{where}")
        expect(page.locator(ready).first).to_be_visible()
        page.wait_for_timeout(POLL_MS)  # one more redraw with live data
        no_sideways_scroll(page, where)
        if where in ("#/", campaign_url.split("/dashboard/")[1]):
            shot(page, artifacts, f"10-phone-{'fleet' if where == '#/' else 'campaign'}")
    assert time.monotonic() - began < 90, "the rollout took longer than 90 s"


def test_an_operator_tags_and_resets_a_stuck_device_from_its_page(page: Page, rollout: Rollout,
                                                         artifacts: Path) -> None:  # noqa: F811
    made = rollout.client.post("/api/v1/devices", json={"name": "stuck-1"},
                               headers=auth(ADMIN))
    assert made.status_code == 201, made.text
    dev = made.json()
    releases = rollout.client.get("/api/v1/releases", headers=auth(ADMIN)).json()["releases"]
    assert releases, "the rollout test uploads the release first"
    deployed = rollout.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
        "release": releases[0]["id"], "devices": [dev["id"]]})
    assert deployed.status_code == 201, deployed.text
    rollout.client.post(f"/api/v1/devices/{dev['id']}/events", headers=auth(dev["token"]),
                        json={"state": "downloading"}).raise_for_status()
    # ... and the device is never heard of again
    sign_in(page, rollout.bob, "bob")
    page.goto(f"/dashboard/#/devices/{dev['id']}")
    expect(page.locator("#view h1")).to_have_text("stuck-1")
    page.fill("[data-testid=tags]", "lab, eu-west")
    page.click("[data-action=save-tags]")
    expect(page.locator(".controls [role=status]")).to_have_text("saved: lab, eu-west")
    got = rollout.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert got["tags"] == ["lab", "eu-west"]
    page.fill("[aria-label='reason for the reset']", "board replaced")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-action=reset]")
    expect(page.locator("#view .timeline li").first).to_contain_text(
        "reset by bob: board replaced")
    expect(page.locator("[data-action=reset]")).to_be_hidden()
    shot(page, artifacts, "11-reset")
    entries = rollout.client.get("/api/v1/audit?limit=5", headers=auth(ADMIN)).json()["entries"]
    assert (entries[0]["actor"], entries[0]["action"]) == ("bob", "device.reset")


def test_a_view_left_while_it_loads_does_not_take_the_live_updates(
        page: Page, rollout: Rollout) -> None:
    """The fleet view waits for the server's OpenAPI document (class names) before it goes
    live; an operator who moved on to the audit log meanwhile keeps a live audit log."""
    held: list[Any] = []
    # a lambda: Playwright tags the handler with an attribute (a bound builtin takes none)
    page.route("**/openapi.json", lambda route: held.append(route))  # noqa: PLW0108
    sign_in(page, rollout.bob, "bob")  # lands on the fleet view, which now waits
    page.goto("/dashboard/#/audit")
    expect(page.locator("#view h1")).to_have_text("Audit log")
    expect(page.locator("#view tbody tr").first).to_be_visible()
    assert held, "the fleet view did not ask for the OpenAPI document"
    for route in held:
        route.continue_()
    page.wait_for_timeout(3 * POLL_MS)  # the fleet view's late start, if it were to happen
    made = rollout.client.post("/api/v1/tokens", headers=auth(ADMIN),
                               json={"name": "late-view-check", "role": "operator"})
    assert made.status_code == 201, made.text
    expect(page.locator("#view tbody tr", has_text="late-view-check").first).to_be_visible()
    expect(page.locator("#view h1")).to_have_text("Audit log")
