"""A single-slot MCU that patches its image in place (RFC 9019 §5.1; docs/delta.md §9).

An MCU with no room for a second copy of its image cannot stage the new image beside the
running one. It can stage a *patch* (much smaller) and let the bootloader rewrite the slot in
place. The shape ``mcu-inplace`` (:func:`make_mcu_inplace`) on one internal flash::

    image   [N sectors]  the executing slot: the image from its first byte (a fixed address)
    journal [1]          a status trailer (trailer.py): phase flags and the step log
    record  [1]          the running image's manifest record and its length
    patch   [P]          the staged patch: header | record + delta-info | the patch as fetched
    pending [1]          the patch area's pending trailer (kind, magic)
    scratch [1]          one sector: the next output sector, computed before its sector goes
    counter              the security counter

``P`` is an eighth of ``N``, at least one sector: the patch area holds a delta, never a full
image. The staged patch is **authenticated before the first destructive write**: at the boot
that starts it, the verifier (:class:`~suitkit.bootloader.verifier.PatchVerifier`) checks the
stored manifest, that it signs the stored delta-info with an in-place member, the patch's
size and digest against it, the running image against the precursor's size and digest (RFC
9124 REQ.SEC.AUTH.PRECURSOR), and applies the patch once without writing (a dry run) to check
its output against the manifest's image digest. Only then does the journal start.

The rewrite (an in-place SKD1 patch reads, for the output of sector ``j``, only source bytes
of sectors the rewrite has not reached: ``j`` and later when ascending, ``j`` and earlier when
descending), two steps per sector in the patch's order, each recorded in the journal's log
*after* it completed::

    step 2k     scratch   <- output of sector j   (sector j still holds the source)
    step 2k+1   sector j  <- scratch              (the output is safe in scratch)
    step 2M     record    <- the new manifest record, once the image verifies

Each step erases its destination and programs it from an intact source, so a cut at any
operation (and more cuts while resuming) is finished by redoing the first unrecorded step.
The result is checked against the manifest (the verifier, as at every boot) before the record
is written; if it does not match, which the checks above leave to a flash fault alone (the
patch, the precursor and the apply were all checked before the first erase), there is no
image to fall back to: the bootloader writes nothing more and refuses to boot, naming the
fault, until a recovery image is programmed (``NoBootableImage``).

The decision table is :mod:`~suitkit.bootloader.decide`'s: the patch area plays the secondary
slot (*good* = the staged patch verifies over what runs), the rewrite is the swap (phase
*swapping*, action ``resume-swap``). With no earlier image kept, the secondary is never good
while a release is on trial, so an unconfirmed release stays on trial (row 6) instead of
reverting: the device never goes back, and never below its security counter.

A blank device (no record) takes a full image straight into the slot: the factory's first
programming. Any other full image is refused: there is no room for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from suitkit.bootloader.api import (
    BootResult,
    NoBootableImage,
    RunningImage,
    SlotCheck,
    refuse_unbootable,
)
from suitkit.bootloader.boot import MAX_STEPS, FlashSlotWriter
from suitkit.bootloader.counter import SecurityCounter
from suitkit.bootloader.decide import (
    BOOTS,
    ON_TRIAL,
    REFUSAL_ROWS,
    STEADY,
    Action,
    BootState,
    Decision,
    Pending,
    Phase,
    Verdict,
    decide,
    pending_of,
    phase_of,
)
from suitkit.bootloader.flash import ERASED, Flash, PowerSupply
from suitkit.bootloader.image import ImageHeader, SlotImageReader, open_slot
from suitkit.bootloader.layout import Allocator, Region, program_split
from suitkit.bootloader.trailer import (
    Flag,
    Kind,
    Trailer,
    TrailerArea,
    TrailerFormat,
    unit_for,
)
from suitkit.bootloader.verifier import ImageReader, ImageVerifier, PatchPlan, PatchVerifier
from suitkit.core import cbor
from suitkit.core.packing import apply_delta_window, decompress, packed_bound
from suitkit.errors import DecodeError, PolicyError, StorageError, SuitError
from suitkit.limits import Limits

__all__ = ["InplaceBootloader", "InplaceDevice", "InplaceLayout", "make_mcu_inplace",
           "patch_sectors"]

SECTOR = 4096
COUNTER_BYTES = 256
PIECE = 1024


def patch_sectors(image_sectors: int) -> int:
    """The patch area's size rule: an eighth of the slot, at least one sector."""
    return max(1, -(-image_sectors // 8))


@dataclass(frozen=True, slots=True)
class InplaceLayout:
    """The regions of a single-slot, in-place device (one image)."""

    name: str
    image: Region
    status: Region
    record: Region
    patch: Region
    pending: Region
    scratch: Region
    counter: Region

    def regions(self) -> list[tuple[str, Region]]:
        return [("image", self.image), ("journal", self.status), ("record", self.record),
                ("patch", self.patch), ("pending", self.pending), ("scratch", self.scratch),
                ("counter", self.counter)]


def _record(manifest: bytes, extra: bytes | int) -> bytes:
    return cbor.encode([manifest, extra])


def _split(raw: bytes, where: str, limits: Limits) -> tuple[bytes, object]:
    doc = cbor.decode(raw, path=where, max_depth=2)
    if not isinstance(doc, list | tuple) or len(doc) != 2 or not isinstance(doc[0], bytes) \
            or len(doc[0]) > limits.max_manifest_bytes:
        raise DecodeError(where, "expected [manifest record, value]")
    return doc[0], doc[1]


@dataclass(frozen=True, slots=True)
class InplaceObservation:
    """What the bootloader read before a decision (``boot.Observation``'s shape)."""

    status: Trailer
    state: BootState
    primary: tuple[SlotCheck, ...]
    secondary: tuple[SlotCheck, ...]


class InplaceBootloader:
    """Boot, confirm and stage for :class:`InplaceLayout` (the module's docstring)."""

    def __init__(self, layout: InplaceLayout, flashes: Mapping[str, Flash],
                 verifier: ImageVerifier | Mapping[str, ImageVerifier], *,
                 limits: Limits | None = None, chunk: int = PIECE) -> None:
        names = {region.flash for _n, region in layout.regions()}
        if len(names) != 1 or layout.image.flash not in flashes:
            raise ValueError("an in-place layout lives on one flash")
        flash = flashes[layout.image.flash]
        named = layout.regions()
        for i, (a_name, a) in enumerate(named):
            if a.end > flash.size:
                raise ValueError(f"{a_name} {a} is outside {flash!r}")
            if a_name != "counter":
                flash.sectors_in(a.offset, a.size)
            for b_name, b in named[i + 1:]:
                if a.overlaps(b):
                    raise ValueError(f"{a_name} {a} overlaps {b_name} {b}")
        sectors = flash.sectors_in(layout.image.offset, layout.image.size)
        sizes = {s.size for s in sectors} | {layout.scratch.size}
        if len(sizes) != 1:
            raise ValueError("the image's sectors and the scratch sector must be one size")
        self.layout = layout
        self.flash = flash
        self.flashes = dict(flashes)
        self.sector = sizes.pop()
        self.limits = limits if limits is not None else Limits()
        self.chunk = chunk
        self.unit = unit_for(flash)
        self.verifier = verifier[layout.name] if isinstance(verifier, Mapping) else verifier
        self.status = TrailerArea(flash, layout.status, TrailerFormat(self.unit, len(sectors)))
        self.pending = TrailerArea(flash, layout.pending, TrailerFormat(self.unit, 0))
        self.counter = SecurityCounter(flash, layout.counter)
        self._staged = False
        self._direct = False

    # -- reading --------------------------------------------------------------------------

    @property
    def components(self) -> tuple[str, ...]:
        return (self.layout.name,)

    def _check(self, component: str) -> None:
        if component != self.layout.name:
            raise StorageError(f"unknown component {component!r}; this device has "
                               f"{self.components}")

    def _running_record(self) -> tuple[bytes, SlotImageReader]:
        raw, _ = open_slot(self.flash, self.layout.record, unit=self.unit, limits=self.limits)
        manifest, length = _split(raw, "record", self.limits)
        if isinstance(length, bool) or not isinstance(length, int) \
                or not 0 < length <= self.layout.image.size:
            raise DecodeError("record", f"image length {length!r} does not fit the slot")
        return manifest, SlotImageReader(self.flash, self.layout.image.offset, length)

    def _staged_patch(self) -> tuple[bytes, bytes, SlotImageReader]:
        raw, reader = open_slot(self.flash, self.layout.patch, unit=self.unit,
                                limits=self.limits)
        manifest, delta_info = _split(raw, "patch area", self.limits)
        if not isinstance(delta_info, bytes):
            raise DecodeError("patch area", "expected the delta-info as bytes")
        return manifest, delta_info, reader

    def running(self, component: str) -> tuple[bytes, ImageReader]:
        """The running image's manifest record and a reader (unverified)."""
        self._check(component)
        return self._running_record()

    def staged(self, component: str) -> bytes | None:
        """The manifest record kept with the staged patch (unverified), or ``None``."""
        self._check(component)
        try:
            return self._staged_patch()[0]
        except DecodeError:
            return None

    def read_counters(self) -> dict[str, int]:
        return {self.layout.name: self.counter.read()}

    def counter_capacity(self) -> dict[str, int]:
        return {self.layout.name: self.counter.capacity}

    def pending_update(self) -> bool:
        return pending_of((self.pending.read(),)) in (Pending.TEST, Pending.PERMANENT)

    def _floor(self, check: SlotCheck, where: str) -> SlotCheck:
        info = check.info
        if info is None:
            return check
        floor = self.counter.read()
        # RFC 9124 REQ.SEC.SEQUENCE: never run anything older than what was confirmed.
        if info.sequence_number < floor:
            return SlotCheck(Verdict.ROLLBACK, info, f"{self.layout.name} {where}: sequence "
                             f"number {info.sequence_number} is below the security counter "
                             f"{floor}")
        if info.sequence_number > self.counter.capacity:
            return SlotCheck(Verdict.BAD, info, f"{self.layout.name} {where}: sequence number "
                             f"{info.sequence_number} exceeds what the security counter can "
                             f"hold ({self.counter.capacity})")
        return check

    def check_running(self) -> SlotCheck:
        """Verify the running image against its record (at every boot)."""
        try:
            manifest, reader = self._running_record()
            info = self.verifier.verify(manifest, reader)
        except SuitError as e:
            return SlotCheck(Verdict.BAD, None, f"{self.layout.name} image: "
                             f"{type(e).__name__}: {e}")
        return self._floor(SlotCheck(Verdict.GOOD, info), "image")

    def _plan(self, *, precursor: bool) -> PatchPlan:
        """The staged patch, authenticated (with ``precursor``: against what runs, and a dry
        run); raises a ``SuitError`` naming what does not hold."""
        if not isinstance(self.verifier, PatchVerifier):
            raise PolicyError("this device's verifier cannot check in-place patches")
        manifest, delta_info, reader = self._staged_patch()
        source = self._running_record()[1] if precursor else None
        plan = self.verifier.verify_patch(manifest, delta_info, reader, source)
        if self.sector % plan.unit:
            raise PolicyError(f"the patch is ordered for {plan.unit}-byte sectors; this "
                              f"device rewrites {self.sector}-byte sectors")
        if plan.image_size > self.layout.image.size or plan.source_size > self.layout.image.size:
            raise PolicyError(f"the patch rebuilds {plan.image_size} bytes from "
                              f"{plan.source_size}; the slot has {self.layout.image.size}")
        return plan

    def check_patch(self) -> SlotCheck:
        """The staged patch as the boot that starts it checks it."""
        try:
            plan = self._plan(precursor=True)
        except SuitError as e:
            return SlotCheck(Verdict.BAD, None, f"{self.layout.name} patch: "
                             f"{type(e).__name__}: {e}")
        return self._floor(SlotCheck(Verdict.GOOD, plan.info), "patch")

    def observe(self) -> InplaceObservation:
        """Read the journal, the pending trailer and the counter; verify the running image
        (and a pending patch): the decision's input (what ``device status`` shows)."""
        status = self.status.read()
        phase = phase_of(status)
        pending = pending_of((self.pending.read(),))
        if phase in (Phase.SWAPPING, Phase.REVERTING):
            primary = secondary = SlotCheck(Verdict.BAD, None, None)  # mid-rewrite
        else:
            primary = self.check_running()
            if phase in STEADY and pending in (Pending.TEST, Pending.PERMANENT):
                secondary = self.check_patch()
            else:  # nothing staged, or on trial: no earlier image is kept to go back to
                secondary = SlotCheck(Verdict.BAD, None, None)
        behind = primary.info is not None and primary.info.sequence_number > self.counter.read()
        state = BootState(phase, pending, primary.verdict, secondary.verdict, behind)
        return InplaceObservation(status, state, (primary,), (secondary,))

    # -- boot -----------------------------------------------------------------------------

    def boot(self) -> BootResult:
        """Decide and act until the image can run (the decision table of ``decide``).

        Raises:
            NoBootableImage: nothing authentic to run, or an in-place rewrite that cannot
                finish (its staged patch no longer verifies, or its result does not match).
            PowerCut: the power failed (the next boot resumes).
        """
        steps: list[Decision] = []
        notes: list[str] = []
        for _ in range(MAX_STEPS):
            obs = self.observe()
            primary, secondary, tried = obs.primary[0], obs.secondary[0], obs.status.tried
            decision = decide(obs.state)
            steps.append(decision)
            if decision.row in REFUSAL_ROWS:
                notes += [r for r in (primary.reason, secondary.reason)
                          if r and r not in notes]
            if decision.action is Action.PANIC:
                raise NoBootableImage(f"no bootable image (row {decision.row}: "
                                      f"{decision.why})", tuple(notes))
            if decision.action in BOOTS:
                trial = decision.action is Action.BOOT_TRIAL
                if trial and not tried:
                    self.status.set_flag(Flag.TRIED)
                info = primary.info
                if info is None:  # pragma: no cover - BOOT rows need a GOOD primary
                    raise AssertionError(f"row {decision.row} boots an unverified image")
                image = RunningImage(self.layout.name, info.sequence_number, info.digest)
                return BootResult((image,), trial, tuple(steps), tuple(notes))
            self._apply(decision.action, primary)
        rows = [f"row {d.row} {d.action.value}" for d in steps]
        raise StorageError(f"boot did not settle after {MAX_STEPS} decisions: {rows}")

    def _apply(self, action: Action, primary: SlotCheck) -> None:
        if action in (Action.START_TEST_SWAP, Action.START_PERMANENT_SWAP):
            # The staged patch was authenticated by this observation (row 8/9 need it GOOD).
            self.status.wipe()
            self.status.start(Kind.TEST if action is Action.START_TEST_SWAP
                              else Kind.PERMANENT)
        elif action is Action.RESUME_SWAP:
            self._rewrite()
            self.pending.wipe()
            self.status.set_flag(Flag.COPY_DONE)
        elif action is Action.DROP_PENDING:
            self.pending.wipe()
        elif action is Action.RAISE_COUNTERS:
            if primary.info is not None:
                self.counter.raise_to(primary.info.sequence_number)
        else:  # revert rows need a GOOD secondary on trial, which this device never has
            raise StorageError(f"an in-place device cannot {action.value}: no earlier image "
                               "is kept")

    def _rewrite(self) -> None:
        """Finish the journaled rewrite from the first unrecorded step."""
        try:
            plan = self._plan(precursor=False)
            manifest, _info, patch = self._staged_patch()
        except SuitError as e:
            raise NoBootableImage("an in-place update was started and its staged patch no "
                                  f"longer verifies ({type(e).__name__}: {e}); the slot holds "
                                  "a mix of two images: program a recovery image") from None
        size = self.sector
        count = -(-plan.image_size // size)
        order = range(count) if plan.order == 0 else range(count - 1, -1, -1)
        done = self._progress()
        image = self.layout.image
        for k, sector in enumerate(order):
            if done <= 2 * k:
                data = self._window(plan, patch, sector * size, (sector + 1) * size)
                self._put(self.layout.scratch.offset, data)
                self.status.record_step(0, 2 * k)
            if done <= 2 * k + 1:
                data = self.flash.read(self.layout.scratch.offset, size)
                self._put(image.offset + sector * size, data)
                self.status.record_step(0, 2 * k + 1)
        if done <= 2 * count:
            try:
                self.verifier.verify(manifest, SlotImageReader(self.flash, image.offset,
                                                               plan.image_size))
            except SuitError as e:
                raise NoBootableImage(
                    "the in-place rewrite finished but its result does not match the "
                    f"manifest ({type(e).__name__}: {e}): a flash fault (the patch, the "
                    "precursor and a dry run were checked before the first erase); nothing "
                    "is kept to fall back to: program a recovery image") from None
            writer = FlashSlotWriter(self.flash, self.layout.record,
                                     manifest=_record(manifest, plan.image_size), image_size=0,
                                     unit=self.unit, chunk=self.chunk, limits=self.limits)
            writer.begin()
            writer.finish()
            self.status.record_step(0, 2 * count)

    def _progress(self) -> int:
        """The steps the journal records as done (a torn unit reads as done: it is written
        only after its step completed)."""
        return self.status.read().swap_log

    def _window(self, plan: PatchPlan, patch: SlotImageReader, start: int, end: int) -> bytes:
        def chunks() -> Iterator[bytes]:
            for offset in range(0, patch.size, self.chunk):
                yield patch.read(offset, min(self.chunk, patch.size - offset))

        stream = chunks()
        if plan.codec:
            stream = decompress(stream, plan.codec, max_output=packed_bound(plan.image_size),
                                what="staged patch")
        base = self.layout.image.offset

        def read_source(offset: int, length: int) -> bytes:
            return self.flash.read(base + offset, length)

        try:
            return apply_delta_window(stream, read_source, source_size=plan.source_size,
                                      start=start, end=end, what="staged patch")
        except SuitError as e:
            raise NoBootableImage(f"the in-place rewrite cannot rebuild bytes {start} to "
                                  f"{end}: {e} (a flash fault); program a recovery image"
                                  ) from None

    def _put(self, addr: int, data: bytes) -> None:
        """Erase one sector (unless erased) and program ``data`` (0xFF-padded) into it."""
        size = self.sector
        padded = data + bytes([ERASED]) * (size - len(data))
        if not self.flash.is_erased(addr, size):
            self.flash.erase(addr)
        for offset in range(0, size, self.chunk):
            piece = padded[offset:offset + self.chunk]
            if piece.count(ERASED) != len(piece):
                program_split(self.flash, addr + offset, piece)

    def confirm(self) -> None:
        """Mark the running image good and raise the security counter to it.

        Raises:
            PolicyError: a rewrite is in progress, or the running image does not verify.
        """
        phase = phase_of(self.status.read())
        if phase not in ON_TRIAL and phase not in STEADY:
            raise PolicyError(f"cannot confirm while the image is {phase.value}")
        check = self.check_running()
        if check.verdict is not Verdict.GOOD or check.info is None:
            raise PolicyError(f"the running image does not verify; not confirming: "
                              f"{check.reason}")
        if phase in ON_TRIAL:
            self.status.set_flag(Flag.IMAGE_OK)
        self.counter.raise_to(check.info.sequence_number)

    # -- staging --------------------------------------------------------------------------

    def _steady(self) -> None:
        phase = phase_of(self.status.read())
        if phase in ON_TRIAL:
            raise PolicyError("the running image is on trial: confirm it before staging "
                              "another update")
        if phase not in STEADY:
            raise PolicyError(f"cannot stage while the image is {phase.value}")

    def open_patch(self, component: str, *, manifest: bytes, delta_info: bytes,
                   patch_size: int, image_size: int) -> InplacePatchWriter:
        """Start staging an in-place patch (the patch as fetched) with its manifest record.

        Raises:
            PolicyError: on trial or mid-rewrite. StorageError: it does not fit.
        """
        self._check(component)
        self._steady()
        record = _record(manifest, delta_info)
        if image_size > self.layout.image.size:
            raise StorageError(f"an image of {image_size} bytes does not fit the "
                               f"{self.layout.image.size}-byte slot")
        if len(_record(manifest, self.layout.image.size)) + 64 > self.layout.record.size:
            raise StorageError(f"a manifest of {len(manifest)} bytes does not fit the "
                               f"{self.layout.record.size}-byte record sector")
        need = ImageHeader.plan(manifest_length=len(record), image_length=patch_size,
                                unit=self.unit).end
        if need > self.layout.patch.size:
            raise StorageError(f"the patch ({patch_size} bytes) and its manifest record need "
                               f"{need} bytes; the patch area holds {self.layout.patch.size} "
                               "(an eighth of the slot): send a delta from a closer release")
        self._staged = self._direct = False
        inner = FlashSlotWriter(self.flash, self.layout.patch, manifest=record,
                                image_size=patch_size, unit=self.unit, chunk=self.chunk,
                                limits=self.limits, on_finish=self._on_staged)
        writer = InplacePatchWriter(inner, image_size)
        # The old request goes first: no pending trailer points at a half-written patch.
        self.pending.wipe()
        inner.begin()
        return writer

    def _on_staged(self) -> None:
        self._staged = True

    def open_inactive(self, component: str, *, manifest: bytes, image_size: int,
                      resume_at: int = 0) -> DirectWriter:
        """A full image: only into a blank device (its first programming).

        Raises:
            StorageError: the device runs an image (there is no room for a full one).
        """
        self._check(component)
        try:
            self._running_record()
        except DecodeError:
            pass
        else:
            raise StorageError(f"{component}: this single-slot device has no room for a full "
                               "image; it installs in-place deltas (docs/delta.md §9)")
        if image_size > self.layout.image.size:
            raise StorageError(f"an image of {image_size} bytes does not fit the "
                               f"{self.layout.image.size}-byte slot")
        self._staged = self._direct = False
        writer = DirectWriter(self, manifest, image_size)
        writer.begin()
        return writer

    def mark_pending(self, *, permanent: bool = False) -> None:
        """Ask the next boot to apply the staged patch (two program operations).

        Raises:
            StorageError: nothing was staged and finished since the last commit.
        """
        if self._direct:
            self._direct = False  # a first image runs as programmed: nothing to ask
            return
        if not self._staged:
            raise StorageError(f"cannot mark pending: {[self.layout.name]} not staged")
        self.pending.start(Kind.PERMANENT if permanent else Kind.TEST)
        self._staged = False

    def check_staged(self) -> None:
        """Check the staged patch (or first image) as the next boot will.

        Raises:
            PolicyError: the next boot would refuse it.
        """
        check = self.check_running() if self._direct else self.check_patch()
        refuse_unbootable([check])

    def install_factory(self, images: Mapping[str, tuple[bytes, bytes]]) -> None:
        """Factory programming of a blank device, then the counter raised."""
        for component, (manifest, image) in images.items():
            writer = self.open_inactive(component, manifest=manifest, image_size=len(image))
            writer.write(image)
            writer.finish()
            self._direct = False
        self.confirm()


class InplacePatchWriter:
    """Stages a patch: ``write_patch`` takes the patch as fetched; ``write`` takes the image
    bytes the consumer's dry run rebuilds (counted, not stored: the processor checks them
    against image-digest before ``finish``)."""

    def __init__(self, inner: FlashSlotWriter, image_size: int) -> None:
        self._inner = inner
        self._image_size = image_size
        self._seen = 0

    @property
    def offset(self) -> int:
        return 0  # a patch is small: an interrupted staging starts again

    @property
    def durable(self) -> int:
        return 0

    def write_patch(self, data: bytes) -> None:
        self._inner.write(data)

    def write(self, data: bytes) -> None:
        self._seen += len(data)
        if self._seen > self._image_size:
            raise StorageError(f"the patch rebuilds more than the announced "
                               f"{self._image_size} bytes")

    def read_back(self, offset: int, length: int) -> bytes:
        raise StorageError("an in-place update keeps no copy of the new image to read back")

    def finish(self) -> None:
        self._inner.finish()

    def close(self) -> None:
        self._inner.close()


class DirectWriter:
    """A blank device's first image, straight into the slot; the record is written last."""

    def __init__(self, boot: InplaceBootloader, manifest: bytes, image_size: int) -> None:
        self._boot = boot
        self._manifest = manifest
        self._size = image_size
        self._written = 0
        self._buffer = bytearray()

    @property
    def offset(self) -> int:
        return 0

    @property
    def durable(self) -> int:
        return 0

    def begin(self) -> None:
        boot = self._boot
        for region in (boot.layout.record, boot.layout.image):
            for sector in boot.flash.sectors_in(region.offset, region.size):
                if not boot.flash.is_erased(sector.offset, sector.size):
                    boot.flash.erase(sector.offset)

    def write(self, data: bytes) -> None:
        if self._written + len(self._buffer) + len(data) > self._size:
            raise StorageError(f"image data exceeds the announced size of {self._size} bytes")
        self._buffer += data
        chunk = self._boot.chunk
        while len(self._buffer) >= chunk:
            self._flush(chunk)

    def _flush(self, n: int) -> None:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        padded = data + bytes([ERASED]) * (-len(data) % self._boot.unit)
        if padded.count(ERASED) != len(padded):
            program_split(self._boot.flash, self._boot.layout.image.offset + self._written,
                          padded)
        self._written += n

    def read_back(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self._written:
            raise StorageError(f"bytes {offset}..{offset + length} are not written yet")
        return self._boot.flash.read(self._boot.layout.image.offset + offset, length)

    def finish(self) -> None:
        if self._buffer:
            self._flush(len(self._buffer))
        if self._written != self._size:
            raise StorageError(f"image has {self._written} bytes, the announced size is "
                               f"{self._size}")
        boot = self._boot
        record = FlashSlotWriter(boot.flash, boot.layout.record,
                                 manifest=_record(self._manifest, self._size), image_size=0,
                                 unit=boot.unit, chunk=boot.chunk, limits=boot.limits)
        record.begin()
        record.finish()
        boot._direct = True  # the writer belongs to its bootloader

    def close(self) -> None:
        self._buffer.clear()


@dataclass
class InplaceDevice:
    """A simulated single-slot device: its supply, flash, layout and bootloader."""

    shape: str
    supply: PowerSupply
    flashes: dict[str, Flash]
    layout: InplaceLayout
    bootloader: InplaceBootloader

    def restore_power(self) -> None:
        self.supply.restore()

    def provision(self, images: Mapping[str, tuple[bytes, bytes]]) -> None:
        self.bootloader.install_factory(images)

    @property
    def ops(self) -> int:
        return self.supply.ops


def make_mcu_inplace(verifier: ImageVerifier | Mapping[str, ImageVerifier], *,
                     image_sectors: int = 3, seed: int = 0, chunk: int = PIECE,
                     name: str = "app") -> InplaceDevice:
    """RFC 9019 §5.1 without room for a second copy: one slot patched in place."""
    patch = patch_sectors(image_sectors)
    supply = PowerSupply()
    flash = Flash("internal", [SECTOR] * (image_sectors + patch + 5), write_align=8,
                  page_size=1024, supply=supply, seed=seed)
    flashes = {"internal": flash}
    a = Allocator(flashes)
    layout = InplaceLayout(
        name=name,
        image=a.sectors("internal", image_sectors),
        status=a.sectors("internal", 1),
        record=a.sectors("internal", 1),
        patch=a.sectors("internal", patch),
        pending=a.sectors("internal", 1),
        scratch=a.sectors("internal", 1),
        counter=a.bytes("internal", COUNTER_BYTES),
    )
    return InplaceDevice("mcu-inplace", supply, flashes, layout,
                         InplaceBootloader(layout, flashes, verifier, chunk=chunk))


INPLACE_SHAPES = {"mcu-inplace": make_mcu_inplace}
"""The single-slot shapes, by the name a device folder gives (``device init --shape``)."""
