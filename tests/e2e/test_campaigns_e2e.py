"""Campaigns end to end (issue #4): the real device agent on real device folders against one
uvicorn server that serves the firmware server and the status tracker the way ``suitkit serve
--admin-token-file`` wires them (``cli.notices.tracker_routes``: the tracker API, the campaign
routes with their ticker in the lifespan, SSE/long-poll notices; ``ServerConfig.authorizer``
over the tracker's tokens, so the author ``ann`` uploads with her API token).

Operators ``alice`` (creates) and ``bob`` (approves and starts: four-eyes) drive every campaign
through the HTTP API (``tracker.test_campaign_api.World``). Devices are mcu folders running a
confirmed base release, except the Linux-class device of the waves test, whose new application
exits at once (``tracker.test_agent``'s rolled-back case).

What each test shows:

- install-on-trigger, push mode over SSE: agents download and keep the envelope, install nothing
  until ``trigger``, then install the kept envelope (no second download) and the campaign
  completes;
- download-only, poll mode: agents stop at ``downloaded``, the campaign completes, the devices
  still run the old image; a later install-now campaign of the same release installs the kept
  envelope without a new notification or download;
- staged waves ``[25, 50, 100]`` over four devices: later waves get nothing (204, never
  notified) until the earlier ones succeeded; a rolled-back device pauses the campaign, the
  other device of its wave, listening over SSE, gets nothing until ``resume``'s notice;
- cancel mid-campaign: devices not started get nothing and keep their image;
- targeting by tags and by class (the class is the one the agent's inventory reported).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from device.device_kit import CLASS, VENDOR, Author, boot, confirm, image_bytes, install, new_device
from e2e.test_modes import FINAL, Agent, running, states
from notice_kit import wait_until
from suitkit.cli.notices import tracker_routes
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import AgentOptions, AgentResult, run_agent, run_once
from suitkit.device.config import create_device
from suitkit.device.fetch import HttpFetcher
from suitkit.device.invoke import ProcessLauncher
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from tracker.test_campaign_api import ADMIN, World, auth

OTHER_CLASS_NAME = "e2e-other-class"
OTHER_CLASS = uuid.uuid5(VENDOR, OTHER_CLASS_NAME)
SLEEPS = b"import time\ntime.sleep(60)\n"
EXITS = b"import sys\nsys.exit(3)\n"


@dataclass(frozen=True)
class Dev:
    """A device folder and the tracker's record of it."""

    folder: Path
    id: str
    token: str

    def run(self, url: str) -> AgentResult:
        """One agent run (client-initiated mode)."""
        return run_once(self.folder, url, self.token, fetcher=HttpFetcher(timeout=5))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("campaigns-e2e")
    author = Author.create(tmp / "author")
    data = tmp / "data"
    data.mkdir()
    # as `suitkit serve --admin-token-file`: tracker_routes, the authorizer, lifespan on
    wiring = tracker_routes(TrackerConfig(f"sqlite:///{data / 'tracker.db'}", ADMIN),
                            heartbeat=0.5)
    config = ServerConfig(data_dir=data, anchors=TrustAnchors.of(author.key.public_key()),
                          routers=wiring.routers, authorizer=wiring.authorizer)
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        try:
            w = World(url, client, author, tmp, {})
            w.token("alice", "operator")
            w.token("bob", "operator")
            w.token("ann", "author")
            yield w
        finally:
            wiring.close()  # ends the SSE streams before uvicorn stops


# ---------------------------------------------------------------------------- helpers

PUSH = AgentOptions(mode="push", transport="sse", interval=3600.0, duration=30.0, backoff=0.1,
                    max_backoff=1.0)
"""Server-initiated mode: the agent acts on each SSE notice (and polls only at start)."""


def shim(world: World) -> Any:
    """What ``e2e.test_modes.Agent`` reads of its world: ``tracker.url``."""
    return SimpleNamespace(tracker=SimpleNamespace(url=world.url))


def upload(world: World, envelope: bytes) -> dict[str, Any]:
    """Upload a bundled release with the author's API token (the tracker's authorizer)."""
    done = world.client.post("/api/v1/releases", headers=auth(world.tokens["ann"]), files=[
        ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))])
    assert done.status_code in (200, 201), done.text
    return dict(done.json())


def release(world: World, sequence: int, image: bytes | None = None, *,
            class_name: str | None = None) -> dict[str, Any]:
    """A bundled release of ``image`` (default: a random one) for component [h'00']."""
    image = image if image is not None else image_bytes(f"e2e-{sequence}", 2000)
    component = world.author.component(f"e2e-{sequence}.bin", image)
    return upload(world, world.author.envelope(
        sequence, [component], top={"class-name": class_name} if class_name else None))


def folder(world: World, name: str, *, klass: uuid.UUID = CLASS, linux: bool = False) -> Path:
    """A device folder running (confirmed) base release 1 of its class; ``linux``: a
    Linux-class device whose applications are started as ``python IMAGE``."""
    path = world.tmp / name
    top = {"class-name": OTHER_CLASS_NAME} if klass == OTHER_CLASS else None
    if linux:
        create_device(path, vendor_id=VENDOR, class_id=klass,
                      trust_anchors=[world.author.anchor], shape="linux",
                      app_command=f"{sys.executable} {{image}}")
        base = world.author.envelope(1, [world.author.component(f"{name}.py", SLEEPS)],
                                     top=top)
    else:
        new_device(path, [world.author.anchor], klass=klass)
        base = world.author.envelope(1, [world.author.component(
            f"{name}.bin", f"base image of {name}".encode() * 50)], top=top)
    assert install(path, base).installed
    boot(path)
    confirm(path)
    return path


def device(world: World, name: str, tags: list[str], **kw: Any) -> Dev:
    doc = world.register(tags)
    return Dev(folder(world, name, **kw), doc["id"], doc["token"])


def start(world: World, name: str, rel: dict[str, Any], target: dict[str, Any], **kw: Any
          ) -> dict[str, Any]:
    """A campaign of ``rel`` created by alice, approved and started by bob."""
    doc = world.started({"name": name, "release": rel["id"], "target": target,
                         "envelope_url": world.url + rel["envelope"]["url"], **kw})
    assert (doc["status"], doc["created_by"], doc["approved_by"]) == ("running", "alice", "bob")
    return doc


def update_status(world: World, dev: Dev) -> int:
    """``GET /devices/{id}/update`` as the device: 200 (something to do) or 204."""
    return world.client.get(f"/api/v1/devices/{dev.id}/update",
                            headers=auth(dev.token)).status_code


def history(world: World, dev: Dev) -> list[str]:
    got = world.client.get(f"/api/v1/devices/{dev.id}/history", headers=auth(ADMIN))
    assert got.status_code == 200, got.text
    return states(list(got.json()["history"]))


def members(world: World, cid: str) -> list[dict[str, Any]]:
    """The campaign's members in wave order (position)."""
    return list(world.campaign(cid)["members"])


def kept(dev: Dev) -> list[Path]:
    return sorted((dev.folder / "agent").glob("*.suit"))


# ---------------------------------------------------------------------------- tests


def test_install_on_trigger_with_push_agents(world: World) -> None:
    """Push mode over SSE: the agents download and wait; ``trigger`` makes them install."""
    devs = [device(world, f"trigger-{i}", ["on-trigger"]) for i in range(2)]
    rel = release(world, 2)
    with ExitStack() as stack:
        agents = [stack.enter_context(Agent(shim(world), d.folder, d.token, PUSH))
                  for d in devs]
        for agent in agents:  # up, nothing assigned, listening: the campaign comes by SSE
            wait_until(lambda a=agent: a.saw("up-to-date: no update assigned")
                       and a.saw("sse: connected"), 15, "the agent's SSE connection")
        doc = start(world, "trigger", rel, {"tags": ["on-trigger"]},
                    mode="install-on-trigger")
        cid = doc["id"]
        doc = world.until(cid, lambda d: d["counts"] == {"downloaded": 2})
        assert doc["status"] == "running" and doc["triggered"] is None  # waits for the trigger
        for agent, dev in zip(agents, devs, strict=True):
            wait_until(lambda a=agent: a.saw("downloaded: envelope kept until the install "
                                             "is ordered"), 10, "the agent's download")
            assert agent.saw(f"(sse): release {rel['id']}"), agent.lines
            assert agent.saw("assigned (download;") and agent.saw("by the pushed notice")
            assert running(dev.folder) == (1, True)  # nothing installed
            assert len(kept(dev)) == 1
            assert history(world, dev) == ["notified", "downloading", "downloaded"]
            assert update_status(world, dev) == 204  # the download is done
            assert agent.thread.is_alive()  # still listening
        triggered = world.post(f"/{cid}/trigger", "bob")
        assert triggered.status_code == 200, triggered.text
        assert triggered.json()["triggered"] is not None
        results = [agent.finish(30) for agent in agents]
    for result, agent, dev in zip(results, agents, devs, strict=True):
        assert result.outcome == "succeeded", agent.lines
        assert result.release == rel["id"]
        assert agent.saw("assigned (install;")
        assert agent.saw("resuming: the tracker has the device downloaded")
        # the kept envelope was installed: fetched once, then removed
        assert sum(line.startswith("downloaded ") for line in agent.lines) == 1, agent.lines
        assert kept(dev) == []
        assert running(dev.folder) == (2, True)
        assert history(world, dev) == ["notified", "downloading", "downloaded", "installing",
                                       "rebooting", "succeeded"]
    doc = world.until(cid, lambda d: d["status"] == "completed")
    assert doc["counts"] == {"succeeded": 2}
    assert [e["action"] for e in doc["log"]] == ["create", "approve", "start", "trigger",
                                                 "completed"]
    assert doc["log"][3]["detail"] == "2 devices told to install"


def test_download_only_then_install_now_of_the_same_release(world: World) -> None:
    """Poll mode: a download-only campaign stages the envelope; a later install-now campaign
    of the same release installs the staged envelope, without a notice or a download."""
    devs = [device(world, f"stage-{i}", ["staged"]) for i in range(2)]
    rel = release(world, 3)
    options = AgentOptions(mode="poll", interval=0.2, duration=20.0, backoff=0.1,
                           max_backoff=1.0)
    first = start(world, "stage", rel, {"tags": ["staged"]},
                                       mode="download-only")
    for dev in devs:
        result = run_agent(dev.folder, world.url, dev.token, fetcher=HttpFetcher(timeout=5),
                           options=options, until=lambda r: r.outcome in ("downloaded", *FINAL))
        assert result is not None and result.outcome == "downloaded", result
        assert result.reason == "envelope kept until the install is ordered"
        assert running(dev.folder) == (1, True)
        assert len(kept(dev)) == 1
        assert update_status(world, dev) == 204
    doc = world.until(first["id"], lambda d: d["status"] == "completed")
    assert doc["counts"] == {"downloaded": 2}
    assert doc["log"][-1]["detail"] == "2 of 2 devices downloaded"
    # a second poll changes nothing: the device keeps the old image and the staged envelope
    again = devs[0].run(world.url)
    assert again.outcome == "up-to-date" and running(devs[0].folder) == (1, True)

    second = start(world, "install staged", rel, {"tags": ["staged"]})
    assert [m["state"] for m in members(world, second["id"])] == ["downloaded"] * 2
    for dev in devs:
        assert update_status(world, dev) == 200
        result = run_agent(dev.folder, world.url, dev.token, fetcher=HttpFetcher(timeout=5),
                           options=options, until=lambda r: r.outcome in FINAL)
        assert result is not None and result.outcome == "succeeded", result
        assert "resuming: the tracker has the device downloaded" in result.steps
        assert not any(s.startswith(("downloading", "downloaded ")) for s in result.steps)
        assert running(dev.folder) == (3, True)
        assert kept(dev) == []
        # one notification and one download for both campaigns
        assert history(world, dev) == ["notified", "downloading", "downloaded", "installing",
                                       "rebooting", "succeeded"]
    doc = world.until(second["id"], lambda d: d["status"] == "completed")
    assert doc["counts"] == {"succeeded": 2}


def test_staged_waves_pause_on_a_rolled_back_device_and_resume(world: World) -> None:
    """Four devices in waves 25/50/100 (1, 1, 2 devices), success threshold 75 %, failure
    threshold 25 %. A wave opens only after the one before it succeeded. The first wave-3
    device is a Linux-class device on which the release's application exits at once: it rolls
    back, 1 of 3 finished devices failed (33 % > 25 %) and the campaign pauses; the other
    wave-3 device, notified but not started, gets nothing until resume."""
    docs = [world.register(["waves"]) for _ in range(4)]
    rel = release(world, 4, EXITS)  # mcu devices do not run it; the Linux device does
    cid = start(world, "waves", rel, {"tags": ["waves"]}, waves=[25, 50, 100],
                success_threshold=0.75, failure_threshold=0.25)["id"]
    order = members(world, cid)
    assert [(m["wave"], m["state"]) for m in order] == [(1, "notified"), (2, "pending"),
                                                        (3, "pending"), (3, "pending")]
    token = {d["id"]: d["token"] for d in docs}
    # the tracker knows a device by its credential: position 2 gets the Linux device's folder
    devs = [Dev(folder(world, f"wave-{i}", linux=i == 2), m["device_id"],
                token[m["device_id"]]) for i, m in enumerate(order)]
    try:
        for dev in devs[1:]:  # later waves are not open: nothing to do, never notified
            assert update_status(world, dev) == 204
            assert dev.run(world.url).outcome == "up-to-date"
        for wave, dev in ((2, devs[0]), (3, devs[1])):
            done = dev.run(world.url)
            assert done.outcome == "succeeded", done.steps
            doc = world.until(cid, lambda d, w=wave: d["current_wave"] == w)
            assert doc["log"][-1]["detail"].startswith(f"wave {wave} of 3 opened")
        bad = devs[2].run(world.url)
        assert bad.outcome == "rolled-back", bad.steps
        assert running(devs[2].folder) == (1, True)
        doc = world.until(cid, lambda d: d["status"] == "paused")
        assert doc["pause_reason"] == ("failure threshold crossed: 1 of 3 finished devices "
                                       "failed (33.33% > 25%)")
        held = devs[3]
        assert update_status(world, held) == 204
        assert held.run(world.url).outcome == "up-to-date"
        assert history(world, held) == ["notified"]  # notified with wave 3, then held back
        assert running(held.folder) == (1, True)
        assert [m["state"] for m in members(world, cid)] == ["succeeded", "succeeded",
                                                             "rolled-back", "notified"]

        # the held device's agent listens (push over SSE): nothing while paused, and the
        # resume's notice makes it install
        with Agent(shim(world), held.folder, held.token, PUSH) as agent:
            wait_until(lambda: agent.saw("up-to-date: no update assigned")
                       and agent.saw("sse: connected"), 15, "the agent's SSE connection")
            assert not agent.saw("assigned (")
            resumed = world.post(f"/{cid}/resume", "bob")
            assert resumed.status_code == 200 and resumed.json()["status"] == "running"
            done = agent.finish(30)
        assert done.outcome == "succeeded", agent.lines
        assert agent.saw(f"(sse): release {rel['id']}") and agent.saw("by the pushed notice")
        assert running(held.folder) == (4, True)
        doc = world.until(cid, lambda d: d["status"] == "completed")
        assert doc["counts"] == {"succeeded": 3, "rolled-back": 1}
        assert doc["log"][-1]["detail"] == "3 of 4 devices succeeded"
        assert [e["action"] for e in doc["log"]] == ["create", "approve", "start", "wave",
                                                     "wave", "pause", "resume", "completed"]
    finally:
        ProcessLauncher("true", devs[2].folder / "app.pid").stop()


def test_cancel_mid_campaign_leaves_devices_not_started_alone(world: World) -> None:
    """Three devices, waves 50/100 (2 + 1): one device installs, then alice cancels; the other
    wave-1 device (notified, not started) and the wave-2 device get nothing."""
    docs = {d["id"]: d for d in (world.register(["cancel"]) for _ in range(3))}
    rel = release(world, 5)
    cid = start(world, "cancel", rel, {"tags": ["cancel"]}, waves=[50, 100])["id"]
    order = members(world, cid)
    assert [(m["wave"], m["state"]) for m in order] == [(1, "notified"), (1, "notified"),
                                                        (2, "pending")]
    devs = [Dev(folder(world, f"cancel-{i}"), m["device_id"], docs[m["device_id"]]["token"])
            for i, m in enumerate(order)]
    done = devs[0].run(world.url)
    assert done.outcome == "succeeded", done.steps
    assert world.campaign(cid)["status"] == "running"  # wave 1: 1 of 2
    assert update_status(world, devs[1]) == 200
    cancelled = world.post(f"/{cid}/cancel", "alice")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    doc = world.campaign(cid)
    assert doc["log"][-1]["detail"] == "1 assignments withdrawn"
    assert [m["state"] for m in doc["members"]] == ["succeeded", "cancelled", "cancelled"]
    for dev in devs[1:]:
        assert update_status(world, dev) == 204
        assert dev.run(world.url).outcome == "up-to-date"
        assert running(dev.folder) == (1, True)
    assert history(world, devs[1]) == ["notified"]
    assert history(world, devs[2]) == []
    assert running(devs[0].folder) == (5, True)


def test_targeting_by_tags_and_by_class(world: World) -> None:
    """The class is what each agent's inventory reported; tags are all-of."""
    a = device(world, "pick-a", ["picked"])
    a2 = device(world, "pick-a2", ["picked", "eu"])
    b = device(world, "pick-b", ["eu"])
    c = device(world, "pick-c", [], klass=OTHER_CLASS)
    everyone = (a, a2, b, c)
    for dev in everyone:  # the inventory: vendor and class
        assert dev.run(world.url).outcome == "up-to-date"
    by_tag = start(world, "by tag", release(world, 6), {"tags": ["picked"]})
    other = release(world, 7, b"an image for the other class" * 40,
                    class_name=OTHER_CLASS_NAME)
    by_class = start(world, "by class", other, {"class_id": str(OTHER_CLASS)})
    assert {m["device_id"] for m in members(world, by_tag["id"])} == {a.id, a2.id}
    assert {m["device_id"] for m in members(world, by_class["id"])} == {c.id}
    assert (by_tag["devices"], by_class["devices"]) == (2, 1)
    results = {dev.id: dev.run(world.url) for dev in everyone}
    assert [results[d.id].outcome for d in everyone] == ["succeeded", "succeeded",
                                                         "up-to-date", "succeeded"]
    assert [running(d.folder)[0] for d in everyone] == [6, 6, 1, 7]
    assert history(world, b) == []
    for cid in (by_tag["id"], by_class["id"]):
        assert world.until(cid, lambda d: d["status"] == "completed")["counts"] == \
            {"succeeded": len(members(world, cid))}
