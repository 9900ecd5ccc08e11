"""The consumer's route to the stage-1 bootloader in one long-lived process, as the agent
holds a device open (issue #16, docs/selfupdate.md): a stage 1 refused before its commit is
never committed by a later update of the application."""

from __future__ import annotations

from pathlib import Path

from suitkit.device.config import BOOTLOADER_ID, create_device
from suitkit.device.wiring import open_device

from .device_kit import CLASS, VENDOR, Author, image_bytes, install

STAGE1 = [f"0x{p.hex()}" for p in BOOTLOADER_ID]


def _stage1(author: Author, seq: int, tag: str = "") -> bytes:
    return author.envelope(seq, [{**author.component(f"bl{seq}{tag}.bin",
                                                     image_bytes(f"bl{seq}{tag}", 1400)),
                                  "id": STAGE1}])


def test_a_refused_stage1_is_not_committed_by_the_next_update(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    folder = tmp_path / "dev"
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, trust_anchors=[author.anchor],
                  stage1=True)
    open_device(folder).save()
    assert install(folder, _stage1(author, 3)).installed  # the factory stage 1
    assert install(folder, author.release(1)[0]).installed
    opened = open_device(folder)
    opened.bootloader.boot()
    opened.bootloader.confirm()
    # one process from here on (the agent's): a stage 1 stage 0 would never start (its
    # sequence number is not above the running one's) is written, checked and refused ...
    refused = opened.consumer().install(_stage1(author, 3, "again"))
    assert not refused.installed and "must be above the running stage 1's (3)" in refused.reason
    # ... and the application's update that follows commits only itself
    assert opened.consumer().install(author.release(2)[0]).installed
    opened.bootloader.boot()
    assert opened.stage0 is not None and opened.stage0.running == 0
    assert not opened.stage0.on_trial()
    opened.save()
