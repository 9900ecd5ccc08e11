"""A Linux-class device's own storage failing under it: a full disk at every write step.

A device whose disk fills up during an install (or a boot, or a confirm) must fail that step
with the disk as it found it: no half-written temporary file left to keep the disk full (the
agent's retry, the tracker's reports and the next boot need the space), the running images and
the pending state unchanged, and the same update must go through once there is room again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.test_cli_device import tiny_filesystem
from device.device_kit import Author, boot, confirm, counters, install, new_device, status
from suitkit.device.wiring import open_device
from suitkit.errors import StorageError

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
    fsync, the manifest, the download journal, ``state.json`` (install) and ``counters.json``
    (confirm). Before the fix a partial ``app.image.tmp`` (or
    ``state.json.tmp``) stayed behind and the disk stayed full."""
    made = new_device(tmp_path / "made", [author.anchor], "linux")
    first, _ = author.release(1, size=6000)
    assert install(made, first).installed
    assert boot(made).trial
    confirm(made)
    update, _ = author.release(2, size=5 * PAGE + 100)
    used_kib = sum(p.stat().st_size for p in made.rglob("*") if p.is_file()) // 1024
    failures: dict[str, int] = {}
    for pages in range(0, 15):
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
                if (name, pages % 3) in (("boot", 1), ("confirm", 2)):  # their writes too
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
    # The sweep reached them. Not the boot: its state writes go over the older copy in place
    # (issue #16), within the blocks the copy has, so a full disk does not stop a boot.
    assert failures.keys() == {"install", "confirm"}, failures


def updated(tmp_path: Path, author: Author, *, confirmed: bool) -> Path:
    """A Linux-class device updated twice (1, then 2 confirmed), release 3 booted on trial
    and, if ``confirmed``, confirmed: both copies of each record are written."""
    device = new_device(tmp_path / "device", [author.anchor], "linux")
    for seq in (1, 2, 3):
        envelope, _ = author.release(seq, size=3000 + seq)
        assert install(device, envelope).installed
        assert boot(device).trial
        if seq < 3 or confirmed:
            confirm(device)
    return device


@pytest.mark.parametrize("confirmed", [False, True])
def test_a_flipped_bit_in_the_slot_state_or_the_counters_is_survived(
        tmp_path: Path, author: Author, confirmed: bool) -> None:
    """One bit flipped in the newest ``state.json`` or ``counters.json`` (one bit of every
    third byte): the device boots a signed release it ran (the older copy of the record holds the
    state before the last write, so at worst the last step is taken again), its counters never
    fall below the release it confirmed before, and the next update installs and stays.
    Before the records were kept twice with a checksum, every such flip left a device that
    neither booted nor installed anything again ("state.json is not a valid slot state")."""
    made = updated(tmp_path / "made", author, confirmed=confirmed)
    floor = 3 if confirmed else 2
    later, _ = author.release(4, size=2500)
    root = made / "slots"
    for record in ("state.json", "counters.json"):
        newest = max((p for p in (root / record, root / record.replace(".json", ".1.json"))
                      if p.exists()), key=lambda p: json.loads(p.read_bytes()).get("generation", 0))
        data = newest.read_bytes()
        for index in range(0, len(data), 3):  # every bit position, over the whole record
            device = tmp_path / "run"
            if device.exists():
                shutil.rmtree(device)
            shutil.copytree(made, device, symlinks=True)
            flipped = bytearray(data)
            flipped[index] ^= 1 << (index % 8)
            (device / "slots" / newest.name).write_bytes(bytes(flipped))
            where = f"{newest.name} byte {index}"
            result = boot(device)
            seq = result.sequence_numbers["app"]
            assert seq in (2, 3) and (seq == 3 or not confirmed), (where, seq)
            assert min(counters(device).values()) >= floor - (not confirmed), where
            if index % 4:
                continue
            if result.trial:
                confirm(device)
            assert not boot(device).trial, where
            assert install(device, later).installed, where
            assert boot(device).trial, where
            confirm(device)
            assert boot(device).sequence_numbers == {"app": 4}, where


def test_every_copy_of_the_slot_state_damaged_is_one_clear_error(tmp_path: Path,
                                                                  author: Author) -> None:
    device = updated(tmp_path, author, confirmed=True)
    for name in ("state.json", "state.1.json"):
        (device / "slots" / name).write_bytes(b'{"active": "a"')
    with pytest.raises(StorageError, match=r"state.json is damaged in every copy: state.json: "
                       r"not JSON .*; state.1.json: not JSON"):
        boot(device)


def _flip(data: bytes, at: int) -> bytes:
    flipped = bytearray(data)
    flipped[at] ^= 0x10
    return bytes(flipped)


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[:100],
    "empty": lambda data: b"",
    "a bit flipped in a flash's content": lambda data: _flip(data, len(data) // 2),
    "a bit flipped in the header": lambda data: _flip(data, 3),
    "a bit flipped in the checksum": lambda data: _flip(data, len(data) - 1),
}


@pytest.mark.parametrize("shape", ["mcu", "dual-cpu"])
def test_a_damaged_flash_state_leaves_the_state_of_the_save_before(
        tmp_path: Path, author: Author, shape: str) -> None:
    """``flash/state.cbor`` truncated, emptied or with a flipped bit: the device opens from
    the other copy (the folder as before its last command), boots a signed release, and the
    next update installs and stays. It used to refuse every command for good ("saved flash is
    unreadable"), a recovery update included."""
    made = new_device(tmp_path / "made", [author.anchor], shape)
    count = len(open_device(made).bootloader.components)

    def release(seq: int) -> bytes:
        return author.envelope(seq, [author.component(
            f"s{seq}-{i}.bin", bytes([seq, i]) * (1200 + 100 * i), index=i)
            for i in range(count)])

    assert install(made, release(1)).installed
    assert boot(made).trial
    confirm(made)
    assert install(made, release(2)).installed
    assert boot(made).trial  # release 2 on trial: the newest save is that boot's
    newest = getattr(open_device(made), "loaded_from", None) or "state.cbor"
    for what, damage in DAMAGES.items():
        device = tmp_path / "run"
        if device.exists():
            shutil.rmtree(device)
        shutil.copytree(made, device)
        state = device / "flash" / newest
        state.write_bytes(damage(state.read_bytes()))
        result = boot(device)
        assert set(result.sequence_numbers.values()) in ({1}, {2}), (what, result)
        if result.trial:
            confirm(device)
        assert install(device, release(3)).installed, what
        assert boot(device).trial, what
        confirm(device)
        after = boot(device)
        assert (set(after.sequence_numbers.values()), after.trial) == ({3}, False), what


def test_a_counters_record_that_is_not_counts_is_a_storage_error(tmp_path: Path,
                                                                  author: Author) -> None:
    """``counters.json`` holding a list (or text) in every copy: one StorageError naming the
    file (it was an AttributeError or ValueError traceback); in one copy: the other is read."""
    device = updated(tmp_path, author, confirmed=True)
    slots = device / "slots"
    copies = [slots / "counters.json", slots / "counters.1.json"]
    kept = {p: p.read_bytes() for p in copies if p.exists()}
    newest = max(kept, key=lambda p: json.loads(kept[p]).get("generation", 0))
    newest.write_bytes(b"[1]")
    assert len(kept) == 2
    assert counters(device) == {"app": 2}  # the copy before the last raise
    assert not boot(device).trial
    assert counters(device) == {"app": 3}  # raised again by the boot (row 11)
    for bad in (b"[1]", b'{"app": "three"}'):
        for path in copies:
            path.write_bytes(bad)
        with pytest.raises(StorageError, match=r"counters\.json is damaged in every copy"):
            counters(device)
