"""Device polling end to end (RFC 9019 client-initiated mode), over real HTTP.

One uvicorn server holds the firmware server and the status tracker (SQLite in tmp_path); a
real device folder (mcu shape) runs ``suitkit.device.agent.run_once``. The author uploads a
release whose detached image is served by the same firmware server, the admin registers the
device and deploys; the agent installs, boots, confirms and tells the tracker every step.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from device.device_kit import CLASS, VENDOR, Author, boot, confirm, image_bytes, install, new_device
from suitkit.cli.main import app as cli
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import AgentOptions, run_agent, run_once
from suitkit.device.config import create_device, load_config
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

ADMIN = "admin-token-for-agent-tests"
UPLOAD = "upload-token-for-agent-tests"


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


@dataclass
class World:
    url: str
    client: httpx.Client
    author: Author
    tmp: Path

    def upload(self, envelope: bytes, image: bytes | None = None) -> dict[str, Any]:
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))]
        if image is not None:
            files.append(("image", ("app.bin", image, "application/octet-stream")))
        response = self.client.post("/api/v1/releases", files=files, headers=auth(UPLOAD))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def release(self, sequence: int, *, serve: bytes | None = None) -> dict[str, Any]:
        """Upload a release whose manifest's uri is ``/firmware/<sha256>`` of ``serve``
        (default: its own image, uploaded with it)."""
        image = image_bytes(f"app-{sequence}-", 2000)
        served = serve if serve is not None else image
        uri = f"{self.url}/firmware/{hashlib.sha256(served).hexdigest()}"
        envelope, built = self.author.release(sequence, uri=uri)
        assert built == image
        return self.upload(envelope, image if serve is None else None)

    def register(self) -> dict[str, Any]:
        response = self.client.post("/api/v1/devices", json={"name": "d"}, headers=auth(ADMIN))
        assert response.status_code == 201, response.text
        return dict(response.json())

    def deploy(self, release: dict[str, Any], devices: list[str],
               token: str | None = ADMIN) -> httpx.Response:
        return self.client.post("/api/v1/deployments", headers=auth(token), json={
            "release": release["id"], "envelope_url": self.url + release["envelope"]["url"],
            "devices": devices})

    def history(self, device_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/api/v1/devices/{device_id}/history", headers=auth(ADMIN))
        return list(response.json()["history"])

    def device(self, base_sequence: int = 1) -> tuple[Path, dict[str, Any]]:
        """A registered mcu device running (confirmed) an integrated release."""
        folder = new_device(self.tmp / f"dev-{len(list(self.tmp.glob('dev-*')))}",
                            [self.author.anchor])
        envelope, _ = self.author.release(base_sequence, "base")
        assert install(folder, envelope).installed
        boot(folder)
        confirm(folder)
        return folder, self.register()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("agent")
    author = Author.create(tmp / "author")
    router = create_router(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", ADMIN))
    config = ServerConfig(data_dir=tmp / "data", upload_token=UPLOAD, routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield World(url, client, author, tmp)


def running(folder: Path) -> tuple[int, bool]:
    """(sequence number of the running app, whether it is confirmed)."""
    opened = open_device(folder)
    observation = opened.bootloader.observe()  # type: ignore[attr-defined]
    (check,) = observation.primary
    return check.info.sequence_number, opened.bootloader.read_counters()["app"] == \
        check.info.sequence_number


def states(history: list[dict[str, Any]]) -> list[str]:
    return [h["state"] for h in history if h["kind"] == "event"]


def test_a_deployed_release_is_installed_booted_confirmed_and_reported(world: World) -> None:
    folder, dev = world.device()
    release = world.release(2)
    deployed = world.deploy(release, [dev["id"]])
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["devices"][0]["event"]["state"] == "notified"

    lines: list[str] = []
    result = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher(), say=lines.append)
    assert result.outcome == "succeeded", result.steps
    assert result.release == release["id"] and lines == list(result.steps)
    assert running(folder) == (2, True)

    history = world.history(dev["id"])
    assert states(history) == ["notified", "downloading", "downloaded", "installing",
                               "rebooting", "succeeded"]
    reports = [h for h in history if h["kind"] == "report"]
    assert len(reports) == 1 and reports[0]["summary"]["succeeded"] is True
    assert reports[0]["summary"]["manifest_digest"]["value"] == release["id"]
    shown = world.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert shown["state"] == "succeeded"
    assert shown["components"] == [{"id": ["00"], "sequence": 2,
                                    "digest": release["components"][0]["digest"],
                                    "version": None},
                                   {"id": [b"suitkit".hex(), b"anchors".hex()],
                                    "sequence": 0, "digest": None, "version": None}]
    assert shown["anchors"] == {"version": 0, "digest": None}  # as device init wrote them

    # the assignment is done: the next poll finds nothing to do and changes nothing
    again = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())
    assert again.outcome == "up-to-date" and again.ok
    assert len(world.history(dev["id"])) == len(history)
    assert world.client.get(f"/api/v1/devices/{dev['id']}/update",
                            headers=auth(dev["token"])).status_code == 204


def test_a_tampered_release_fails_with_the_reason_and_the_device_keeps_its_image(
        world: World) -> None:
    folder, dev = world.device()
    good = world.release(5)  # its image is on the server
    # release 6's manifest points at release 5's image: the digest cannot match
    bad = world.release(6, serve=image_bytes("app-5-", 2000))
    assert world.deploy(bad, [dev["id"]]).status_code == 201

    result = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())
    assert result.outcome == "failed" and not result.ok
    assert running(folder) == (1, True)
    history = world.history(dev["id"])
    assert states(history) == ["notified", "downloading", "downloaded", "installing", "failed"]
    (report,) = [h for h in history if h["kind"] == "report"]
    failure = report["summary"]["failure"]
    assert report["summary"]["succeeded"] is False and failure["reason_name"]
    assert history[-1]["detail"] == result.reason and "digest" in result.reason.lower()

    # from failed, a new deployment is allowed; it succeeds
    assert world.deploy(good, [dev["id"]]).status_code == 201
    assert run_once(folder, world.url, dev["token"], fetcher=HttpFetcher()).outcome == \
        "succeeded"
    assert running(folder) == (5, True)


def test_deployments_and_updates_are_authorized(world: World) -> None:
    _, a = world.device()
    b = world.register()
    release = world.release(7)
    assert world.deploy(release, [a["id"]], token=None).status_code == 401
    assert world.deploy(release, [a["id"]], token="nope.nope").status_code == 401
    assert world.deploy(release, [a["id"]], token=a["token"]).status_code == 403
    assert world.deploy(release, ["no-such-device"]).status_code == 404
    bad = world.client.post("/api/v1/deployments", headers=auth(ADMIN), json={
        "release": "zz", "envelope_url": "file:///etc/passwd", "devices": [a["id"]]})
    assert bad.status_code == 400

    update = f"/api/v1/devices/{a['id']}/update"
    assert world.client.get(update, headers=auth(a["token"])).status_code == 204
    assert world.deploy(release, [a["id"]]).status_code == 201
    mine = world.client.get(update, headers=auth(a["token"]))
    assert mine.status_code == 200
    nonce = mine.json()["nonce"]  # issued with the update (report §4), 16 bytes in hex
    assert isinstance(nonce, str) and len(bytes.fromhex(nonce)) == 16
    assert mine.json() == {"release": release["id"],
                           "envelope_url": world.url + release["envelope"]["url"],
                           "action": "install", "campaign": None, "nonce": nonce}
    assert world.client.get(update).status_code == 401
    assert world.client.get(update, headers=auth(ADMIN)).status_code == 403
    assert world.client.get(update, headers=auth(b["token"])).status_code == 403

    # still notified: a new deployment replaces the assignment without a second event
    other = world.release(8)
    assert world.deploy(other, [a["id"]]).status_code == 201
    assert world.client.get(update, headers=auth(a["token"])).json()["release"] == other["id"]
    assert states(world.history(a["id"])) == ["notified"]
    # in the middle of an update: refused, and nothing of the deployment is kept
    moved = world.client.post(f"/api/v1/devices/{a['id']}/events", headers=auth(a["token"]),
                              json={"state": "downloading"})
    assert moved.status_code == 201
    refused = world.deploy(release, [b["id"], a["id"]])
    assert refused.status_code == 409 and "middle of an update" in refused.json()["error"]
    assert world.client.get(f"/api/v1/devices/{b['id']}/update",
                            headers=auth(b["token"])).status_code == 204
    assert states(world.history(b["id"])) == []


def test_an_unreachable_tracker_is_a_clear_error(world: World, tmp_path: Path) -> None:
    folder, dev = world.device()
    result = run_once(folder, "http://127.0.0.1:9", dev["token"], fetcher=HttpFetcher())
    assert result.outcome == "error" and "ConnectError" in result.reason
    wrong = run_once(folder, world.url, dev["id"] + ".wrong", fetcher=HttpFetcher())
    assert wrong.outcome == "error" and "HTTP 401" in wrong.reason
    assert run_once(tmp_path, world.url, dev["token"], fetcher=HttpFetcher()).outcome == "error"


def test_the_cli_polls_once(world: World) -> None:
    folder, dev = world.device()
    release = world.release(9)
    assert world.deploy(release, [dev["id"]]).status_code == 201
    credential = world.tmp / f"{dev['id']}.cred"
    credential.write_text(dev["token"] + "\n")
    args = ["device", "run", str(folder), "--server", world.url, "--credential-file",
            str(credential)]
    done = CliRunner().invoke(cli, [*args, "--once"])
    assert done.exit_code == 0, done.output
    assert "downloading" in done.output and "succeeded" in done.output
    assert running(folder) == (9, True)
    idle = CliRunner().invoke(cli, [*args, "--max-runs", "2", "--interval", "0"])
    assert idle.exit_code == 0, idle.output
    assert idle.output.count("up-to-date") == 2


def test_an_application_that_does_not_start_is_rolled_back_and_reported(
        world: World) -> None:
    """Linux-class device: the new application exits at once, so it is not confirmed; the agent
    boots again (the bootloader reverts) and reports rolled-back."""
    import sys

    from suitkit.device.invoke import ProcessLauncher

    folder = world.tmp / "linux-dev"
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, trust_anchors=[world.author.anchor],
                  shape="linux", app_command=f"{sys.executable} {{image}}")
    try:
        good = b"import time\ntime.sleep(60)\n"
        base = world.author.envelope(1, [world.author.component("good.py", good)])
        assert install(folder, base).installed
        boot(folder)
        confirm(folder)
        dev = world.register()

        bad = b"import sys\nsys.exit(3)\n"
        uri = f"{world.url}/firmware/{hashlib.sha256(bad).hexdigest()}"
        envelope = world.author.envelope(2, [world.author.component("bad.py", bad, uri=uri)])
        release = world.upload(envelope, bad)
        assert world.deploy(release, [dev["id"]]).status_code == 201

        result = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())
        assert result.outcome == "rolled-back", result.steps
        history = world.history(dev["id"])
        assert states(history)[-2:] == ["rebooting", "rolled-back"]
        opened = open_device(folder)
        assert opened.bootloader.read_counters()["app"] == 1
        assert opened.bootloader.observe().primary[0].info.sequence_number == 1  # type: ignore[attr-defined]
    finally:
        ProcessLauncher("true", folder / "app.pid").stop()


def test_a_device_enrols_itself_and_then_updates(world: World) -> None:
    """`device register` (with an admin's token, at provisioning) writes the credential the
    tracker shows once, sends the first inventory, and `device run` then uses it."""
    folder = new_device(world.tmp / "enrolled", [world.author.anchor])
    envelope, _ = world.author.release(1, "base")
    assert install(folder, envelope).installed
    boot(folder)
    confirm(folder)
    admin_file = world.tmp / "admin.token"
    admin_file.write_text(ADMIN + "\n")
    credential = world.tmp / "enrolled.cred"
    args = ["device", "register", str(folder), "--server", world.url, "--token-file",
            str(admin_file), "--out", str(credential), "--name", "boiler-7"]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    token = credential.read_text().strip()
    device_id = token.partition(".")[0]
    assert f"registered device {device_id}" in done.output
    assert credential.stat().st_mode & 0o777 == 0o600
    shown = world.client.get(f"/api/v1/devices/{device_id}", headers=auth(ADMIN)).json()
    assert shown["name"] == "boiler-7" and shown["components"][0]["sequence"] == 1

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "already exists" in again.output
    # the folder keeps the tracker's id, and the tracker the device's vendor and class IDs
    assert load_config(folder).tracker_id == device_id
    assert (shown["vendor_id"], shown["class_id"]) == (str(VENDOR), str(CLASS))
    twice = CliRunner().invoke(cli, [*args[:-4], "--out", str(world.tmp / "twice.cred")])
    assert twice.exit_code == 1 and f"already registered as tracker device {device_id}" in (
        twice.output)
    wrong = world.tmp / "wrong.token"
    wrong.write_text("tok_nope.nope\n")
    fresh = new_device(world.tmp / "enrolled-2", [world.author.anchor])
    refused = CliRunner().invoke(cli, ["device", "register", str(fresh), *args[3:6], str(wrong),
                                       "--out", str(world.tmp / "other.cred")])
    assert refused.exit_code == 1 and "HTTP 401" in refused.output
    assert load_config(fresh).tracker_id is None
    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    unreachable = CliRunner().invoke(cli, ["device", "register", str(fresh), "--server", closed,
                                           "--token-file", str(admin_file),
                                           "--out", str(world.tmp / "other.cred")])
    assert unreachable.exit_code == 5 and "cannot reach" in unreachable.output
    assert load_config(fresh).tracker_id is None
    assert not (world.tmp / "other.cred").exists()

    assert world.deploy(world.release(4), [device_id]).status_code == 201
    run = CliRunner().invoke(cli, ["device", "run", str(folder), "--server", world.url,
                                   "--credential-file", str(credential), "--once"])
    assert run.exit_code == 0, run.output
    assert running(folder) == (4, True)


def test_a_device_folder_runs_only_with_its_own_credential(world: World) -> None:
    """Issue #11 item 14: folder A, given device B's credential (same product: the tracker
    cannot tell them apart by vendor and class), must not overwrite B's inventory or report in
    B's name. The first run the tracker accepted bound folder A to device A."""
    folder_a, a = world.device()
    folder_b, b = world.device()
    assert load_config(folder_a).tracker_id is None  # registered over the API only
    first = run_once(folder_a, world.url, a["token"], fetcher=HttpFetcher())
    assert first.outcome == "up-to-date", first.steps
    assert load_config(folder_a).tracker_id == a["id"]
    before = world.client.get(f"/api/v1/devices/{b['id']}", headers=auth(ADMIN)).json()
    assert before["inventory_updated"] is None

    crossed = run_once(folder_a, world.url, b["token"], fetcher=HttpFetcher())
    assert crossed.outcome == "error"
    assert crossed.reason == (
        f"{folder_a}: the credential is for tracker device {b['id']}, but this device folder "
        f"is registered as {a['id']}; use its own credential")
    after = world.client.get(f"/api/v1/devices/{b['id']}", headers=auth(ADMIN)).json()
    assert after == before and world.history(b["id"]) == []

    credential = world.tmp / "b.cred"
    credential.write_text(b["token"] + "\n")
    done = CliRunner().invoke(cli, ["device", "run", str(folder_a), "--server", world.url,
                                    "--credential-file", str(credential), "--once"])
    assert done.exit_code == 2, done.output
    assert "this device folder is registered as" in done.output
    assert world.client.get(f"/api/v1/devices/{b['id']}", headers=auth(ADMIN)).json() == before
    # the agent loop (push mode) stops at once: no run, no retry, no notice source listening
    lines: list[str] = []
    loop = run_agent(folder_a, world.url, b["token"], fetcher=HttpFetcher(), say=lines.append,
                     options=AgentOptions(mode="push", transport="longpoll", duration=5))
    assert loop is not None and loop.outcome == "error"
    assert "this device folder is registered as" in loop.reason
    assert lines == [f"error: {loop.reason}"]
    assert world.client.get(f"/api/v1/devices/{b['id']}", headers=auth(ADMIN)).json() == before
    # B's own folder with B's credential is fine (and binds itself to B)
    own = run_once(folder_b, world.url, b["token"], fetcher=HttpFetcher())
    assert own.outcome == "up-to-date" and load_config(folder_b).tracker_id == b["id"]


def test_an_inventory_that_contradicts_the_registration_is_refused(world: World) -> None:
    """A credential used from a device of another class: the tracker keeps the identity the
    device registered with (or first reported) and refuses the inventory (409)."""
    folder, dev = world.device()
    assert run_once(folder, world.url, dev["token"], fetcher=HttpFetcher()).outcome == (
        "up-to-date")
    other = world.tmp / "other-class"
    create_device(other, vendor_id=VENDOR, class_id=uuid.UUID(int=7),
                  trust_anchors=[world.author.anchor])
    before = world.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    result = run_once(other, world.url, dev["token"], fetcher=HttpFetcher())
    assert result.outcome == "error" and "HTTP 409" in result.reason
    assert f"class_id: device {dev['id']} is registered as {CLASS}" in result.reason
    assert world.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json() == before
    assert load_config(other).tracker_id is None  # nothing accepted: nothing bound


def recording_client(url: str, token: str, seen: list[str]) -> httpx.Client:
    """The agent's client, recording ``METHOD path`` of every request it makes."""
    def record(request: httpx.Request) -> None:
        seen.append(f"{request.method} {request.url.path.rsplit('/', 1)[-1]}")

    return httpx.Client(base_url=url, timeout=30, headers=auth(token),
                        event_hooks={"request": [record]})


def test_a_poll_is_one_check_in_request(world: World) -> None:
    """Issue #12: the agent polls with ``POST .../checkin``; its inventory goes along only
    when the tracker asks (the first time, and after an update changed what it runs)."""
    folder, dev = world.device()
    seen: list[str] = []
    with recording_client(world.url, dev["token"], seen) as client:
        first = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher(), client=client)
        assert first.outcome == "up-to-date", first.steps
        assert seen == ["POST checkin", "POST checkin"]  # digest, then the inventory asked for
        seen.clear()
        again = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher(), client=client)
        assert again.outcome == "up-to-date" and seen == ["POST checkin"]
        shown = world.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
        assert shown["components"][0]["sequence"] == 1
        release = world.release(41)
        assert world.deploy(release, [dev["id"]]).status_code == 201
        seen.clear()
        done = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher(), client=client)
        assert done.outcome == "succeeded", done.steps
        assert seen[0] == "POST checkin" and "inventory" not in seen and "update" not in seen
        assert f"GET {dev['id']}" not in seen  # the state came with the check-in
        seen.clear()
        after = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher(), client=client)
        assert after.outcome == "up-to-date" and seen == ["POST checkin"]
    shown = world.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert shown["components"][0]["sequence"] == 41 and shown["state"] == "succeeded"


def test_the_agent_calls_the_device_api_under_its_own_prefix(world: World) -> None:
    """Issue #17: every call the agent makes in an update goes to /device/v1/{id}/...; none
    to the operator API."""
    folder, dev = world.device()
    paths: list[str] = []
    with httpx.Client(base_url=world.url, timeout=30, headers=auth(dev["token"]),
                      event_hooks={"request": [lambda r: paths.append(r.url.path)]}) as client:
        assert run_once(folder, world.url, dev["token"], fetcher=HttpFetcher(),
                        client=client).outcome == "up-to-date"
        release = world.release(43)
        assert world.deploy(release, [dev["id"]]).status_code == 201
        done = run_once(folder, world.url, dev["token"], fetcher=HttpFetcher(), client=client)
        assert done.outcome == "succeeded", done.steps
    tracker = [p for p in paths if not p.startswith(("/envelopes/", "/firmware/"))]
    assert tracker and all(p.startswith(f"/device/v1/{dev['id']}/") for p in tracker), tracker
    assert {p.rsplit("/", 1)[1] for p in tracker} >= {"checkin", "events", "reports"}


def test_an_agent_falls_back_to_the_old_pair_on_a_tracker_without_check_in(
        tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    router = create_router(TrackerConfig(f"sqlite:///{tmp_path / 'tracker.db'}", ADMIN))
    router.routes[:] = [r for r in router.routes  # an old tracker: no device API either
                        if not getattr(r, "path", "").endswith("/checkin")
                        and not getattr(r, "path", "").startswith("/device/v1/")]
    config = ServerConfig(data_dir=tmp_path / "data", upload_token=UPLOAD, routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        old = World(url, client, author, tmp_path)
        folder, dev = old.device()
        assert client.post(f"/api/v1/devices/{dev['id']}/checkin", headers=auth(dev["token"]),
                           json={"inventory_digest": "ab"}).status_code == 404
        release = old.release(2)
        assert old.deploy(release, [dev["id"]]).status_code == 201
        seen: list[str] = []
        with recording_client(url, dev["token"], seen) as agent:
            result = run_once(folder, url, dev["token"], fetcher=HttpFetcher(), client=agent)
        assert result.outcome == "succeeded", result.steps
        # the device API's prefix once, then the old routes (issue #17)
        assert seen[:5] == ["POST checkin", "POST checkin", "PUT inventory", "GET update",
                            f"GET {dev['id']}"]
        assert seen.count("POST checkin") == 2  # not asked again in the same run
        shown = client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
        assert shown["components"][0]["sequence"] == 2 and shown["state"] == "succeeded"
