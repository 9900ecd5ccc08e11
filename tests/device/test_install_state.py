"""What an install, a cut or a crash leaves in a device folder (issue #11, items 2-4).

- A power cut while marking a two-image set pending leaves a half-marked request: it is no
  pending update for the consumer, and the next boot forgets it (it used to block every later
  install for ever).
- An install that fails leaves nothing pending (a manifest whose install writes no image used
  to exit 1 yet mark the re-staged running images pending).
- A device folder is saved as a whole: a crash while saving a dual-cpu device never leaves one
  flash ahead of the other (it used to make a never-confirmed release permanent and raise the
  counters when it fell inside a revert boot).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from device.device_kit import (
    Author,
    boot,
    confirm,
    counters,
    image_bytes,
    install,
    new_device,
    running,
    status,
)
from suitkit.bootloader.flash import PowerCut
from suitkit.core import cbor
from suitkit.device import wiring
from suitkit.device.wiring import open_device

TWO = ["secure-split", "dual-cpu"]


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


def release(author: Author, sequence: int, count: int, **top: Any) -> bytes:
    """One manifest for every image of a ``count``-image set."""
    return author.envelope(sequence, [
        author.component(f"i{i}-{sequence}.bin", image_bytes(f"st-{sequence}-{i}", 2500 + 300 * i),
                         index=i)
        for i in range(count)], top=top or None)


def provisioned(tmp_path: Path, author: Author, shape: str) -> tuple[Path, int]:
    """A device running release 1, confirmed; and the size of its boot set."""
    folder = new_device(tmp_path / shape, [author.anchor], shape)
    count = len(open_device(folder).bootloader.components)
    assert install(folder, release(author, 1, count)).installed
    assert boot(folder).trial
    confirm(folder)
    return folder, count


def seqs(folder: Path) -> dict[str, int]:
    return {name: seq for name, (seq, _) in running(boot(folder)).items()}


def cut_while_marking(folder: Path, envelope: bytes) -> None:
    """Install ``envelope`` with the power cut at the 3rd of the 4 writes that mark a
    two-image set pending (the last flash operations of an install)."""
    probe = Path(shutil.copytree(folder, folder.with_name(folder.name + "-probe"),
                                 dirs_exist_ok=True))
    device = open_device(probe)
    supply = next(iter(device.flashes.values())).supply
    before = supply.ops
    assert device.consumer().install(envelope).installed
    total = supply.ops - before
    shutil.rmtree(probe)
    device = open_device(folder)
    supply = next(iter(device.flashes.values())).supply
    supply.cut_after(total - 1)
    with pytest.raises(PowerCut):
        device.consumer().install(envelope)
    supply.restore()
    device.save()  # the flash keeps what was programmed before the cut


@pytest.mark.parametrize("shape", TWO)
def test_a_cut_while_marking_a_set_pending_does_not_block_later_updates(
        tmp_path: Path, author: Author, shape: str) -> None:
    folder, count = provisioned(tmp_path, author, shape)
    update = release(author, 2, count)
    cut_while_marking(folder, update)
    assert open_device(folder).bootloader.observe().state.pending.value == "partial"  # type: ignore[attr-defined]
    assert open_device(folder).bootloader.pending_update() is False
    assert status(folder)["pending"] is False

    # The consumer does not take the half-marked request for a pending update ...
    outcome = install(folder, update)
    assert outcome.installed, outcome.reason
    trial = boot(folder)
    assert trial.trial and {s for s, _ in running(trial).values()} == {2}
    confirm(folder)
    # ... and a boot forgets one that is left alone.
    cut_while_marking(folder, release(author, 3, count))
    result = boot(folder)
    assert [d.row for d in result.steps] == [15, 12]
    assert status(folder)["pending"] is False  # forgotten
    assert install(folder, release(author, 4, count)).installed
    assert seqs(folder) == dict.fromkeys(open_device(folder).bootloader.components, 4)


@pytest.mark.parametrize("shape", ["mcu", "secure-split", "linux"])
def test_an_install_that_writes_no_image_leaves_nothing_pending(
        tmp_path: Path, author: Author, shape: str) -> None:
    folder, count = provisioned(tmp_path, author, shape)
    check = [["directive-set-component-index", 0], ["condition-vendor-identifier", 15]]
    nothing = release(author, 2, count, install=check, validate=check)
    outcome = install(folder, nothing)
    assert not outcome.installed
    assert outcome.reason == "failed: the manifest installed no image"
    assert status(folder)["pending"] is False
    # A later install is not refused as "already pending".
    outcome = install(folder, release(author, 3, count))
    assert outcome.installed, outcome.reason
    assert boot(folder).trial
    confirm(folder)
    assert counters(folder) == dict.fromkeys(open_device(folder).bootloader.components, 3)


class Crash(Exception):
    """The process stops (power cut) between two file writes."""


def test_a_crash_while_saving_a_dual_cpu_folder_never_splits_its_flashes(
        tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, count = provisioned(tmp_path, author, "dual-cpu")
    assert install(folder, release(author, 2, count)).installed
    assert boot(folder).trial  # release 2 on trial, never confirmed

    # The revert boot, with the process killed after the first file of the save.
    writes: list[Path] = []
    real = wiring.atomic_write

    def crash_after_one(path: Path, data: bytes, **kw: Any) -> None:
        if writes:
            raise Crash(f"power cut before writing {path}")
        writes.append(path)
        real(path, data, **kw)

    device = open_device(folder)
    assert device.bootloader.boot().sequence_numbers == {"main": 1, "coproc": 1}
    monkeypatch.setattr(wiring, "atomic_write", crash_after_one)
    with contextlib.suppress(Crash):
        device.save()
    monkeypatch.undo()

    # The folder holds the whole state before the revert or the whole state after it: the
    # next boot reverts (again) and release 2, never confirmed, never becomes permanent.
    result = boot(folder)
    assert (result.sequence_numbers, result.trial) == ({"main": 1, "coproc": 1}, False)
    assert counters(folder) == {"main": 1, "coproc": 1}
    assert seqs(folder) == {"main": 1, "coproc": 1}
    assert install(folder, release(author, 3, count)).installed
    assert boot(folder).trial


def test_a_folder_saved_with_one_file_per_flash_still_opens(tmp_path: Path,
                                                            author: Author) -> None:
    folder, _ = provisioned(tmp_path, author, "dual-cpu")
    device = open_device(folder)
    flash_dir = folder / "flash"
    # The layout of earlier suitkit versions: <name>.bin per flash and wear.json.
    for name, flash in device.flashes.items():
        (flash_dir / f"{name}.bin").write_bytes(flash.snapshot())
    (flash_dir / "wear.json").write_text(json.dumps(
        {name: flash.erase_counts for name, flash in device.flashes.items()}))
    (flash_dir / wiring.FLASH_STATE).unlink()
    (flash_dir / wiring.FLASH_COPY).unlink()
    assert seqs(folder) == {"main": 1, "coproc": 1}
    assert sorted(p.name for p in flash_dir.iterdir()) == [wiring.FLASH_STATE]


def test_a_damaged_flash_state_is_one_clear_error(tmp_path: Path, author: Author) -> None:
    """Every copy of the saved flash damaged: one error naming each (one damaged copy is
    survived: tests/device/test_device_storage.py)."""
    folder, _ = provisioned(tmp_path, author, "mcu")
    for name in (wiring.FLASH_STATE, wiring.FLASH_COPY):
        state = folder / "flash" / name
        state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(wiring.DecodeError, match=r"saved flash is unreadable in every copy: "
                       r".*state\.cbor.*state\.1\.cbor"):
        open_device(folder)


def test_a_flash_state_of_the_wrong_shape_is_one_clear_error(tmp_path: Path,
                                                             author: Author) -> None:
    folder, _ = provisioned(tmp_path, author, "mcu")
    state = folder / "flash" / wiring.FLASH_STATE
    (name, flash), = open_device(folder).flashes.items()
    (folder / "flash" / wiring.FLASH_COPY).unlink()  # one copy, in the format before copies
    wear = [0] * len(flash.erase_counts)
    # An integer for the content was read as that many zero bytes (and a huge one would be
    # allocated); negative wear counts were taken as they came.
    for content, counts in ((flash.size, wear), (flash.snapshot(), [-1] * len(wear)),
                            (flash.snapshot(), ["x"] * len(wear))):
        state.write_bytes(cbor.encode({"format": 1, "flashes": {name: content},
                                       "wear": {name: counts}}))
        with pytest.raises(wiring.DecodeError, match="saved flash is unreadable"):
            open_device(folder)
