"""``suitkit demo``: a staged campaign over a simulated fleet, with injected faults, ends with
every device where the scenario declared it (and says so in the summary JSON).

The demo starts a real ``suitkit serve`` (child process, SQLite) on loopback; devices are real
device folders (simulated flash, A/B slot directories) running the real agent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from suitkit.cli.main import app as cli
from suitkit.sim.firmware import make_keys
from suitkit.sim.fleet import DevicePlan
from suitkit.sim.local import local_server
from suitkit.sim.scenario import run_scenario

DECLARED = {
    "power-cut": ("updated", None),
    "network-cut": ("updated", None),
    "hostile-mirror": ("rejected", "image digest mismatch"),
    "wrong-class": ("rejected", "class identifier mismatch"),
    "bad-boot": ("rolled-back", "the new image did not start and was reverted"),
}
TRACKER_STATES = {"updated": "succeeded", "rejected": "failed", "rolled-back": "rolled-back"}


def test_the_demo_ends_every_device_where_the_injected_faults_say(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    result = CliRunner().invoke(cli, ["demo", "--devices", "9", "--dir", str(tmp_path / "demo"),
                                      "--summary", str(summary_file)])
    assert result.exit_code == 0, result.output
    assert "every device ended where it should" in result.output
    assert "/dashboard/" in result.output

    summary = json.loads(summary_file.read_text())
    assert summary["ok"] is True
    assert summary["counts"] == {"updated": 8, "rolled-back": 1, "rejected": 2, "failed": 0}
    assert summary["counts"] == summary["expected_counts"]
    devices = summary["devices"]
    assert len(devices) == 9 + 2  # and suitkit's agent over LwM2M and over hawkBit DDI
    assert {d["shape"] for d in devices} == {"mcu", "secure-split", "dual-cpu", "linux"}
    assert {d["mode"] for d in devices} == {"poll", "push", "hybrid"}
    # the summary says which protocol each device used; LwM2M and DDI devices were updated
    # through the same campaigns, their state in the tracker walked by their own edge
    assert [(d["protocol"], d["shape"], d["outcome"], d["tracker_state"]) for d in devices
            if d["protocol"] != "suitkit"] == [("lwm2m", "mcu", "updated", "succeeded"),
                                                ("ddi", "linux", "updated", "succeeded")]
    assert sum(d["protocol"] == "suitkit" for d in devices) == 9
    assert "lwm2m" in result.output and "ddi" in result.output
    assert sorted(d["fault"] for d in devices if d["fault"]) == sorted(DECLARED)
    assert {fault: (f["outcome"], f["as_expected"]) for fault, f in summary["faults"].items()
            } == {fault: (outcome, True) for fault, (outcome, _) in DECLARED.items()}

    for device in devices:
        outcome, reason = DECLARED.get(device["fault"], ("updated", None))
        assert device["outcome"] == outcome, device
        if reason is not None:
            assert device["reason"] == reason, device
        assert device["as_expected"] is True, device
        assert device["running_sequence"] == (2 if outcome == "updated" else 1), device
        assert device["tracker_state"] == TRACKER_STATES[outcome], device
        if device["fault"] == "network-cut":
            assert device["faults_met"] == ["network cut x1, resumed at byte 4096"]
        if device["fault"] == "power-cut":
            assert device["faults_met"] == ["power cut x1, the agent resumed after the reboot"]
            assert device["attempts"] >= 2  # cut, then resumed
        if device["fault"] == "hostile-mirror":
            assert device["faults_met"] == ["served by the hostile mirror"]
    # every fault-free device, and only those, got the release it was assigned
    assert {d["name"] for d in devices if d["outcome"] != "updated"} == {
        d["name"] for d in devices if d["fault"] in ("hostile-mirror", "wrong-class",
                                                     "bad-boot")}
    assert summary["requests"]["server_errors"] == 0


def test_a_device_that_does_not_end_as_declared_fails_the_run(tmp_path: Path) -> None:
    """Declare the hostile mirror's victim ``updated``: the run must say it is not."""
    keys = make_keys(tmp_path / "keys")
    plans = [
        DevicePlan("clean", "mcu", "poll", "thermostat"),
        DevicePlan("lied-about", "secure-split", "poll", "smart-lock", fault="hostile-mirror",
                   expect="updated"),
    ]
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=60) as server:
        summary = asyncio.run(run_scenario(tmp_path, server.url, server.admin_token,
                                           server.upload_token, plans, keys=keys,
                                           wave_timeout=60.0))
    rows = {r["name"]: r for r in summary.devices}
    assert summary.ok is False
    assert rows["clean"]["as_expected"] is True and rows["clean"]["outcome"] == "updated"
    assert rows["lied-about"]["as_expected"] is False
    assert rows["lied-about"]["outcome"] == "rejected"
    assert rows["lied-about"]["running_sequence"] == 1


def test_the_demo_refuses_too_few_devices() -> None:
    result = CliRunner().invoke(cli, ["demo", "--devices", "3"])
    assert result.exit_code == 2
