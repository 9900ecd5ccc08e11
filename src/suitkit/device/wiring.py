"""The one place where the firmware consumer meets a bootloader (design.md §2).

``open_device(folder)`` builds a device kept in a folder: its configuration, a bootloader of its
shape (simulated NOR flash for ``mcu``, ``secure-split`` and ``dual-cpu``, saved to the folder
between commands; A/B slot directories for ``linux``) whose image verifier is the SUIT one, and a
consumer that stages updates into it.

``SuitImageVerifier`` is what the bootloader runs at every boot (RFC 9124 THREAT.IMG.REPLACE,
REQ.SEC.AUTH.EXEC): the envelope stored next to the image must verify against the trust anchors,
and the image must have exactly the digest and size its manifest's shared sequence gives that
component (``processor.shared_parameters``), with the vendor and class conditions evaluated
against the device. It also hands the bootloader the digests the manifest gives the other
images of the boot set, for the bootloader's set check (a set mixed from two releases).

``SlotMetadata`` keeps component metadata (update-management §4.6) on Linux-class devices: a
``<image>.metadata.json`` file beside the image in its slot directory, written atomically
before the slot is marked pending and switched with it. Flash shapes have no file system for
it: their consumer refuses metadata.

``SlotDependencies`` is the manifest store of a Linux-class device (trust-domains §6): the
dependency manifests of the installed set, one file per slot directory switched with the
images, which ``Consumer.uninstall`` removes from. Flash shapes process dependency manifests
but keep none (each image keeps the manifest that installed it), so they cannot uninstall.

``Stage1Bootloader`` is the boot chain of an mcu device made with a stage 0 (``device init
--stage1``, docs/selfupdate.md): every boot goes through stage 0 (``bootloader.stage0``), and
the consumer's store maps the component ``['suitkit', 'bootloader']`` to the stage-1 copy that
does not run: written, checked as stage 0 will check it, and committed by its header (stage
0's power-safe switch: the next boot tries it once, and falls back to the confirmed copy
unless the device confirms). ``FlashAnchorMedium`` keeps the anchor store of flash shapes in
their flash (``bootloader.records``; docs/keys.md "Storage").
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from suitkit.bootloader.api import Bootloader, BootResult
from suitkit.bootloader.boot import FlashBootloader, FlashSlotWriter
from suitkit.bootloader.flash import Flash
from suitkit.bootloader.fsslots import FsBootloader
from suitkit.bootloader.inplace import INPLACE_SHAPES
from suitkit.bootloader.profiles import ANCHOR_SECTORS, SECTOR, SHAPES
from suitkit.bootloader.records import RecordArea
from suitkit.bootloader.stage0 import Stage0, Stage1Boot
from suitkit.bootloader.verifier import (
    ImageInfo,
    ImageReader,
    ImageVerifier,
    PatchPlan,
    VouchedReader,
    as_reader,
)
from suitkit.core import cbor
from suitkit.core.model import ComponentIdentifier
from suitkit.core.packing import (
    DELTA_INFO,
    DeltaInfo,
    apply_delta,
    codec_named,
    decompress,
    packed_bound,
    packing_parameters,
)
from suitkit.core.processor import (
    NO_EXTENSIONS,
    ComponentIdentity,
    Device,
    Extensions,
    InstalledEnvironment,
    shared_parameters,
    stream_digest,
)
from suitkit.core.verify import TrustAnchors
from suitkit.device.anchors import STORE, migrate_file
from suitkit.device.config import BOOTLOADER_ID, BOOTLOADER_IMAGE, DeviceConfig, load_config
from suitkit.device.consumer import (
    MAX_DEPENDENCIES,
    Consumer,
    MetadataSink,
    PayloadFetcher,
    reader_chunks,
    signs_parameter,
    split_slot_record,
    verify_stored,
)
from suitkit.device.facts import ConsentHook
from suitkit.device.invoke import ImageComponent
from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    KeyMaterialError,
    PolicyError,
    StorageError,
    SuitError,
)
from suitkit.fileio import atomic_write, fsync_dir
from suitkit.limits import Limits

__all__ = ["FlashAnchorMedium", "OpenDevice", "SlotDependencies", "SlotMetadata",
           "Stage1Bootloader", "SuitImageVerifier", "open_device", "stage1_status",
           "with_packing"]

CHUNK = 64 * 1024
FLASH_STATE = "state.cbor"
"""Every flash of a simulated device, content and wear, in one file (saved atomically)."""
FLASH_COPY = "state.1.cbor"
"""The second copy: saves alternate between the two (the copy that is not the newest intact
one is written, with the next generation and a SHA-256 of the state), so one damaged copy
(a flipped bit, a truncated file) leaves the state of the save before it."""
FLASH_FORMAT = 2
"""``{"format": 2, "state": bstr, "sha256": bstr}``, the state being
``{"generation", "flashes", "wear"}`` (and ``"stage1-running"``: the stage-1 copy that runs,
on devices with a stage 0); format 1 (no copies) was the state map itself."""
ANCHOR_AREA_BYTES = 2 * ANCHOR_SECTORS * SECTOR
"""The trust-anchor area at the end of a flash shape's first flash: a flash saved before it
existed is that much shorter, and is loaded with the area blank (docs/keys.md "Storage")."""


@dataclass(frozen=True, slots=True)
class FlashAnchorMedium:
    """The anchor store of a flash shape, in its flash (``device.anchors.AnchorMedium``)."""

    area: RecordArea
    where: str

    def load(self) -> bytes | None:
        return self.area.read()

    def save(self, data: bytes) -> None:
        self.area.write(data)


class _WrittenReader:
    """The image bytes a slot writer programmed (for checking a stage-1 copy before its
    header exists)."""

    def __init__(self, writer: FlashSlotWriter) -> None:
        self._writer = writer

    @property
    def size(self) -> int:
        return self._writer.durable

    def read(self, offset: int, length: int) -> bytes:
        return self._writer.read_back(offset, length)


class Stage1Bootloader:
    """The boot chain of an mcu device with a stage 0: stage 0 chooses the stage-1 copy, the
    stage 1 (the flash bootloader) boots the application set; the store of both.

    For the consumer, ``['suitkit', 'bootloader']`` (image ``bootloader``) is one more
    component outside the boot set (``updaters``): ``open_inactive`` writes the copy that does
    not run (on a blank device: copy 0, the factory programming), ``check_staged`` verifies it
    as stage 0 will (signature, digest, counter, and a sequence number above the running
    stage 1's, since stage 0 boots the higher one), ``mark_pending`` programs its header: the
    commit (the factory copy is confirmed at once). ``boot`` runs stage 0 and then the boot
    set (its result is the boot set's; ``last`` is the stage 1 started, ``on_trial`` whether
    either runs on trial); ``confirm`` confirms both (the device is healthy: the new stage 1
    booted it). Everything else is the flash bootloader's.
    """

    updaters: tuple[str, ...] = (BOOTLOADER_IMAGE,)

    def __init__(self, bootloader: FlashBootloader, stage0: Stage0) -> None:
        self.bootloader = bootloader
        self.stage0 = stage0
        self.last: Stage1Boot | None = None
        """The stage 1 the last ``boot`` started."""
        self._writer: FlashSlotWriter | None = None
        self._factory = False

    def __getattr__(self, name: str) -> object:
        # observe, layout, image_unit, check_slot...: the flash bootloader's
        return getattr(self.bootloader, name)

    @property
    def components(self) -> tuple[str, ...]:
        return self.bootloader.components

    def open_inactive(self, component: str, *, manifest: bytes, image_size: int,
                      resume_at: int = 0) -> FlashSlotWriter:
        self._writer = None  # whatever was staged and not committed is forgotten
        if component != BOOTLOADER_IMAGE:
            return self.bootloader.open_inactive(component, manifest=manifest,
                                                 image_size=image_size, resume_at=resume_at)
        self._factory = self.stage0.blank()
        if self._factory:
            writer = self.stage0.factory_writer(manifest=manifest, image_size=image_size)
        else:
            writer = self.stage0.stage(manifest=manifest, image_size=image_size,
                                       defer_header=True)
        self._writer = writer
        return writer

    def check_staged(self) -> None:
        writer = self._writer
        if writer is None:
            self.bootloader.check_staged()
            return
        try:
            self._check_stage1(writer)
        except SuitError:
            self._writer = None  # refused: it is never committed
            raise

    def _check_stage1(self, writer: FlashSlotWriter) -> None:
        if not writer.finished:
            raise StorageError("the stage-1 bootloader is not fully written")
        info = self.stage0.verifier.verify(writer.manifest, _WrittenReader(writer))
        counter = self.stage0.counter.read()
        # RFC 9124 REQ.SEC.SEQUENCE, as stage 0 checks it
        if info.sequence_number < counter:
            raise PolicyError(f"stage-1 sequence number {info.sequence_number} is below the "
                              f"stage-1 counter {counter}")
        if info.sequence_number > self.stage0.counter.capacity:
            raise PolicyError(f"stage-1 sequence number {info.sequence_number} exceeds what the "
                              f"stage-1 counter can hold ({self.stage0.counter.capacity})")
        if self._factory or self.stage0.running is None:
            return
        running = self.stage0.check(self.stage0.running).info
        if running is not None and info.sequence_number <= running.sequence_number:
            raise PolicyError(f"stage 0 starts the stage 1 with the higher sequence number: "
                              f"this one ({info.sequence_number}) must be above the running "
                              f"stage 1's ({running.sequence_number})")

    def mark_pending(self, *, permanent: bool = False) -> None:
        writer = self._writer
        if writer is None:
            self.bootloader.mark_pending(permanent=permanent)
            return
        self._writer = None
        if self._factory:
            self.stage0.commit_factory(writer)
        else:
            writer.program_header()  # the commit: stage 0 tries it at the next boot

    def boot(self) -> BootResult:
        self.last = None
        started = self.stage0.boot()
        self.last = started
        result = self.bootloader.boot()
        note = (f"stage 0 started stage-1 bootloader #{started.sequence_number} (copy "
                f"{started.copy}{', on trial' if started.trial else ''})")
        return dataclasses.replace(result, notes=(*started.notes, note, *result.notes))

    def confirm(self) -> None:
        self.bootloader.confirm()
        if self.stage1_on_trial():
            self.stage0.confirm()

    def stage1_on_trial(self) -> bool:
        """The running stage 1 is on trial (a ``confirm`` confirms it)."""
        return self.stage0.running is not None and self.stage0.on_trial()

    def pending_update(self) -> bool:
        return self.bootloader.pending_update() or self.stage0.pending()

    def staged(self, component: str) -> bytes | None:
        if component == BOOTLOADER_IMAGE:
            return self.stage0.staged_manifest()
        return self.bootloader.staged(component)

    def running(self, component: str) -> tuple[bytes, ImageReader]:
        if component == BOOTLOADER_IMAGE:
            return self.stage0.running_copy()
        return self.bootloader.running(component)

    def read_counters(self) -> dict[str, int]:
        return {**self.bootloader.read_counters(), BOOTLOADER_IMAGE: self.stage0.counter.read()}

    def counter_capacity(self) -> dict[str, int]:
        return {**self.bootloader.counter_capacity(),
                BOOTLOADER_IMAGE: self.stage0.counter.capacity}


def stage1_status(bootloader: object) -> dict[str, object] | None:
    """The stage-1 bootloader of a device with a stage 0, for ``device status`` and the
    inventory: the running copy, its sequence number and digest, whether it is on trial, a
    new stage 1 pending, the stage-1 counter (``None``: no stage 0)."""
    if not isinstance(bootloader, Stage1Bootloader):
        return None
    stage0 = bootloader.stage0
    doc: dict[str, object] = {"id": [f"0x{p.hex()}" for p in BOOTLOADER_ID],
                              "counter": stage0.counter.read(), "running": None}
    index = stage0.running
    if index is not None:
        check = stage0.check(index)
        if check.info is not None:
            doc["running"] = {"copy": index, "sequence-number": check.info.sequence_number,
                              "digest": check.info.digest.hex(), "trial": stage0.on_trial()}
    doc["pending"] = stage0.pending()
    return doc


class _BootStore:
    """The slot being checked is the manifest's component ``target``; the others look empty."""

    def __init__(self, identity: ComponentIdentity, target: ComponentIdentifier,
                 reader: ImageReader) -> None:
        self._identity, self._target, self._reader = identity, target, reader

    def component(self, identifier: ComponentIdentifier) -> ImageComponent:
        name = "the checked image" if identifier == self._target else "another image"
        return ImageComponent(self._identity, name,
                              self._reader if identifier == self._target else None)

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        raise StorageError("the bootloader does not swap while verifying")


@dataclass(frozen=True, slots=True)
class SuitImageVerifier:
    """The bootloader's ``ImageVerifier`` for slots written by the SUIT consumer."""

    anchors: TrustAnchors | Callable[[], TrustAnchors]
    """The trust anchors, or how to read the current ones at each verification (a rotation
    takes effect at once, also for a bootloader already open: docs/keys.md)."""
    identity: ComponentIdentity
    component: ComponentIdentifier | None = None
    """The component the verified slot is for (``None``: whichever the slot record names)."""
    limits: Limits = field(default_factory=Limits)
    images: tuple[tuple[ComponentIdentifier, str], ...] = ()
    """The boot set's ``(component, image name)`` pairs: the digests the manifest gives them
    go to the bootloader's set check (``ImageInfo.vouches``)."""
    extensions: Extensions = NO_EXTENSIONS
    """Custom conditions the shared sequence may use (the consumer's)."""
    dependency_anchors: TrustAnchors | Callable[[], TrustAnchors] | None = None
    """Trust domains: an image a dependency manifest installed is kept with that manifest,
    which verifies under the dependency anchors' policy (``consumer.verify_stored``); or how
    to read them at each verification (they follow a rotation too)."""

    def _anchors(self) -> tuple[TrustAnchors, TrustAnchors | None]:
        """The trust anchors and dependency anchors as they are now (after any rotation)."""
        anchors = self.anchors if isinstance(self.anchors, TrustAnchors) else self.anchors()
        dependency = self.dependency_anchors
        if dependency is not None and not isinstance(dependency, TrustAnchors):
            dependency = dependency()
        return anchors, dependency

    def verify(self, manifest: bytes, image: bytes | ImageReader) -> ImageInfo:
        """Verify the stored envelope and the image against it.

        Raises:
            DecodeError, AuthenticationError, PolicyError, ProcessingError: as the checks fail.
        """
        reader = as_reader(image)
        component, envelope = split_slot_record(manifest, limits=self.limits)
        # RFC 9124 REQ.SEC.AUTH.IMG_LOC: the slot must hold the component it is for.
        if self.component is not None and component != self.component:
            raise AuthenticationError(f"the slot of {_cid(self.component)} holds an image for "
                                      f"{_cid(component)}")
        anchors, dependency = self._anchors()
        verified = verify_stored(envelope, anchors, dependency, limits=self.limits)
        if component not in verified.manifest.common.components:
            raise DecodeError("slot manifest", "the stored component is not in its manifest")
        store = _BootStore(self.identity, component, reader)
        shared = shared_parameters(verified, Device(store, InstalledEnvironment()),  # type: ignore[arg-type]
                                   limits=self.limits, extensions=self.extensions)
        params = shared.get(component)
        if params is None or params.image_digest is None or params.image_size is None:
            raise AuthenticationError("the manifest gives this component no image digest and "
                                      "size to check at boot")
        if reader.size != params.image_size:
            raise AuthenticationError(f"image is {reader.size} bytes, the manifest says "
                                      f"{params.image_size}")
        algorithm = params.image_digest.algorithm
        known = reader.known_digest(algorithm) if isinstance(reader, VouchedReader) else None
        actual = known if known is not None else stream_digest(reader_chunks(reader, CHUNK),
                                                               algorithm)
        if not hmac.compare_digest(actual, params.image_digest.value):
            raise AuthenticationError(f"image digest {actual.hex()} does not match the "
                                      f"manifest's {params.image_digest.value.hex()}")
        named = set(verified.manifest.common.components)
        vouches = tuple(
            (name, cbor.encode([found.image_digest.algorithm, found.image_digest.value]))
            for cid, name in self.images
            if cid in named and (found := shared.get(cid)) is not None
            and found.image_digest is not None)
        return ImageInfo(verified.manifest.sequence_number, actual, vouches)

    def verify_patch(self, manifest: bytes, delta_info: bytes, patch: ImageReader,
                     precursor: ImageReader | None) -> PatchPlan:
        """The in-place bootloader's check of a staged patch (``PatchVerifier``;
        docs/delta.md §9): the stored envelope verifies, it signs ``delta_info`` with an
        in-place member, the patch has the size and digest given there; with ``precursor``,
        the precursor's size and digest too (REQ.SEC.AUTH.PRECURSOR) and a dry run whose
        output has the manifest's image digest and size.

        Raises:
            DecodeError, AuthenticationError, PolicyError: as the checks fail.
        """
        component, envelope = split_slot_record(manifest, limits=self.limits)
        if self.component is not None and component != self.component:
            raise AuthenticationError(f"the patch area of {_cid(self.component)} holds a patch "
                                      f"for {_cid(component)}")
        anchors, dependency = self._anchors()
        verified = verify_stored(envelope, anchors, dependency, limits=self.limits)
        if component not in verified.manifest.common.components:
            raise DecodeError("patch manifest", "the stored component is not in its manifest")
        if not signs_parameter(verified.envelope, DELTA_INFO, delta_info):
            raise AuthenticationError("the staged delta-info is not one its manifest signs")
        info = DeltaInfo.decode(delta_info)
        inplace = info.inplace
        if inplace is None:
            raise PolicyError("the staged delta is not made for in-place application")
        store = _BootStore(self.identity, component, precursor or as_reader(b""))
        shared = shared_parameters(verified, Device(store, InstalledEnvironment()),  # type: ignore[arg-type]
                                   limits=self.limits, extensions=self.extensions)
        params = shared.get(component)
        if params is None or params.image_digest is None or params.image_size is None:
            raise AuthenticationError("the manifest gives this component no image digest and "
                                      "size to check the result against")
        if patch.size != inplace.patch_size:
            raise AuthenticationError(f"the staged patch is {patch.size} bytes, its delta-info "
                                      f"signs {inplace.patch_size}")
        found = stream_digest(reader_chunks(patch, CHUNK), inplace.patch_digest.algorithm)
        if not hmac.compare_digest(found, inplace.patch_digest.value):
            raise AuthenticationError("the staged patch's digest is not the one its delta-info "
                                      "signs")
        if precursor is not None:
            # RFC 9124 REQ.SEC.AUTH.PRECURSOR, then the dry run: nothing is written.
            if precursor.size != info.precursor_size:
                raise AuthenticationError(f"the running image is {precursor.size} bytes, the "
                                          f"patch was made for {info.precursor_size}")
            actual = stream_digest(reader_chunks(precursor, CHUNK),
                                   info.precursor_digest.algorithm)
            if not hmac.compare_digest(actual, info.precursor_digest.value):
                raise AuthenticationError("the running image is not the precursor the patch "
                                          "was made for (REQ.SEC.AUTH.PRECURSOR)")
            stream: Iterator[bytes] = reader_chunks(patch, CHUNK)
            if inplace.codec:
                stream = decompress(stream, inplace.codec,
                                    max_output=packed_bound(params.image_size),
                                    what="staged patch")
            out = apply_delta(stream, precursor.read, source_size=precursor.size,
                              max_output=params.image_size, what="staged patch",
                              inplace=(inplace.unit, inplace.order))
            sizes = [0]

            def counted() -> Iterator[bytes]:
                for piece in out:
                    sizes[0] += len(piece)
                    yield piece

            result = stream_digest(counted(), params.image_digest.algorithm)
            if sizes[0] != params.image_size or not hmac.compare_digest(
                    result, params.image_digest.value):
                raise AuthenticationError("the staged patch does not rebuild the image its "
                                          "manifest signs")
        named = set(verified.manifest.common.components)
        vouches = tuple(
            (name, cbor.encode([got.image_digest.algorithm, got.image_digest.value]))
            for cid, name in self.images
            if cid in named and (got := shared.get(cid)) is not None
            and got.image_digest is not None)
        return PatchPlan(ImageInfo(verified.manifest.sequence_number, params.image_digest.value,
                                   vouches),
                         params.image_size, info.precursor_size, inplace.unit, inplace.order,
                         inplace.codec)


@dataclass
class OpenDevice:
    """A device folder, opened: configuration, bootloader, and a way to save flash state."""

    config: DeviceConfig
    bootloader: Bootloader
    flashes: dict[str, Flash]
    crash: Callable[[str], None] | None = None
    """Called with a label before every file written for this device (see ``open_device``)."""
    generation: int = 0
    """The generation of the flash state loaded (0: none, or saved before the copies)."""
    loaded_from: str | None = None
    """The copy of the flash state it was loaded from (the next save writes the other)."""
    extensions: Extensions = NO_EXTENSIONS
    """The custom commands and parameters the device implements (``open_device``)."""
    stage0: Stage0 | None = None
    """The immutable first stage of an mcu device made with ``--stage1`` (``None``: none)."""

    def consumer(self, fetcher: PayloadFetcher | None = None, *,
                 consent: ConsentHook | None = None) -> Consumer:
        """A consumer that stages updates into this device's inactive slots (``consent``: asked
        for update-authorized instead of the folder's consent policy)."""
        sink: MetadataSink | None = (SlotMetadata(self.bootloader, self.crash)
                                     if isinstance(self.bootloader, FsBootloader) else None)
        dependencies = (SlotDependencies(self.bootloader, Limits(), self.crash)
                        if isinstance(self.bootloader, FsBootloader) else None)
        return Consumer(self.config, self.bootloader, fetcher, crash=self.crash,
                        consent=consent, extensions=self.extensions, metadata_sink=sink,
                        dependency_sink=dependencies)

    def save(self) -> None:
        """Persist the simulated flash (every flash's content and wear) to the folder, as a
        whole: one file (``flash/state.cbor``) written atomically, so a crash while saving
        leaves the folder as it was before the command or as it is after it, never one flash
        of a two-flash device (dual-cpu) ahead of the other."""
        directory = self.config.directory / "flash"
        if not self.flashes:
            return
        directory.mkdir(exist_ok=True)
        target = FLASH_COPY if self.loaded_from == FLASH_STATE else FLASH_STATE
        if self.crash is not None:
            self.crash(f"save flash/{target}")
        generation = self.generation + 1
        doc: dict[str, object] = {
            "generation": generation,
            "flashes": {name: flash.snapshot() for name, flash in self.flashes.items()},
            "wear": {name: list(flash.erase_counts) for name, flash in self.flashes.items()}}
        if self.stage0 is not None and self.stage0.running is not None:
            doc["stage1-running"] = self.stage0.running  # what runs: the device's RAM
        state = cbor.encode(doc)
        atomic_write(directory / target, cbor.encode(
            {"format": FLASH_FORMAT, "state": state, "sha256": hashlib.sha256(state).digest()}))
        self.generation, self.loaded_from = generation, target
        self._drop_migrated_anchors()
        # Folders saved before the single file kept one file per flash: now stale.
        for stale in [directory / "wear.json", *(directory / f"{n}.bin" for n in self.flashes)]:
            stale.unlink(missing_ok=True)

    def _drop_migrated_anchors(self) -> None:
        """A folder made before the flash anchor area: once the area holding its anchors is
        saved, ``anchors.cbor`` goes (docs/keys.md "Storage")."""
        medium = self.config.anchor_medium
        legacy = self.config.directory / STORE
        if medium is None or not legacy.exists():
            return
        try:
            if medium.load() is None:
                return  # not migrated (the file is damaged: it is what is refused)
        except SuitError:
            return
        legacy.unlink(missing_ok=True)
        fsync_dir(legacy.parent)


DEPENDENCIES = "dependencies.cbor"
"""The manifest store of a Linux-class slot: ``{"root-sequence": uint, "root": bstr (the digest
of the root that staged the set), "manifests": [slot record...]}``, each record
``[dependency component, envelope]``."""


@dataclass(frozen=True, slots=True)
class SlotDependencies:
    """The dependency manifests of a Linux-class device's installed set (trust-domains §6):
    one file in each slot directory, written atomically before the slot is marked pending
    and switched with it (a power cut leaves the old store or the new one, never a mix)."""

    bootloader: FsBootloader
    limits: Limits
    crash: Callable[[str], None] | None = None

    def installed(self) -> tuple[int, dict[ComponentIdentifier, bytes]]:
        path = self.bootloader.slot_dir(self.bootloader.read_state().active) / DEPENDENCIES
        try:
            if path.stat().st_size > (MAX_DEPENDENCIES + 1) * self.limits.max_manifest_bytes:
                raise StorageError(f"{path}: over the size of {MAX_DEPENDENCIES} manifests")
            data = path.read_bytes()
        except FileNotFoundError:
            return 0, {}
        except OSError as e:
            raise StorageError(f"{path}: cannot read the installed dependency manifests: "
                               f"{e.strerror}") from None
        doc = cbor.decode(data, path=str(path), max_depth=6)
        records = doc.get("manifests") if isinstance(doc, Mapping) else None
        sequence = doc.get("root-sequence") if isinstance(doc, Mapping) else None
        if not isinstance(records, list | tuple) or len(records) > MAX_DEPENDENCIES \
                or isinstance(sequence, bool) or not isinstance(sequence, int):
            raise StorageError(f"{path}: damaged (expected the root's sequence number and at "
                               f"most {MAX_DEPENDENCIES} manifests)")
        out = {}
        for record in records:
            if not isinstance(record, bytes):
                raise StorageError(f"{path}: damaged (a manifest record is not bytes)")
            cid, envelope = split_slot_record(record, limits=self.limits)
            out[cid] = envelope
        return sequence, out

    def staged_root(self) -> bytes | None:
        path = self.bootloader.slot_dir(self.bootloader.read_state().inactive) / DEPENDENCIES
        try:
            if path.stat().st_size > (MAX_DEPENDENCIES + 1) * self.limits.max_manifest_bytes:
                return None
            doc = cbor.decode(path.read_bytes(), path=str(path), max_depth=6)
        except (OSError, SuitError):
            return None
        root = doc.get("root") if isinstance(doc, Mapping) else None
        return root if isinstance(root, bytes) else None

    def stage(self, sequence: int, manifests: Mapping[ComponentIdentifier, bytes], *,
              root: bytes = b"") -> None:
        path = self.bootloader.slot_dir(self.bootloader.read_state().inactive) / DEPENDENCIES
        if not manifests:
            # A set without dependency manifests has no store: no write (and no fsync) for
            # an ordinary update; a stale store left in the slot goes.
            if path.exists():
                if self.crash is not None:
                    self.crash(f"dependencies-clear {path.name}")
                try:
                    path.unlink()
                    fsync_dir(path.parent)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise StorageError(f"{path}: cannot remove the stale dependency manifests: "
                                       f"{e.strerror}") from None
            return
        if self.crash is not None:
            self.crash(f"dependencies {path.name}")
        atomic_write(path, cbor.encode({
            "root-sequence": sequence,
            "root": root,
            "manifests": [cbor.encode([list(cid), envelope])
                          for cid, envelope in manifests.items()]}))


@dataclass(frozen=True, slots=True)
class SlotMetadata:
    """Component metadata of a Linux-class device, beside each image in its slot directory."""

    bootloader: FsBootloader
    crash: Callable[[str], None] | None = None

    def _path(self, slot: str, image: str) -> Path:
        return self.bootloader.slot_dir(slot) / f"{image}.metadata.json"

    def stage(self, image: str, metadata: Mapping[str, object] | None) -> None:
        path = self._path(self.bootloader.read_state().inactive, image)
        if self.crash is not None:
            self.crash(f"metadata {path.name}")
        if metadata is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, json.dumps(metadata, indent=2).encode() + b"\n")

    def carry(self, image: str) -> None:
        state = self.bootloader.read_state()
        try:
            data = self._path(state.active, image).read_bytes()
        except FileNotFoundError:
            self.stage(image, None)
            return
        except OSError as e:
            raise StorageError(f"{image}: cannot read its component metadata: "
                               f"{e.strerror}") from None
        try:
            metadata = json.loads(data)
        except (ValueError, RecursionError):
            metadata = None
        if not isinstance(metadata, dict):
            raise StorageError(f"{image}: its component metadata file in the active slot is "
                               "damaged (not a JSON object); the update cannot carry it")
        self.stage(image, metadata)


def _cid(component: ComponentIdentifier) -> str:
    return "[" + ", ".join(f"h'{p.hex()}'" for p in component) + "]"


def identity_of(config: DeviceConfig) -> ComponentIdentity:
    """The identity a device's components answer the compatibility conditions with."""
    return ComponentIdentity(vendor_ids=frozenset({config.vendor_id}),
                             class_ids=frozenset({config.class_id}),
                             device_ids=frozenset({config.device_id}))


def with_packing(config: DeviceConfig, extensions: Extensions = NO_EXTENSIONS) -> Extensions:
    """``extensions`` plus the packed payloads the device accepts (``DeviceConfig.unpack``:
    suitkit-compression-info with its codecs, suitkit-delta-info; ``core.packing``)."""
    codecs = [codec_named(name) for name in config.unpack if name != "delta"]
    packing = packing_parameters(codecs, delta="delta" in config.unpack)
    if not packing:
        return extensions
    return Extensions(commands=extensions.commands,
                      parameters={**packing, **extensions.parameters})


def open_device(directory: Path, *, crash: Callable[[str], None] | None = None,
                extensions: Extensions = NO_EXTENSIONS) -> OpenDevice:
    """Open a device folder made by ``config.create_device``.

    ``crash``: called with a label before every durable file step (the download journal, the
    flash save, every step of the Linux-class slots): a power-cut harness raises ``PowerCut``
    from it. ``extensions``: the custom commands and parameters the device implements (its
    consumer runs them; its boot-time verifier accepts its custom conditions).

    Raises:
        DecodeError: not a device folder, or its saved flash is unreadable.
        KeyMaterialError: a trust anchor is unreadable.
    """
    config = load_config(directory)
    extensions = with_packing(config, extensions)
    identity = identity_of(config)
    current: list[DeviceConfig] = [config]
    """The configuration with its anchor medium once the flash is loaded (flash shapes)."""
    initial: list[TrustAnchors] = []

    def anchors() -> TrustAnchors:
        # a rotation takes effect at once, also for this open bootloader
        stored = current[0].stored_anchors()
        if stored is not None:
            return stored.anchors
        if not initial:
            initial.append(current[0].trust_anchors())
        return initial[0]

    derived: list[tuple[object, TrustAnchors]] = []

    def dependency_anchors() -> TrustAnchors:
        # derived from the anchors in force (a rotation takes effect at once)
        stored = current[0].stored_anchors()
        if not derived or derived[0][0] is not stored:
            derived[:] = [(stored, current[0].dependency_anchors())]
        return derived[0][1]

    # One verifier per image, each knowing which component its slots must hold.
    images = tuple((c.suit_id, c.image) for c in config.components)
    verifiers: dict[str, ImageVerifier] = {
        c.image: SuitImageVerifier(anchors, identity, c.suit_id, images=images,
                                   extensions=extensions,
                                   dependency_anchors=dependency_anchors)
        for c in config.components}
    if config.shape == "linux":
        anchors()  # an unreadable trust anchor is refused now, not at the first boot
        dependency_anchors()
        names = tuple(c.image for c in config.components)
        return OpenDevice(config, FsBootloader(directory / "slots", names, verifiers,
                                               crash=crash), {}, crash, extensions=extensions)
    if config.shape in INPLACE_SHAPES:
        # one slot patched in place: no stage 0, its trust anchors in the folder's file
        single = INPLACE_SHAPES[config.shape](verifiers, image_sectors=config.image_sectors)
        generation, loaded_from, _ = _load_flash(directory / "flash", single.flashes)
        anchors()  # an unreadable trust anchor or a damaged store is refused now
        dependency_anchors()
        return OpenDevice(config, single.bootloader, single.flashes, crash, generation,
                          loaded_from, extensions)
    maker = SHAPES[config.shape]
    options: dict[str, object] = {"image_sectors": config.image_sectors}
    if "anchors" in inspect.signature(maker).parameters:
        options["anchors"] = True  # the shape's profile has a trust-anchor area
    if config.stage1:
        # stage 0 verifies stage-1 copies with the device's anchors (docs/selfupdate.md)
        options["stage1"] = SuitImageVerifier(anchors, identity, BOOTLOADER_ID,
                                              extensions=extensions,
                                              dependency_anchors=dependency_anchors)
    device = maker(verifiers, **options)
    generation, loaded_from, running = _load_flash(directory / "flash", device.flashes)
    bootloader: Bootloader = device.bootloader
    if device.stage0 is not None:
        if running in (0, 1):
            device.stage0.running = running
        bootloader = Stage1Bootloader(device.bootloader, device.stage0)
    if device.anchors is not None:
        medium = FlashAnchorMedium(device.anchors,
                                   f"{directory}: the flash area of the trust anchors")
        config = dataclasses.replace(config, anchor_medium=medium)
        current[0] = config
        # a folder made before the area: its anchors.cbor is copied (and goes at save); a
        # damaged one stays, and is refused at every read
        with contextlib.suppress(KeyMaterialError):
            migrate_file(directory, medium)
    anchors()  # an unreadable trust anchor or a damaged store is refused now
    dependency_anchors()
    return OpenDevice(config, bootloader, device.flashes, crash, generation, loaded_from,
                      extensions, device.stage0)


_Saved = dict[str, tuple[bytes, list[int]]]


def _fit(flash: Flash, content: bytes, wear: list[int]) -> tuple[bytes, list[int]]:
    """A flash saved before the trust-anchor area was added at its end: the same content with
    the area blank (erased, no wear). Anything else must match the flash exactly.

    Raises:
        ValueError: it does not fit the flash.
    """
    missing = flash.size - len(content)
    if missing == ANCHOR_AREA_BYTES and len(flash.erase_counts) - len(wear) == 2 * ANCHOR_SECTORS:
        return content + b"\xff" * missing, [*wear, *[0] * (2 * ANCHOR_SECTORS)]
    if len(content) != flash.size or len(wear) != len(flash.erase_counts):
        raise ValueError(f"{len(content)} bytes and {len(wear)} wear counts, the flash has "
                         f"{flash.size} and {len(flash.erase_counts)}")
    return content, wear


def _load_flash(flash_dir: Path, flashes: dict[str, Flash]
                ) -> tuple[int, str | None, int | None]:
    """Restore the flashes saved by ``OpenDevice.save`` from the newest intact copy (or by a
    suitkit that kept one file per flash); a folder with nothing saved keeps the blank flash.
    Returns the generation loaded, the copy it came from, and the stage-1 copy that ran.

    Raises:
        DecodeError: every copy of the saved state is unreadable or does not fit the device's
            flashes.
    """
    best: tuple[int, str, _Saved, int | None] | None = None
    damaged = []
    for name in (FLASH_STATE, FLASH_COPY):
        path = flash_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            damaged.append(f"{path}: {e.strerror}")
            continue
        try:
            generation, saved, running = _parse_flash_state(data, path, flashes)
        except (ValueError, KeyError, TypeError, SuitError) as e:
            damaged.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        if best is None or generation > best[0]:
            best = (generation, name, saved, running)
    if best is not None:
        for name, flash in flashes.items():
            flash.load(*best[2][name])
        return best[0], best[1], best[3]
    if damaged:
        raise DecodeError(str(flash_dir), "saved flash is unreadable in every copy: "
                          + "; ".join(damaged))
    try:
        if (flash_dir / "wear.json").exists():
            legacy = json.loads((flash_dir / "wear.json").read_bytes())
            for name, flash in flashes.items():
                flash.load(*_fit(flash, (flash_dir / f"{name}.bin").read_bytes(),
                                 list(legacy[name])))
    except (OSError, ValueError, KeyError, TypeError, SuitError) as e:
        raise DecodeError(str(flash_dir), f"saved flash is unreadable: {e}") from None
    return 0, None, None


def _parse_flash_state(data: bytes, path: Path, flashes: Mapping[str, Flash]
                       ) -> tuple[int, _Saved, int | None]:
    """The generation, ``{flash: (content, wear)}`` and the running stage-1 copy of one saved
    copy.

    Raises:
        ValueError, KeyError, TypeError, SuitError: damaged, or not this device's flashes.
    """
    doc = cbor.decode(data, path=str(path), max_depth=4)
    if not isinstance(doc, Mapping) or doc.get("format") not in (1, FLASH_FORMAT):
        raise ValueError(f"expected a map with format {FLASH_FORMAT}")
    generation = 0
    if doc["format"] == FLASH_FORMAT:
        state, digest = doc["state"], doc["sha256"]
        if not isinstance(state, bytes) or not isinstance(digest, bytes) \
                or not hmac.compare_digest(hashlib.sha256(state).digest(), digest):
            raise ValueError("its SHA-256 does not match its content (damaged)")
        doc = cbor.decode(state, path=str(path), max_depth=4)
        if not isinstance(doc, Mapping):
            raise ValueError("expected the state as a map")
        generation = doc["generation"]
        if not isinstance(generation, int) or generation < 1:
            raise ValueError(f"generation must be a positive count, got {generation!r}")
    running = doc.get("stage1-running")
    if running is not None and running not in (0, 1):
        raise ValueError(f"stage1-running must be 0 or 1, got {running!r}")
    saved, wear = doc["flashes"], doc["wear"]
    if not isinstance(saved, Mapping) or not isinstance(wear, Mapping) \
            or set(saved) != set(flashes) or set(wear) != set(flashes):
        raise ValueError(f"it holds flashes {sorted(saved)}, the device has {sorted(flashes)}")
    loaded: _Saved = {}
    for name, flash in flashes.items():
        content, counts = saved[name], wear[name]
        if not isinstance(content, bytes) or not isinstance(counts, list | tuple) \
                or not all(isinstance(w, int) and w >= 0 for w in counts):
            raise ValueError(f"{name}: expected the content as bytes and the wear as "
                             "a list of counts")
        try:
            loaded[name] = _fit(flash, content, list(counts))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return generation, loaded, running
