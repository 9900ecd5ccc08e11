"""A record in two flash copies (``bootloader.records``): the trust anchors of flash shapes.

Cut the power at every flash operation of a write: what is read afterwards is the old record
or the new one, never a mix, never nothing when there was something; a later write works.
"""

from __future__ import annotations

import pytest

from suitkit.bootloader.flash import Flash, PowerCut, PowerSupply
from suitkit.bootloader.layout import Region
from suitkit.bootloader.records import DamagedRecord, RecordArea
from suitkit.errors import StorageError

SECTOR = 4096


def _area(seed: int = 0) -> tuple[RecordArea, Flash]:
    flash = Flash("internal", [SECTOR] * 6, write_align=8, page_size=1024,
                  supply=PowerSupply(), seed=seed)
    area = RecordArea({"internal": flash}, (Region("internal", 0, 3 * SECTOR),
                                            Region("internal", 3 * SECTOR, 3 * SECTOR)))
    return area, flash


def _body(tag: int, size: int) -> bytes:
    return bytes((tag * 7 + i) % 251 for i in range(size))


def test_write_read_and_both_copies_hold_the_record() -> None:
    area, _ = _area()
    assert area.read() is None
    area.write(_body(1, 5000))
    assert area.read() == _body(1, 5000)
    assert area.read_copy(0).body == area.read_copy(1).body == _body(1, 5000)
    area.write(b"")
    assert area.read() == b""
    area.write(_body(2, 300))
    assert area.read() == _body(2, 300)
    with pytest.raises(StorageError, match="holds at most"):
        area.write(bytes(area.capacity + 1))


def test_one_damaged_copy_leaves_the_other_and_both_damaged_is_refused() -> None:
    area, flash = _area()
    area.write(_body(1, 2000))
    area.write(_body(2, 2000))
    flash.corrupt(100, b"\x00" * 8)  # a bit flip in copy 0's body
    assert area.read() == _body(2, 2000)  # never the older record
    flash.corrupt(3 * SECTOR + 100, b"\x00" * 8)
    with pytest.raises(DamagedRecord, match="neither copy of its flash area is valid"):
        area.read()


def _ops(before: list[bytes], body: bytes) -> int:
    area, flash = _area()
    for old in before:
        area.write(old)
    start = flash.supply.ops
    area.write(body)
    return flash.supply.ops - start


@pytest.mark.parametrize("before", [[], [_body(1, 7000)], [_body(1, 7000), _body(2, 900)]])
def test_a_cut_at_every_flash_operation_leaves_the_old_record_or_the_new(
        before: list[bytes]) -> None:
    new = _body(9, 4500)
    total = _ops(before, new)
    assert total > 4
    seen = set()
    for n in range(1, total + 1):
        area, flash = _area(seed=n)
        for old in before:
            area.write(old)
        flash.supply.cut_after(n)
        with pytest.raises(PowerCut):
            area.write(new)
        flash.supply.restore()
        got = area.read()
        expected_old = before[-1] if before else None
        assert got in (expected_old, new), f"cut at operation {n}: neither old nor new"
        seen.add(got == new)
        area.write(_body(5, 100))  # and the area still takes the next record
        assert area.read() == _body(5, 100)
    assert seen == {False, True}  # the cuts fell both before and after the commit
