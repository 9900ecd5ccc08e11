"""A single-slot MCU patched in place (shape ``mcu-inplace``; docs/delta.md §9, issue #16).

Device folders as ``suitkit device`` keeps them, real ES256-signed envelopes made from
descriptions (``delta-from:`` with ``in-place:``), payloads fetched from a firmware folder.
The install stages the patch only (the running image is untouched until the boot); the boot
authenticates the staged patch before its first erase and rewrites the slot sector by sector;
what cannot be authenticated is refused or dropped with the running image left as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from device.device_kit import (
    CLASS,
    VENDOR,
    Author,
    boot,
    confirm,
    counters,
    install,
    new_device,
    running,
    status,
)
from suitkit.bootloader.api import NoBootableImage
from suitkit.bootloader.image import open_slot
from suitkit.bootloader.inplace import InplaceBootloader, patch_sectors
from suitkit.cli.main import app as cli
from suitkit.core import packing
from suitkit.device.config import create_device
from suitkit.device.fetch import FileFetcher
from suitkit.device.wiring import open_device
from suitkit.limits import Limits

SECTOR = 4096
SECTORS = 8


def _firmware(seed: str, size: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def _edited(old: bytes, grow: int, seed: str) -> bytes:
    import random

    rng = random.Random(seed)
    data = bytearray(old)
    for _ in range(4):
        data[rng.randrange(len(data))] ^= 0x5A
    at = len(data) // 2
    if grow >= 0:
        data[at:at] = rng.randbytes(grow)
    else:
        del data[at:at - grow]
    return bytes(data)


class Firmware:
    """The author's folder doubling as the firmware folder the device fetches from."""

    def __init__(self, author: Author) -> None:
        self.author = author
        self.fetcher = FileFetcher(author.folder)

    def release(self, sequence: int, image: bytes, *, delta_from: bytes | None = None,
                in_place: bool = True, **fields: Any) -> bytes:
        name = f"app-{sequence}.bin"
        comp = self.author.component(name, image, uri=f"{name}.payload")
        if delta_from is not None:
            (self.author.folder / f"pre-{sequence}.bin").write_bytes(delta_from)
            comp["delta-from"] = f"pre-{sequence}.bin"
            if in_place:
                comp["in-place"] = SECTOR
        comp.update(fields)
        from suitkit.author.describe import parse_description

        description = parse_description(
            {"sequence-number": sequence, "vendor-domain": "example.com",
             "class-name": "thermostat", "components": [comp]}, base=self.author.folder)
        payload = description.packed[0][1] if description.packed else image
        (self.author.folder / f"{name}.payload").write_bytes(payload)
        return self.author.envelope(sequence, [comp])


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


def _device(tmp_path: Path, author: Author) -> Path:
    folder = tmp_path / "dev"
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, trust_anchors=[author.anchor],
                  shape="mcu-inplace", image_sectors=SECTORS)
    open_device(folder).save()
    return folder


def _image_area(folder: Path) -> bytes:
    opened = open_device(folder)
    assert isinstance(opened.bootloader, InplaceBootloader)
    region = opened.bootloader.layout.image
    return opened.flashes[region.flash].read(region.offset, region.size)


def _provisioned(tmp_path: Path, author: Author) -> tuple[Path, Firmware, bytes]:
    """A device running release 1 (programmed into the blank device), confirmed."""
    firmware = Firmware(author)
    device = _device(tmp_path, author)
    v1 = _firmware("v1", 25_000)
    outcome = install(device, firmware.release(1, v1), firmware.fetcher)
    assert outcome.installed, outcome.reason
    result = boot(device)
    assert not result.trial
    assert running(result) == {"app": (1, hashlib.sha256(v1).digest())}
    confirm(device)
    return device, firmware, v1


@pytest.mark.parametrize("grow", [900, -900])
def test_an_in_place_delta_rewrites_the_single_slot_at_the_next_boot(
        author: Author, tmp_path: Path, grow: int) -> None:
    device, firmware, v1 = _provisioned(tmp_path, author)
    v2 = _edited(v1, grow, "v2")
    envelope = firmware.release(2, v2, delta_from=v1)
    patch = (author.folder / "app-2.bin.payload").read_bytes()
    assert len(patch) < len(v2) // 10
    before = _image_area(device)
    outcome = install(device, envelope, firmware.fetcher)
    assert outcome.installed, outcome.reason
    # Installing stages the patch only: the running image is not touched before the boot.
    assert _image_area(device) == before
    opened = open_device(device)
    assert opened.bootloader.pending_update()
    result = boot(device)
    assert result.trial
    assert running(result) == {"app": (2, hashlib.sha256(v2).digest())}
    assert _image_area(device)[:len(v2)] == v2
    assert counters(device) == {"app": 1}  # never raised for a trial
    assert status(device)["trial"] is True
    assert confirm(device) == {"app": 2}
    doc = status(device)
    assert doc["shape"] == "mcu-inplace" and doc["trial"] is False
    assert doc["components"][0]["running"]["sequence-number"] == 2
    steady = boot(device)
    assert not steady.trial and running(steady)["app"][0] == 2
    # A further in-place update goes over it.
    v3 = _edited(v2, -grow // 3, "v3")
    assert install(device, firmware.release(3, v3, delta_from=v2), firmware.fetcher).installed
    assert running(boot(device)) == {"app": (3, hashlib.sha256(v3).digest())}


def test_the_patch_area_holds_a_delta_not_an_image() -> None:
    # The size rule: an eighth of the slot, at least one sector.
    assert [patch_sectors(n) for n in (1, 3, 8, 9, 80)] == [1, 1, 1, 2, 10]


def test_a_full_image_is_refused_by_a_device_that_runs_one(author: Author,
                                                           tmp_path: Path) -> None:
    device, firmware, _v1 = _provisioned(tmp_path, author)
    before = _image_area(device)
    outcome = install(device, firmware.release(2, _firmware("full", 20_000)), firmware.fetcher)
    assert not outcome.installed
    assert "no room for a full image; it installs in-place deltas" in outcome.reason
    assert _image_area(device) == before
    assert running(boot(device))["app"][0] == 1


def test_a_patch_larger_than_the_patch_area_is_refused_naming_both_sizes(
        author: Author, tmp_path: Path) -> None:
    device, firmware, v1 = _provisioned(tmp_path, author)
    v2 = _edited(v1, 4500, "big")  # 4.5 KB of new random bytes: more than the 4 KiB area
    outcome = install(device, firmware.release(2, v2, delta_from=v1), firmware.fetcher)
    assert not outcome.installed
    assert "the patch area holds 4096 (an eighth of the slot)" in outcome.reason
    assert not open_device(device).bootloader.pending_update()
    assert running(boot(device))["app"][0] == 1


def test_a_delta_not_made_for_in_place_application_is_refused(author: Author,
                                                              tmp_path: Path) -> None:
    device, firmware, v1 = _provisioned(tmp_path, author)
    envelope = firmware.release(2, _edited(v1, 300, "v2"), delta_from=v1, in_place=False,
                                compress="zstd")
    outcome = install(device, envelope, firmware.fetcher)
    assert not outcome.installed
    assert "the delta must be made for in-place application" in outcome.reason
    assert not open_device(device).bootloader.pending_update()
    assert running(boot(device))["app"][0] == 1


def test_an_in_place_delta_from_another_precursor_is_refused(author: Author,
                                                            tmp_path: Path) -> None:
    device, firmware, _v1 = _provisioned(tmp_path, author)
    other = _firmware("other", 25_000)
    outcome = install(device, firmware.release(2, _edited(other, 100, "v2"), delta_from=other),
                      firmware.fetcher)
    assert not outcome.installed
    assert not open_device(device).bootloader.pending_update()
    assert running(boot(device))["app"][0] == 1


def test_a_staged_patch_altered_after_install_is_dropped_before_any_erase(
        author: Author, tmp_path: Path) -> None:
    """The boot authenticates the staged patch (its digest in the signed delta-info) before the
    journal starts: an altered patch is forgotten and the running image boots, untouched."""
    device, firmware, v1 = _provisioned(tmp_path, author)
    assert install(device, firmware.release(2, _edited(v1, 400, "v2"), delta_from=v1),
                   firmware.fetcher).installed
    opened = open_device(device)
    store = opened.bootloader
    assert isinstance(store, InplaceBootloader)
    flash = opened.flashes["internal"]
    _record, reader = open_slot(flash, store.layout.patch, unit=8, limits=Limits())
    patch_at = reader.offset + reader.length // 2  # inside the staged patch's bytes
    flash.corrupt(patch_at, bytes([flash.read(patch_at, 1)[0] ^ 0x01]))
    opened.save()
    wear = list(open_device(device).flashes["internal"].erase_counts)
    image_sectors = range(SECTORS)
    result = boot(device)
    assert not result.trial and running(result)["app"][0] == 1
    assert any("patch" in note and "digest" in note for note in result.notes), result.notes
    after = open_device(device).flashes["internal"].erase_counts
    assert [after[i] for i in image_sectors] == [wear[i] for i in image_sectors]
    assert not open_device(device).bootloader.pending_update()


def test_a_result_that_does_not_match_refuses_to_boot_and_writes_nothing_more(
        author: Author, tmp_path: Path) -> None:
    """No image is kept to fall back to: a rewrite whose result does not verify (a flash fault,
    here a rewritten sector damaged while the power was off) stops the boot, named."""
    device, firmware, v1 = _provisioned(tmp_path, author)
    v2 = _edited(v1, -500, "v2")
    assert install(device, firmware.release(2, v2, delta_from=v1), firmware.fetcher).installed
    opened = open_device(device)
    store = opened.bootloader
    assert isinstance(store, InplaceBootloader)
    flash = opened.flashes["internal"]
    flash.supply.cut_after(14)  # inside the rewrite: some sectors done (ascending)
    with pytest.raises(Exception, match="power cut"):
        store.boot()
    flash.supply.restore()
    assert store.status.read().swap_log >= 2
    flash.corrupt(store.layout.image.offset + 100, b"\x00")  # the first sector, rewritten
    opened.save()
    with pytest.raises(NoBootableImage, match=r"does not match the manifest.*flash fault"):
        boot(device)
    ops = open_device(device).flashes["internal"].erase_counts
    with pytest.raises(NoBootableImage):
        boot(device)
    assert open_device(device).flashes["internal"].erase_counts == ops


def test_an_ab_device_applies_an_in_place_delta_too(author: Author, tmp_path: Path) -> None:
    """An in-place patch is an SKD1 patch with a stricter order: a device with two slots
    writes its result into the other slot as usual."""
    firmware = Firmware(author)
    device = new_device(tmp_path / "ab", [author.anchor], "mcu")
    v1 = _firmware("v1", 25_000)
    assert install(device, firmware.release(1, v1), firmware.fetcher).installed
    boot(device)
    confirm(device)
    v2 = _edited(v1, 700, "v2")
    assert install(device, firmware.release(2, v2, delta_from=v1), firmware.fetcher).installed
    assert running(boot(device)) == {"app": (2, hashlib.sha256(v2).digest())}


def test_cli_makes_an_in_place_delta_and_an_in_place_device(author: Author,
                                                            tmp_path: Path) -> None:
    old = _firmware("old", 20_000)
    new = _edited(old, 600, "new")
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    done = CliRunner().invoke(cli, ["delta", str(tmp_path / "old.bin"), str(tmp_path / "new.bin"),
                                    "--out", str(tmp_path / "p"), "--in-place", "4096",
                                    "--compress", "zstd"])
    assert done.exit_code == 0, done.output
    assert "in place: 4096-byte sectors, descending" in done.stdout
    patch = packing.decompress([(tmp_path / "p").read_bytes()], packing.Codec.ZSTD,
                               max_output=1 << 20)
    rebuilt = b"".join(packing.apply_delta(patch, lambda o, n: old[o:o + n],
                                           source_size=len(old), max_output=len(new),
                                           inplace=(4096, packing.Order.DESCENDING)))
    assert rebuilt == new
    refused = CliRunner().invoke(cli, ["device", "init", str(tmp_path / "nodelta"),
                                       "--vendor-domain", "example.com", "--class-name", "t",
                                       "--trust-anchor", str(author.anchor),
                                       "--shape", "mcu-inplace", "--unpack", "zstd"])
    assert refused.exit_code != 0
    assert "installs in-place deltas only" in refused.output
    assert "Traceback" not in refused.output
    bad = CliRunner().invoke(cli, ["delta", str(tmp_path / "old.bin"), str(tmp_path / "new.bin"),
                                   "--out", str(tmp_path / "q"), "--in-place", "1000"])
    assert bad.exit_code != 0
    assert "power of two" in bad.output and "Traceback" not in bad.output
    made = CliRunner().invoke(cli, ["device", "init", str(tmp_path / "dev"), "--vendor-domain",
                                    "example.com", "--class-name", "thermostat",
                                    "--trust-anchor", str(author.anchor),
                                    "--shape", "mcu-inplace"])
    assert made.exit_code == 0, made.output
    assert "created mcu-inplace device" in made.output
    assert isinstance(open_device(tmp_path / "dev").bootloader, InplaceBootloader)
