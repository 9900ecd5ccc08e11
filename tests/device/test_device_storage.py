"""A Linux-class device's own storage failing under it: a full disk at every write step.

A device whose disk fills up during an install (or a boot, or a confirm) must fail that step
with the disk as it found it: no half-written temporary file left to keep the disk full (the
agent's retry, the tracker's reports and the next boot need the space), the running images and
the pending state unchanged, and the same update must go through once there is room again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.test_cli_device import tiny_filesystem
from device.device_kit import Author, boot, confirm, install, new_device, status

PAGE = 4096


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def free_bytes(where: Path) -> int:
    fs = os.statvfs(where)
    return fs.f_bavail * fs.f_frsize


def test_a_full_disk_at_any_write_step_leaves_no_partial_file_and_the_update_goes_through_later(
        tmp_path: Path, author: Author) -> None:
    """The free space is swept page by page, so that ENOSPC falls in turn on the image, its
    fsync, the manifest, the download journal, ``state.json`` (install, boot) and
    ``counters.json`` (confirm). Before the fix a partial ``app.image.tmp`` (or
    ``state.json.tmp``) stayed behind and the disk stayed full."""
    made = new_device(tmp_path / "made", [author.anchor], "linux")
    first, _ = author.release(1, size=6000)
    assert install(made, first).installed
    assert boot(made).trial
    confirm(made)
    update, _ = author.release(2, size=5 * PAGE + 100)
    used_kib = sum(p.stat().st_size for p in made.rglob("*") if p.is_file()) // 1024
    failures: dict[str, int] = {}
    for pages in range(0, 12):
        mnt = tmp_path / f"mnt{pages}"
        with tiny_filesystem(mnt, used_kib + 256) as where:
            device = where / "device"
            shutil.copytree(made, device, symlinks=True)
            filler = where / "filler"
            filler.write_bytes(bytes(max(0, free_bytes(where) - pages * PAGE)))
            steps: list[tuple[str, Callable[[], object]]] = [
                ("install", lambda d=device: install(d, update)),  # type: ignore[misc]
                ("boot", lambda d=device: boot(d)),  # type: ignore[misc]
                ("confirm", lambda d=device: confirm(d)),  # type: ignore[misc]
            ]
            for name, step in steps:
                if name != "install" and pages % 2:  # the boot's or the confirm's writes
                    with filler.open("ab") as f:
                        f.write(bytes(free_bytes(where)))
                try:
                    step()
                except OSError as e:
                    failures[name] = failures.get(name, 0) + 1
                    assert "No space left" in str(e), e
                    assert leftovers(device) == [], (pages, name, leftovers(device))
                    if name == "install":  # a failed install leaves nothing pending
                        assert not status(device)["pending"], pages
                    break
            doc = status(device)
            assert doc["components"][0]["running"] is not None, (pages, doc)
            filler.unlink()
            # Room again: whatever the full disk interrupted, the update goes through.
            if not doc["trial"] and doc["components"][0]["running"]["sequence-number"] == 1:
                if not doc["pending"]:
                    outcome = install(device, update)
                    assert outcome.installed, (pages, outcome.reason)
                assert boot(device).trial
            if status(device)["trial"]:
                confirm(device)
            result = boot(device)
            assert (result.sequence_numbers, result.trial) == ({"app": 2}, False), pages
            assert leftovers(device) == []
    assert failures.get("install") and failures.get("boot"), failures  # the sweep reached them
