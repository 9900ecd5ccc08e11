"""The agent updates itself (issue #16): real ``suitkit serve``, real launcher and agent processes.

A Linux-class device made with an agent component (``['suitkit', 'agent']``) runs under
``suitkit device launch``. Its agent images are zip applications of this very suitkit with
another ``__version__`` (``build_agent_pyz``); broken ones exit at once or never check in. The
tracker sees each outcome: a good new agent comes up, confirms itself at its first check-in and
reports its version; a broken one is reverted by the launcher and the previous agent reports
``rolled-back`` with the reason; a kill -9 (a power cut of the whole device) after each step of
the switch leaves a device whose launcher brings a working agent back, and the release ends in
a final state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import suitkit
from device.device_kit import CLASS, VENDOR, Author, image_bytes
from serve_kit import READY, serving, start_process, stop_process
from suitkit.cli.main import app as cli
from suitkit.core import codec
from suitkit.device.agent import register, run_once
from suitkit.device.config import AGENT_ID, create_device
from suitkit.device.consumer import slot_record
from suitkit.device.fetch import HttpFetcher
from suitkit.device.selfupdate import build_agent_pyz, read_note
from suitkit.device.wiring import open_device

ADMIN = "admin-token-for-selfupdate"
FINAL = ("succeeded", "failed", "rolled-back")
LAUNCH = [sys.executable, "-c", "from suitkit.cli.main import main; main()", "device",
          "launch"]
AGENT_HEX = ["0x" + part.hex() for part in AGENT_ID]


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class World:
    url: str
    tmp: Path
    author: Author
    agents: dict[str, bytes]
    sequence: int = 1
    since: dict[str, int] = field(default_factory=dict)
    """Per device: the last history event before the latest deployment."""

    def upload(self, components: list[tuple[list[str], bytes]], sequence: int | None = None,
               *, invoke: bool = False) -> dict[str, Any]:
        """A release of detached images (``[(component id, image)]``), uploaded; ``invoke``:
        its Invocation Procedure starts them."""
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        described, files = [], []
        for index, (cid, image) in enumerate(components):
            name = f"c{sequence}-{index}.bin"
            (self.author.folder / name).write_bytes(image)
            described.append({"id": cid, "image": name, "invoke": invoke,
                              "uri": f"{self.url}/firmware/{hashlib.sha256(image).hexdigest()}"})
            files.append((f"image-{index}", (name, image)))
        envelope = self.author.envelope(sequence, described)
        response = httpx.post(f"{self.url}/api/v1/releases", headers=admin(), timeout=60,
                              files=[("envelope", ("e.suit", envelope)), *files])
        assert response.status_code == 201, response.text
        return dict(response.json())

    def deploy(self, release: dict[str, Any], device: str) -> None:
        self.since[device] = max((h["seq"] for h in self.history(device)), default=0)
        response = httpx.post(f"{self.url}/api/v1/deployments", headers=admin(), timeout=30,
                              json={"release": release["id"], "devices": [device],
                                    "envelope_url": self.url + release["envelope"]["url"]})
        assert response.status_code == 201, response.text

    def device_doc(self, device: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/devices/{device}", headers=admin(), timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def history(self, device: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/devices/{device}/history", headers=admin(),
                             timeout=30)
        return [h for h in response.json()["history"] if h["kind"] == "event"]

    def final(self, device: str, release: dict[str, Any]) -> dict[str, Any]:
        """Wait for the final event of the device's latest deployment (``release``)."""
        found: list[dict[str, Any]] = []

        def done() -> bool:
            found[:] = [h for h in self.history(device) if h["state"] in FINAL
                        and h["seq"] > self.since.get(device, 0)]
            return bool(found)

        wait(done, f"a final state (succeeded, failed, rolled-back) of release "
                   f"{release['id'][:12]} in the tracker's history", 120)
        return found[-1]

    def agent_version(self, device: str) -> str | None:
        hardware = self.device_doc(device).get("hardware") or {}
        value = hardware.get("agent-version")
        return value if isinstance(value, str) else None


def wait(predicate: Callable[[], bool], what: str, timeout: float = READY) -> None:
    deadline = time.monotonic() + max(timeout, READY)
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("selfupdate")
    author = Author.create(tmp / "author")
    source = Path(suitkit.__file__).parent
    agents = {
        "v1": build_agent_pyz(source, tmp / "v1.pyz", version="0.1.0+v1"),
        "v2": build_agent_pyz(source, tmp / "v2.pyz", version="0.1.0+v2"),
        "v3": build_agent_pyz(source, tmp / "v3.pyz", version="0.1.0+v3"),
        "exits": build_agent_pyz(source, tmp / "exits.pyz",
                                 main="import sys\nsys.exit(3)\n"),
        "silent": build_agent_pyz(source, tmp / "silent.pyz",
                                  main="import time\ntime.sleep(3600)\n"),
    }
    (tmp / "admin.token").write_text(ADMIN)
    with serving(["--data", str(tmp / "data"), "--author-anchor", str(author.anchor),
                  "--admin-token-file", str(tmp / "admin.token"), "--log-level", "warning"]
                 ) as server:
        yield World(server.url, tmp, author, agents)


@dataclass
class Device:
    folder: Path
    id: str
    credential: Path


def new_device(world: World, name: str, *, app: bytes | None = None,
               app_command: str | None = None) -> Device:
    """A linux device with an agent component, provisioned in the factory with app #1 and
    agent v1 (each in a manifest of its own, as docs/selfupdate.md asks), registered."""
    folder = world.tmp / name
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, trust_anchors=[world.author.anchor],
                  shape="linux", agent=True, app_command=app_command)
    app = app if app is not None else image_bytes(f"{name}-app", 3000)
    app_envelope = world.author.envelope(1, [world.author.component(f"{name}-app.bin", app)])
    (world.author.folder / "v1.pyz").write_bytes(world.agents["v1"])
    agent_envelope = world.author.envelope(1, [{"id": AGENT_HEX, "image": "v1.pyz",
                                                "invoke": False}])
    open_device(folder).bootloader.install_factory({  # type: ignore[attr-defined]
        "app": (slot_record((b"\x00",), codec.decode_envelope(app_envelope)), app),
        "agent": (slot_record(AGENT_ID, codec.decode_envelope(agent_envelope)),
                  world.agents["v1"])})
    credential = register(folder, world.url, ADMIN)
    path = world.tmp / f"{name}.cred"
    path.write_text(credential)
    return Device(folder, credential.partition(".")[0], path)


class Launcher:
    """``suitkit device launch`` as a real process (its own process group: a power cut is a
    SIGKILL of that group), output in a file."""

    def __init__(self, world: World, device: Device, deadline: float = 60) -> None:
        self.log = device.folder.parent / f"{device.folder.name}.launch.log"
        self.argv = [*LAUNCH, str(device.folder), "--confirm-deadline", str(deadline),
                     "--server", world.url, "--credential-file", str(device.credential),
                     "--interval", "0.5"]
        self.process: subprocess.Popen[Any] | None = None

    def __enter__(self) -> Launcher:
        with self.log.open("a") as out:
            self.process = start_process(self.argv, stdout=out, stderr=subprocess.STDOUT)
        return self

    def power_cut(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process)

    def text(self) -> str:
        return self.log.read_text()


def test_a_good_new_agent_comes_up_checks_in_and_reports_its_version(world: World) -> None:
    device = new_device(world, "good")
    with Launcher(world, device) as launcher:
        wait(lambda: world.agent_version(device.id) == "suitkit 0.1.0+v1",
             "the factory agent v1 to check in")
        release = world.upload([(AGENT_HEX, world.agents["v2"])])
        world.deploy(release, device.id)
        final = world.final(device.id, release)
        assert final["state"] == "succeeded", (final, launcher.text())
        assert "checked in" in final["detail"]
        wait(lambda: world.agent_version(device.id) == "suitkit 0.1.0+v2",
             "the new agent v2 to report its version")
        agent = next(c for c in world.device_doc(device.id)["components"]
                     if c["id"] == [p.hex() for p in AGENT_ID])
        assert agent["sequence"] == release["sequence_number"]
        # the launcher notices the confirm at its next look (after the tracker heard of it)
        wait(lambda: "the new agent checked in and confirmed itself" in launcher.text(),
             "the launcher to log that the new agent confirmed itself")
        # the switch happened: the new agent runs from the other slot, confirmed
        opened = open_device(device.folder)
        assert opened.bootloader.read_state().phase.value == "confirmed"  # type: ignore[attr-defined]
        assert opened.bootloader.read_counters()["agent"] == release["sequence_number"]
        # an update of the application alone goes through the launcher the same way; the
        # agent (re-staged as it runs) stays v2
        app = world.upload([(["0x00"], image_bytes("good-app-2", 2500))])
        world.deploy(app, device.id)
        final = world.final(device.id, app)
        assert final["state"] == "succeeded", (final, launcher.text())
        assert f"booted app #{app['sequence_number']}, agent #{release['sequence_number']} " \
               "(on trial)" in launcher.text()
        assert world.agent_version(device.id) == "suitkit 0.1.0+v2"
        # an older agent, however well signed, is refused (RFC 9124 REQ.SEC.SEQUENCE)
        older = world.upload([(AGENT_HEX, world.agents["v3"])], sequence=1)
        world.deploy(older, device.id)
        final = world.final(device.id, older)
        assert final["state"] == "failed" and "rollback" in final["detail"], final
        assert world.agent_version(device.id) == "suitkit 0.1.0+v2"
    assert open_device(device.folder).bootloader.read_counters() == {
        "app": app["sequence_number"], "agent": release["sequence_number"]}


@pytest.mark.parametrize("broken", ["exits", "silent"])
def test_a_broken_new_agent_is_rolled_back_and_the_device_reports_it(world: World,
                                                                      broken: str) -> None:
    device = new_device(world, f"broken-{broken}")
    with Launcher(world, device, deadline=8 if broken == "silent" else 60) as launcher:
        wait(lambda: world.agent_version(device.id) == "suitkit 0.1.0+v1",
             "the factory agent v1 to check in")
        release = world.upload([(AGENT_HEX, world.agents[broken])])
        world.deploy(release, device.id)
        final = world.final(device.id, release)
        assert final["state"] == "rolled-back", (final, launcher.text())
        expected = ("exited with status 3 before it checked in" if broken == "exits"
                    else "did not check in within 8 s")
        assert expected in final["detail"]
        assert "reverted to the previous agent" in final["detail"]
        # the previous agent is back, reports, and keeps the device updatable
        assert world.agent_version(device.id) == "suitkit 0.1.0+v1"
        assert read_note(device.folder) is None
    # (a launcher with a deadline a loaded machine cannot miss: an agent takes seconds to start)
    with Launcher(world, device) as launcher:
        good = world.upload([(AGENT_HEX, world.agents["v2"])])
        world.deploy(good, device.id)
        assert world.final(device.id, good)["state"] == "succeeded", launcher.text()
    assert open_device(device.folder).bootloader.read_counters()["agent"] == \
        good["sequence_number"]


def test_an_update_whose_application_does_not_start_is_rolled_back_by_the_launcher(
        world: World) -> None:
    device = new_device(world, "app-fails", app=b"exec sleep 3600\n",
                        app_command="/bin/sh {image}")
    pid_file = device.folder / "app.pid"
    try:
        with Launcher(world, device) as launcher:
            wait(lambda: world.agent_version(device.id) == "suitkit 0.1.0+v1",
                 "the factory agent v1 to check in")
            first = int(pid_file.read_text())
            release = world.upload([(["0x00"], b"exit 3\n")], invoke=True)
            world.deploy(release, device.id)
            final = world.final(device.id, release)
            assert final["state"] == "rolled-back", (final, launcher.text())
            assert "the application did not start" in final["detail"]
            assert "exited with status 3" in final["detail"]
            # the previous application was started again from the slot reverted to
            again = int(pid_file.read_text())
            assert again != first
            os.kill(again, 0)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_one_launcher_per_device_and_its_agent_dies_with_it(world: World) -> None:
    device = new_device(world, "one-launcher")
    with Launcher(world, device) as first:
        wait(lambda: world.agent_version(device.id) == "suitkit 0.1.0+v1",
             "the factory agent v1 to check in")
        second = start_process(Launcher(world, device).argv, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = second.communicate(timeout=READY)
        finally:
            stop_process(second)
        assert second.returncode == 1 and "another launcher runs this device" in output, output
        match = re.search(r"starting agent #1 from slot \w \(pid (\d+)\)", first.text())
        assert match, first.text()
        agent = int(match.group(1))
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)  # the launcher alone, not its group
        wait(lambda: not _alive(agent), "the agent to die with its launcher")
    with Launcher(world, device) as again:
        wait(lambda: "checked in" in again.text(), "the agent to come back with a new launcher")


# -- a power cut after each step of the switch ----------------------------------------------------


class _CutAt(httpx.BaseTransport):
    """The old agent's connection to the real tracker; the power fails just before it sends
    the event ``state`` (a BaseException, as a cut: nothing of the agent's runs after it)."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") and f'"state":"{self.state}"' in \
                request.content.decode().replace(" ", ""):
            raise KeyboardInterrupt(f"power cut before the {self.state} event")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _CutDuringFetch(HttpFetcher):
    """The power fails while the new agent's image is being written into the inactive slot."""

    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              **kwargs: Any) -> Iterator[bytes]:
        sent = 0
        for chunk in super().fetch(uri, max_bytes=max_bytes, offset=offset, **kwargs):
            yield chunk
            sent += len(chunk)
            if sent >= 64 * 1024:
                raise KeyboardInterrupt("power cut while staging the new agent")


def _old_agent(world: World, device: Device, *, transport: httpx.BaseTransport | None = None,
               fetcher: HttpFetcher | None = None) -> None:
    """The old agent's run, in this process, up to the power cut."""
    client = httpx.Client(base_url=world.url, timeout=30, transport=transport,
                          headers={"Authorization": f"Bearer {device.credential.read_text()}"})
    try:
        with pytest.raises(KeyboardInterrupt):
            run_once(device.folder, world.url, device.credential.read_text(),
                     fetcher=fetcher or HttpFetcher(), client=client)
    finally:
        client.close()


STEPS = ["staging", "pending", "handover", "trial", "confirmed"]


@pytest.mark.parametrize("step", STEPS)
def test_a_power_cut_after_each_step_of_the_switch_leaves_a_working_agent(world: World,
                                                                           step: str) -> None:
    device = new_device(world, f"cut-{step}")
    release = world.upload([(AGENT_HEX, world.agents["v2"])])
    world.deploy(release, device.id)
    credential = device.credential.read_text()
    if step == "staging":
        _old_agent(world, device, fetcher=_CutDuringFetch())
    elif step == "pending":  # marked pending; the cut comes before it tells the tracker
        _old_agent(world, device, transport=_CutAt("rebooting"))
    else:
        result = run_once(device.folder, world.url, credential, fetcher=HttpFetcher())
        assert result.outcome == "restarting", result
        if step in ("trial", "confirmed"):  # the launcher booted the new agent on trial ...
            opened = open_device(device.folder)
            assert opened.bootloader.boot().trial
            if step == "confirmed":  # ... which checked in and confirmed, then the cut
                opened.bootloader.confirm()
    with Launcher(world, device) as launcher:
        final = world.final(device.id, release)
        if step == "trial":  # cut while the new agent was on trial: it is reverted
            assert final["state"] == "rolled-back", (final, launcher.text())
            version = "suitkit 0.1.0+v1"
        else:
            assert final["state"] == "succeeded", (final, launcher.text())
            version = "suitkit 0.1.0+v2"
        wait(lambda: world.agent_version(device.id) == version,
             f"the agent {version} to report after the recovery")


def test_a_real_kill_9_while_the_new_agent_is_on_trial_reverts_to_a_working_agent(
        world: World) -> None:
    device = new_device(world, "kill-trial")
    release = world.upload([(AGENT_HEX, world.agents["silent"])])
    with Launcher(world, device) as launcher:
        wait(lambda: world.agent_version(device.id) == "suitkit 0.1.0+v1",
             "the factory agent v1 to check in")
        world.deploy(release, device.id)
        wait(lambda: open_device(device.folder).bootloader.read_state()  # type: ignore[attr-defined]
             .phase.value == "tried", "the launcher to start the new agent on trial")
        launcher.power_cut()
    with Launcher(world, device) as launcher:
        final = world.final(device.id, release)
        assert final["state"] == "rolled-back", (final, launcher.text())
        assert world.agent_version(device.id) == "suitkit 0.1.0+v1"


# -- the command line ---------------------------------------------------------------------------


def test_init_agent_and_launch_options_are_checked(tmp_path: Path, world: World) -> None:
    runner = CliRunner()
    base = ["device", "init", "--vendor-domain", "example.com", "--class-name", "c",
            "--trust-anchor", str(world.author.anchor)]
    mcu = runner.invoke(cli, [*base, str(tmp_path / "m"), "--agent"])
    assert mcu.exit_code == 2 and "only Linux-class devices run an updatable agent" in \
        mcu.output
    linux = runner.invoke(cli, [*base, str(tmp_path / "l"), "--shape", "linux", "--agent"])
    assert linux.exit_code == 0, linux.output
    assert "agent=['suitkit', 'agent']" in linux.output
    mcu_launch = runner.invoke(cli, ["device", "launch", str(tmp_path / "l2"), "--server",
                                     world.url])
    assert mcu_launch.exit_code != 0 and "not a device folder" in mcu_launch.output
    created = runner.invoke(cli, [*base, str(tmp_path / "plain"), "--shape", "linux"])
    assert created.exit_code == 0, created.output
    plain = runner.invoke(cli, ["device", "launch", str(tmp_path / "plain")])
    assert plain.exit_code != 0 and "whose agent is a component" in plain.output, plain.output
    for bad, message in ((["--confirm-deadline", "0"], "confirm deadline"),
                         (["--once"], "keeps the agent running")):
        result = runner.invoke(cli, ["device", "launch", str(tmp_path / "l"), *bad])
        assert result.exit_code == 2 and message in result.output, result.output
