"""A bootloader (stage-1) update rolled out by a campaign to real device agents of mcu devices
with a stage 0 (issue #16; docs/selfupdate.md), against a real ``suitkit serve`` on loopback.

The release is a SUIT manifest for ``['suitkit', 'bootloader']``, uploaded and deployed like
any other; each agent installs it through its consumer (the stage-1 copy that does not run),
boots (stage 0 tries it), confirms it with the device, and reports it: the tracker's inventory
shows the stage-1 component at the new sequence number. A device made without a stage 0 in
the same campaign refuses it with the reason, and keeps running what it ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from device.device_kit import CLASS, VENDOR, Author, boot, confirm, image_bytes, install
from e2e.test_anchors_e2e import campaign, settle, upload
from e2e.test_modes import running
from serve_kit import serving
from suitkit.device.config import BOOTLOADER_ID, create_device
from suitkit.device.wiring import open_device
from tracker.test_campaign_api import ADMIN, World, auth

UPLOAD = "upload-token-anchors-e2e-0123456789"  # the one e2e.test_anchors_e2e.upload sends
STAGE1 = [f"0x{p.hex()}" for p in BOOTLOADER_ID]


def _stage1(author: Author, seq: int) -> bytes:
    return author.envelope(seq, [{**author.component(f"bl{seq}.bin", image_bytes(f"bl{seq}",
                                                                               1600 + seq)),
                                  "id": STAGE1}])


def test_a_campaign_updates_the_bootloader_of_mcu_devices(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin").write_text(ADMIN)
    (tmp_path / "upload").write_text(UPLOAD)
    folders: dict[str, Path] = {}
    for name, stage1 in (("a", True), ("b", True), ("plain", False)):
        folder = tmp_path / name
        create_device(folder, vendor_id=VENDOR, class_id=CLASS, stage1=stage1,
                      trust_anchors=[author.anchor])
        open_device(folder).save()
        if stage1:
            assert install(folder, _stage1(author, 1)).installed  # the factory stage 1
        assert install(folder, author.release(1, name)[0]).installed
        boot(folder)
        confirm(folder)
        folders[name] = folder

    argv = ["--data", str(tmp_path / "data"), "--admin-token-file", str(tmp_path / "admin"),
            "--upload-token-file", str(tmp_path / "upload"),
            "--author-anchor", str(author.anchor)]
    with serving(argv) as served, httpx.Client(base_url=served.url, timeout=30) as client:
        world = World(served.url, client, author, tmp_path, {})
        world.token("alice", "operator")
        world.token("bob", "operator")
        devices = {name: world.register(["fleet"]) for name in folders}
        cid = campaign(world, "new bootloader", upload(client, _stage1(author, 2)), ["fleet"],
                       failure_threshold=1.0)
        results = settle(world, devices, folders, list(folders))
        for name in ("a", "b"):
            assert results[name].outcome == "succeeded", results[name]
            assert "installed the stage-1 bootloader (sequence number 2)" in \
                " ".join(results[name].steps), results[name].steps
            opened = open_device(folders[name])
            assert opened.stage0 is not None and opened.stage0.running == 1  # the other copy
            assert not opened.stage0.on_trial()  # confirmed with the device
            assert opened.bootloader.read_counters()["bootloader"] == 2
            assert running(folders[name]) == (1, True)  # the application was left alone
            shown = client.get(f"/api/v1/devices/{devices[name]['id']}", headers=auth(ADMIN))
            assert shown.status_code == 200, shown.text
            found = _component(shown.json(), [p.hex() for p in BOOTLOADER_ID])
            assert found is not None and found.get("sequence") == 2, shown.json()
        assert results["plain"].outcome == "failed", results["plain"]
        assert "has no stage 0" in results["plain"].reason, results["plain"].reason
        assert running(folders["plain"]) == (1, True)
        world.until(cid, lambda d: d["counts"] == {"succeeded": 2, "failed": 1}, timeout=90)


def _component(device: dict[str, Any], cid: list[str]) -> dict[str, Any] | None:
    for component in device.get("components", []):
        if component.get("id") == cid:
            return dict(component)
    return None
