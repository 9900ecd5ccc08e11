"""The NOR flash model: its rules, its counters, and what a power cut leaves behind."""

from __future__ import annotations

import pytest

from suitkit.bootloader.flash import Flash, FlashError, PowerCut, PowerSupply
from suitkit.errors import StorageError, SuitError


def small(
    *, seed: int = 0, fail_at: int | None = None, write_align: int = 8, page_size: int | None = 256
) -> Flash:
    return Flash(
        "f",
        [4096, 4096, 1024, 1024],
        seed=seed,
        fail_at=fail_at,
        write_align=write_align,
        page_size=page_size,
    )


def test_new_flash_is_erased() -> None:
    f = small()
    assert f.size == 10240
    assert f.is_erased(0, f.size)
    assert f.snapshot() == b"\xff" * f.size


def test_program_clears_bits_and_erase_restores_0xff() -> None:
    f = small()
    f.program(8, b"\x0f\xf0\x00\xff\x12\x34\x56\x78")
    assert f.read(8, 8) == b"\x0f\xf0\x00\xff\x12\x34\x56\x78"
    f.erase(0)
    assert f.read(0, 4096) == b"\xff" * 4096


def test_programming_zero_over_zero_is_allowed() -> None:
    f = small()
    f.program(0, b"\x0f" + b"\xff" * 7)
    f.program(0, b"\x03" + b"\xff" * 7)  # clears two more bits, keeps the zeros
    f.program(0, b"\x03" + b"\xff" * 7)  # the same again: nothing changes
    assert f.read(0, 1) == b"\x03"


def test_programming_a_one_over_a_zero_is_refused() -> None:
    f = small()
    f.program(16, b"\x00" * 8)
    before = f.snapshot()
    with pytest.raises(FlashError, match=r"set bits to 1 at 0x10.*erase the sector first"):
        f.program(16, b"\x01" + b"\x00" * 7)
    assert f.snapshot() == before
    assert f.ops == 1  # the refused program is not an operation


@pytest.mark.parametrize(
    ("addr", "data", "message"),
    [
        (4, b"\x00" * 8, "not aligned"),
        (0, b"\x00" * 12, "not aligned"),
        (10240 - 8, b"\x00" * 16, "outside the device"),
        (248, b"\x00" * 16, "crosses a 256-byte page"),
        (0, b"", "empty program"),
    ],
)
def test_bad_programs_are_refused(addr: int, data: bytes, message: str) -> None:
    f = small()
    with pytest.raises(FlashError, match=message):
        f.program(addr, data)


def test_write_alignment_is_configurable() -> None:
    f = small(write_align=16, page_size=None)
    with pytest.raises(FlashError, match="aligned to 16"):
        f.program(8, b"\x00" * 8)
    f.program(16, b"\x00" * 4096)  # no page limit


def test_erase_must_start_at_a_sector() -> None:
    f = small()
    with pytest.raises(FlashError, match="not the start of a sector"):
        f.erase(100)
    f.erase(8192)  # the first 1 KiB sector of the non-uniform layout


def test_non_uniform_geometry() -> None:
    f = small()
    assert [(s.offset, s.size) for s in f.sectors] == [
        (0, 4096),
        (4096, 4096),
        (8192, 1024),
        (9216, 1024),
    ]
    assert f.sector_at(9000).index == 2
    assert f.sector_at(9216).index == 3
    assert [s.index for s in f.sectors_in(4096, 5120)] == [1, 2]
    with pytest.raises(FlashError, match="sector boundaries"):
        f.sectors_in(4096, 4000)


def test_wear_and_operation_counters() -> None:
    f = small()
    f.erase(0)
    f.erase(0)
    f.erase(8192)
    f.program(0, b"\x00" * 8)
    f.read(0, 100)
    assert f.erase_counts == [2, 0, 1, 0]
    assert (f.ops, f.erases, f.programs) == (4, 3, 1)
    assert f.supply.ops == 4


def test_erase_range_erases_each_sector_once() -> None:
    f = small()
    f.erase_range(4096, 5120)
    assert f.erase_counts == [0, 1, 1, 0]


def test_power_cut_is_not_a_suit_error() -> None:
    assert not issubclass(PowerCut, SuitError)
    assert issubclass(FlashError, StorageError)


def test_cut_at_operation_n_stops_there_and_power_stays_off() -> None:
    f = small(fail_at=3)
    f.program(0, b"\x00" * 8)
    f.erase(4096)
    with pytest.raises(PowerCut, match="operation 3"):
        f.program(8, b"\x00" * 8)
    with pytest.raises(PowerCut, match="power is off"):
        f.read(0, 8)
    with pytest.raises(PowerCut):
        f.erase(0)
    assert f.ops == 3  # refused accesses while off are not operations
    f.reboot()
    assert f.read(0, 8) == b"\x00" * 8
    f.program(16, b"\x00" * 8)  # the cut is disarmed after the reboot
    assert f.ops == 4
    assert f.supply.cuts == 1


def test_cut_after_counts_from_now() -> None:
    f = small()
    f.program(0, b"\x00" * 8)
    f.supply.cut_after(2)
    f.program(8, b"\x00" * 8)
    with pytest.raises(PowerCut):
        f.program(16, b"\x00" * 8)


def test_one_supply_cuts_every_flash_on_it() -> None:
    supply = PowerSupply(fail_at=2)
    a = Flash("a", [4096], supply=supply)
    b = Flash("b", [2048], write_align=16, supply=supply, seed=7)
    a.program(0, b"\x00" * 8)
    with pytest.raises(PowerCut):
        b.program(0, b"\x00" * 16)
    with pytest.raises(PowerCut):
        a.read(0, 1)
    supply.restore()
    assert (a.ops, b.ops, supply.ops) == (1, 1, 2)


def torn_program(seed: int) -> tuple[bytes, bytes, bytes]:
    """(old, new, after) for a 64-byte program cut on a flash seeded with ``seed``."""
    f = small(seed=seed)
    old = bytes(range(0xC0, 0x100))
    f.program(0, old)
    new = bytes(b & 0x3C for b in old)
    f.supply.cut_after(1)
    with pytest.raises(PowerCut, match="torn"):
        f.program(0, new)
    f.reboot()
    return old, new, f.read(0, 64)


def test_a_cut_program_leaves_a_prefix_a_torn_unit_and_the_rest_untouched() -> None:
    seen_done = set()
    for seed in range(40):
        old, new, after = torn_program(seed)
        # Only bits the program meant to clear were cleared: old & new <= after <= old.
        for o, n, a in zip(old, new, after, strict=True):
            assert a & ~o == 0
            assert a & (o & n) == o & n
        units = [after[i : i + 8] for i in range(0, 64, 8)]
        done = next(i for i, u in enumerate(units) if u != new[i * 8 : i * 8 + 8])
        assert all(units[i] == new[i * 8 : i * 8 + 8] for i in range(done))
        assert all(units[i] == old[i * 8 : i * 8 + 8] for i in range(done + 1, 8))
        seen_done.add(done)
    assert len(seen_done) > 3  # the cut point inside the program varies with the seed


def test_a_cut_program_is_deterministic_per_seed() -> None:
    assert torn_program(5) == torn_program(5)
    assert len({torn_program(s)[2] for s in range(10)}) > 1


def torn_erase(seed: int) -> tuple[bytes, bytes]:
    f = small(seed=seed)
    pattern = bytes([0x5A, 0x00, 0xFF, 0x81]) * 256
    f.program(0, pattern[:256])
    f.program(256, pattern[256:512])
    old = f.read(0, 4096)
    f.supply.cut_after(1)
    with pytest.raises(PowerCut, match="erase of sector 0"):
        f.erase(0)
    f.reboot()
    assert f.erase_counts[0] == 1  # the interrupted erase still wore the sector
    return old, f.read(0, 4096)


def test_a_cut_erase_leaves_old_data_erased_data_or_garbage_deterministically() -> None:
    kinds = set()
    for seed in range(60):
        old, after = torn_erase(seed)
        assert torn_erase(seed)[1] == after
        if after == old:
            kinds.add("untouched")
        elif after == b"\xff" * 4096:
            kinds.add("erased")
        elif all(a & ~o == 0 for a, o in zip(after, old, strict=True)):
            kinds.add("bits cleared (pre-programming)")
        elif all(a & o == o for a, o in zip(after, old, strict=True)):
            kinds.add("bits set (erase pulses)")
        else:
            kinds.add("garbage")
    assert {"bits cleared (pre-programming)", "bits set (erase pulses)", "garbage"} <= kinds


def test_corrupt_ignores_the_rules_and_is_not_an_operation() -> None:
    f = small()
    f.program(0, b"\x00" * 8)
    f.corrupt(0, b"\xff\x01")
    assert f.read(0, 2) == b"\xff\x01"
    assert f.ops == 1


def test_uniform_constructor_and_bad_geometry() -> None:
    f = Flash.uniform("u", 2048, 4, write_align=16)
    assert f.size == 8192
    with pytest.raises(ValueError, match="power of two"):
        Flash("x", [4096], write_align=12)
    with pytest.raises(ValueError, match="not a multiple"):
        Flash("x", [4100])
