"""Health-gated rollouts end to end (issue #13): a real ``suitkit serve`` and four real agent
processes (``suitkit device run``) on Linux-class device folders whose agents watch the new
application for a health window before they confirm it.

The campaign is made with the operator CLI (``suitkit campaign create --unhealthy-threshold 0.25
--health-window 60``). Its release's application runs until a file ``crash`` appears in its
working directory (the agent's), and every device's health command is ``test ! -e unhealthy``.
Once the four devices confirmed, the test makes one device's health command fail and another
device's application crash: 2 of 4 unhealthy is more than 25%, so the engine pauses the
campaign and records why; both unhealthy devices are told to roll back (the health report's
answer), revert to the previous image (the bootloader's revert of an image on trial) and report
``rolled-back``; the two healthy ones confirm at the end of their window.

Every process is stopped by its pid in a ``finally``; every wait is bounded and says what it
waited for.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from device.device_kit import CLASS, VENDOR, Author, boot, confirm, install
from notice_kit import wait_until
from serve_kit import SUITKIT, serving, start_process, stop_process
from suitkit.cli.main import app as cli
from suitkit.device.config import HealthConfig, create_device
from suitkit.device.invoke import ProcessLauncher
from suitkit.device.wiring import open_device

ADMIN = "admin-token-for-the-health-e2e"
UPLOAD = "upload-token-for-the-health-e2e"
BASE = b"import time\ntime.sleep(600)\n"
NEW = (b"import os, sys, time\n"
       b"while not os.path.exists('crash'):\n"
       b"    time.sleep(0.1)\n"
       b"sys.exit(3)\n")
WINDOW = 12.0
"""The health window of the two devices that stay healthy (seconds): the test waits for its
end."""
LONG_WINDOW = 90.0
"""The health window of the two devices the test turns unhealthy: long enough for that to
happen inside it on a busy machine."""


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def running(folder: Path) -> tuple[int, bool]:
    """(sequence number of the running application, whether it is confirmed)."""
    opened = open_device(folder)
    (check,) = opened.bootloader.observe().primary  # type: ignore[attr-defined]
    sequence = check.info.sequence_number
    return sequence, opened.bootloader.read_counters()["app"] == sequence


def test_unhealthy_devices_pause_the_campaign_and_roll_back(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin").write_text(ADMIN)
    (tmp_path / "upload").write_text(UPLOAD)
    base = author.envelope(1, [author.component("base.py", BASE)])
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin"),
            "--upload-token-file", str(tmp_path / "upload"), "--log-level", "warning"]
    runner = CliRunner()
    folders: list[Path] = []
    with ExitStack() as stack, serving(argv) as server:
        client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
        envelope = author.envelope(2, [author.component("new.py", NEW)])
        up = client.post("/api/v1/releases", headers=auth(UPLOAD), files=[
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))])
        assert up.status_code == 201, up.text
        release = up.json()
        ops = {}
        for name in ("alice", "bob"):
            made = client.post("/api/v1/tokens", headers=auth(ADMIN),
                               json={"name": name, "role": "operator"})
            assert made.status_code == 201, made.text
            ops[name] = made.json()["token"]
            (tmp_path / name).write_text(ops[name])

        # four Linux-class devices running the base application, each with its agent process
        agents: list[subprocess.Popen[Any]] = []
        devices: list[str] = []
        for i in range(4):
            folder = tmp_path / f"dev-{i}"
            work = tmp_path / f"work-{i}"  # the agent's (and its application's) directory
            work.mkdir()
            create_device(folder, vendor_id=VENDOR, class_id=CLASS,
                          trust_anchors=[author.anchor], shape="linux",
                          app_command=f"{sys.executable} {{image}}",
                          health=HealthConfig(window=LONG_WINDOW if i < 2 else WINDOW,
                                              interval=0.3, command="test ! -e unhealthy",
                                              timeout=10))
            folders.append(folder)
            stack.callback(ProcessLauncher("true", folder / "app.pid").stop)
            assert install(folder, base).installed
            boot(folder)
            confirm(folder)
            enrolled = runner.invoke(cli, [
                "device", "register", str(folder), "--server", server.url,
                "--token-file", str(tmp_path / "admin"), "--out", str(work / "cred")])
            assert enrolled.exit_code == 0, enrolled.output
            devices.append((work / "cred").read_text().partition(".")[0])
            log = stack.enter_context((work / "agent.log").open("w"))
            agent = start_process([*SUITKIT, "device", "run", str(folder), "--server",
                                   server.url, "--credential-file", str(work / "cred"),
                                   "--interval", "0.3", "--duration", "120"],
                                  cwd=work, stdout=log, stderr=subprocess.STDOUT)
            agents.append(agent)
            stack.callback(stop_process, agent)

        def agent_log(i: int) -> str:
            return (tmp_path / f"work-{i}" / "agent.log").read_text(errors="replace")

        for i in range(4):
            wait_until(lambda i=i: "up-to-date: no update assigned" in agent_log(i), 60,
                       f"agent {i}'s first run (its log: {agent_log(i)[-500:]!r})")

        made = runner.invoke(cli, [
            "campaign", "create", "--release", release["id"], "--server", server.url,
            "--token-file", str(tmp_path / "alice"), "--name", "health",
            *[arg for d in devices for arg in ("--device", d)],
            "--unhealthy-threshold", "0.25", "--health-window", "60", "--json"])
        assert made.exit_code == 0, made.output
        doc = __import__("json").loads(made.output)
        assert doc["unhealthy_threshold"] == 0.25 and doc["health_window"] == 60.0
        cid = doc["id"]
        for step in ("approve", "start"):
            done = runner.invoke(cli, ["campaign", step, cid, "--server", server.url,
                                       "--token-file", str(tmp_path / "bob")])
            assert done.exit_code == 0, done.output

        def campaign() -> dict[str, Any]:
            got = client.get(f"/api/v1/campaigns/{cid}", headers=auth(ops["alice"]))
            assert got.status_code == 200, got.text
            return dict(got.json())

        def device(device_id: str) -> dict[str, Any]:
            got = client.get(f"/api/v1/devices/{device_id}", headers=auth(ADMIN))
            assert got.status_code == 200, got.text
            return dict(got.json())

        # every device confirmed to the tracker and watches its application, on trial (the
        # two with the short window may have ended it already on a slow machine)
        wait_until(lambda: all(m["state"] == "succeeded" for m in campaign()["members"]), 90,
                   "the four devices to report succeeded")
        for i in (0, 1):
            assert running(folders[i]) == (2, False), agent_log(i)[-2000:]
        assert campaign()["status"] == "running"  # nobody unhealthy yet
        wait_until(lambda: all(device(d)["health"] and device(d)["health"][0]["status"]
                               in ("watching", "healthy") for d in devices), 30,
                   "the four devices' first health reports")

        # one device's health command fails, another's application crashes after confirming
        (tmp_path / "work-0" / "unhealthy").touch()
        (tmp_path / "work-1" / "crash").touch()

        wait_until(lambda: campaign()["status"] == "paused", 60,
                   "the campaign to pause by the health threshold")
        doc = campaign()
        assert doc["pause_reason"].startswith(
            "health threshold crossed: 2 of 4 devices that confirmed turned unhealthy within "
            "60 s (50% > 25%)"), doc["pause_reason"]
        assert doc["log"][-1]["action"] == "pause" and doc["log"][-1]["actor"] == "engine"
        shown = runner.invoke(cli, ["campaign", "status", cid, "--server", server.url,
                                    "--token-file", str(tmp_path / "alice")])
        assert shown.exit_code == 0, shown.output
        assert "paused (health threshold crossed: 2 of 4" in shown.output
        assert "health gate: window 60 s after confirming, pause above 25% unhealthy; 2 " \
               "unhealthy of 4 confirmed" in shown.output, shown.output

        for i in (0, 1):
            wait_until(lambda i=i: device(devices[i])["state"] == "rolled-back", 60,
                       f"device {i} to roll back (its log: {agent_log(i)[-800:]!r})")
            shown = device(devices[i])
            assert shown["health"][0]["status"] == "rolled-back"
            assert shown["components"][0]["sequence"] == 1  # the inventory after the revert
            assert running(folders[i]) == (1, True), agent_log(i)[-2000:]
            assert "the tracker orders release" in agent_log(i)
        records = device(devices[1])["health"][0]["records"]
        assert any(r["check"] == "process" and not r["ok"] for r in records), records
        records = device(devices[0])["health"][0]["records"]
        assert any(r["check"] == "command" and not r["ok"] for r in records), records

        # the healthy two confirm at the end of their window and say so
        for i in (2, 3):
            wait_until(lambda i=i: device(devices[i])["health"][0]["status"] == "healthy",
                       WINDOW + 60, f"device {i} to end its health window healthy "
                                    f"(its log: {agent_log(i)[-800:]!r})")
            assert running(folders[i]) == (2, True)
            assert device(devices[i])["state"] == "succeeded"
        members = {m["device_id"]: m for m in campaign()["members"]}
        assert [members[d]["state"] for d in devices] == [
            "rolled-back", "rolled-back", "succeeded", "succeeded"]
        assert [members[d]["health"] for d in devices] == [
            "rolled-back", "rolled-back", "healthy", "healthy"]
        for agent in agents:
            assert agent.poll() is None, "an agent process stopped early"
