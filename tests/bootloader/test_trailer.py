"""Trailer encode/decode, one-operation transitions, torn writes, and retire-before-erase."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suitkit.bootloader.decide import Phase, phase_of
from suitkit.bootloader.flash import Flash, PowerCut
from suitkit.bootloader.layout import Region
from suitkit.bootloader.trailer import (
    MAGIC,
    Flag,
    Kind,
    MagicState,
    Trailer,
    TrailerArea,
    TrailerFormat,
)


@st.composite
def live_trailers(draw: st.DrawFn) -> tuple[TrailerFormat, Trailer]:
    fmt = TrailerFormat(draw(st.sampled_from([8, 16, 32])), draw(st.integers(0, 20)))
    trailer = Trailer(
        MagicState.GOOD,
        draw(st.sampled_from(Kind)),
        copy_done=draw(st.booleans()),
        tried=draw(st.booleans()),
        image_ok=draw(st.booleans()),
        revert=draw(st.booleans()),
        revert_done=draw(st.booleans()),
        swap_log=draw(st.integers(0, fmt.log_length)),
        revert_log=draw(st.integers(0, fmt.log_length)),
    )
    return fmt, trailer


@given(live_trailers())
def test_decode_encode_round_trip(case: tuple[TrailerFormat, Trailer]) -> None:
    fmt, trailer = case
    raw = trailer.encode(fmt)
    assert len(raw) == fmt.size
    assert Trailer.decode(raw, fmt) == trailer
    assert Trailer.decode(raw + b"\xff" * 100, fmt) == trailer


def test_layout_in_units() -> None:
    fmt = TrailerFormat(8, 3)
    assert fmt.magic_offset == 8
    assert [fmt.flag_offset(f) for f in Flag] == [24, 32, 40, 48, 56]
    assert (fmt.log_offset, fmt.step_offset(1, 0), fmt.size) == (64, 136, 208)
    wide = TrailerFormat(16, 3)
    assert wide.magic_units == 1
    assert wide.flag_offset(Flag.COPY_DONE) == 32


def test_erased_is_unset_and_junk_is_bad() -> None:
    fmt = TrailerFormat(8, 2)
    assert Trailer.decode(b"\xff" * fmt.size, fmt) == Trailer(MagicState.UNSET)
    live = Trailer(MagicState.GOOD, Kind.TEST, copy_done=True).encode(fmt)
    retired = live[:8] + bytes(16) + live[24:]
    assert Trailer.decode(retired, fmt).magic is MagicState.BAD
    torn_magic = live[:8] + bytes([MAGIC[0] & 0x0F]) + live[9:]
    assert Trailer.decode(torn_magic, fmt).magic is MagicState.BAD
    bad_kind = b"\x07" + live[1:]
    assert Trailer.decode(bad_kind, fmt).magic is MagicState.BAD
    # A live magic over an erased sector's garbage fields: only the magic decides.
    only_magic_no_kind = b"\xff" * 8 + live[8:]
    assert Trailer.decode(only_magic_no_kind, fmt).magic is MagicState.BAD


def test_encode_refuses_what_cannot_be_stored() -> None:
    fmt = TrailerFormat(8, 1)
    with pytest.raises(ValueError, match="longer than 3"):
        Trailer(MagicState.GOOD, Kind.TEST, swap_log=4).encode(fmt)
    with pytest.raises(ValueError, match="only UNSET"):
        Trailer(MagicState.BAD).encode(fmt)


def area(seed: int = 0, blocks: int = 3) -> TrailerArea:
    flash = Flash("f", [4096, 4096], seed=seed)
    return TrailerArea(flash, Region("f", 4096, 4096), TrailerFormat(8, blocks))


def test_each_transition_is_one_program_operation() -> None:
    a = area()
    a.start(Kind.TEST)
    assert (a.flash.programs, a.flash.erases) == (2, 0)  # kind, then magic
    for step in range(9):
        a.record_step(0, step)
    for flag in Flag:
        a.set_flag(flag)
    assert (a.flash.programs, a.flash.erases) == (2 + 9 + 5, 0)
    t = a.read()
    assert (t.live, t.kind, t.swap_log, t.revert_log) == (True, Kind.TEST, 9, 0)
    assert all(t.flag(f) for f in Flag)


def test_a_log_counts_its_leading_steps() -> None:
    a = area()
    a.start(Kind.PERMANENT)
    a.record_step(1, 0)
    a.record_step(1, 1)
    a.record_step(1, 3)  # a hole: the log stops at the first unrecorded step
    t = a.read()
    assert (t.swap_log, t.revert_log) == (0, 2)


def test_a_flag_with_any_bit_cleared_reads_as_set() -> None:
    a = area()
    a.start(Kind.TEST)
    offset = a.region.offset + a.fmt.flag_offset(Flag.TRIED)
    a.flash.program(offset, b"\xff\xff\xfe" + b"\xff" * 5)
    assert a.read().tried
    a.set_flag(Flag.TRIED)  # completing a torn flag is a legal bit-clearing program
    assert a.read().tried


def test_a_cut_flag_write_reads_as_done_or_not_started() -> None:
    results = set()
    for seed in range(30):
        a = area(seed)
        a.start(Kind.TEST)
        a.flash.supply.cut_after(1)
        with pytest.raises(PowerCut):
            a.set_flag(Flag.IMAGE_OK)
        a.flash.reboot()
        t = a.read()
        assert t.live and not t.copy_done and not t.tried
        results.add(t.image_ok)
    assert results == {True, False}


def test_wipe_retires_then_erases_and_skips_what_is_done() -> None:
    a = area()
    a.wipe()
    assert a.flash.ops == 0  # already erased
    a.start(Kind.TEST)
    a.set_flag(Flag.COPY_DONE)
    a.wipe()
    assert (a.flash.programs, a.flash.erases) == (3 + 1, 1)
    assert a.is_erased()


def confirmed(seed: int) -> TrailerArea:
    a = area(seed)
    a.start(Kind.TEST)
    for step in range(9):
        a.record_step(0, step)
    for flag in (Flag.COPY_DONE, Flag.TRIED, Flag.IMAGE_OK):
        a.set_flag(flag)
    return a


def test_retire_before_erase_means_a_cut_erase_never_revives_a_record() -> None:
    revived = 0
    for seed in range(400):
        a = confirmed(seed)
        a.flash.supply.cut_after(2)  # the retire completes, the erase is cut
        with pytest.raises(PowerCut):
            a.wipe()
        a.flash.reboot()
        assert phase_of(a.read()) is Phase.NONE
        # Without the retire, the same cut erase can leave the old record live.
        b = confirmed(seed)
        b.flash.supply.cut_after(1)
        with pytest.raises(PowerCut):
            b.flash.erase(b.region.offset)
        b.flash.reboot()
        revived += b.read().live
    assert revived > 0


def test_a_cut_retire_already_kills_the_record() -> None:
    for seed in range(30):
        a = confirmed(seed)
        before = a.flash.read(a.region.offset + a.fmt.magic_offset, 16)
        a.flash.supply.cut_after(1)
        with pytest.raises(PowerCut):
            a.wipe()
        a.flash.reboot()
        after = a.flash.read(a.region.offset + a.fmt.magic_offset, 16)
        # Either the retire cleared some bit (record dead) or none yet (record intact).
        assert a.read().live == (after == before)


def test_area_must_fit_the_sector() -> None:
    flash = Flash("f", [256])
    with pytest.raises(ValueError, match="trailer needs"):
        TrailerArea(flash, Region("f", 0, 256), TrailerFormat(8, 20))
