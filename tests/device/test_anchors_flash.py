"""Flash shapes keep their trust anchors in a flash area, not in a file (docs/keys.md "Storage").

The area (``bootloader.records``) is two copies at the end of the flash, each rotation written
into both in turn; ``sim/test_anchors_powercut.py`` cuts the power at every flash operation
of a rotation. A folder made before the area keeps working: its ``anchors.cbor`` is copied into
the area at the first open, and goes once the area is saved. A rotation that revokes the key
of the running stage-1 bootloader does not brick the device (stage 0 verifies with the same
anchors; the stage-1 copies are recorded like the application's slots).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from suitkit.bootloader.profiles import ANCHOR_SECTORS
from suitkit.core import cbor
from suitkit.device.anchors import STORE, encode_store
from suitkit.device.config import BOOTLOADER_ID, create_device
from suitkit.device.wiring import FLASH_COPY, FLASH_STATE, FlashAnchorMedium, open_device
from suitkit.errors import KeyMaterialError

from .device_kit import CLASS, VENDOR, boot, confirm, image_bytes, install, running
from .test_anchors import Keys, provisioned, release, revocation, signed


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


def _medium(folder: Path) -> FlashAnchorMedium:
    medium = open_device(folder).config.anchor_medium
    assert isinstance(medium, FlashAnchorMedium)
    return medium


@pytest.mark.parametrize("shape", ["mcu", "dual-cpu"])
def test_a_rotation_on_a_flash_shape_is_written_to_its_flash(tmp_path: Path, keys: Keys,
                                                            shape: str) -> None:
    folder = provisioned(tmp_path, keys, shape)
    outcome = install(folder, signed(revocation(keys), keys.root))
    assert outcome.installed, outcome.reason
    assert not (folder / STORE).exists()  # no file: the flash holds it
    area = _medium(folder).area
    copies = [area.read_copy(i) for i in (0, 1)]
    assert copies[0].body == copies[1].body is not None  # both copies hold the new store
    assert open_device(folder).config.anchors_version() == 1
    assert open_device(folder).config.stored_anchors().raw == revocation(keys).encode()  # type: ignore[union-attr]
    # revocation holds at install and at boot, from the flash
    assert "revoked key" in install(folder, release(keys.leaked, 2, "attack", shape)).reason
    assert {s for s, _ in running(boot(folder)).values()} == {1}


def test_a_damaged_anchor_area_fails_closed(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    assert install(folder, signed(revocation(keys), keys.root)).installed
    opened = open_device(folder)
    area = _medium(folder).area
    flash = opened.flashes[area.copies[0].flash]
    flash.corrupt(area.copies[1].offset + 100, b"\x00" * 8)  # one copy: the other is read
    opened.save()
    assert open_device(folder).config.anchors_version() == 1
    opened = open_device(folder)
    opened.flashes[area.copies[0].flash].corrupt(area.copies[0].offset + 100, b"\x00" * 8)
    opened.save()
    with pytest.raises(KeyMaterialError, match="damaged trust-anchor store"):
        open_device(folder)  # never device init's anchors (fewer revocations) in its place


def _as_before_the_area(folder: Path, store: bytes) -> None:
    """Make ``folder`` look like a folder saved before the anchor area: its flash without the
    area's sectors, and its anchors in ``anchors.cbor``."""
    for name in (FLASH_STATE, FLASH_COPY):
        path = folder / "flash" / name
        if not path.exists():
            continue
        doc = cbor.decode(path.read_bytes(), path="t")
        state = dict(cbor.decode(doc["state"], path="t"))
        size = 2 * ANCHOR_SECTORS * 4096
        state["flashes"] = {k: v[:-size] for k, v in state["flashes"].items()}
        state["wear"] = {k: list(v)[:-2 * ANCHOR_SECTORS] for k, v in state["wear"].items()}
        raw = cbor.encode(state)
        path.write_bytes(cbor.encode({"format": 2, "state": raw,
                                      "sha256": hashlib.sha256(raw).digest()}))
    (folder / STORE).write_bytes(store)


def test_a_folder_made_before_the_area_keeps_its_anchors(tmp_path: Path, keys: Keys) -> None:
    folder = provisioned(tmp_path, keys)
    control = provisioned(tmp_path, keys, name="control")
    assert install(control, signed(revocation(keys), keys.root)).installed
    stored = open_device(control).config.stored_anchors()
    assert stored is not None
    data = encode_store(stored.raw, stored.recorded)
    _as_before_the_area(folder, data)
    opened = open_device(folder)  # the saved flash is shorter by the area: loaded blank
    assert opened.config.anchors_version() == 1
    assert (folder / STORE).exists()  # until the area is saved
    opened.save()
    assert not (folder / STORE).exists()
    assert _medium(folder).load() == data
    assert open_device(folder).config.anchors_version() == 1
    assert "revoked key" in install(folder, release(keys.leaked, 2, "attack")).reason
    assert install(folder, release(keys.fresh, 2, "good")).installed
    # a damaged file of such a folder is refused, not dropped
    other = provisioned(tmp_path, keys, name="damaged")
    _as_before_the_area(other, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(KeyMaterialError, match="damaged trust-anchor store"):
        open_device(other)
    assert (other / STORE).exists()


def test_revoking_the_stage1_signer_does_not_brick_the_device(tmp_path: Path,
                                                              keys: Keys) -> None:
    leaked = keys.leaked
    factory = leaked.envelope(1, [{**leaked.component("bl1.bin", image_bytes("bl1", 1200)),
                                   "id": [f"0x{p.hex()}" for p in BOOTLOADER_ID]}])
    folder = tmp_path / "dev"
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, stage1=True,
                  trust_anchors=[("root", keys.root.anchor), ("author", leaked.anchor)])
    open_device(folder).save()
    assert install(folder, factory).installed
    assert install(folder, release(leaked, 1)).installed
    boot(folder)
    confirm(folder)
    outcome = install(folder, signed(revocation(keys), keys.root))
    assert outcome.installed, outcome.reason
    opened = open_device(folder)
    result = opened.bootloader.boot()  # stage 0 still starts the stage 1 the revoked key signed
    opened.save()
    assert {s for s, _ in running(result).values()} == {1}
    # a stage 1 of the revoked key is refused; one of the new key goes through
    attack = leaked.envelope(2, [{**leaked.component("bl2x.bin", image_bytes("bl2x", 1200)),
                                  "id": [f"0x{p.hex()}" for p in BOOTLOADER_ID]}])
    assert "revoked key" in install(folder, attack).reason
    fresh = keys.fresh
    good = fresh.envelope(2, [{**fresh.component("bl2.bin", image_bytes("bl2", 1200)),
                               "id": [f"0x{p.hex()}" for p in BOOTLOADER_ID]}])
    outcome = install(folder, good)
    assert outcome.installed, outcome.reason
    opened = open_device(folder)
    opened.bootloader.boot()
    assert opened.stage0 is not None and opened.stage0.running == 1 and opened.stage0.on_trial()
