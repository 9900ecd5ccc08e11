"""Updating the bootloader itself on MCU shapes: an immutable stage 0 and two stage-1 copies.

MCUboot cannot update itself; wolfBoot and the two-stage layouts of TF-M/NXP ROMs can. Here the
boot chain has two stages (RFC 9019 §4.1 applied to the bootloader as one more component):

- **stage 0** (this module's :class:`Stage0`): small, in ROM or write-protected flash, never
  updated. It verifies the two stage-1 copies with its own trust anchor, picks one by validity
  and version, gives a new copy one trial boot, and falls back to the other copy when the
  trial is not confirmed. It holds the stage-1 security counter.
- **stage 1**: the updatable bootloader / first-stage updater (the
  :class:`~suitkit.bootloader.boot.FlashBootloader` that swaps, tests and reverts the
  application set). Its SUIT component id is ``['suitkit', 'bootloader']`` (``STAGE1_ID``).

Layout (whole sectors, beside the application's slots)::

    copy 0   [ header | manifest | stage-1 image ... ]   [ flags sector ]
    copy 1   [ header | manifest | stage-1 image ... ]   [ flags sector ]
    counter  the stage-1 security counter (unary, bit-clearing only)

A copy's content is the slot format of :mod:`suitkit.bootloader.image` (the header is written
last). Its flags sector holds two flag units: ``tried`` and ``image_ok``; a flag is set when
its unit is fully programmed to 0x00 (a torn program of ``tried`` reads as not set: the copy
never ran, so stage 0 tries it again; a torn ``image_ok`` reads as not confirmed: the
confirm did not finish, so stage 0 falls back, which is also a state the confirm could leave).

Stage 0's decision (:func:`choose`, pure): among the copies that verify and are not below the
counter, highest sequence number first (a confirmed copy first between equals),

1. a confirmed copy boots; if the counter is behind it, the counter is raised first;
2. a copy never tried gets ``tried`` programmed and boots on trial;
3. a copy tried and not confirmed is skipped (its trial failed: the recovery path);

and when no copy is left, stage 0 refuses to boot (``NoBootableImage``: a brick, which the
power-cut harness proves never happens).

An update (:meth:`Stage0.stage`, run by the running stage 1 while its own copy is confirmed):
erase the other copy's first sector (the copy no longer verifies), then its flags sector,
program manifest and image, and the header last. Until the header is complete the copy does
not verify and stage 0 ignores it; once it is, it is a new untried copy: the header is the
commit. The running copy is never written, so a power cut at any flash operation leaves the
confirmed copy (stage 0's recovery path) and, at worst, a half-written other copy. The running
stage 1 confirms itself (:meth:`Stage0.confirm`) once it has booted the application set: one
program of ``image_ok``, then the counter is raised, so the old copy can never run again.

Not here: the application set (``boot.FlashBootloader``), the SUIT processing of the stage-1
manifest (the verifier seam), or a stage 0 that can itself be updated (by definition).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from suitkit.bootloader.api import NoBootableImage, SlotCheck
from suitkit.bootloader.boot import FlashSlotWriter
from suitkit.bootloader.counter import SecurityCounter
from suitkit.bootloader.decide import Verdict
from suitkit.bootloader.flash import Flash
from suitkit.bootloader.image import open_slot
from suitkit.bootloader.layout import Region
from suitkit.bootloader.trailer import unit_for
from suitkit.bootloader.verifier import ImageReader, ImageVerifier
from suitkit.errors import PolicyError, SuitError
from suitkit.limits import Limits

__all__ = ["STAGE1_ID", "Copy", "Stage0", "Stage1Boot", "Stage1Layout", "Step", "choose"]

STAGE1_ID = (b"suitkit", b"bootloader")
"""The SUIT component identifier of the stage-1 bootloader."""


@dataclass(frozen=True, slots=True)
class Stage1Layout:
    """Where the two stage-1 copies, their flags and the stage-1 counter are."""

    copies: tuple[Region, Region]
    """The image area of each copy (whole sectors, the same size)."""
    flags: tuple[Region, Region]
    """One sector per copy: its ``tried`` and ``image_ok`` flags."""
    counter: Region

    def regions(self) -> list[tuple[str, Region]]:
        return [("stage1.copy0", self.copies[0]), ("stage1.copy1", self.copies[1]),
                ("stage1.flags0", self.flags[0]), ("stage1.flags1", self.flags[1]),
                ("stage1.counter", self.counter)]


@dataclass(frozen=True, slots=True)
class Copy:
    """What stage 0 knows of one copy: its check against the counter, and its flags."""

    check: SlotCheck
    tried: bool
    confirmed: bool

    @property
    def sequence_number(self) -> int:
        return self.check.info.sequence_number if self.check.info is not None else -1


class Step(enum.Enum):
    """Stage 0's action on the chosen copy."""

    BOOT = "boot"
    RAISE_COUNTER = "raise the counter, then boot"
    TRY = "program tried, then boot on trial"
    PANIC = "no stage 1 to boot"


def choose(copies: Sequence[Copy], counter: int) -> tuple[int | None, Step, tuple[str, ...]]:
    """Stage 0's pure decision: ``(copy index, step, notes)`` (the notes say why copies were
    passed over: a failed trial, a copy that does not verify or is below the counter)."""
    notes: list[str] = []
    order = sorted(range(len(copies)),
                   key=lambda i: (copies[i].sequence_number, copies[i].confirmed), reverse=True)
    for i in order:
        copy = copies[i]
        if copy.check.verdict is not Verdict.GOOD:
            if copy.check.reason:
                notes.append(copy.check.reason)
            continue
        if copy.confirmed:
            return i, (Step.RAISE_COUNTER if copy.sequence_number > counter else Step.BOOT), \
                tuple(notes)
        if not copy.tried:
            return i, Step.TRY, tuple(notes)
        notes.append(f"stage-1 copy {i} (sequence number {copy.sequence_number}) was tried "
                     "and never confirmed: falling back")
    return None, Step.PANIC, tuple(notes)


@dataclass(frozen=True, slots=True)
class Stage1Boot:
    """The stage 1 that stage 0 started."""

    copy: int
    sequence_number: int
    digest: bytes
    trial: bool
    notes: tuple[str, ...] = ()


_TRIED, _IMAGE_OK = 0, 1


class Stage0:
    """The immutable first stage: verify, choose, try, fall back; and the stage-1 store.

    Args:
        layout: where the copies, flags and counter are.
        flashes: the flash devices, by name.
        verifier: stage 0's verifier of stage-1 images (its own trust anchor).
        limits: bounds on what is read from a copy.
        chunk: bytes programmed per operation while staging.
    """

    def __init__(self, layout: Stage1Layout, flashes: Mapping[str, Flash],
                 verifier: ImageVerifier, *, limits: Limits | None = None,
                 chunk: int = 1024) -> None:
        for name, region in layout.regions():
            flash = flashes.get(region.flash)
            if flash is None:
                raise ValueError(f"{name}: no flash named {region.flash!r}")
            if name != "stage1.counter":
                flash.sectors_in(region.offset, region.size)
        if layout.copies[0].size != layout.copies[1].size:
            raise ValueError("the two stage-1 copies must have the same size")
        for region in layout.flags:
            if len(flashes[region.flash].sectors_in(region.offset, region.size)) != 1:
                raise ValueError(f"stage-1 flags {region} must be exactly one sector")
        self.layout = layout
        self.flashes = dict(flashes)
        self.verifier = verifier
        self.limits = limits if limits is not None else Limits()
        self.chunk = chunk
        self.counter = SecurityCounter(self.flashes[layout.counter.flash], layout.counter)
        self.running: int | None = None
        """The copy the last :meth:`boot` started (what runs now)."""

    # -- reading ---------------------------------------------------------------------------

    def _unit(self, index: int) -> int:
        return unit_for(self.flashes[self.layout.copies[index].flash])

    def _flag(self, index: int, flag: int) -> bool:
        region = self.layout.flags[index]
        unit = unit_for(self.flashes[region.flash])
        raw = self.flashes[region.flash].read(region.offset + flag * unit, unit)
        return raw.count(0) == len(raw)

    def check(self, index: int) -> SlotCheck:
        """Verify one copy and compare it with the stage-1 counter."""
        region = self.layout.copies[index]
        where = f"stage-1 copy {index}"
        try:
            manifest, reader = open_slot(self.flashes[region.flash], region,
                                         unit=self._unit(index), limits=self.limits)
            info = self.verifier.verify(manifest, reader)
        except SuitError as e:
            return SlotCheck(Verdict.BAD, None, f"{where}: {type(e).__name__}: {e}")
        floor = self.counter.read()
        # RFC 9124 REQ.SEC.SEQUENCE, for the bootloader too.
        if info.sequence_number < floor:
            return SlotCheck(Verdict.ROLLBACK, info, f"{where}: sequence number "
                             f"{info.sequence_number} is below the stage-1 counter {floor}")
        if info.sequence_number > self.counter.capacity:
            return SlotCheck(Verdict.BAD, info, f"{where}: sequence number "
                             f"{info.sequence_number} exceeds what the stage-1 counter can "
                             f"hold ({self.counter.capacity})")
        return SlotCheck(Verdict.GOOD, info)

    def observe(self) -> tuple[Copy, Copy]:
        """Both copies, checked, with their flags."""
        c0, c1 = (Copy(self.check(i), self._flag(i, _TRIED), self._flag(i, _IMAGE_OK))
                  for i in (0, 1))
        return c0, c1

    def running_copy(self) -> tuple[bytes, ImageReader]:
        """The manifest and image of the copy that runs (unverified: ``boot`` verified it).

        Raises:
            PolicyError: nothing was booted yet.
        """
        index = self._running()
        region = self.layout.copies[index]
        return open_slot(self.flashes[region.flash], region, unit=self._unit(index),
                         limits=self.limits)

    # -- stage 0 ---------------------------------------------------------------------------

    def boot(self) -> Stage1Boot:
        """Choose a stage-1 copy and start it (the trial flag is programmed first).

        Raises:
            NoBootableImage: neither copy verifies (or both are failed trials).
            PowerCut: the power failed (the next boot decides again).
        """
        self.running = None  # a boot starts over: what ran before is gone
        copies = self.observe()
        index, step, notes = choose(copies, self.counter.read())
        if index is None:
            raise NoBootableImage(f"no stage-1 bootloader to start ({step.value})", notes)
        info = copies[index].check.info
        assert info is not None  # choose() picks GOOD copies only
        if step is Step.TRY:
            self._set_flag(index, _TRIED)
        elif step is Step.RAISE_COUNTER:
            self.counter.raise_to(info.sequence_number)
        self.running = index
        return Stage1Boot(index, info.sequence_number, info.digest, step is Step.TRY, notes)

    def on_trial(self) -> bool:
        """Whether the running copy is on trial (tried, not confirmed)."""
        return not self._flag(self._running(), _IMAGE_OK)

    def confirm(self) -> None:
        """The running stage 1 is healthy: program its ``image_ok``, then raise the counter
        (so the other copy, older, can never be chosen again).

        Raises:
            PolicyError: nothing was booted yet, or the running copy does not verify.
        """
        index = self._running()
        check = self.check(index)
        if check.verdict is not Verdict.GOOD or check.info is None:
            raise PolicyError(f"the running stage 1 does not verify; not confirming: "
                              f"{check.reason}")
        if not self._flag(index, _IMAGE_OK):
            self._set_flag(index, _IMAGE_OK)
        self.counter.raise_to(check.info.sequence_number)

    # -- stage 1 updating itself -----------------------------------------------------------

    def stage(self, *, manifest: bytes, image_size: int,
              defer_header: bool = False) -> FlashSlotWriter:
        """Start writing a new stage 1 into the copy that does not run; ``finish()`` programs
        its header, the commit: the next boot tries it. ``defer_header``: ``finish()`` leaves
        the header to ``program_header()`` (a consumer checks the copy first).

        Raises:
            PolicyError: nothing was booted yet, or the running copy is on trial (confirm it
                first: its fallback is the copy this would overwrite).
            StorageError: the manifest and image do not fit a copy.
        """
        index = self._running()
        if self.on_trial():
            raise PolicyError("the running stage 1 is on trial: confirm it (or let stage 0 "
                              "fall back) before staging another one; the other copy is its "
                              "recovery path")
        other = 1 - index
        region = self.layout.copies[other]
        writer = FlashSlotWriter(self.flashes[region.flash], region, manifest=manifest,
                                 image_size=image_size, unit=self._unit(other),
                                 chunk=self.chunk, limits=self.limits,
                                 defer_header=defer_header)
        writer.begin()  # erases the copy's first sector (its header) first: it stops verifying
        flags = self.layout.flags[other]
        flash = self.flashes[flags.flash]
        if not flash.is_erased(flags.offset, flags.size):
            flash.erase(flags.offset)  # the new copy starts untried and unconfirmed
        return writer

    def install_factory(self, manifest: bytes, image: bytes) -> None:
        """Factory programming: copy 0 holds ``image``, confirmed, the counter at its number.

        Raises:
            StorageError: it does not fit. PolicyError: it does not verify.
        """
        writer = self.factory_writer(manifest=manifest, image_size=len(image))
        writer.write(image)
        writer.finish()
        self.commit_factory(writer)

    def blank(self) -> bool:
        """Neither copy holds a stage 1 that verifies and nothing was started: the factory
        state, before the first stage 1 is programmed."""
        return self.running is None and all(
            c.check.verdict is Verdict.BAD for c in self.observe())

    def factory_writer(self, *, manifest: bytes, image_size: int) -> FlashSlotWriter:
        """Start the factory programming of copy 0 (its header is programmed by
        :meth:`commit_factory`, with the flags of a confirmed copy).

        Raises:
            PolicyError: a stage 1 is there already. StorageError: it does not fit.
        """
        if not self.blank():
            raise PolicyError("a stage-1 bootloader is programmed already: update it (boot "
                              "first), factory programming is for a blank device")
        for flags in self.layout.flags:
            flash = self.flashes[flags.flash]
            if not flash.is_erased(flags.offset, flags.size):
                flash.erase(flags.offset)
        region = self.layout.copies[0]
        writer = FlashSlotWriter(self.flashes[region.flash], region, manifest=manifest,
                                 image_size=image_size, unit=self._unit(0), chunk=self.chunk,
                                 limits=self.limits, defer_header=True)
        writer.begin()
        return writer

    def commit_factory(self, writer: FlashSlotWriter) -> None:
        """The factory copy's header, its flags (tried, confirmed) and the counter.

        Raises:
            PolicyError: it does not verify. StorageError: the image is not finished.
        """
        writer.program_header()
        for flag in (_TRIED, _IMAGE_OK):
            self._set_flag(0, flag)
        self.running = 0
        try:
            self.confirm()
        finally:
            self.running = None

    def staged_manifest(self) -> bytes | None:
        """The manifest of the new stage 1 waiting for the next boot (:meth:`pending`), or
        ``None``."""
        if not self.pending() or self.running is None:
            return None
        other = 1 - self.running
        region = self.layout.copies[other]
        return open_slot(self.flashes[region.flash], region, unit=self._unit(other),
                         limits=self.limits)[0]

    def pending(self) -> bool:
        """A new stage 1 waits for the next boot: the copy that does not run verifies, was
        never tried, and is newer than the running one (stage 0 tries it next)."""
        if self.running is None:
            return False
        other = 1 - self.running
        check = self.check(other)
        mine = self.check(self.running).info
        return (check.verdict is Verdict.GOOD and check.info is not None
                and not self._flag(other, _TRIED)
                and (mine is None or check.info.sequence_number > mine.sequence_number))

    # -- internals -------------------------------------------------------------------------

    def _running(self) -> int:
        if self.running is None:
            raise PolicyError("stage 0 has not started a stage 1 yet (boot first)")
        return self.running

    def _set_flag(self, index: int, flag: int) -> None:
        region = self.layout.flags[index]
        flash = self.flashes[region.flash]
        unit = unit_for(flash)
        address = region.offset + flag * unit
        if flash.read(address, unit).count(0) != unit:  # a torn flag is completed: 0 over 0
            flash.program(address, bytes(unit))


def stage1_layout_fits(layout: Stage1Layout, others: Sequence[tuple[str, Region]]) -> None:
    """Check that the stage-1 regions overlap none of ``others`` (the application's).

    Raises:
        ValueError: two regions overlap.
    """
    named = [*layout.regions(), *others]
    for i, (a_name, a) in enumerate(named):
        for b_name, b in named[i + 1:]:
            if a.overlaps(b):
                raise ValueError(f"{a_name} {a} overlaps {b_name} {b}")
