"""Slot trailers: the swap status, magic and flags kept at the end of a slot (mcuboot's model).

A trailer is one flash sector of its own at the end of a slot, divided into *units* of
``max(8, write_align)`` bytes. Every field occupies whole units so that each state transition is
**one program operation that only clears bits**: no erase is needed to advance the state of an
update, only to start a new one.

Layout, in units from the start of the trailer sector (``m = ceil(16 / unit)``)::

    unit            field         written by       value when set
    0               kind          bootloader/app   kind byte, then zeros (TEST=1, PERMANENT=2)
    1 .. m          magic         bootloader/app   the 16-byte MAGIC (padded with 0xFF)
    m+1             copy_done     bootloader       zeros
    m+2             tried         bootloader       zeros
    m+3             image_ok      application      zeros (confirm)
    m+4             revert        bootloader       zeros (revert started)
    m+5             revert_done   bootloader       zeros
    m+6 ..          swap log      bootloader       3 units per swap block, zeros
    .. end          revert log    bootloader       3 units per swap block, zeros

The same format serves both roles. The *status trailer* (end of the primary slot of the first
image of a boot set) uses every field. A *pending trailer* (end of each secondary slot) uses only
``kind`` and ``magic``: "this slot holds a complete image, please install it (on test, or
permanently)".

Reading rules, which make every torn write safe:

- The fields mean something only under a GOOD magic. ``kind`` is programmed before ``magic``,
  so a GOOD magic implies a complete ``kind``. A magic that is neither MAGIC nor erased is BAD
  (a torn write, a retired trailer, or garbage from an interrupted erase) and is read like no
  trailer at all.
- A flag or log unit is set when *any* of its bits is 0. A torn program therefore reads as done;
  that is safe because each one is programmed only after the step it records has completed, and
  bits never return to 1 without an erase.
- A log counts its leading set units.

Before a trailer sector is erased, its magic is *retired* (programmed to zeros). An interrupted
erase then cannot bring an old record back to life with some of its flags erased.

This module encodes and decodes (pure) and offers :class:`TrailerArea` for the flash I/O; it does
not decide anything (see :mod:`suitkit.bootloader.decide`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from suitkit.bootloader.flash import ERASED, Flash
from suitkit.bootloader.layout import Region, program_split

MAGIC = bytes.fromhex("77c2a8d51e6b4f0c93b1e04d2a7f6c38")
"""Marks a live trailer (chosen with mixed bits: neither erased nor a retired all-zero)."""

STEPS_PER_BLOCK = 3
"""Swap-with-scratch records three steps per block (see :mod:`suitkit.bootloader.swap`)."""


class Kind(enum.IntEnum):
    """What a trailer asks for (pending) or records (status)."""

    TEST = 1
    """Boot the new image on trial; revert unless the application confirms it."""
    PERMANENT = 2
    """Install for good (no trial), as mcuboot's ``boot_set_pending(permanent=1)``."""


class MagicState(enum.Enum):
    GOOD = "good"
    UNSET = "unset"
    BAD = "bad"


class Flag(enum.IntEnum):
    """The one-unit flags, by their unit offset after the magic."""

    COPY_DONE = 0
    TRIED = 1
    IMAGE_OK = 2
    REVERT = 3
    REVERT_DONE = 4


def unit_for(flash: Flash) -> int:
    """The trailer unit on this flash: at least 8 bytes, at least one write unit."""
    return max(8, flash.write_align)


@dataclass(frozen=True, slots=True)
class TrailerFormat:
    """Field offsets for a given unit size and number of swap blocks."""

    unit: int
    blocks: int

    @property
    def magic_units(self) -> int:
        return -(-len(MAGIC) // self.unit)

    @property
    def kind_offset(self) -> int:
        return 0

    @property
    def magic_offset(self) -> int:
        return self.unit

    def flag_offset(self, flag: Flag) -> int:
        return (1 + self.magic_units + int(flag)) * self.unit

    @property
    def log_offset(self) -> int:
        return (1 + self.magic_units + len(Flag)) * self.unit

    @property
    def log_length(self) -> int:
        """Units in one log (the swap log and the revert log have the same length)."""
        return STEPS_PER_BLOCK * self.blocks

    def step_offset(self, log: int, step: int) -> int:
        """Byte offset of step ``step`` of log 0 (swap) or 1 (revert)."""
        return self.log_offset + (log * self.log_length + step) * self.unit

    @property
    def size(self) -> int:
        """Bytes the trailer needs (it occupies a whole sector of at least this size)."""
        return self.step_offset(1, self.log_length)

    def magic_bytes(self) -> bytes:
        return MAGIC + bytes([ERASED]) * (self.magic_units * self.unit - len(MAGIC))

    def kind_bytes(self, kind: Kind) -> bytes:
        return bytes([int(kind)]) + bytes(self.unit - 1)

    def set_bytes(self) -> bytes:
        return bytes(self.unit)


@dataclass(frozen=True, slots=True)
class Trailer:
    """A decoded trailer. Flags and logs are meaningful only when ``magic`` is GOOD."""

    magic: MagicState
    kind: Kind | None = None
    copy_done: bool = False
    tried: bool = False
    image_ok: bool = False
    revert: bool = False
    revert_done: bool = False
    swap_log: int = 0
    revert_log: int = 0

    @property
    def live(self) -> bool:
        return self.magic is MagicState.GOOD

    def flag(self, flag: Flag) -> bool:
        return {
            Flag.COPY_DONE: self.copy_done,
            Flag.TRIED: self.tried,
            Flag.IMAGE_OK: self.image_ok,
            Flag.REVERT: self.revert,
            Flag.REVERT_DONE: self.revert_done,
        }[flag]

    @classmethod
    def decode(cls, raw: bytes, fmt: TrailerFormat) -> Trailer:
        """Decode the first ``fmt.size`` bytes of a trailer sector (never raises)."""
        u = fmt.unit
        magic = raw[fmt.magic_offset : fmt.magic_offset + fmt.magic_units * u]
        if magic == bytes([ERASED]) * len(magic):
            return cls(MagicState.UNSET)
        if magic != fmt.magic_bytes():
            return cls(MagicState.BAD)
        kind_unit = raw[0:u]
        try:
            kind = Kind(kind_unit[0])
        except ValueError:
            return cls(MagicState.BAD)
        if kind_unit != fmt.kind_bytes(kind):
            return cls(MagicState.BAD)

        def is_set(offset: int) -> bool:
            return raw[offset : offset + u] != bytes([ERASED]) * u

        def count(log: int) -> int:
            n = 0
            while n < fmt.log_length and is_set(fmt.step_offset(log, n)):
                n += 1
            return n

        return cls(
            MagicState.GOOD,
            kind,
            copy_done=is_set(fmt.flag_offset(Flag.COPY_DONE)),
            tried=is_set(fmt.flag_offset(Flag.TRIED)),
            image_ok=is_set(fmt.flag_offset(Flag.IMAGE_OK)),
            revert=is_set(fmt.flag_offset(Flag.REVERT)),
            revert_done=is_set(fmt.flag_offset(Flag.REVERT_DONE)),
            swap_log=count(0),
            revert_log=count(1),
        )

    def encode(self, fmt: TrailerFormat) -> bytes:
        """The ``fmt.size`` bytes a flash holds for this trailer (UNSET or GOOD only)."""
        out = bytearray([ERASED]) * fmt.size
        if self.magic is MagicState.UNSET:
            return bytes(out)
        if self.magic is not MagicState.GOOD or self.kind is None:
            raise ValueError("only UNSET trailers and GOOD trailers with a kind can be encoded")
        if self.swap_log > fmt.log_length or self.revert_log > fmt.log_length:
            raise ValueError(f"a log is longer than {fmt.log_length} steps")

        def put(offset: int, data: bytes) -> None:
            out[offset : offset + len(data)] = data

        put(fmt.kind_offset, fmt.kind_bytes(self.kind))
        put(fmt.magic_offset, fmt.magic_bytes())
        for flag in Flag:
            if self.flag(flag):
                put(fmt.flag_offset(flag), fmt.set_bytes())
        for log, n in ((0, self.swap_log), (1, self.revert_log)):
            for step in range(n):
                put(fmt.step_offset(log, step), fmt.set_bytes())
        return bytes(out)


class TrailerArea:
    """The flash I/O of one trailer sector: read, and the one-operation transitions."""

    def __init__(self, flash: Flash, region: Region, fmt: TrailerFormat) -> None:
        if fmt.size > region.size:
            raise ValueError(
                f"trailer needs {fmt.size} bytes for {fmt.blocks} swap blocks, "
                f"the sector at {region.flash}:{region.offset:#x} has {region.size}"
            )
        self.flash = flash
        self.region = region
        self.fmt = fmt

    def read(self) -> Trailer:
        return Trailer.decode(self.flash.read(self.region.offset, self.fmt.size), self.fmt)

    def is_erased(self) -> bool:
        return self.flash.is_erased(self.region.offset, self.region.size)

    def start(self, kind: Kind) -> None:
        """Write a fresh record on an erased sector: ``kind``, then ``magic`` (two operations)."""
        base = self.region.offset
        program_split(self.flash, base + self.fmt.kind_offset, self.fmt.kind_bytes(kind))
        program_split(self.flash, base + self.fmt.magic_offset, self.fmt.magic_bytes())

    def set_flag(self, flag: Flag) -> None:
        """One program operation."""
        self.flash.program(self.region.offset + self.fmt.flag_offset(flag), self.fmt.set_bytes())

    def record_step(self, log: int, step: int) -> None:
        """One program operation: step ``step`` of log 0 (swap) or 1 (revert) is complete."""
        offset = self.region.offset + self.fmt.step_offset(log, step)
        self.flash.program(offset, self.fmt.set_bytes())

    def wipe(self) -> None:
        """Retire the magic (one program), then erase the sector (one erase); skip what is done.

        Idempotent and resumable: a cut in the middle leaves a BAD or UNSET magic.
        """
        base = self.region.offset
        span = self.fmt.magic_units * self.fmt.unit
        magic = self.flash.read(base + self.fmt.magic_offset, span)
        if magic != bytes(span) and magic != bytes([ERASED]) * span:
            program_split(self.flash, base + self.fmt.magic_offset, bytes(span))
        if not self.is_erased():
            self.flash.erase_range(base, self.region.size)
