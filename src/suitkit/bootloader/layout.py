"""Where things live on flash: slots, trailers, scratch, security counters.

A *boot set* is the list of images a bootloader updates together (one image for a single MCU,
two for a secure/normal split or a dual-CPU device: RFC 9019 §5). For every image::

    primary slot    [ image area: header | manifest | image ... ]            executes in place
    secondary slot  [ image area: header | manifest | image ... ][ pending trailer ]

and once per set::

    status trailer  one sector at the end of the first image's primary slot (the swap status,
                    magic, copy_done, tried, image_ok, revert flags and logs for the whole set)
    scratch         at least one swap block (one sector in the usual layouts)
    counters        one security-counter region per image (never erased by the bootloader)

The image areas of a primary and its secondary have the same size and are swapped block by block;
a *block* is the smallest span that starts and ends on a sector boundary in both slots and can be
held by the scratch area, so non-uniform sector layouts and slots on different flash devices
(e.g. internal flash and a co-processor's flash) work.

This module only describes and checks layouts; it does no I/O except :func:`program_split`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from suitkit.bootloader.flash import Flash


@dataclass(frozen=True, slots=True)
class Region:
    """A byte range on one named flash device."""

    flash: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    def overlaps(self, other: Region) -> bool:
        return self.flash == other.flash and self.offset < other.end and other.offset < self.end

    def __str__(self) -> str:
        return f"{self.flash}:{self.offset:#x}+{self.size:#x}"


@dataclass(frozen=True, slots=True)
class ImageSlots:
    """The flash regions of one image of a boot set."""

    name: str
    primary: Region
    """Image area of the primary (executing) slot: whole sectors."""
    secondary: Region
    """Image area of the secondary (staging) slot: whole sectors, same size as ``primary``."""
    pending: Region
    """The pending trailer: one sector at the end of the secondary slot."""
    counter: Region
    """The security counter (anti-rollback) of this image: any write-aligned range."""


@dataclass(frozen=True, slots=True)
class BootLayout:
    """A boot set: its images (the first one leads) and the per-set areas."""

    images: tuple[ImageSlots, ...]
    status: Region
    """The status trailer: one sector at the end of ``images[0]``'s primary slot."""
    scratch: Region

    def regions(self) -> list[tuple[str, Region]]:
        out: list[tuple[str, Region]] = [("status", self.status), ("scratch", self.scratch)]
        for img in self.images:
            out += [
                (f"{img.name}.primary", img.primary),
                (f"{img.name}.secondary", img.secondary),
                (f"{img.name}.pending", img.pending),
                (f"{img.name}.counter", img.counter),
            ]
        return out


@dataclass(frozen=True, slots=True)
class Block:
    """One swap block of one image: ``[offset, offset+size)`` relative to the slot starts."""

    image: int
    offset: int
    size: int


def _boundaries(flash: Flash, region: Region) -> set[int]:
    """Sector boundaries inside ``region``, relative to its start (0 and its size included)."""
    return {s.end - region.offset for s in flash.sectors_in(region.offset, region.size)} | {0}


def swap_blocks(layout: BootLayout, flashes: Mapping[str, Flash]) -> tuple[Block, ...]:
    """Check a layout against its flashes and cut every image into swap blocks.

    Raises:
        ValueError: a region is off its flash, not sector-aligned where it must be, overlaps
            another, or the scratch area cannot hold a block.
    """
    for name, region in layout.regions():
        flash = flashes.get(region.flash)
        if flash is None:
            raise ValueError(f"{name}: no flash named {region.flash!r}")
        if region.size <= 0 or region.end > flash.size or region.offset < 0:
            raise ValueError(f"{name}: {region} is outside {flash!r}")
        if name.endswith(".counter"):
            unit = flash.write_align
            if region.offset % unit or region.size % unit:
                raise ValueError(f"{name}: {region} is not aligned to {unit} bytes")
        else:
            flash.sectors_in(region.offset, region.size)
    named = layout.regions()
    for i, (a_name, a) in enumerate(named):
        for b_name, b in named[i + 1 :]:
            if a.overlaps(b):
                raise ValueError(f"{a_name} {a} overlaps {b_name} {b}")
    for img in layout.images:
        pending = img.pending
        if len(flashes[pending.flash].sectors_in(pending.offset, pending.size)) != 1:
            raise ValueError(f"{img.name}.pending must be exactly one sector")
        if pending.flash != img.secondary.flash or pending.offset != img.secondary.end:
            raise ValueError(f"{img.name}.pending {pending} must follow the secondary slot")
    if len(flashes[layout.status.flash].sectors_in(layout.status.offset, layout.status.size)) != 1:
        raise ValueError("status trailer must be exactly one sector")
    lead = layout.images[0].primary
    if layout.status.flash != lead.flash or layout.status.offset != lead.end:
        raise ValueError(
            f"status trailer {layout.status} must follow {layout.images[0].name}'s primary slot"
        )
    scratch_flash = flashes[layout.scratch.flash]
    scratch_fits = {
        s.end - layout.scratch.offset
        for s in scratch_flash.sectors_in(layout.scratch.offset, layout.scratch.size)
    }
    blocks: list[Block] = []
    for index, img in enumerate(layout.images):
        if img.primary.size != img.secondary.size:
            raise ValueError(
                f"{img.name}: primary {img.primary} and secondary {img.secondary} differ in size"
            )
        common = sorted(
            _boundaries(flashes[img.primary.flash], img.primary)
            & _boundaries(flashes[img.secondary.flash], img.secondary)
        )
        start = 0
        for end in common:
            if end == 0:
                continue
            if end - start in scratch_fits:
                blocks.append(Block(index, start, end - start))
                start = end
        if start != img.primary.size:
            raise ValueError(
                f"{img.name}: cannot cut the slots into blocks the scratch area "
                f"({layout.scratch}) can hold"
            )
    return tuple(blocks)


def program_split(flash: Flash, addr: int, data: bytes) -> None:
    """Program ``data``, splitting it at page boundaries (one operation per page touched)."""
    page = flash.page_size
    pos = 0
    while pos < len(data):
        here = addr + pos
        room = len(data) - pos if page is None else min(len(data) - pos, page - here % page)
        flash.program(here, data[pos : pos + room])
        pos += room


class Allocator:
    """Hands out consecutive whole sectors of each flash, for building layouts."""

    def __init__(self, flashes: Mapping[str, Flash]) -> None:
        self._flashes = flashes
        self._next = {name: 0 for name in flashes}

    def sectors(self, flash: str, count: int) -> Region:
        """The next ``count`` sectors of ``flash``."""
        dev = self._flashes[flash]
        first = dev.sector_at(self._next[flash]).index
        if first + count > len(dev.sectors):
            raise ValueError(f"{flash}: not enough sectors left for {count} more")
        chosen = dev.sectors[first : first + count]
        region = Region(flash, chosen[0].offset, sum(s.size for s in chosen))
        self._next[flash] = region.end
        return region

    def bytes(self, flash: str, size: int) -> Region:
        """The next ``size`` bytes of ``flash`` (write-aligned), e.g. for a counter."""
        dev = self._flashes[flash]
        size = -(-size // dev.write_align) * dev.write_align
        start = self._next[flash]
        if start + size > dev.size:
            raise ValueError(f"{flash}: not enough room left for {size} bytes")
        self._next[flash] = start + size
        return Region(flash, start, size)

    def align(self, flash: str) -> None:
        """Skip to the next sector boundary."""
        dev = self._flashes[flash]
        pos = self._next[flash]
        if pos < dev.size:
            sector = dev.sector_at(pos)
            if sector.offset != pos:
                self._next[flash] = sector.end
