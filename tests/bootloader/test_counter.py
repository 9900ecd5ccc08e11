"""The anti-rollback security counter: unary, bit-clearing only, never decreasing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suitkit.bootloader.counter import SecurityCounter
from suitkit.bootloader.flash import Flash, PowerCut
from suitkit.bootloader.layout import Region
from suitkit.errors import StorageError


def counter(seed: int = 0, size: int = 64) -> SecurityCounter:
    return SecurityCounter(Flash("f", [4096], seed=seed), Region("f", 512, size))


def test_starts_at_zero_and_raising_is_one_program() -> None:
    c = counter()
    assert (c.read(), c.capacity) == (0, 512)
    c.raise_to(3)
    assert c.read() == 3
    assert c.flash.read(512, 1) == b"\x1f"  # most significant bit first
    assert (c.flash.programs, c.flash.erases) == (1, 0)
    c.raise_to(70)
    assert c.read() == 70
    assert (c.flash.programs, c.flash.erases) == (2, 0)


def test_never_decreases_and_lower_raises_write_nothing() -> None:
    c = counter()
    c.raise_to(10)
    c.raise_to(4)
    c.raise_to(10)
    assert c.read() == 10
    assert c.flash.programs == 1


def test_over_capacity_is_refused() -> None:
    c = counter(size=8)
    c.raise_to(64)
    with pytest.raises(StorageError, match="at most 64, asked 65"):
        c.raise_to(65)


@given(st.lists(st.integers(0, 512), max_size=12))
def test_value_is_the_highest_raise(values: list[int]) -> None:
    c = counter()
    for v in values:
        c.raise_to(v)
    assert c.read() == max(values, default=0)


def test_a_cut_raise_leaves_a_value_between_old_and_new_and_can_be_finished() -> None:
    seen = set()
    for seed in range(40):
        c = counter(seed)
        c.raise_to(5)
        c.flash.supply.cut_after(1)
        with pytest.raises(PowerCut):
            c.raise_to(300)
        c.flash.reboot()
        value = c.read()
        assert 5 <= value <= 300
        seen.add(value)
        c.raise_to(300)
        assert c.read() == 300
    assert len(seen) > 3
