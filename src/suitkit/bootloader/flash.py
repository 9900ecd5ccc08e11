"""A NOR flash model that fails on purpose (design rule 8; mcuboot's ``sim/simflash``).

What it models:

- **Sectors**, uniform or not (``Flash(name, sectors=[16384, 16384, 4096, ...])``). ``erase``
  sets one whole sector to ``0xFF`` and counts wear per sector.
- **Programming only clears bits.** ``program`` writes ``old & new``; asking for a 1 where the
  flash holds a 0 raises :class:`FlashError` instead of silently keeping the 0, so code that
  forgets to erase is caught. Programming 0 over 0 is allowed: this is what lets a trailer flag
  or a counter advance with one program operation and no erase.
- **Alignment.** Program address and length must be multiples of ``write_align``; a program may
  not cross a ``page_size`` boundary (NOR page programming).
- **Power cuts.** Every erase and program is one *operation*, numbered from 1 by the
  :class:`PowerSupply` that powers the flash. When the operation number reaches the supply's
  ``fail_at``, that operation does not complete: it leaves a deterministic torn state (below)
  and raises :class:`PowerCut`. From then on every access to any flash on that supply raises
  :class:`PowerCut` until :meth:`PowerSupply.restore` (or :meth:`Flash.reboot`). Counters
  (operations, wear) survive the cut. Several flashes may share one supply (one board, one
  power domain) or each have its own.

What a cut leaves behind (seeded by ``(seed, operation number)``, so every run is repeatable):

- interrupted **program**: the first *k* write units (``write_align`` bytes each) are fully
  programmed, in unit *k* each bit it was meant to clear is cleared with a per-cut random
  probability (0/16 .. 16/16: possibly none, possibly all), the rest is untouched (*k* is
  random, possibly 0).
- interrupted **erase**: one of three things, each bit independently with a per-cut random
  density (0/16 .. 16/16): the cut hit the *pre-programming* phase many NOR parts run first
  (some bits went 1 -> 0: old contents with extra bits cleared), or the *erase pulses* after a
  completed pre-programming (random bits from all-0), or the erase pulses of a part without
  pre-programming (some bits went 0 -> 1: old contents with bits set). The sector may look
  untouched, fully erased, or like garbage. Code must not trust a sector whose erase may have
  been cut, and must make sure that old contents cannot come back to life as valid.

What it does not model: read disturb, bits that read differently on each read after a cut,
ECC flash that forbids re-programming a written word, or timing. Reads never fail except while
the power is off.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from suitkit.errors import StorageError

ERASED = 0xFF


def _random_mask(rng: random.Random, width: int, level: int) -> int:
    """``width`` random bits, each set with probability ``level / 16`` (0 <= level <= 16)."""
    if level >= 16:
        return (1 << width) - 1
    mask = 0
    # Build the probability from the binary digits of level, least significant first.
    for i in range(4):
        word = rng.getrandbits(width)
        mask = (word | mask) if (level >> i) & 1 else (word & mask)
    return mask


class PowerCut(Exception):
    """The power failed during a flash operation (or the flash is accessed while unpowered).

    Deliberately **not** a :class:`~suitkit.errors.SuitError`: no library code may catch it by
    accident and carry on as if the operation had completed.
    """


class FlashError(StorageError):
    """A flash operation that real hardware would reject or silently corrupt.

    Misaligned address or length, a range outside the device, a page crossed, or an attempt to
    program a 1 over a 0 (which needs an erase first).
    """


@dataclass(frozen=True, slots=True)
class Sector:
    """One erase unit of a flash device."""

    index: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


class PowerSupply:
    """One power domain: numbers the flash operations of every flash attached to it.

    ``fail_at=N`` makes operation N (counted from 1 since the supply was created, across all its
    flashes and across reboots) not complete.
    """

    def __init__(self, *, fail_at: int | None = None) -> None:
        self.ops = 0
        self.fail_at = fail_at
        self.powered = True
        self.cuts = 0

    def cut_after(self, n: int) -> None:
        """Arm a cut so that the ``n``-th operation from now (``n >= 1``) fails."""
        if n < 1:
            raise ValueError(f"cut_after needs n >= 1, got {n}")
        self.fail_at = self.ops + n

    def disarm(self) -> None:
        self.fail_at = None

    def restore(self) -> None:
        """Power comes back: flashes can be used again; counters are kept; the cut is disarmed."""
        self.powered = True
        self.fail_at = None

    def check_powered(self, what: str) -> None:
        if not self.powered:
            raise PowerCut(f"{what}: the power is off (restore the supply first)")

    def start_op(self) -> tuple[int, bool]:
        """Number a new operation; return ``(number, cut)`` where ``cut`` means it must fail."""
        self.ops += 1
        cut = self.fail_at is not None and self.ops == self.fail_at
        if cut:
            self.powered = False
            self.cuts += 1
            self.fail_at = None
        return self.ops, cut


class Flash:
    """A NOR flash device: sectors, bit-clearing programs, erase counters, power cuts.

    Args:
        name: a label used in messages and in layouts (``"internal"``, ``"ext-qspi"``).
        sectors: sector sizes in address order (non-uniform layouts allowed).
        write_align: program granularity in bytes (a power of two).
        page_size: the largest program, which may not cross a page boundary (None: no limit).
        supply: the power domain; a private one is created when omitted.
        fail_at: shorthand for a private supply with that ``fail_at``.
        seed: seeds the torn state a cut leaves behind.
    """

    def __init__(
        self,
        name: str,
        sectors: Sequence[int],
        *,
        write_align: int = 8,
        page_size: int | None = 256,
        supply: PowerSupply | None = None,
        fail_at: int | None = None,
        seed: int = 0,
    ) -> None:
        if not sectors:
            raise ValueError("a flash needs at least one sector")
        if write_align < 1 or write_align & (write_align - 1):
            raise ValueError(f"write_align must be a power of two, got {write_align}")
        if page_size is not None and (page_size < write_align or page_size % write_align):
            raise ValueError(f"page_size {page_size} must be a multiple of {write_align}")
        if supply is not None and fail_at is not None:
            raise ValueError("give either supply or fail_at, not both")
        layout: list[Sector] = []
        offset = 0
        for i, size in enumerate(sectors):
            if size <= 0 or size % write_align:
                raise ValueError(f"sector {i} size {size} is not a multiple of {write_align}")
            layout.append(Sector(i, offset, size))
            offset += size
        self.name = name
        self.sectors: tuple[Sector, ...] = tuple(layout)
        self.size = offset
        self.write_align = write_align
        self.page_size = page_size
        self.supply = supply if supply is not None else PowerSupply(fail_at=fail_at)
        self.seed = seed
        self.ops = 0
        self.programs = 0
        self.erases = 0
        self.erase_counts = [0] * len(self.sectors)
        self._mem = bytearray([ERASED]) * self.size
        self._starts = {s.offset: s for s in self.sectors}

    @classmethod
    def uniform(
        cls,
        name: str,
        sector_size: int,
        count: int,
        *,
        write_align: int = 8,
        page_size: int | None = 256,
        supply: PowerSupply | None = None,
        seed: int = 0,
    ) -> Flash:
        """A flash of ``count`` sectors of ``sector_size`` bytes."""
        return cls(
            name,
            [sector_size] * count,
            write_align=write_align,
            page_size=page_size,
            supply=supply,
            seed=seed,
        )

    def __repr__(self) -> str:
        return f"Flash({self.name!r}, {len(self.sectors)} sectors, {self.size} bytes)"

    # -- geometry -------------------------------------------------------------------------

    def sector_at(self, addr: int) -> Sector:
        """The sector that holds byte ``addr``."""
        self._check_range(addr, 1)
        lo, hi = 0, len(self.sectors) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.sectors[mid].offset <= addr:
                lo = mid
            else:
                hi = mid - 1
        return self.sectors[lo]

    def sectors_in(self, addr: int, length: int) -> tuple[Sector, ...]:
        """The sectors exactly covering ``[addr, addr+length)``; raises if not sector-aligned."""
        if length <= 0:
            raise FlashError(f"{self.name}: empty sector range at {addr:#x}")
        first = self.sector_at(addr)
        last = self.sector_at(addr + length - 1)
        if first.offset != addr or last.end != addr + length:
            raise FlashError(
                f"{self.name}: range {addr:#x}+{length:#x} does not start and end on sector "
                f"boundaries (sectors {first.offset:#x}..{last.end:#x})"
            )
        return self.sectors[first.index : last.index + 1]

    # -- operations -----------------------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        """Read bytes (not an operation: never cut, but refused while the power is off)."""
        self.supply.check_powered(f"{self.name}: read at {addr:#x}")
        self._check_range(addr, length)
        return bytes(self._mem[addr : addr + length])

    def is_erased(self, addr: int, length: int) -> bool:
        """True when every byte of the range reads 0xFF."""
        data = self.read(addr, length)
        return data.count(ERASED) == len(data)

    def program(self, addr: int, data: bytes) -> None:
        """Program ``data`` at ``addr``: one operation that can only clear bits.

        Raises:
            FlashError: misaligned, out of range, crossing a page, or a 1 over a 0.
            PowerCut: the power failed during this operation (or was already off).
        """
        self.supply.check_powered(f"{self.name}: program at {addr:#x}")
        length = len(data)
        align = self.write_align
        if length == 0:
            raise FlashError(f"{self.name}: empty program at {addr:#x}")
        if addr % align or length % align:
            raise FlashError(
                f"{self.name}: program at {addr:#x} of {length} bytes is not aligned to "
                f"{align} bytes"
            )
        self._check_range(addr, length)
        page = self.page_size
        if page is not None and addr // page != (addr + length - 1) // page:
            raise FlashError(
                f"{self.name}: program at {addr:#x} of {length} bytes crosses a "
                f"{page}-byte page boundary"
            )
        old = int.from_bytes(self._mem[addr : addr + length], "big")
        new = int.from_bytes(data, "big")
        if new & ~old:
            bad = (new & ~old).to_bytes(length, "big")
            first = next(i for i, b in enumerate(bad) if b)
            raise FlashError(
                f"{self.name}: program at {addr:#x} would set bits to 1 at {addr + first:#x} "
                f"(flash holds {self._mem[addr + first]:#04x}, asked {data[first]:#04x}): "
                "erase the sector first"
            )
        opno, cut = self._start_op()
        self.programs += 1
        if not cut:
            self._mem[addr : addr + length] = (old & new).to_bytes(length, "big")
            return
        rng = self._rng(opno)
        units = length // align
        done = rng.randrange(units)
        whole = addr + done * align
        merged = (old & new).to_bytes(length, "big")
        self._mem[addr:whole] = merged[: done * align]
        unit_old = int.from_bytes(self._mem[whole : whole + align], "big")
        unit_new = int.from_bytes(data[done * align : (done + 1) * align], "big")
        cleared = unit_old & ~unit_new & _random_mask(rng, align * 8, rng.randrange(17))
        self._mem[whole : whole + align] = (unit_old & ~cleared).to_bytes(align, "big")
        raise PowerCut(
            f"{self.name}: power cut during operation {opno} (program {length} bytes at "
            f"{addr:#x}; {done} of {units} units written, unit {done} torn)"
        )

    def erase(self, addr: int) -> None:
        """Erase the sector that starts at ``addr`` to 0xFF: one operation.

        Raises:
            FlashError: ``addr`` is not the start of a sector.
            PowerCut: the power failed during this operation (or was already off).
        """
        self.supply.check_powered(f"{self.name}: erase at {addr:#x}")
        sector = self._starts.get(addr)
        if sector is None:
            raise FlashError(f"{self.name}: erase at {addr:#x} is not the start of a sector")
        opno, cut = self._start_op()
        self.erases += 1
        self.erase_counts[sector.index] += 1
        lo, hi = sector.offset, sector.end
        if not cut:
            self._mem[lo:hi] = bytes([ERASED]) * sector.size
            return
        rng = self._rng(opno)
        mode = rng.randrange(3)
        level = rng.randrange(17)
        mask = _random_mask(rng, sector.size * 8, level)
        old = int.from_bytes(self._mem[lo:hi], "big")
        if mode == 0:  # cut while pre-programming every bit to 0
            torn, what = old & ~mask, "pre-programmed to 0"
        elif mode == 1:  # pre-programming done, cut during the erase pulses
            torn, what = mask, "erased, from all 0"
        else:  # a part that erases without pre-programming
            torn, what = old | mask, "erased"
        self._mem[lo:hi] = torn.to_bytes(sector.size, "big")
        raise PowerCut(
            f"{self.name}: power cut during operation {opno} (erase of sector {sector.index} "
            f"at {lo:#x}; about {level / 16:.0%} of its bits {what})"
        )

    def erase_range(self, addr: int, length: int) -> None:
        """Erase every sector of a sector-aligned range, one operation per sector."""
        for sector in self.sectors_in(addr, length):
            self.erase(sector.offset)

    # -- outside the operation model --------------------------------------------------------

    def reboot(self) -> None:
        """Restore the power of this flash's supply (counters are kept)."""
        self.supply.restore()

    def corrupt(self, addr: int, data: bytes) -> None:
        """Overwrite bytes ignoring every NOR rule: an attacker with a programmer, or bit rot.

        Not a flash operation: not counted, never cut. Tests use it to tamper with images.
        """
        self._check_range(addr, len(data))
        self._mem[addr : addr + len(data)] = data

    def snapshot(self) -> bytes:
        """The whole content, for comparisons in tests."""
        return bytes(self._mem)

    def load(self, content: bytes, erase_counts: Sequence[int]) -> None:
        """Restore content and wear saved from an earlier :meth:`snapshot` (a device kept in a
        folder between commands). Not a flash operation.

        Raises:
            FlashError: the saved state does not fit this geometry.
        """
        if len(content) != self.size or len(erase_counts) != len(self.sectors):
            raise FlashError(f"{self.name}: saved state of {len(content)} bytes and "
                             f"{len(erase_counts)} sectors does not fit {self.size} bytes and "
                             f"{len(self.sectors)} sectors")
        self._mem[:] = content
        self.erase_counts = list(erase_counts)

    # -- internals --------------------------------------------------------------------------

    def _start_op(self) -> tuple[int, bool]:
        self.ops += 1
        return self.supply.start_op()

    def _rng(self, opno: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + opno)  # noqa: S311 (simulation, not crypto)

    def _check_range(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise FlashError(
                f"{self.name}: range {addr:#x}+{length:#x} is outside the device "
                f"(size {self.size:#x})"
            )
