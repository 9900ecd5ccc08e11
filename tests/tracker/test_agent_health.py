"""The device agent's health window (issue #13), in process against a real server on loopback
(``tracker.test_agent.World``): mcu device folders whose ``device.json`` has a ``health``
setting, a direct deployment, and ``run_once`` step by step.

What each test shows: the new image stays on trial through the window and is confirmed at its
end (``healthy``); a failing health command is reported and, with no rollback ordered, the image
is confirmed at the end all the same (``unhealthy``); a rollback ordered by the tracker reaches
the agent through the check-in and the bootloader reverts; the window survives an agent restart
and a tracker that cannot be reached; no new update starts inside a window; a bad ``health`` in
``device.json`` or on the command line is one line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from device.device_kit import boot, confirm, new_device
from suitkit.cli.main import app as cli
from suitkit.device.agent import AgentResult, run_once
from suitkit.device.config import HealthConfig, load_config, set_health
from suitkit.device.fetch import HttpFetcher
from suitkit.device.health import load_watch
from suitkit.errors import DecodeError
from tracker.test_agent import ADMIN, World, auth, running, states
from tracker.test_agent import world as world  # noqa: PLC0414 - the fixture


def device(world: World, health: HealthConfig) -> tuple[Path, dict[str, Any]]:
    """A registered mcu device running a confirmed base release, with ``health``."""
    folder, dev = world.device()
    set_health(folder, health)
    return folder, dev


_RELEASES: dict[tuple[str, int], dict[str, Any]] = {}


def release_of(world: World, sequence: int) -> dict[str, Any]:
    """The release of ``sequence``, uploaded once for the module (an upload of the same
    manifest signed again is refused)."""
    key = (world.url, sequence)
    if key not in _RELEASES:
        _RELEASES[key] = world.release(sequence)
    return _RELEASES[key]


def poll(folder: Path, world: World, dev: dict[str, Any]) -> AgentResult:
    return run_once(folder, world.url, dev["token"], fetcher=HttpFetcher())


def health_rows(world: World, dev: dict[str, Any]) -> list[dict[str, Any]]:
    got = world.client.get(f"/api/v1/devices/{dev['id']}/health", headers=auth(ADMIN))
    assert got.status_code == 200, got.text
    return list(got.json()["health"])


def until_done(folder: Path, world: World, dev: dict[str, Any], timeout: float = 30
               ) -> AgentResult:
    """Poll until the window ends (each result's ``next_check`` apart)."""
    deadline = time.monotonic() + timeout
    while True:
        result = poll(folder, world, dev)
        if result.outcome != "watching":
            return result
        assert result.next_check is not None and 0 < result.next_check <= 0.5
        assert time.monotonic() < deadline, f"the window did not end within {timeout} s"
        time.sleep(result.next_check)


def test_the_image_stays_on_trial_through_the_window_and_is_confirmed_healthy(
        world: World) -> None:
    folder, dev = device(world, HealthConfig(window=1.5, interval=0.2, command="true"))
    release = release_of(world, 2)
    assert world.deploy(release, [dev["id"]]).status_code == 201
    result = poll(folder, world, dev)
    assert result.outcome == "succeeded", result.steps
    assert "on trial for its health window of 1.5 s" in result.reason
    assert result.next_check is not None and result.next_check <= 0.2
    assert running(folder) == (2, False)  # started, not confirmed
    watch = load_watch(folder)
    assert watch is not None and watch.release == release["id"]
    assert watch.records[0]["check"] == "suit-report" and watch.records[0]["ok"] is True
    assert health_rows(world, dev)[0]["status"] == "watching"

    done = until_done(folder, world, dev)
    assert done.outcome == "healthy" and done.ok, done.steps
    assert running(folder) == (2, True)
    assert load_watch(folder) is None
    (row,) = health_rows(world, dev)
    assert row["status"] == "healthy" and row["failures"] == 0 and row["checks"] >= 2
    assert {r["check"] for r in row["records"]} == {"suit-report", "command"}
    assert states(world.history(dev["id"]))[-1] == "succeeded"
    assert poll(folder, world, dev).outcome == "up-to-date"


def test_a_failing_health_command_without_a_rollback_order_is_confirmed_unhealthy(
        world: World, tmp_path: Path) -> None:
    flag = tmp_path / "sick"
    folder, dev = device(world, HealthConfig(window=1.0, interval=0.2,
                                             command=f"test ! -e {flag}"))
    release = release_of(world, 2)
    assert world.deploy(release, [dev["id"]]).status_code == 201
    assert poll(folder, world, dev).outcome == "succeeded"
    flag.touch()
    watched = poll(folder, world, dev)
    assert watched.outcome == "watching" and "(unhealthy)" in watched.reason
    flag.unlink()  # unhealthy stays unhealthy: a flapping application is not healthy
    done = until_done(folder, world, dev)
    assert done.outcome == "unhealthy" and not done.ok, done.steps
    assert running(folder) == (2, True)  # never left on trial
    (row,) = health_rows(world, dev)
    assert row["status"] == "unhealthy" and row["failures"] == 1 and row["unhealthy"]
    assert any(r["check"] == "command" and not r["ok"] and "exited with status 1"
               in r["detail"] for r in row["records"])


def test_a_rollback_ordered_at_the_check_in_reverts_after_an_agent_restart(
        world: World) -> None:
    """The agent stopped after it reported unhealthy; the campaign's order reaches the next
    agent through the check-in (``rollback``), which reverts and reports rolled-back."""
    folder, dev = device(world, HealthConfig(window=30.0, interval=0.2))
    release = release_of(world, 2)
    for name in ("alice-h", "bob-h"):
        made = world.client.post("/api/v1/tokens", headers=auth(ADMIN),
                                 json={"name": name, "role": "operator"})
        assert made.status_code == 201, made.text
        (world.tmp / name).write_text(made.json()["token"])
    made = world.client.post("/api/v1/campaigns", headers=auth(
        (world.tmp / "alice-h").read_text()), json={
        "name": "h", "release": release["id"], "target": {"devices": [dev["id"]]},
        "envelope_url": world.url + release["envelope"]["url"], "health_window": 60})
    assert made.status_code == 201, made.text
    for step in ("approve", "start"):
        done = world.client.post(f"/api/v1/campaigns/{made.json()['id']}/{step}",
                                 headers=auth((world.tmp / "bob-h").read_text()))
        assert done.status_code == 200, done.text
    assert poll(folder, world, dev).outcome == "succeeded"
    # what the agent's window sends when a check fails; its answer orders the rollback
    watch = load_watch(folder)
    assert watch is not None
    answer = world.client.post(f"/api/v1/devices/{dev['id']}/health", headers=auth(
        dev["token"]), json=watch.record("command", False, "exit 1").report())
    assert answer.status_code == 200 and answer.json()["rollback"] is True, answer.text
    checked = world.client.post(f"/api/v1/devices/{dev['id']}/checkin", headers=auth(
        dev["token"]), json={"inventory_digest": "00"})
    assert checked.json()["rollback"] == {"release": release["id"]}
    # a new agent process: the window is in the folder, the order in the check-in
    result = poll(folder, world, dev)
    assert result.outcome == "rolled-back", result.steps
    assert any("the tracker orders release" in s for s in result.steps)
    assert running(folder) == (1, True)
    assert load_watch(folder) is None
    shown = world.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert shown["state"] == "rolled-back" and shown["health"][0]["status"] == "rolled-back"
    assert shown["components"][0]["sequence"] == 1
    assert "rollback" not in world.client.post(
        f"/api/v1/devices/{dev['id']}/checkin", headers=auth(dev["token"]),
        json={"inventory_digest": "00"}).json()


def test_the_window_goes_on_without_the_tracker_and_holds_new_updates(world: World) -> None:
    folder, dev = device(world, HealthConfig(window=3.0, interval=0.2, command="true"))
    newer = release_of(world, 3)
    assert world.deploy(release_of(world, 2), [dev["id"]]).status_code == 201
    assert poll(folder, world, dev).outcome == "succeeded"
    # the tracker cannot be reached: the checks run all the same
    away = run_once(folder, "http://127.0.0.1:9", dev["token"], fetcher=HttpFetcher())
    assert away.outcome == "watching", away.steps
    assert any(s.startswith("tracker: POST /checkin") for s in away.steps)
    # no new release inside the window: the tracker refuses to deploy one
    refused = world.deploy(newer, [dev["id"]])
    assert refused.status_code == 409, refused.text
    assert f"is inside the health window of release {release_of(world, 2)['id']} until " \
        in refused.json()["error"]
    assert until_done(folder, world, dev).outcome == "healthy"
    assert running(folder) == (2, True)
    assert world.deploy(newer, [dev["id"]]).status_code == 201
    assert poll(folder, world, dev).outcome == "succeeded"  # then the next update
    assert running(folder) == (3, False)
    assert until_done(folder, world, dev).outcome == "healthy"


def test_a_reboot_inside_the_window_reverts_and_the_agent_says_so(world: World) -> None:
    """A power cut (a reboot) inside the window: the bootloader reverts the unconfirmed
    update; the agent does not then confirm the previous image as the new release's health."""
    folder, dev = device(world, HealthConfig(window=30.0, interval=0.2, command="true"))
    assert world.deploy(release_of(world, 2), [dev["id"]]).status_code == 201
    assert poll(folder, world, dev).outcome == "succeeded"
    assert running(folder) == (2, False)
    boot(folder)  # the reboot
    assert running(folder) == (1, True)
    result = poll(folder, world, dev)
    assert result.outcome == "rolled-back", result.steps
    assert "the bootloader reverted it" in result.reason
    assert load_watch(folder) is None and running(folder) == (1, True)
    shown = world.client.get(f"/api/v1/devices/{dev['id']}", headers=auth(ADMIN)).json()
    assert shown["state"] == "rolled-back" and shown["health"][0]["status"] == "rolled-back"
    assert shown["components"][0]["sequence"] == 1


def test_a_confirm_by_hand_inside_the_window_ends_it(world: World) -> None:
    folder, dev = device(world, HealthConfig(window=30.0, interval=0.2, command="true"))
    assert world.deploy(release_of(world, 2), [dev["id"]]).status_code == 201
    assert poll(folder, world, dev).outcome == "succeeded"
    confirm(folder)  # suitkit device confirm
    result = poll(folder, world, dev)
    assert result.outcome == "healthy" and "confirmed inside its health window" in result.reason
    assert load_watch(folder) is None and running(folder) == (2, True)
    assert health_rows(world, dev)[0]["status"] == "healthy"


def test_a_device_without_health_confirms_at_once(world: World) -> None:
    folder, dev = world.device()
    assert load_config(folder).health is None
    assert world.deploy(release_of(world, 2), [dev["id"]]).status_code == 201
    result = poll(folder, world, dev)
    assert result.outcome == "succeeded" and result.next_check is None
    assert running(folder) == (2, True) and load_watch(folder) is None


@pytest.mark.parametrize(("health", "message"), [
    ({"interval": 1}, "health.window: missing"),
    ({"window": 0}, "health window: expected seconds in (0, 604800], got 0.0"),
    ({"window": 5, "interval": 9}, "health interval: expected seconds in (0, window], got 9.0"),
    ({"window": 5, "url": "ftp://x"}, "health url: expected an http(s) URL, got 'ftp://x'"),
    ({"window": 5, "max-crashes": "2"}, "health.max-crashes: expected a number"),
    ({"window": 5, "max-crashes": 1.5}, "health.max-crashes: expected an integer"),
    ({"window": 5, "retries": 2}, "health: unknown key 'retries'"),
])
def test_a_bad_health_setting_is_one_line(tmp_path: Path, health: dict[str, Any],
                                          message: str) -> None:
    from device.device_kit import Author

    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "dev", [author.anchor])
    doc = json.loads((folder / "device.json").read_text())
    doc["health"] = health
    (folder / "device.json").write_text(json.dumps(doc))
    with pytest.raises(DecodeError) as caught:
        load_config(folder)
    assert str(caught.value) == f"{folder / 'device.json'}: malformed: {message}"


def test_the_health_options_of_the_cli(tmp_path: Path) -> None:
    from device.device_kit import Author

    author = Author.create(tmp_path / "author")
    runner = CliRunner()
    folder = tmp_path / "dev"
    made = runner.invoke(cli, ["device", "init", str(folder), "--trust-anchor",
                               str(author.anchor), "--vendor-domain", "example.com",
                               "--class-name", "x", "--health-window", "60",
                               "--health-command", "systemctl is-active app"])
    assert made.exit_code == 0, made.output
    health = load_config(folder).health
    assert health == HealthConfig(window=60.0, interval=5.0,
                                  command="systemctl is-active app")
    changed = runner.invoke(cli, ["device", "health", str(folder), "--health-window", "30",
                                  "--health-url", "http://127.0.0.1:8000/health",
                                  "--max-crashes", "2"])
    assert changed.exit_code == 0, changed.output
    assert load_config(folder).health == HealthConfig(
        window=30.0, interval=5.0, url="http://127.0.0.1:8000/health", max_crashes=2)
    off = runner.invoke(cli, ["device", "health", str(folder), "--off"])
    assert off.exit_code == 0 and load_config(folder).health is None
    for args, expected in (
            (["--health-command", "true"], "need --health-window"),
            (["--health-window", "10", "--health-interval", "20"],
             "--health-*: health interval: expected seconds in (0, window], got 20.0"),
            ([], "give --health-window (and the checks), or --off")):
        bad = runner.invoke(cli, ["device", "health", str(folder), *args])
        assert bad.exit_code == 2, bad.output
        assert expected in bad.output and len(bad.output.strip().splitlines()) == 1
    assert load_config(folder).health is None  # nothing half-written


def test_a_crashed_application_is_restarted_up_to_max_crashes(tmp_path: Path) -> None:
    """The process check alone (``device.health.check``) on a real process."""
    import os
    import sys

    from suitkit.device.health import Watch, check

    pid_file = tmp_path / "app.pid"
    started: list[int] = []

    def restart() -> str:
        # no Popen: like the launcher, the check reaps the process it finds dead
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c",
                                              "import time; time.sleep(30)"], os.environ)
        started.append(pid)
        pid_file.write_text(f"{pid}\n")
        return f"pid {pid}"

    try:
        restart()
        config = HealthConfig(window=10, interval=1, max_crashes=1)
        watch = check(tmp_path, Watch("ab" * 32, time.time(), 10), config,
                      pid_file=pid_file, restart=restart)
        assert watch.status == "watching" and watch.crashes == 0
        os.kill(started[-1], 9)
        os.waitpid(started[-1], 0)
        watch = check(tmp_path, watch, config, pid_file=pid_file, restart=restart)
        assert watch.status == "watching" and watch.crashes == 1 and len(started) == 2
        assert "restarted" in watch.records[-1]["detail"]
        os.kill(started[-1], 9)
        os.waitpid(started[-1], 0)
        watch = check(tmp_path, watch, config, pid_file=pid_file, restart=restart)
        assert watch.status == "unhealthy" and watch.crashes == 2 and len(started) == 2
        assert load_watch(tmp_path) == watch  # saved as it went
    finally:
        for pid in started:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
