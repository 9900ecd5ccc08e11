"""A small record kept in flash in two copies, replaced atomically: the device's trust anchors.

A real MCU keeps its trust anchors in flash, not in a file (docs/keys.md "Storage"). A
:class:`RecordArea` holds one record (bytes, at most :attr:`RecordArea.capacity`) in two
copies of whole sectors each, written in turn like the bootloader's other records::

    copy   [ header | body ... ]            (whole sectors; the header is programmed last)
    header MAGIC (8) | sequence (u32) | length (u32) | SHA-256 (32) over sequence|length|body

Reading: a copy is *valid* when its magic is right, its length fits, and the SHA-256 over its
sequence, length and body matches; the valid copy with the higher sequence number is the
record. Neither valid: no record yet when a copy is blank (nothing was ever written, or the
very first write was cut), else the area is damaged (:class:`DamagedRecord`: fail closed).

Writing the next record (:meth:`RecordArea.write`) writes it twice:

1. into the copy that does **not** hold the current record (the other one is kept): its
   sectors are erased, the first one (the header) first, so from then on it is not valid; the
   body is programmed, then the header with the next sequence number: the commit;
2. then the same way into the other copy, with the sequence number after that, so that both
   copies hold the new record and a damaged copy later leaves the other (never an older
   record with fewer revocations).

A power cut at any flash operation therefore leaves the old record (step 1 not committed: the
target is invalid, or valid with an older sequence number when a cut erase left a sector
untouched) or the new one (from the commit of step 1 on): never a mix, never nothing when
there was something. A torn header, a torn body or a half-erased sector cannot pass the
SHA-256, which also covers the sequence number (a torn program leaves bits at 1).

Not here: what the record means (``device.anchors``: the store's bytes), wear levelling
beyond alternating the two copies.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from suitkit.bootloader.flash import ERASED, Flash
from suitkit.bootloader.layout import Region, program_split
from suitkit.errors import StorageError

__all__ = ["HEADER_SIZE", "MAGIC", "DamagedRecord", "RecordArea", "RecordCopy"]

MAGIC = b"SKRECRD1"
_HEADER = struct.Struct(">8sII32s")
HEADER_SIZE = _HEADER.size
"""Magic, sequence, length and SHA-256 (48 bytes, padded to the write unit)."""


@dataclass(frozen=True, slots=True)
class RecordCopy:
    """What one copy holds: ``None`` fields when it is not valid (``reason`` says why)."""

    sequence: int | None
    body: bytes | None
    reason: str = ""


class DamagedRecord(StorageError):
    """Neither copy of a record area is valid and neither is blank."""


def _digest(sequence: int, body: bytes) -> bytes:
    return hashlib.sha256(struct.pack(">II", sequence, len(body)) + body).digest()


class RecordArea:
    """One record in two flash copies (see the module docstring).

    Args:
        flashes: the flash devices, by name.
        copies: the two copies' regions (whole sectors, the same size, on one flash each).
        name: what the record is, for messages.
    """

    def __init__(self, flashes: Mapping[str, Flash], copies: tuple[Region, Region], *,
                 name: str = "record") -> None:
        if copies[0].size != copies[1].size or copies[0].overlaps(copies[1]):
            raise ValueError(f"{name}: two copies of the same size, apart, expected")
        for region in copies:
            flash = flashes.get(region.flash)
            if flash is None:
                raise ValueError(f"{name}: no flash named {region.flash!r}")
            flash.sectors_in(region.offset, region.size)  # whole sectors, or ValueError
        self.flashes = dict(flashes)
        self.copies = copies
        self.name = name

    def _unit(self, index: int) -> int:
        return max(8, self.flashes[self.copies[index].flash].write_align)

    def _header_room(self, index: int) -> int:
        unit = self._unit(index)
        return -(-HEADER_SIZE // unit) * unit

    @property
    def capacity(self) -> int:
        """The largest body a copy holds."""
        return min(region.size - self._header_room(i) for i, region in enumerate(self.copies))

    def read_copy(self, index: int) -> RecordCopy:
        region = self.copies[index]
        flash = self.flashes[region.flash]
        magic, sequence, length, digest = _HEADER.unpack(flash.read(region.offset, HEADER_SIZE))
        if magic != MAGIC:
            return RecordCopy(None, None, "no record" if magic == bytes([ERASED]) * 8
                              else "damaged header")
        if length > self.capacity:
            return RecordCopy(None, None, f"length {length} over the capacity {self.capacity}")
        body = flash.read(region.offset + self._header_room(index), length)
        if not hmac.compare_digest(_digest(sequence, body), digest):
            return RecordCopy(None, None, "its SHA-256 does not match (torn or damaged)")
        return RecordCopy(sequence, body)

    def _current(self) -> tuple[int | None, RecordCopy]:
        """The index of the copy holding the record (``None``: neither) and that copy."""
        found = [(i, self.read_copy(i)) for i in (0, 1)]
        valid = [(i, c) for i, c in found if c.sequence is not None]
        if not valid:
            return None, RecordCopy(None, None)
        index, copy = max(valid, key=lambda item: (item[1].sequence or 0, -item[0]))
        return index, copy

    def read(self) -> bytes | None:
        """The record, or ``None`` when none was written yet.

        Raises:
            DamagedRecord: neither copy is valid, and neither is blank.
        """
        index, copy = self._current()
        if index is not None:
            return copy.body
        for region in self.copies:
            if self.flashes[region.flash].is_erased(region.offset, region.size):
                return None  # never written, or its first write was cut
        reasons = "; ".join(f"copy {i}: {self.read_copy(i).reason}" for i in (0, 1))
        raise DamagedRecord(f"{self.name}: neither copy of its flash area is valid ({reasons})")

    def sequence(self) -> int:
        """The sequence number of the current record (0: none)."""
        return self._current()[1].sequence or 0

    def write(self, body: bytes) -> None:
        """Replace the record with ``body``: into the copy that does not hold the current one
        (its header is the commit), then into the other copy.

        Raises:
            StorageError: ``body`` is over :attr:`capacity`, or the sequence is exhausted.
            PowerCut: the power failed (the old record or the new one is read afterwards).
        """
        if len(body) > self.capacity:
            raise StorageError(f"{self.name}: {len(body)} bytes; its flash area holds at most "
                               f"{self.capacity}")
        index, copy = self._current()
        sequence = (copy.sequence or 0) + 1
        if sequence + 1 > 0xFFFFFFFF:
            raise StorageError(f"{self.name}: sequence number exhausted")
        first = 1 if index == 0 else 0
        self._write_copy(first, sequence, body)
        self._write_copy(1 - first, sequence + 1, body)

    def _write_copy(self, target: int, sequence: int, body: bytes) -> None:
        region = self.copies[target]
        flash = self.flashes[region.flash]
        for sector in flash.sectors_in(region.offset, region.size):  # the header's first
            if not flash.is_erased(sector.offset, sector.size):
                flash.erase(sector.offset)
        unit = self._unit(target)
        if body:
            padded = body + bytes([ERASED]) * (-len(body) % unit)
            program_split(flash, region.offset + self._header_room(target), padded)
        header = _HEADER.pack(MAGIC, sequence, len(body), _digest(sequence, body))
        program_split(flash, region.offset, header + bytes([ERASED]) * (-len(header) % unit))
