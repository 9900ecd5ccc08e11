"""The flash bootloader: observe, decide, act, verify, boot (RFC 9019 §4.1; RFC 9124 §4.2.8).

:meth:`FlashBootloader.boot` loops: read the status trailer, the pending trailers and the
security counters; verify every primary and secondary image through the
:class:`~suitkit.bootloader.verifier.ImageVerifier` seam (**at every boot**, not only after an
update: THREAT.IMG.REPLACE); ask :func:`~suitkit.bootloader.decide.decide`; apply the action
(start, resume or revert a swap, drop a bad request, raise counters); and observe again, until
the decision is to boot or to panic. Because each action is applied to flash before the next
decision, a power cut anywhere leaves a state that some row of the table knows how to continue.

Test -> confirm -> automatic revert (mcuboot's model): a swapped-in image boots on trial once
(the ``tried`` flag is set before it runs); :meth:`FlashBootloader.confirm` sets ``image_ok``
(one program operation) and then raises the security counters; a trial image that is still not
confirmed at the next boot is swapped back.

Multi-image sets (secure/normal split, dual CPU): one status trailer and one swap log cover
every image of the set, and the set starts only when every member is marked pending, so images
are swapped, tried, confirmed and reverted together: both or neither. Each slot of the set is
also checked as a set (:func:`~suitkit.bootloader.api.check_set`): a manifest that names
another image of the set must hold for it unless that image's own manifest is newer, so a set
mixed from two releases behind the consumer's back does not boot.

The same object is also the device's :class:`~suitkit.bootloader.api.SlotStore` (stream an image
into a secondary slot, then mark the set pending). Not done here: the decision rules
(:mod:`~suitkit.bootloader.decide`), the swap procedure (:mod:`~suitkit.bootloader.swap`), the
formats (:mod:`~suitkit.bootloader.trailer`, :mod:`~suitkit.bootloader.image`,
:mod:`~suitkit.bootloader.counter`), and any manifest parsing (the verifier's job).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from suitkit.bootloader.api import (
    BootResult,
    NoBootableImage,
    RunningImage,
    SlotCheck,
    check_set,
    refuse_unbootable,
)
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
    combine,
    decide,
    pending_of,
    phase_of,
)
from suitkit.bootloader.flash import ERASED, Flash
from suitkit.bootloader.image import RAW_HEADER_SIZE, ImageHeader, header_size, open_slot
from suitkit.bootloader.layout import BootLayout, Region, program_split, swap_blocks
from suitkit.bootloader.swap import REVERT_LOG, SWAP_LOG, SwapEngine
from suitkit.bootloader.trailer import Flag, Kind, Trailer, TrailerArea, TrailerFormat, unit_for
from suitkit.bootloader.verifier import ImageReader, ImageVerifier
from suitkit.errors import DecodeError, PolicyError, StorageError, SuitError
from suitkit.limits import Limits

MAX_STEPS = 12
"""A boot takes at most a handful of decisions; more means the table does not converge."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What the bootloader read before a decision."""

    status: Trailer
    pending: tuple[Trailer, ...]
    primary: tuple[SlotCheck, ...]
    secondary: tuple[SlotCheck, ...]
    counters: tuple[int, ...]
    state: BootState

    def reasons(self) -> tuple[str, ...]:
        return tuple(c.reason for c in self.primary + self.secondary if c.reason)


class FlashBootloader:
    """A bootloader for one boot set on simulated NOR flash.

    Args:
        layout: where the slots, trailers, scratch and counters are.
        flashes: the flash devices, by the names the layout uses.
        verifier: one verifier for every image, or one per image name (e.g. different trust
            anchors for the secure and the normal world).
        limits: bounds on what is read from a slot (the manifest size).
        chunk: bytes copied or staged per read/program (a multiple of every write unit).
    """

    def __init__(
        self,
        layout: BootLayout,
        flashes: Mapping[str, Flash],
        verifier: ImageVerifier | Mapping[str, ImageVerifier],
        *,
        limits: Limits | None = None,
        chunk: int = 1024,
    ) -> None:
        self.layout = layout
        self.flashes = dict(flashes)
        self.limits = limits if limits is not None else Limits()
        self.blocks = swap_blocks(layout, self.flashes)
        names = [img.name for img in layout.images]
        if len(set(names)) != len(names):
            raise ValueError(f"image names must be unique: {names}")
        if isinstance(verifier, Mapping):
            missing = set(names) - set(verifier)
            if missing:
                raise ValueError(f"no verifier for {sorted(missing)}")
            self._verifiers = {n: verifier[n] for n in names}
        else:
            self._verifiers = dict.fromkeys(names, verifier)
        for dev in self.flashes.values():
            if chunk % dev.write_align:
                raise ValueError(f"chunk {chunk} is not a multiple of {dev!r}'s write unit")
        self.chunk = chunk
        status_flash = self.flashes[layout.status.flash]
        self.status = TrailerArea(
            status_flash, layout.status, TrailerFormat(unit_for(status_flash), len(self.blocks))
        )
        self.pending = tuple(
            TrailerArea(
                self.flashes[img.pending.flash],
                img.pending,
                TrailerFormat(unit_for(self.flashes[img.pending.flash]), 0),
            )
            for img in layout.images
        )
        self.counters = tuple(
            SecurityCounter(self.flashes[img.counter.flash], img.counter) for img in layout.images
        )
        self.engine = SwapEngine(layout, self.flashes, self.blocks, self.status, chunk=chunk)
        self._staged: set[int] = set()

    # -- observation -----------------------------------------------------------------------

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(img.name for img in self.layout.images)

    def image_unit(self, index: int) -> int:
        """The alignment unit of an image's header and data: valid in both of its slots."""
        img = self.layout.images[index]
        return max(
            unit_for(self.flashes[img.primary.flash]), unit_for(self.flashes[img.secondary.flash])
        )

    def check_slot(self, index: int, *, secondary: bool) -> SlotCheck:
        """Verify the image in one slot and compare it with the security counter."""
        img = self.layout.images[index]
        region = img.secondary if secondary else img.primary
        where = f"{img.name} {'secondary' if secondary else 'primary'}"
        try:
            manifest, reader = open_slot(
                self.flashes[region.flash], region, unit=self.image_unit(index), limits=self.limits
            )
            info = self._verifiers[img.name].verify(manifest, reader)
        except SuitError as e:
            return SlotCheck(Verdict.BAD, None, f"{where}: {type(e).__name__}: {e}")
        counter = self.counters[index]
        floor = counter.read()
        # RFC 9124 REQ.SEC.SEQUENCE: never run anything older than what was confirmed.
        if info.sequence_number < floor:
            return SlotCheck(
                Verdict.ROLLBACK,
                info,
                f"{where}: sequence number {info.sequence_number} is below the security "
                f"counter {floor}",
            )
        if info.sequence_number > counter.capacity:
            return SlotCheck(
                Verdict.BAD,
                info,
                f"{where}: sequence number {info.sequence_number} exceeds what the security "
                f"counter can hold ({counter.capacity})",
            )
        return SlotCheck(Verdict.GOOD, info)

    def observe(self) -> Observation:
        """Read every trailer and counter and verify every slot; build the decision's input."""
        status = self.status.read()
        phase = phase_of(status)
        pending = tuple(p.read() for p in self.pending)
        counters = tuple(c.read() for c in self.counters)
        n = len(self.layout.images)
        if phase in (Phase.SWAPPING, Phase.REVERTING):
            # Mid-swap the slots hold mixed blocks; rows 1 and 2 do not look at verdicts.
            mixed = SlotCheck(Verdict.BAD, None, None)
            primary = secondary = (mixed,) * n
        else:
            names = self.components
            primary = check_set(
                names, [self.check_slot(i, secondary=False) for i in range(n)], "primary"
            )
            secondary = check_set(
                names, [self.check_slot(i, secondary=True) for i in range(n)], "secondary"
            )
        behind = any(
            c.info is not None and c.info.sequence_number > counters[i]
            for i, c in enumerate(primary)
        )
        state = BootState(
            phase=phase,
            pending=pending_of(pending),
            primary=combine(c.verdict for c in primary),
            secondary=combine(c.verdict for c in secondary),
            counters_behind=behind,
        )
        return Observation(status, pending, primary, secondary, counters, state)

    def read_counters(self) -> dict[str, int]:
        return {
            img.name: c.read() for img, c in zip(self.layout.images, self.counters, strict=True)
        }

    def counter_capacity(self) -> dict[str, int]:
        return {
            img.name: c.capacity
            for img, c in zip(self.layout.images, self.counters, strict=True)
        }

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> BootResult:
        """Decide and act until the primary images can run; report them.

        Raises:
            NoBootableImage: no authentic, recent-enough image set (a PANIC row).
            StorageError: a flash operation was refused, or the decisions did not settle.
            PowerCut: the power failed (the next boot resumes).
        """
        steps: list[Decision] = []
        notes: list[str] = []
        for _ in range(MAX_STEPS):
            obs = self.observe()
            decision = decide(obs.state)
            steps.append(decision)
            if decision.row in REFUSAL_ROWS:
                notes += [r for r in obs.reasons() if r not in notes]
            if decision.action is Action.PANIC:
                raise NoBootableImage(
                    f"no bootable image (row {decision.row}: {decision.why})", tuple(notes)
                )
            if decision.action in BOOTS:
                trial = decision.action is Action.BOOT_TRIAL
                if trial and not obs.status.tried:
                    self.status.set_flag(Flag.TRIED)
                images = []
                for img, check in zip(self.layout.images, obs.primary, strict=True):
                    if check.info is None:  # pragma: no cover - BOOT rows need a GOOD primary
                        raise AssertionError(f"row {decision.row} boots an unverified image")
                    images.append(
                        RunningImage(img.name, check.info.sequence_number, check.info.digest)
                    )
                return BootResult(tuple(images), trial, tuple(steps), tuple(notes))
            self._apply(decision.action, obs)
        raise StorageError(
            "boot did not settle after "
            f"{MAX_STEPS} decisions: {[f'row {d.row} {d.action.value}' for d in steps]}"
        )

    def _apply(self, action: Action, obs: Observation) -> None:
        if action is Action.RESUME_SWAP:
            self.engine.run(SWAP_LOG)
            # The requests are consumed before copy_done, so a finished swap never leaves a
            # pending trailer that could be mistaken for a new request.
            for area in self.pending:
                area.wipe()
            self.status.set_flag(Flag.COPY_DONE)
        elif action is Action.RESUME_REVERT:
            self.engine.run(REVERT_LOG)
            self.status.set_flag(Flag.REVERT_DONE)
        elif action is Action.START_REVERT:
            self.status.set_flag(Flag.REVERT)
        elif action in (Action.START_TEST_SWAP, Action.START_PERMANENT_SWAP):
            kind = Kind.TEST if action is Action.START_TEST_SWAP else Kind.PERMANENT
            self.status.wipe()
            self.status.start(kind)
        elif action is Action.DROP_PENDING:
            for area in self.pending:
                area.wipe()
        elif action is Action.RAISE_COUNTERS:
            for counter, check in zip(self.counters, obs.primary, strict=True):
                if check.info is not None:
                    counter.raise_to(check.info.sequence_number)
        else:  # pragma: no cover - BOOT and PANIC are handled by boot()
            raise AssertionError(action)

    # -- confirm ---------------------------------------------------------------------------

    def confirm(self) -> None:
        """Mark the running set good (one program operation) and raise its security counters.

        Raises:
            PolicyError: a swap or revert is in progress, or the running set does not verify.
        """
        obs = self.observe()
        phase = obs.state.phase
        if phase not in ON_TRIAL and phase not in STEADY:
            raise PolicyError(f"cannot confirm while the boot set is {phase.value}")
        if obs.state.primary is not Verdict.GOOD:
            raise PolicyError(
                "the running images do not verify; not confirming: " + "; ".join(obs.reasons())
            )
        if phase in ON_TRIAL:
            self.status.set_flag(Flag.IMAGE_OK)
        # Only now, with the update confirmed, may the anti-rollback floor move up.
        for counter, check in zip(self.counters, obs.primary, strict=True):
            if check.info is not None:
                counter.raise_to(check.info.sequence_number)

    # -- staging (SlotStore) ---------------------------------------------------------------

    def open_inactive(self, component: str, *, manifest: bytes, image_size: int,
                      resume_at: int = 0) -> FlashSlotWriter:
        """Start streaming ``component`` into its secondary slot.

        ``resume_at``: image bytes a previous, interrupted write of the same manifest got into
        the slot; the writer keeps what it can (see ``FlashSlotWriter.offset``).

        Raises:
            PolicyError: the boot set is on trial or mid-swap.
            StorageError: unknown component, or the manifest and image do not fit the slot.
        """
        index = self._index(component)
        phase = phase_of(self.status.read())
        if phase in ON_TRIAL:
            raise PolicyError(
                "the running images are on trial: confirm them (or let them revert) before "
                "staging another update"
            )
        if phase not in STEADY:
            raise PolicyError(f"cannot stage while the boot set is {phase.value}")
        self._staged.discard(index)
        img = self.layout.images[index]
        writer = FlashSlotWriter(
            self.flashes[img.secondary.flash],
            img.secondary,
            manifest=manifest,
            image_size=image_size,
            unit=self.image_unit(index),
            chunk=self.chunk,
            limits=self.limits,
            on_finish=lambda: self._staged.add(index),
            resume_at=resume_at,
        )
        # The old request goes first, so no pending trailer ever points at a half-written slot.
        self.pending[index].wipe()
        writer.begin()
        return writer

    def mark_pending(self, *, permanent: bool = False) -> None:
        """Mark every member pending (two program operations each): the staging commit.

        The bootloader starts only when all members are pending, so a cut part-way leaves an
        incomplete (ignored) request, never half a set.

        Raises:
            StorageError: some member was not staged and finished since the last commit.
        """
        missing = [img.name for i, img in enumerate(self.layout.images) if i not in self._staged]
        if missing:
            raise StorageError(f"cannot mark pending: {missing} not staged")
        kind = Kind.PERMANENT if permanent else Kind.TEST
        for area in self.pending:
            area.start(kind)
        self._staged.clear()

    def check_staged(self) -> None:
        """Verify the secondary slots as the next boot will.

        Raises:
            PolicyError: the next boot would refuse the staged set.
        """
        n = len(self.layout.images)
        refuse_unbootable(check_set(
            self.components, [self.check_slot(i, secondary=True) for i in range(n)], "secondary"
        ))

    def pending_update(self) -> bool:
        """Whether staged images wait for the next boot: every member marked pending.

        A set marked only in part (a cut inside :meth:`mark_pending`) is no request: the next
        boot forgets it (row 15), and staging another update wipes it member by member.
        """
        return pending_of(tuple(p.read() for p in self.pending)) in (Pending.TEST,
                                                                    Pending.PERMANENT)

    def staged(self, component: str) -> bytes | None:
        """The manifest stored with ``component``'s image in its secondary slot (unverified),
        or ``None`` when the slot holds no complete image (its header is written last).

        Raises:
            StorageError: unknown component.
        """
        index = self._index(component)
        img = self.layout.images[index]
        try:
            manifest, _ = open_slot(self.flashes[img.secondary.flash], img.secondary,
                                    unit=self.image_unit(index), limits=self.limits)
        except DecodeError:
            return None
        return manifest

    def running(self, component: str) -> tuple[bytes, ImageReader]:
        """The manifest and an image reader of ``component``'s primary (executing) slot.

        Nothing is verified here: ``boot`` verifies before it runs anything.

        Raises:
            StorageError: unknown component. DecodeError: the slot holds no valid image.
        """
        index = self._index(component)
        img = self.layout.images[index]
        manifest, reader = open_slot(self.flashes[img.primary.flash], img.primary,
                                     unit=self.image_unit(index), limits=self.limits)
        return manifest, reader

    def install_factory(self, images: Mapping[str, tuple[bytes, bytes]]) -> None:
        """Factory programming: images straight into the primary slots, counters raised.

        ``images`` is ``{name: (manifest, image)}``; no trailer is written (phase NONE), and the
        counters are raised to the images as by :meth:`confirm`.

        Raises:
            StorageError: unknown component, or an image does not fit.
            PolicyError: the installed set does not verify.
        """
        for component, (manifest, image) in images.items():
            index = self._index(component)
            img = self.layout.images[index]
            writer = FlashSlotWriter(
                self.flashes[img.primary.flash],
                img.primary,
                manifest=manifest,
                image_size=len(image),
                unit=self.image_unit(index),
                chunk=self.chunk,
                limits=self.limits,
            )
            writer.begin()
            writer.write(image)
            writer.finish()
        self.confirm()

    def _index(self, component: str) -> int:
        for i, img in enumerate(self.layout.images):
            if img.name == component:
                return i
        raise StorageError(f"unknown component {component!r}; this set has {self.components}")


class FlashSlotWriter:
    """Streams one image into a slot: erase, manifest, image chunks, and the header last."""

    def __init__(
        self,
        flash: Flash,
        region: Region,
        *,
        manifest: bytes,
        image_size: int,
        unit: int,
        chunk: int,
        limits: Limits,
        on_finish: Callable[[], None] | None = None,
        resume_at: int = 0,
        defer_header: bool = False,
    ) -> None:
        if len(manifest) > limits.max_manifest_bytes:
            raise StorageError(
                f"manifest of {len(manifest)} bytes exceeds the limit of "
                f"{limits.max_manifest_bytes}"
            )
        if image_size < 0:
            raise StorageError(f"image size must not be negative, got {image_size}")
        header = ImageHeader.plan(manifest_length=len(manifest), image_length=image_size, unit=unit)
        if header.end > region.size:
            raise StorageError(
                f"manifest ({len(manifest)} bytes) and image ({image_size} bytes) need "
                f"{header.end} bytes; the slot {region} has {region.size}"
            )
        self._flash = flash
        self._region = region
        self._header = header
        self._unit = unit
        self._chunk = chunk
        self._on_finish = on_finish
        self._manifest = manifest
        self._written = 0
        self._buffer = bytearray()
        self._begun = False
        self._finished = False
        self._resume_at = min(max(resume_at, 0), image_size)
        self._start = 0
        self._defer_header = defer_header
        """``finish`` leaves the header (the slot's commit) to :meth:`program_header`."""

    @property
    def offset(self) -> int:
        """Image bytes already in the slot when writing (re)started: write from here on."""
        return self._start

    @property
    def durable(self) -> int:
        """Image bytes programmed so far (they survive a power cut)."""
        return self._written

    def read_back(self, offset: int, length: int) -> bytes:
        """Image bytes already programmed (for a resumed download to re-hash its prefix)."""
        if offset < 0 or offset + length > self._written:
            raise StorageError(f"bytes {offset}..{offset + length} are not written yet")
        return self._flash.read(self._region.offset + self._header.image_offset + offset, length)

    def begin(self) -> None:
        """Erase the sectors the image will occupy and program the manifest.

        With ``resume_at``, a slot partly written earlier with the same manifest and size keeps
        its image bytes up to the last whole sector before that offset: the sectors from there
        on are erased (a cut may have torn them) and writing goes on from there.
        """
        region, flash = self._region, self._flash
        self._start = self._resumable()
        first = region.offset + self._header.image_offset + self._start if self._start else 0
        for sector in flash.sectors_in(region.offset, region.size):
            if sector.offset >= region.offset + self._header.end:
                break
            if sector.end <= first:
                continue  # kept: image bytes before the resume point
            if not flash.is_erased(sector.offset, sector.size):
                flash.erase(sector.offset)
        if self._manifest and not self._start:
            self._program(header_size(self._unit), self._manifest)
        self._written = self._start
        self._begun = True

    def _resumable(self) -> int:
        """Where a resumed write can start: 0, or a sector boundary inside the image."""
        if not self._resume_at:
            return 0
        region, flash = self._region, self._flash
        raw = flash.read(region.offset, RAW_HEADER_SIZE)
        stored = flash.read(region.offset + header_size(self._unit), len(self._manifest))
        if raw.count(ERASED) != len(raw) or stored != self._manifest:
            return 0  # not the partial slot of this very image
        image_start = region.offset + self._header.image_offset
        sector = flash.sector_at(image_start + self._resume_at)
        return max(0, sector.offset - image_start)

    def write(self, data: bytes) -> None:
        if not self._begun or self._finished:
            raise StorageError("write outside begin() .. finish()")
        if self._written + len(self._buffer) + len(data) > self._header.image_length:
            raise StorageError(
                f"image data exceeds the announced size of {self._header.image_length} bytes"
            )
        self._buffer += data
        while len(self._buffer) >= self._room():
            self._flush(self._room())

    def _room(self) -> int:
        """Bytes up to the next chunk boundary of the slot, so programs stay chunk-aligned."""
        return self._chunk - (self._header.image_offset + self._written) % self._chunk

    def finish(self) -> None:
        if not self._begun or self._finished:
            raise StorageError("finish outside begin() .. finish()")
        total = self._written + len(self._buffer)
        if total != self._header.image_length:
            raise StorageError(
                f"image has {total} bytes, the announced size is {self._header.image_length}"
            )
        if self._buffer:
            self._flush(len(self._buffer))
        if not self._defer_header:
            self._program(0, self._header.encode())
        self._finished = True
        if self._on_finish is not None:
            self._on_finish()

    @property
    def manifest(self) -> bytes:
        return self._manifest

    @property
    def finished(self) -> bool:
        """Every image byte is programmed (the header too, unless deferred)."""
        return self._finished

    def program_header(self) -> None:
        """Program the header of a slot finished with ``defer_header``: its commit.

        Raises:
            StorageError: the image is not finished.
        """
        if not self._finished:
            raise StorageError("the header is programmed after the whole image")
        self._program(0, self._header.encode())

    def close(self) -> None:
        """Let go of the slot without finishing it (what is programmed stays, for a resume)."""
        self._buffer.clear()

    def _flush(self, n: int) -> None:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._program(self._header.image_offset + self._written, data)
        self._written += n

    def _program(self, offset: int, data: bytes) -> None:
        """Program at a slot offset, padding the tail with 0xFF to the unit; skip blank data."""
        padded = data + bytes([ERASED]) * (-len(data) % self._unit)
        if padded.count(ERASED) != len(padded):
            program_split(self._flash, self._region.offset + offset, padded)
