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
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from suitkit.bootloader.api import Bootloader
from suitkit.bootloader.flash import Flash
from suitkit.bootloader.fsslots import FsBootloader
from suitkit.bootloader.inplace import INPLACE_SHAPES
from suitkit.bootloader.profiles import SHAPES
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
from suitkit.device.anchors import read_store
from suitkit.device.config import DeviceConfig, load_config
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
from suitkit.errors import AuthenticationError, DecodeError, PolicyError, StorageError, SuitError
from suitkit.fileio import atomic_write, fsync_dir
from suitkit.limits import Limits

__all__ = ["OpenDevice", "SlotDependencies", "SlotMetadata", "SuitImageVerifier",
           "open_device", "with_packing"]

CHUNK = 64 * 1024
FLASH_STATE = "state.cbor"
"""Every flash of a simulated device, content and wear, in one file (saved atomically)."""
FLASH_COPY = "state.1.cbor"
"""The second copy: saves alternate between the two (the copy that is not the newest intact
one is written, with the next generation and a SHA-256 of the state), so one damaged copy
(a flipped bit, a truncated file) leaves the state of the save before it."""
FLASH_FORMAT = 2
"""``{"format": 2, "state": bstr, "sha256": bstr}``, the state being
``{"generation", "flashes", "wear"}``; format 1 (no copies) was the state map itself."""


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
    dependency_anchors: TrustAnchors | None = None
    """Trust domains: an image a dependency manifest installed is kept with that manifest,
    which verifies under the dependency anchors' policy (``consumer.verify_stored``)."""

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
        anchors = self.anchors if isinstance(self.anchors, TrustAnchors) else self.anchors()
        verified = verify_stored(envelope, anchors, self.dependency_anchors,
                                 limits=self.limits)
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
        anchors = self.anchors if isinstance(self.anchors, TrustAnchors) else self.anchors()
        verified = verify_stored(envelope, anchors, self.dependency_anchors,
                                 limits=self.limits)
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
        state = cbor.encode({
            "generation": generation,
            "flashes": {name: flash.snapshot() for name, flash in self.flashes.items()},
            "wear": {name: list(flash.erase_counts) for name, flash in self.flashes.items()}})
        atomic_write(directory / target, cbor.encode(
            {"format": FLASH_FORMAT, "state": state, "sha256": hashlib.sha256(state).digest()}))
        self.generation, self.loaded_from = generation, target
        # Folders saved before the single file kept one file per flash: now stale.
        for stale in [directory / "wear.json", *(directory / f"{n}.bin" for n in self.flashes)]:
            stale.unlink(missing_ok=True)


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
    initial, identity = config.trust_anchors(), identity_of(config)

    def anchors() -> TrustAnchors:
        # a rotation (anchors.cbor) takes effect at once, also for this open bootloader
        stored = read_store(directory)
        return initial if stored is None else stored.anchors

    dependency_anchors = config.dependency_anchors()
    # One verifier per image, each knowing which component its slots must hold.
    images = tuple((c.suit_id, c.image) for c in config.components)
    verifiers: dict[str, ImageVerifier] = {
        c.image: SuitImageVerifier(anchors, identity, c.suit_id, images=images,
                                   extensions=extensions,
                                   dependency_anchors=dependency_anchors)
        for c in config.components}
    if config.shape == "linux":
        names = tuple(c.image for c in config.components)
        return OpenDevice(config, FsBootloader(directory / "slots", names, verifiers,
                                               crash=crash), {}, crash, extensions=extensions)
    made = (INPLACE_SHAPES[config.shape] if config.shape in INPLACE_SHAPES
            else SHAPES[config.shape])(verifiers, image_sectors=config.image_sectors)
    generation, loaded_from = _load_flash(directory / "flash", made.flashes)
    return OpenDevice(config, made.bootloader, made.flashes, crash, generation, loaded_from,
                      extensions)


_Saved = dict[str, tuple[bytes, list[int]]]


def _load_flash(flash_dir: Path, flashes: dict[str, Flash]) -> tuple[int, str | None]:
    """Restore the flashes saved by ``OpenDevice.save`` from the newest intact copy (or by a
    suitkit that kept one file per flash); a folder with nothing saved keeps the blank flash.
    Returns the generation loaded and the copy it came from.

    Raises:
        DecodeError: every copy of the saved state is unreadable or does not fit the device's
            flashes.
    """
    best: tuple[int, str, _Saved] | None = None
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
            generation, saved = _parse_flash_state(data, path, flashes)
        except (ValueError, KeyError, TypeError, SuitError) as e:
            damaged.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        if best is None or generation > best[0]:
            best = (generation, name, saved)
    if best is not None:
        for name, flash in flashes.items():
            flash.load(*best[2][name])
        return best[0], best[1]
    if damaged:
        raise DecodeError(str(flash_dir), "saved flash is unreadable in every copy: "
                          + "; ".join(damaged))
    try:
        if (flash_dir / "wear.json").exists():
            legacy = json.loads((flash_dir / "wear.json").read_bytes())
            for name, flash in flashes.items():
                flash.load((flash_dir / f"{name}.bin").read_bytes(), legacy[name])
    except (OSError, ValueError, KeyError, TypeError, SuitError) as e:
        raise DecodeError(str(flash_dir), f"saved flash is unreadable: {e}") from None
    return 0, None


def _parse_flash_state(data: bytes, path: Path, flashes: Mapping[str, Flash]
                       ) -> tuple[int, _Saved]:
    """The generation and ``{flash: (content, wear)}`` of one saved copy.

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
        if len(content) != flash.size or len(counts) != len(flash.erase_counts):
            raise ValueError(f"{name}: {len(content)} bytes and {len(counts)} wear counts, "
                             f"the flash has {flash.size} and {len(flash.erase_counts)}")
        loaded[name] = (content, list(counts))
    return generation, loaded
