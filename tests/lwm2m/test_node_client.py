"""lwm2m-node-lib's CLIENT (tests/lwm2m/node/fw_client.js, an independent LwM2M stack) updated
by suitkit's LwM2M server edge through a deployment: pull through the Package URI (5/0/1),
State and Update Result observed, Update (5/0/2) executed, the outcome in the tracker.

The client hands the package to a real suitkit device folder (``suitkit device install``), so
the device verifies the SUIT envelope whatever the LwM2M server said.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from device.device_kit import Author, boot
from lwm2m.lwm2m_kit import NODE_DIR, World, need_node_peer, states, world
from notice_kit import ADMIN, wait_until
from serve_kit import start_process, stop_process

WAIT = 90.0


def suitkit_command(tmp: Path) -> Path:
    """An executable ``suitkit`` running this interpreter's suitkit (what fw_client.js runs)."""
    script = tmp / "suitkit"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c '
                      f'"from suitkit.cli.main import main; main()" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@contextmanager
def node_client(w: World, endpoint: str, folder: Path) -> Iterator[Path]:
    """fw_client.js registered as ``endpoint`` until the block ends; yields its output file."""
    work = w.tmp / f"node-{endpoint[:8]}"
    work.mkdir()
    out = work / "out.log"
    with out.open("w") as sink:
        process = start_process(
            ["node", str(NODE_DIR / "fw_client.js"), "127.0.0.1", str(w.lwm2m.port), endpoint,
             str(folder), str(work), str(suitkit_command(w.tmp)), "300"],
            stdout=sink, stderr=subprocess.STDOUT, cwd=NODE_DIR,
            env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")})
    try:
        wait_until(lambda: endpoint in w.lwm2m.registered() or process.poll() is not None,
                   WAIT, f"lwm2m-node-lib's client to register as {endpoint}")
        assert endpoint in w.lwm2m.registered(), out.read_text()
        yield out
    finally:
        stop_process(process)


def test_node_client_is_updated_by_pull_through_a_deployment(tmp_path: Path) -> None:
    need_node_peer()
    with world(tmp_path) as w:
        folder, device_id = w.device()
        with node_client(w, device_id, folder) as out:
            # the registration read Object 3 and marked the NoSec device unauthenticated
            wait_until(lambda: "lwm2m.manufacturer" in w.record(device_id)["hardware"], WAIT,
                       "the LwM2M server to read Object 3 after the registration")
            hardware = w.record(device_id)["hardware"]
            assert hardware["lwm2m.security"] == "nosec (unauthenticated)"
            assert hardware["lwm2m.manufacturer"] == "lwm2m-node-lib test"
            assert hardware["lwm2m.firmware_version"] == "suitkit-device"
            release = w.release()
            started = time.monotonic()
            w.deploy(release, device_id)
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the node client's update to end (State and Update Result observed)")
            elapsed = time.monotonic() - started
            log = out.read_text()
        assert w.record(device_id)["state"] == "succeeded", (log, w.history(device_id))
        assert states(w.history(device_id)) == [
            "notified", "downloading", "downloaded", "installing", "rebooting", "succeeded"]
        assert "downloaded" in log and "result 1" in log, log
        # the device itself verified and staged the envelope: it boots into release 2
        result = boot(folder)
        assert [i.sequence_number for i in result.images] == [w.sequence], result
        assert elapsed < WAIT


def test_node_client_refusing_the_envelope_shows_failed_with_its_update_result(
        tmp_path: Path) -> None:
    need_node_peer()
    with world(tmp_path) as w:
        # the device trusts another author: the server's release is one it refuses
        folder, device_id = w.device(trusts=Author.create(tmp_path / "stranger"))
        release = w.release()
        w.deploy(release, device_id)  # before the registration: delivered when it registers
        with node_client(w, device_id, folder) as out:
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the node client's update to end")
            log = out.read_text()
        assert w.record(device_id)["state"] == "failed", (log, w.history(device_id))
        events = [h for h in w.history(device_id) if h["kind"] == "event"]
        assert events[-1]["detail"].startswith("LwM2M: "), events
        assert "result 5" in log or "result 8" in log, log
        assert [i.sequence_number for i in boot(folder).images] == [1]


def _operator(w: World, name: str) -> dict[str, str]:
    with w.client() as c:
        made = c.post("/api/v1/tokens", headers={"Authorization": f"Bearer {ADMIN}"},
                      json={"name": name, "role": "operator", "expires_in_days": 1})
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['token']}"}


def test_node_client_in_an_install_on_trigger_campaign_installs_only_after_the_trigger(
        tmp_path: Path) -> None:
    need_node_peer()
    with world(tmp_path) as w:
        folder, device_id = w.device()
        release = w.release()
        alice, bob = _operator(w, "alice"), _operator(w, "bob")
        with node_client(w, device_id, folder) as out, w.client() as c:
            made = c.post("/api/v1/campaigns", headers=alice, json={
                "name": "lwm2m trigger", "release": release["id"],
                "envelope_url": w.tracker.url + release["envelope"]["url"],
                "target": {"devices": [device_id]}, "mode": "install-on-trigger"})
            assert made.status_code == 201, made.text
            cid = made.json()["id"]
            for step in ("approve", "start"):
                done = c.post(f"/api/v1/campaigns/{cid}/{step}", headers=bob)
                assert done.status_code == 200, done.text
            wait_until(lambda: w.record(device_id)["state"] == "downloaded", WAIT,
                       "the node client to download (the campaign's first phase)")
            time.sleep(3.0)  # well past a poll: no Update may be executed before the trigger
            assert "updating" not in out.read_text()
            assert w.record(device_id)["state"] == "downloaded"
            triggered = c.post(f"/api/v1/campaigns/{cid}/trigger", headers=bob)
            assert triggered.status_code == 200, triggered.text
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the node client to install after the trigger")
            log = out.read_text()
        assert w.record(device_id)["state"] == "succeeded", (log, w.history(device_id))
        assert log.count("downloading ") == 1, log  # the kept package, not a second download
        assert [i.sequence_number for i in boot(folder).images] == [w.sequence]
