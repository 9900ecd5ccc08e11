"""The firmware consumer (RFC 9019 §3, §4.1): decide whether and how to apply an update.

``Consumer.install(envelope)`` is the device side of an update:

1. ``verify_envelope`` against the device's trust anchors (signatures, signer policy, severable
   members): nothing else happens before the manifest is authentic (manifest §6.2).
2. Anti-rollback: the sequence number must not be lower than the security counter of any
   component it addresses (RFC 9124 REQ.SEC.SEQUENCE; an equal number re-applies, §8.4.2),
   nor higher than that counter can hold (``counter_capacity``: it could never be confirmed).
3. The SUIT processor runs the Update Procedure (manifest §8.4.6) against the device: vendor,
   class and device conditions against the device's identity, payloads fetched (or taken from
   the envelope) and streamed straight into the inactive slot with bounded memory, never more
   than image-size bytes, digest checked before the slot is committed.
4. Members of the boot set the manifest did not touch are re-staged as they run now, and the set
   is marked pending in one step, once the bootloader has checked the staged set as the next
   boot will (``check_staged``: each image, and the set as one release): the bootloader tests it
   at the next boot, and reverts it unless the new images confirm.

A rejected or failed update leaves the running images, the counters and the pending state as
they were. The result carries the SUIT report.

Update management (draft-ietf-suit-update-management-14; docs/device.md "Update management"):
the conditions consult the device's facts (``device.facts``: battery, power, network, time zone,
a simulated clock, other devices, the consent policy), read from the device folder at every
install unless given. A component's version is the suit-set-version of the manifest its running
image was installed with (the verified manifest kept with the image), for the whole update. A
wait directive whose events do not hold yet ends the install ``waiting`` (nothing is staged; the
agent tries again later). Component metadata (§4.6) goes to ``metadata_sink`` (Linux-class: a
file beside the image in its slot); a shape without one refuses it. Custom commands and
parameters run only when registered in ``extensions``.

Trust anchors (docs/keys.md): a manifest for the component ``['suitkit', 'anchors']``, signed
by root keys, delivers the next trust-anchor document; once the processor succeeded it is
checked against the chain (``core.anchors.check_successor``) and written in one atomic step
with the digests of the slot manifests that verify now (``_apply_anchors``), so that a running
image whose signer it revokes keeps booting. Earlier rotations an envelope carries are
installed first, in order (``_catch_up``).

The stage-1 bootloader (docs/selfupdate.md): on an mcu device made with a stage 0, a manifest
for ``['suitkit', 'bootloader']`` (``config.BOOTLOADER_ID``, addressing nothing else; refused
on a device without a stage 0) writes the boot store's image ``bootloader``, which the store
maps to the stage-1 copy that does not run; ``check_staged`` and ``mark_pending`` then check
and commit that copy alone (the boot set is not re-staged). At a rotation the stage-1 copies'
manifests are recorded with the slots' (the store's ``updaters``).

The boot store is any object with the shape of ``suitkit.bootloader.api.SlotStore`` plus
``running`` and ``read_counters``; this module does not import the bootloader (the roles stay
apart; ``device.wiring`` connects them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from suitkit.core import cbor, codec, cose, crypto
from suitkit.core.anchors import (
    ANCHORS_COMPONENT,
    CHAIN_PREFIX,
    DOCUMENT_URI,
    MAX_DOCUMENT_BYTES,
    AnchorsDocument,
    check_successor,
    parse_document,
)
from suitkit.core.model import (
    Command,
    CommandSequence,
    ComponentIdentifier,
    Digest,
    Envelope,
    FrozenDict,
    Parameters,
    TryEach,
)
from suitkit.core.numbers import CoseAlg, ManifestKey, ReportReason
from suitkit.core.packing import DeltaInfo
from suitkit.core.processor import (
    NO_EXTENSIONS,
    ComponentIdentity,
    Device,
    Extensions,
    ProcessorOptions,
    ProcessResult,
    process,
    shared_parameters,
    stream_digest,
)
from suitkit.core.report import (
    Record,
    Reference,
    Report,
    ResultFailure,
    SystemPropertyClaims,
)
from suitkit.core.verify import (
    TrustAnchors,
    VerifiedManifest,
    addressed_components,
    verify_decoded,
    verify_envelope,
)
from suitkit.device.anchors import write_store
from suitkit.device.config import BOOTLOADER_ID, BOOTLOADER_IMAGE, ComponentSpec, DeviceConfig
from suitkit.device.facts import ConsentHook, DeviceFacts, ask_consent, evaluate_wait, load_facts
from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    PolicyError,
    ProcessingError,
    StorageError,
    SuitError,
)
from suitkit.limits import Limits

__all__ = [
    "BootStore",
    "Consumer",
    "DependencySink",
    "DownloadJournal",
    "InstallOutcome",
    "MetadataSink",
    "check_metadata",
    "running_version",
    "slot_record",
    "split_slot_record",
    "verify_stored",
]

CHUNK = 64 * 1024


# ---------------------------------------------------------------------------- the boot store


class ImageReaderLike(Protocol):
    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


class SlotWriterLike(Protocol):
    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    @property
    def offset(self) -> int: ...

    @property
    def durable(self) -> int: ...

    def read_back(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class VouchingSlotWriter(Protocol):
    """A slot writer that takes the digest its content was checked against, for the set check
    before marking pending (``check_staged``) to use instead of reading the image again."""

    def vouch(self, algorithm: int, digest: bytes) -> None: ...


class BootStore(Protocol):
    """What the consumer needs of a bootloader's slot store."""

    @property
    def components(self) -> tuple[str, ...]: ...

    def open_inactive(self, component: str, *, manifest: bytes, image_size: int,
                      resume_at: int = 0) -> SlotWriterLike: ...

    def check_staged(self) -> None: ...

    def mark_pending(self, *, permanent: bool = False) -> None: ...

    def running(self, component: str) -> tuple[bytes, ImageReaderLike]: ...

    def read_counters(self) -> dict[str, int]: ...

    def counter_capacity(self) -> dict[str, int]: ...

    def pending_update(self) -> bool: ...

    def staged(self, component: str) -> bytes | None: ...


@runtime_checkable
class PatchStore(Protocol):
    """A boot store that applies deltas in place (a single-slot MCU, docs/delta.md §9): an
    update stages the patch as fetched, not the image."""

    def open_patch(self, component: str, *, manifest: bytes, delta_info: bytes,
                   patch_size: int, image_size: int) -> PatchSlotWriter: ...


class PatchSlotWriter(SlotWriterLike, Protocol):
    def write_patch(self, data: bytes) -> None: ...


@runtime_checkable
class PatchWriterLike(Protocol):
    def write_patch(self, data: bytes) -> None: ...


class PayloadFetcher(Protocol):
    def fetch(self, uri: str, *, max_bytes: int, offset: int = 0,
              arguments: bytes | None = None) -> Iterator[bytes]: ...


def _bare(envelope: Envelope) -> bytes:
    """The envelope without its integrated payloads (what a store keeps; it still verifies)."""
    from dataclasses import replace  # noqa: PLC0415 - keeps the module's imports about SUIT

    return codec.encode_envelope(replace(envelope, integrated=FrozenDict()))


def slot_record(component: ComponentIdentifier, envelope: Envelope) -> bytes:
    """What is stored next to an image in its slot: ``[component-id, envelope]``.

    The envelope is kept without its integrated payloads (the image is in the slot already);
    its signature still verifies, so the bootloader re-checks it at every boot.
    """
    from dataclasses import replace  # noqa: PLC0415 - keeps the module's imports about SUIT

    bare = replace(envelope, integrated=FrozenDict())
    return cbor.encode([list(component), codec.encode_envelope(bare)])


def split_slot_record(data: bytes, *, limits: Limits) -> tuple[ComponentIdentifier, bytes]:
    """The component identifier and envelope bytes of a ``slot_record``.

    Raises:
        DecodeError: not a slot record.
    """
    item = cbor.decode(data, path="slot manifest", max_depth=4)
    if (not isinstance(item, list | tuple) or len(item) != 2
            or not isinstance(item[0], list | tuple)
            or not all(isinstance(p, bytes) for p in item[0])
            or not isinstance(item[1], bytes) or len(item[1]) > limits.max_envelope_bytes):
        raise DecodeError("slot manifest", "expected [component-id, envelope]")
    return tuple(item[0]), item[1]


def _transformed(envelope: Envelope) -> bool:
    """Whether any command sequence of the manifest sets encryption-info or a custom
    parameter (compression, delta: ``core.packing``): then the bytes fetched are not the
    bytes in the slot, and a resumed download cannot replay the slot's bytes as its own."""
    for c in _all_commands(envelope):
        params = [c.argument] if isinstance(c.argument, Parameters) else (
            [p for p in c.argument.values() if isinstance(p, Parameters)]
            if isinstance(c.argument, FrozenDict) else [])
        if any(p.encryption_info is not None or any(k < 0 for k in p.extra) for p in params):
            return True
    return False


def signs_parameter(envelope: Envelope, number: int, value: object) -> bool:
    """Whether a command sequence of the manifest sets custom parameter ``number`` to
    ``value`` (the in-place bootloader's check that a staged delta-info is a signed one)."""
    for c in _all_commands(envelope):
        params = [c.argument] if isinstance(c.argument, Parameters) else (
            [p for p in c.argument.values() if isinstance(p, Parameters)]
            if isinstance(c.argument, FrozenDict) else [])
        if any(p.extra.get(number) == value for p in params):
            return True
    return False


def _all_commands(envelope: Envelope) -> Iterator[Command]:
    m = envelope.manifest
    stack = [s for s in (m.common.shared_sequence, m.validate, m.load, m.invoke, m.install,
                         m.payload_fetch, m.dependency_resolution, m.candidate_verification)
             if isinstance(s, CommandSequence)]
    while stack:
        for command in stack.pop().commands:
            yield command
            arg = command.argument
            if isinstance(arg, CommandSequence):
                stack.append(arg)
            elif isinstance(arg, TryEach):
                stack.extend(arg.sequences)


class MetadataSink(Protocol):
    """Where a shape keeps suit-parameter-component-metadata (update-management §4.6) of the
    images it stages: ``stage(image, metadata)`` with the checked metadata of a newly staged
    image (``None``: it has none, drop what an earlier one left), ``carry(image)`` for an image
    restaged as it runs (its metadata goes with it). Raise ``StorageError`` on failure."""

    def stage(self, image: str, metadata: Mapping[str, object] | None) -> None: ...

    def carry(self, image: str) -> None: ...


class DependencySink(Protocol):
    """Where a shape keeps the dependency manifests of its installed set (trust-domains §6: a
    manifest store): ``installed()`` those of the running set, ``{dependency component:
    envelope}``; ``stage(manifests)`` those of the set being staged, switched with it (the
    whole set, so that a power cut leaves the old store or the new one). Raise
    ``StorageError`` on failure."""

    def installed(self) -> tuple[int, dict[ComponentIdentifier, bytes]]:
        """The sequence number of the root that installed the running set (0: none) and its
        dependency manifests."""
        ...

    def stage(self, sequence: int, manifests: Mapping[ComponentIdentifier, bytes], *,
              root: bytes = b"") -> None:
        """Stage the store of the set being staged by the root of digest ``root``."""
        ...

    def staged_root(self) -> bytes | None:
        """The digest of the root whose set is staged (``None``: none, or unreadable)."""
        ...


_PERMISSION_MAPS = {2: "user-permissions", 3: "group-permissions", 4: "role-permissions"}
_FILE_TYPES = {1: "regular", 2: "directory", 3: "symlink"}
_MAX_ACTOR = 256


def check_metadata(metadata: Mapping[int, object]) -> dict[str, object]:
    """suit-parameter-component-metadata checked and named (update-management §4.6), as JSON.

    A slot holds one regular file, so file-type must be regular; times need tag 1; actors are
    bounded text, bytes (hex) or integers; text has no control characters (§4.6).

    Raises:
        PolicyError: a member is malformed or cannot apply to a slot, naming it.
    """
    out: dict[str, object] = {}
    for key, value in metadata.items():
        where = f"component-metadata[{key}]"
        if key == 1:
            out["default-permissions"] = _permissions(value, where)
        elif key in _PERMISSION_MAPS:
            if not isinstance(value, Mapping) or not value or len(value) > 64:
                raise PolicyError(f"{where}: expected a map of 1 to 64 actor => permissions")
            out[_PERMISSION_MAPS[key]] = [[_actor(a, where), _permissions(p, where)]
                                          for a, p in value.items()]
        elif key == 5:
            if value not in _FILE_TYPES or isinstance(value, bool):
                raise PolicyError(f"{where}: file-type must be 1 regular, 2 directory or 3 "
                                  f"symlink, got {str(value)[:20]}")
            if value != 1:
                raise PolicyError(f"{where}: file-type {_FILE_TYPES[int(value)]} (a slot holds "
                                  "an image, a regular file)")
            out["file-type"] = "regular"
        elif key in (6, 7):
            tag, seconds = getattr(value, "tag", None), getattr(value, "value", None)
            if tag != 1 or isinstance(seconds, bool) or not isinstance(seconds, int) \
                    or not 0 <= seconds < 1 << 64:
                raise PolicyError(f"{where}: expected #6.1(uint) (the tag is required)")
            out["modification-time" if key == 6 else "creation-time"] = seconds
        elif key == 8:
            out["creator"] = _actor(value, where)
        else:
            raise PolicyError(f"{where}: unknown component metadata member {key}")
    return out


def _permissions(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 14:
        raise PolicyError(f"{where}: expected permission bits 0 to 13 (a uint below 16384)")
    return value


def _actor(value: object, where: str) -> object:
    tag = getattr(value, "tag", None)
    if tag is not None:  # UUID_Tagged = #6.37(bstr)
        inner = getattr(value, "value", None)
        if tag != 37 or not isinstance(inner, bytes) or len(inner) != 16:
            raise PolicyError(f"{where}: a tagged actor must be #6.37(16-byte UUID)")
        return {"uuid": inner.hex()}
    if isinstance(value, bytes) and 0 < len(value) <= _MAX_ACTOR:
        return {"bytes": value.hex()}
    if isinstance(value, str) and 0 < len(value) <= _MAX_ACTOR and value.isprintable():
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 64:
        return value
    raise PolicyError(f"{where}: an actor is a UUID, bytes, printable text (at most "
                      f"{_MAX_ACTOR}) or an integer")


def running_version(store: BootStore, name: str, anchors: TrustAnchors,
                    limits: Limits, dependency_anchors: TrustAnchors | None = None
                    ) -> tuple[int, ...] | None:
    """The version of the running image ``name``: the suit-set-version of the manifest it was
    installed with (verified again here), or ``None`` when unknown."""
    found = read_running(store, name)
    if found is None:
        return None
    try:
        _, envelope = split_slot_record(found[0], limits=limits)
        return verify_stored(envelope, anchors, dependency_anchors,
                             limits=limits).manifest.set_version
    except SuitError:
        return None


def verify_stored(envelope: bytes, anchors: TrustAnchors,
                  dependency_anchors: TrustAnchors | None, *,
                  limits: Limits) -> VerifiedManifest:
    """Verify the envelope kept with an image: the root's policy, or (an image a dependency
    manifest installed, trust-domains) the dependency anchors' policy.

    Raises:
        DecodeError, AuthenticationError, PolicyError: it verifies under neither (the root
            policy's reason).
    """
    try:
        return verify_envelope(envelope, anchors, limits=limits)
    except (AuthenticationError, PolicyError) as e:
        if dependency_anchors is None or dependency_anchors == anchors:
            raise
        refused = e
    try:
        return verify_envelope(envelope, dependency_anchors, limits=limits)
    except (AuthenticationError, PolicyError):
        raise refused from None


def read_running(store: BootStore, name: str) -> tuple[bytes, ImageReaderLike] | None:
    """The running image of ``name``, or ``None`` when its slot holds none."""
    try:
        return store.running(name)
    except SuitError:
        return None


def reader_chunks(reader: ImageReaderLike, chunk_size: int) -> Iterator[bytes]:
    """A reader's bytes in chunks."""
    for offset in range(0, reader.size, chunk_size):
        yield reader.read(offset, min(chunk_size, reader.size - offset))


# ---------------------------------------------------------------------------- outcome


@dataclass(frozen=True, slots=True)
class InstallOutcome:
    """What ``install`` did. ``installed``: staged and pending the next boot."""

    installed: bool
    reason: str
    sequence_number: int | None = None
    report: Report | None = None
    result: ProcessResult | None = None
    written: tuple[str, ...] = ()
    waiting: bool = False
    """Not installed *yet*: a wait directive's events do not hold (update-management §5.6);
    install the same envelope again later."""


# ---------------------------------------------------------------------------- processor glue


@dataclass
class _Staged:
    size: int
    sha256: bytes


class DownloadJournal:
    """How far the download of an image into its slot got, durably (``download.json``).

    Written atomically every ``every`` bytes made durable by the slot writer; read when the same
    envelope is installed again after a power cut or crash, so the download resumes there.
    """

    def __init__(self, path: Path, every: int = 64 * 1024,
                 crash: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.every = every
        self._crash = crash
        """Called before every durable write with a label (a power-cut harness raises from it)."""

    def load(self, envelope_digest: str) -> dict[str, int]:
        """``{image: durable bytes}`` left by an interrupted install of this envelope."""
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("envelope") != envelope_digest:
            return {}
        image, durable = doc.get("image"), doc.get("durable")
        if isinstance(image, str) and isinstance(durable, int) and durable > 0:
            return {image: durable}
        return {}

    def save(self, envelope_digest: str, image: str, durable: int) -> None:
        """Replace the journal (a temporary file renamed over it), without an fsync.

        The journal is a hint that no crash-consistency argument rests on, so it is not made
        durable (that was two fsyncs at every checkpoint): it names only bytes the slot writer
        fsynced before, so after a cut it is this record, an older one of the same download
        (fewer bytes), or gone or unreadable (``load`` finds nothing: the download starts
        over); and the kept bytes are hashed again with the rest against the signed digest.

        Raises:
            StorageError: the journal could not be written.
        """
        if self._crash is not None:
            self._crash(f"journal {self.path.name}")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_bytes(json.dumps({"envelope": envelope_digest, "image": image,
                                        "durable": durable}).encode())
            tmp.replace(self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"cannot write {self.path} ({e.strerror})") from e

    def clear(self) -> None:
        if not self.path.exists():
            return
        if self._crash is not None:
            self._crash(f"journal-clear {self.path.name}")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _Writer:
    """Streams into the inactive slot; ``commit`` finishes the slot.

    One pass over the payload: the processor hashes what it stores and hands the digest it
    checked over (``verified``), so this writer does not hash the bytes again; it passes the
    digest on to the slot (``vouch``) for the set check before marking pending. Only content
    stored without an image-digest (none to check) is hashed here, by reading it back.

    A resumed slot already holds ``skip`` bytes: the incoming stream still starts at byte 0
    (the processor hashes all of it), so those bytes are compared with the slot, not written.
    """

    def __init__(self, run: _Run, image: str, slot: SlotWriterLike,
                 on_commit: Callable[[_Staged], None]) -> None:
        self._run = run
        self._image = image
        self._slot = slot
        self.skip = slot.offset
        self._size = 0
        self._journaled = slot.offset
        self._on_commit = on_commit
        self._verified: Digest | None = None

    def write(self, data: bytes) -> None:
        start = self._size
        self._size += len(data)
        if start < self.skip:
            kept = data[: self.skip - start]
            if self._slot.read_back(start, len(kept)) != kept:
                self._run.journal_clear()
                raise StorageError(f"{self._image}: the partly downloaded image in the slot "
                                   f"differs from the payload at byte {start}; start again")
            data = data[len(kept):]
        if data:
            self._slot.write(data)
        durable = self._slot.durable
        if durable - self._journaled >= self._run.journal_every:
            self._run.journal_save(self._image, durable)
            self._journaled = durable

    @property
    def stages_patch(self) -> bool:
        return isinstance(self._slot, PatchWriterLike)

    def write_patch(self, data: bytes) -> None:
        """The next bytes of an in-place patch as fetched (``PatchStore``)."""
        if not isinstance(self._slot, PatchWriterLike):
            raise StorageError(f"{self._image}: this slot stages no patch")
        self._slot.write_patch(data)

    def replay(self, chunk_size: int) -> Iterator[bytes]:
        """The bytes kept in the slot from an interrupted download, for the fetcher to yield
        instead of downloading them again."""
        for offset in range(0, self.skip, chunk_size):
            yield self._slot.read_back(offset, min(chunk_size, self.skip - offset))

    def verified(self, digest: Digest) -> None:
        """The processor checked the content against ``digest`` (``DigestAwareWriter``)."""
        self._verified = digest

    def commit(self) -> None:
        verified = self._verified
        if verified is not None and verified.algorithm == CoseAlg.SHA256:
            sha256 = verified.value
        else:  # no image-digest (or another algorithm) was checked: hash what the slot holds
            hasher = crypto.new_hasher(CoseAlg.SHA256)
            for offset in range(0, self._size, CHUNK):
                hasher.update(self._slot.read_back(offset, min(CHUNK, self._size - offset)))
            sha256 = hasher.digest()
        if verified is not None and isinstance(self._slot, VouchingSlotWriter):
            self._slot.vouch(verified.algorithm, verified.value)
        self._slot.finish()
        self._run.journal_clear()
        self._on_commit(_Staged(self._size, sha256))

    def discard(self) -> None:
        self._slot.close()  # the slot is not pending; the next update rewrites or resumes it


class _SlotComponent:
    """A boot-set image as a SUIT component: reads the running image, writes the inactive slot."""

    def __init__(self, consumer: _Run, spec: ComponentSpec) -> None:
        self._run = consumer
        self._spec = spec
        self.staged: _Staged | None = None
        self._writer_manifest: Envelope | None = None
        self._patch: tuple[bytes, int] | None = None
        """The delta-info and patch size of an in-place patch the next writer stages."""

    def writing_for(self, verified: VerifiedManifest) -> None:
        """``ManifestAwareComponent``: the manifest about to write this image (the root or a
        dependency); its envelope is what the slot keeps for the bootloader's checks."""
        self._writer_manifest = verified.envelope

    @property
    def identity(self) -> ComponentIdentity:
        return self._run.identity

    def _running(self) -> ImageReaderLike | None:
        found = read_running(self._run.store, self._spec.image)
        return found[1] if found else None

    def size(self) -> int | None:
        if self.staged is not None:
            return self.staged.size
        reader = self._running()
        return reader.size if reader else None

    def digest(self, algorithm: int) -> bytes | None:
        if self.staged is not None:
            if algorithm != CoseAlg.SHA256:
                raise StorageError(f"{self._spec.image}: the staged image was hashed with "
                                   "SHA-256 only")
            return self.staged.sha256
        reader = self._running()
        return stream_digest(reader_chunks(reader, CHUNK), algorithm) if reader else None

    def read(self, chunk_size: int) -> Iterator[bytes]:
        if self.staged is not None:
            raise StorageError(f"{self._spec.image}: a staged image cannot be read back before "
                               "it is installed")
        reader = self._running()
        return reader_chunks(reader, chunk_size) if reader else iter(())

    def read_at(self, offset: int, length: int) -> bytes:
        """The running image's bytes at ``offset`` (a delta's precursor, read at random while
        the new image is written to the inactive slot; ``RandomAccessComponent``)."""
        if self.staged is not None:
            raise StorageError(f"{self._spec.image}: the precursor is no longer what runs")
        reader = self._running()
        if reader is None or offset < 0 or offset + length > reader.size:
            raise StorageError(f"{self._spec.image}: no precursor bytes {offset} to "
                               f"{offset + length}")
        return reader.read(offset, length)

    def version(self) -> tuple[int, ...] | None:
        """The running image's version, also once the new one is staged: what the update is
        installed over (a version condition in the shared sequence, which runs before every
        section, keeps meaning the same thing)."""
        if self._run.anchors is None:
            return None
        return running_version(self._run.store, self._spec.image, self._run.anchors,
                               self._run.limits, self._run.dependency_anchors)

    def expect_patch(self, value: bytes, info: DeltaInfo) -> bool:
        """``packing.InplaceComponent``: a store that patches in place stages the patch the
        fetch carries (``write_patch``); it takes in-place deltas only."""
        store = self._run.store
        if not isinstance(store, PatchStore):
            return False
        if info.inplace is None:
            raise PolicyError(f"{self._spec.image}: this device has one slot and patches it "
                              "in place: the delta must be made for in-place application "
                              "(delta-info member 4, docs/delta.md §9)")
        self._patch = (value, info.inplace.patch_size)
        return True

    def write_patch(self, data: bytes) -> None:
        writer = self._run.active
        if writer is None or not writer.stages_patch:
            raise StorageError(f"{self._spec.image}: no patch is being staged")
        writer.write_patch(data)

    def open_writer(self, max_size: int, *,
                    metadata: Mapping[int, object] | None) -> _Writer:
        run = self._run
        if metadata is not None:
            # update-management §4.6: applied at fetch, copy or write time.
            if run.metadata_sink is None:
                raise StorageError(f"{self._spec.image}: this device's shape "
                                   f"({run.config.shape}) has no file system to keep component "
                                   "metadata (update-management §4.6); leave it out")
            try:
                run.metadata[self._spec.image] = check_metadata(metadata)
            except PolicyError as e:
                raise StorageError(f"{self._spec.image}: {e}") from None
        else:
            run.metadata.pop(self._spec.image, None)
        patch, self._patch = self._patch, None
        slot: SlotWriterLike
        if patch is not None and isinstance(run.store, PatchStore):
            slot = run.store.open_patch(self._spec.image,
                                        manifest=run.record(self._spec, self._writer_manifest),
                                        delta_info=patch[0], patch_size=patch[1],
                                        image_size=max_size)
        else:
            slot = run.store.open_inactive(self._spec.image,
                                           manifest=run.record(self._spec,
                                                               self._writer_manifest),
                                           image_size=max_size,
                                           resume_at=run.resume.pop(self._spec.image, 0))

        def committed(staged: _Staged) -> None:
            self.staged = staged
            run.written.append(self._spec.image)

        run.active = _Writer(run, self._spec.image, slot, committed)
        return run.active

    def invoke(self, arguments: bytes | None) -> None:
        # RFC 9019 §4.1: the bootloader invokes the new image after the test boot.
        raise StorageError(f"{self._spec.image}: images are started by the bootloader at the "
                           "next boot, not during an update")

    def slot(self) -> int | None:
        return 0  # images execute from the primary slot after the swap


class _AnchorsWriter:
    """Takes the next trust-anchor document (bounded); parsed and checked at ``commit``,
    written to the device only once the whole manifest succeeded (``Consumer._apply_anchors``)."""

    def __init__(self, run: _Run, max_size: int) -> None:
        self._run = run
        self._max = max_size
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max:
            raise StorageError(f"trust-anchor document over {self._max} bytes")
        self._parts.append(data)

    def commit(self) -> None:
        raw = b"".join(self._parts)
        try:
            parse_document(raw)
        except SuitError as e:
            raise StorageError(f"trust-anchor document refused: {e}") from None
        self._run.anchors_document = raw

    def discard(self) -> None:
        self._parts.clear()


class _AnchorsComponent:
    """The device's trust anchors as a SUIT component (docs/keys.md): its content is the
    current anchors document; new content is the next document."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def identity(self) -> ComponentIdentity:
        return self._run.identity

    def _current(self) -> bytes | None:
        if self._run.anchors_document is not None:  # staged by this manifest (image-match)
            return self._run.anchors_document
        stored = self._run.config.stored_anchors()
        return stored.raw if stored is not None else None

    def size(self) -> int | None:
        current = self._current()
        return None if current is None else len(current)

    def digest(self, algorithm: int) -> bytes | None:
        current = self._current()
        return None if current is None else stream_digest(iter((current,)), algorithm)

    def read(self, chunk_size: int) -> Iterator[bytes]:
        current = self._current() or b""
        return (current[i:i + chunk_size] for i in range(0, len(current), chunk_size))

    def version(self) -> tuple[int, ...] | None:
        return (self._run.config.anchors_version(),)

    def open_writer(self, max_size: int, *,
                    metadata: Mapping[int, object] | None) -> _AnchorsWriter:
        if metadata is not None:
            raise StorageError("the trust anchors take no component metadata")
        if max_size > MAX_DOCUMENT_BYTES:
            raise StorageError(f"a trust-anchor document is at most {MAX_DOCUMENT_BYTES} bytes; "
                               f"the manifest gives image-size {max_size}")
        return _AnchorsWriter(self._run, max_size)

    def invoke(self, arguments: bytes | None) -> None:
        raise StorageError("the trust anchors cannot be invoked")

    def slot(self) -> int | None:
        return None


MAX_DEPENDENCIES = 16
"""Dependency manifests (distinct slots, and distinct manifests accepted) one update may
bring, nesting included: each costs a verification and up to ``max_envelope_bytes`` of RAM."""


class _EnvelopeWriter:
    def __init__(self, component: _DependencyComponent, max_size: int) -> None:
        self._component = component
        self._max = max_size
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self._data) + len(data) > self._max:
            raise StorageError(f"dependency {_cid_text(self._component.identifier)}: its "
                               f"envelope is over the {self._max} bytes allowed")
        self._data += data

    def commit(self) -> None:
        self._component.content = bytes(self._data)

    def discard(self) -> None:
        self._data.clear()


class _DependencyComponent:
    """A dependency slot (trust-domains §5.2.2): holds a dependency manifest's envelope in
    RAM for this install, never an image. Its envelope is bounded by ``max_envelope_bytes``;
    what the manifests it carries write goes to the images' slots, with that envelope."""

    def __init__(self, run: _Run, identifier: ComponentIdentifier) -> None:
        self._run = run
        self.identifier = identifier
        self.content: bytes | None = run.stored.get(identifier)

    @property
    def identity(self) -> ComponentIdentity:
        return self._run.identity

    def size(self) -> int | None:
        return None if self.content is None else len(self.content)

    def digest(self, algorithm: int) -> bytes | None:
        return None if self.content is None else crypto.digest(algorithm, self.content)

    def read(self, chunk_size: int) -> Iterator[bytes]:
        data = self.content or b""
        return iter([data[i:i + chunk_size] for i in range(0, len(data), chunk_size)])

    def open_writer(self, max_size: int, *,
                    metadata: Mapping[int, object] | None) -> _EnvelopeWriter:
        if metadata is not None:
            raise StorageError(f"dependency {_cid_text(self.identifier)}: a dependency slot "
                               "holds a manifest; it has no component metadata")
        return _EnvelopeWriter(self, min(max_size, self._run.limits.max_envelope_bytes))

    def invoke(self, arguments: bytes | None) -> None:
        raise StorageError(f"dependency {_cid_text(self.identifier)} is a manifest; it cannot "
                           "be invoked")

    def slot(self) -> int | None:
        return None


def _cid_text(cid: ComponentIdentifier) -> str:
    return "[" + ", ".join(f"h'{p.hex()}'" for p in cid) + "]"


class _Store:
    def __init__(self, run: _Run) -> None:
        self._run = run
        self._components: dict[ComponentIdentifier, _SlotComponent] = {}
        self._dependencies: dict[ComponentIdentifier, _DependencyComponent] = {}

    def dependency(self, identifier: ComponentIdentifier) -> _DependencyComponent | None:
        """``DependencyStore``: the slot a dependency manifest's envelope is kept in during
        the install. An image's identifier is not a dependency slot."""
        spec = self._run.config.component(identifier)
        if spec is not None:
            raise StorageError(f"{spec.image} is an image of this device, not a dependency "
                               "manifest slot")
        if identifier not in self._dependencies:
            if len(self._dependencies) >= MAX_DEPENDENCIES:
                raise StorageError(f"more than {MAX_DEPENDENCIES} dependency slots in one "
                                   "update")
            self._dependencies[identifier] = _DependencyComponent(self._run, identifier)
        return self._dependencies[identifier]

    def component(self, identifier: ComponentIdentifier
                  ) -> _SlotComponent | _AnchorsComponent | None:
        if identifier == ANCHORS_COMPONENT:
            return _AnchorsComponent(self._run)
        spec = self._run.config.component(identifier)
        if spec is None:
            return None
        if identifier not in self._components:
            self._components[identifier] = _SlotComponent(self._run, spec)
        return self._components[identifier]

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        raise StorageError("swap is the bootloader's job on this device")


@dataclass
class _Environment:
    clock: Callable[[], float] | None
    anchors: TrustAnchors
    keys: list[crypto.RecipientPrivate]
    facts: DeviceFacts = field(default_factory=DeviceFacts)
    consent: ConsentHook | None = None
    store: _Store | None = None
    records: list[Record | SystemPropertyClaims] = field(default_factory=list)
    waiting_for: tuple[str, ...] = ()
    """What the last unsatisfied wait directive waits for (one phrase per event)."""
    cannot_wait: tuple[str, ...] = ()
    """Why the last wait directive cannot be waited on here (one phrase per event)."""
    answers: dict[int, str] = field(default_factory=dict)
    """Consent answers of this install by priority: asked once (a person is not asked again
    for each component, and a manifest cannot start the consent program many times)."""
    dependency_trust: TrustAnchors | None = None
    """Trust anchors of dependency manifests (``None``: the root's)."""
    dependency_hook: Callable[[VerifiedManifest, VerifiedManifest, ComponentIdentifier],
                              None] | None = None
    """The device's policy for dependency manifests (``processor.DependencyPolicy``)."""

    def accept_dependency(self, dependency: VerifiedManifest, dependent: VerifiedManifest,
                          identifier: ComponentIdentifier) -> None:
        if self.dependency_hook is not None:
            self.dependency_hook(dependency, dependent, identifier)

    def now(self) -> int | None:
        if self.facts.time is not None:
            return self.facts.time  # the simulator's clock (device.facts)
        return int(self.clock()) if self.clock is not None else None

    def battery_level(self) -> int | None:
        return self.facts.battery_mwh

    def _ask(self, priority: int) -> str:
        if priority not in self.answers:
            self.answers[priority] = (self.consent(priority) if self.consent is not None
                                      else ask_consent(self.facts.consent, priority))
        return self.answers[priority]

    def authorize(self, priority: int) -> bool:
        # update-management §5.4, RFC 9019 §3: the consent hook decides; "later" is not yet.
        return self._ask(priority) == "yes"

    def version(self, component: ComponentIdentifier) -> tuple[int, ...] | None:
        found = self.store.component(component) if self.store is not None else None
        return found.version() if found is not None else None

    def wait(self, events: Mapping[int, object]) -> bool | None:
        verdict = evaluate_wait(events, self.facts, self.now(), self._ask)  # type: ignore[arg-type]
        if verdict.unsupported:
            self.waiting_for, self.cannot_wait = (), verdict.unsupported
            return None
        self.waiting_for = verdict.pending
        return verdict.satisfied

    def decryption_key(self, key_id: bytes | None,
                       algorithm: int) -> cose.RecipientKey | None:
        wants_kek = algorithm in (CoseAlg.A128KW, CoseAlg.A192KW, CoseAlg.A256KW)
        fitting = tuple(key for key in self.keys
                        if (key_id is None or key.key_id is None or key.key_id == key_id)
                        and isinstance(key, crypto.AesKwKey) == wants_kek)
        if len(fitting) > 1:  # e.g. a P-256 and an X25519 key without kids: try each
            return cose.KeyRing(fitting)
        return fitting[0] if fitting else None

    @property
    def dependency_anchors(self) -> TrustAnchors | None:
        return self.dependency_trust if self.dependency_trust is not None else self.anchors

    def report(self, item: Record | SystemPropertyClaims) -> None:
        self.records.append(item)


class _FetcherAdapter:
    """Fetches for the processor; after an interruption, replays what the slot already holds
    and downloads only the rest (``Range``), when the payload is not encrypted."""

    def __init__(self, fetcher: PayloadFetcher, run: _Run) -> None:
        self._fetcher = fetcher
        self._run = run

    def fetch(self, uri: str, *, max_bytes: int,
              arguments: bytes | None) -> Iterator[bytes]:
        # Lazy: the processor opens the component's writer before it asks for the first chunk.
        writer = self._run.active
        if writer is not None and writer.skip and self._run.replayable:
            yield from writer.replay(CHUNK)
            yield from self._fetcher.fetch(uri, max_bytes=max_bytes, offset=writer.skip,
                                           arguments=arguments)
            return
        yield from self._fetcher.fetch(uri, max_bytes=max_bytes, arguments=arguments)


@dataclass
class _Run:
    """The state of one install."""

    config: DeviceConfig
    store: BootStore
    envelope: Envelope
    identity: ComponentIdentity
    journal: DownloadJournal | None = None
    envelope_digest: str = ""
    replayable: bool = False
    """The slot's bytes equal the fetched bytes (no decryption), so a resumed download may
    replay them instead of downloading them again."""
    resume: dict[str, int] = field(default_factory=dict)
    active: _Writer | None = None
    written: list[str] = field(default_factory=list)
    anchors: TrustAnchors | None = None
    limits: Limits = field(default_factory=Limits)
    metadata_sink: MetadataSink | None = None
    metadata: dict[str, dict[str, object]] = field(default_factory=dict)
    """Checked component metadata of the images staged by this run."""
    anchors_document: bytes | None = None
    """The next trust-anchor document the manifest delivered (checked, not yet written)."""
    dependency_anchors: TrustAnchors | None = None
    dependencies: dict[bytes, VerifiedManifest] = field(default_factory=dict)
    """Dependency manifests accepted in this install, by manifest digest."""
    dependency_slots: dict[ComponentIdentifier, VerifiedManifest] = field(default_factory=dict)
    """The same, by the dependency component they were accepted for (the manifest store)."""
    stored: dict[ComponentIdentifier, bytes] = field(default_factory=dict)
    """The envelopes of the installed dependency manifests (uninstall reads them)."""
    _records: dict[tuple[str, bytes], bytes] = field(default_factory=dict)

    @property
    def journal_every(self) -> int:
        return self.journal.every if self.journal is not None else 1 << 62

    def journal_save(self, image: str, durable: int) -> None:
        if self.journal is not None:
            self.journal.save(self.envelope_digest, image, durable)

    def journal_clear(self) -> None:
        if self.journal is not None:
            self.journal.clear()

    def record(self, spec: ComponentSpec, envelope: Envelope | None = None) -> bytes:
        """The slot record of ``spec``'s image written by ``envelope`` (the root or the
        dependency manifest that gives the image's digest, which the bootloader checks)."""
        envelope = envelope if envelope is not None else self.envelope
        key = (spec.image, envelope.authentication.digest.value)
        if key not in self._records:
            self._records[key] = slot_record(spec.suit_id, envelope)
        return self._records[key]


# ---------------------------------------------------------------------------- the consumer


@dataclass
class Consumer:
    """The firmware consumer of one device.

    ``clock``: the device's trusted time for use-before (``None``: no clock, so a manifest
    with use-before fails). ``fetcher``: for payloads that are not integrated.
    """

    config: DeviceConfig
    store: BootStore
    fetcher: PayloadFetcher | None = None
    clock: Callable[[], float] | None = time.time
    limits: Limits = field(default_factory=Limits)
    options: ProcessorOptions = field(
        default_factory=lambda: ProcessorOptions(allow_unverified_staging=False))
    """Slots hold bootable images only: nothing is written without a digest to check."""
    journal_every: int = 64 * 1024
    """The download journal is saved each time this many more image bytes are durable."""
    crash: Callable[[str], None] | None = None
    """Called with a label before every file the consumer writes (the download journal): a
    power-cut harness raises ``PowerCut`` from it."""
    facts: DeviceFacts | None = None
    """The device's facts for update management; ``None``: read ``DIR/facts.json`` at each
    install (``device.facts``)."""
    consent: ConsentHook | None = None
    """Asked for update-authorized and the authorization wait event; ``None``: the consent
    policy of the facts."""
    extensions: Extensions = NO_EXTENSIONS
    """Custom commands and parameters this device implements (none: refused)."""
    metadata_sink: MetadataSink | None = None
    """Where component metadata is kept (``None``: the shape cannot, metadata is refused)."""
    catch_up: bool = True
    """Install the earlier rotations an anchors envelope carries (off for those rotations
    themselves: a chain is one level deep)."""
    dependency_sink: DependencySink | None = None
    """Where the installed dependency manifests are kept (``None``: the shape keeps none,
    so it cannot uninstall them)."""

    @property
    def identity(self) -> ComponentIdentity:
        return ComponentIdentity(vendor_ids=frozenset({self.config.vendor_id}),
                                 class_ids=frozenset({self.config.class_id}),
                                 device_ids=frozenset({self.config.device_id}))

    def install(self, data: bytes, *, nonce: bytes | None = None) -> InstallOutcome:
        """Verify, check, fetch and stage an update; mark it pending on success.

        Never raises a ``SuitError``: a rejection is an outcome with the reason.
        """
        try:
            # docs/keys.md: nothing is installed on the strength of a recorded manifest, a
            # dependency included.
            dependency_anchors = dataclasses.replace(self.config.dependency_anchors(),
                                                     recorded=frozenset())
            facts = self.facts if self.facts is not None else load_facts(self.config.directory)
            envelope = codec.decode_envelope(data, limits=self.limits)
        except SuitError as e:
            return InstallOutcome(False, f"rejected: {e}")
        caught_up = self._catch_up(envelope, nonce)
        if isinstance(caught_up, InstallOutcome):
            return caught_up
        try:
            # docs/keys.md: manifests recorded at a rotation keep booting; nothing is installed
            # on their strength (a revoked key's manifest is refused here, re-sent or not).
            full = self.config.trust_anchors()
            anchors = dataclasses.replace(full, recorded=frozenset())
            verified = verify_decoded(envelope, anchors, limits=self.limits)
            self._check_bootloader(verified)
            self._check_rollback(verified)
            if self._already_pending(envelope):
                # The same update again (the agent retrying after a crash or a kill that fell
                # after the commit): it is installed; refusing it reported a failure while
                # the update stayed pending for the next boot.
                return InstallOutcome(True, f"already installed (sequence number "
                                      f"{verified.manifest.sequence_number}); pending until "
                                      "the next boot", verified.manifest.sequence_number)
            self._check_pending()
        except SuitError as e:
            return InstallOutcome(False, f"rejected: {e}{self._rotation_hint(envelope)}")
        refused = self._check_capacity(verified, nonce)
        if refused is not None:
            return refused
        journal = DownloadJournal(self.config.directory / "download.json", self.journal_every,
                                  crash=self.crash)
        digest = hashlib.sha256(data).hexdigest()
        run = _Run(self.config, self.store, envelope, self.identity, journal=journal,
                   envelope_digest=digest, replayable=not _transformed(envelope),
                   # the running images' versions: a recorded one still has its version
                   resume=journal.load(digest), anchors=full, limits=self.limits,
                   metadata_sink=self.metadata_sink, dependency_anchors=dependency_anchors)
        store = _Store(run)
        env = _Environment(self.clock, anchors, self.config.decryption_keys(), facts,
                           self.consent, store, dependency_trust=dependency_anchors)
        device = Device(store=store, environment=env,
                        fetcher=_FetcherAdapter(self.fetcher, run) if self.fetcher else None)
        env.dependency_hook = lambda dependency, dependent, identifier: \
            self._accept_dependency(run, device, dependency, identifier)
        try:
            self._check_bootable(verified, device)
        except SuitError as e:
            return InstallOutcome(False, f"rejected: {e}", verified.manifest.sequence_number)
        try:
            result = process(verified, "update", device, limits=self.limits,
                             options=self.options, nonce=nonce, extensions=self.extensions)
        except BaseException:
            # A power cut or crash in the middle: keep the journal and what is in the slot.
            if run.active is not None:
                run.active.discard()
            raise
        sequence = verified.manifest.sequence_number
        if result.succeeded and run.anchors_document is not None:
            return self._apply_anchors(run.anchors_document, sequence, result, caught_up)
        if not result.succeeded:
            journal.clear()
            if result.waiting:
                awaited = "; ".join(env.waiting_for) or "the wait events"
                return InstallOutcome(False, f"waiting for {awaited} ({result.reason})",
                                      sequence, result.report, result, waiting=True)
            why = f" ({'; '.join(env.cannot_wait)})" if env.cannot_wait else ""
            return InstallOutcome(False, f"failed: {result.reason}{why}", sequence,
                                  result.report, result)
        if not run.written:
            # Checked before anything is marked: a failed install leaves no request behind.
            return InstallOutcome(False, "failed: the manifest installed no image",
                                  sequence, result.report, result)
        if run.written == [BOOTLOADER_IMAGE]:
            # docs/selfupdate.md: the stage-1 copy that does not run holds it, checked as
            # stage 0 will check it; marking it pending programs its header (the commit). The
            # boot set is left alone (nothing is re-staged).
            try:
                self.store.check_staged()
                self.store.mark_pending()
            except SuitError as e:
                return InstallOutcome(False, f"failed: {e}", sequence, result.report, result)
            return InstallOutcome(True, f"installed the stage-1 bootloader (sequence number "
                                  f"{sequence}); stage 0 tries it at the next boot", sequence,
                                  result.report, result, tuple(run.written))
        try:
            self._restage_untouched(run)
            self._stage_metadata(run)
            if self.dependency_sink is not None:
                # The root describes the whole set: its dependency manifests replace the
                # store's, switched with the images.
                self.dependency_sink.stage(sequence, {
                    cid: _bare(dep.envelope) for cid, dep in run.dependency_slots.items()},
                    root=envelope.authentication.digest.value)
            self.store.check_staged()  # what the bootloader would refuse is not marked pending
            self.store.mark_pending()
        except SuitError as e:
            return InstallOutcome(False, f"failed: {e}", sequence, result.report, result)
        return InstallOutcome(True, f"installed {', '.join(run.written)} (sequence number "
                              f"{sequence}); pending until the next boot", sequence,
                              result.report, result, tuple(run.written))

    def _catch_up(self, envelope: Envelope,
                  nonce: bytes | None) -> tuple[str, ...] | InstallOutcome:
        """Install the earlier rotations an anchors envelope carries (``CHAIN_PREFIX`` + version
        as integrated payloads, each a signed rotation envelope) that are newer than the
        device's anchors, in order: a device that missed rotations catches up N -> N+1 -> N+2,
        each step verified under the anchors of the version it replaces. Returns what was
        installed, or the failed step's outcome."""
        links = sorted((int(uri[len(CHAIN_PREFIX):]), body)
                       for uri, body in envelope.integrated.items()
                       if uri.startswith(CHAIN_PREFIX) and uri[len(CHAIN_PREFIX):].isdigit()
                       and len(uri) <= len(CHAIN_PREFIX) + 20)
        if not links or not self.catch_up:
            return ()
        try:
            current = self.config.anchors_version()
        except SuitError as e:
            return InstallOutcome(False, f"rejected: {e}")
        done: list[str] = []
        for version, body in links:
            if version <= current:
                continue
            inner = dataclasses.replace(self, fetcher=None, catch_up=False)
            outcome = inner.install(body, nonce=nonce)
            if not outcome.installed:
                return dataclasses.replace(outcome, reason=f"catching up: trust anchors version "
                                           f"{version}: {outcome.reason}")
            done.append(f"version {version}")
            current = version
        return tuple(done)

    def _rotation_hint(self, envelope: Envelope) -> str:
        """For a refused rotation out of order, what the device needs first (read from the
        unverified document: a hint in the message, never a decision)."""
        if envelope.manifest.common.components != (ANCHORS_COMPONENT,):
            return ""
        raw = envelope.integrated.get(DOCUMENT_URI)
        try:
            if raw is None:
                return ""
            claimed = parse_document(raw)
            current = self.config.anchors_version()
        except SuitError:
            return ""
        if claimed.previous == current:
            return ""
        if claimed.version <= current:
            return (f" (a rotation to trust anchors version {claimed.version}, not newer than "
                    f"the device's version {current}: an old rotation)")
        return (f" (a rotation to trust anchors version {claimed.version}, which replaces "
                f"version {claimed.previous}; the device has version {current}: it needs the "
                f"rotations {current + 1} to {claimed.previous} first, or a rotation that "
                "carries them: suitkit anchors rotate --chain)")

    def _apply_anchors(self, raw: bytes, sequence: int, result: ProcessResult,
                       caught_up: tuple[str, ...]) -> InstallOutcome:
        """Write the next trust anchors (docs/keys.md): in order after the device's version,
        keeping every revocation, recording the manifests of the images in the slots that
        verify now (a revoked signer's running image keeps booting). One atomic write."""
        try:
            new = parse_document(raw)
            stored = self.config.stored_anchors()
            current = stored.document if stored is not None else AnchorsDocument(0, 0, ())
            check_successor(current, new)
            old = self.config.trust_anchors()
            recorded = set()
            # the stage-1 bootloader's copies too: stage 0 verifies them with these anchors
            updaters = getattr(self.store, "updaters", ())
            for name in (*self.store.components, *updaters):
                for record in (self._slot_manifest(name, running=True),
                               self._slot_manifest(name, running=False)):
                    if record is None:
                        continue
                    try:
                        _, slot_envelope = split_slot_record(record, limits=self.limits)
                        verified = verify_envelope(slot_envelope, old, limits=self.limits)
                    except SuitError:
                        continue  # the bootloader refuses it today: nothing to keep
                    recorded.add(verified.digest.value)
            write_store(self.config.directory, raw, recorded, crash=self.crash,
                        medium=self.config.anchor_medium)
        except SuitError as e:
            return InstallOutcome(False, f"failed: trust anchors not updated: {e}", sequence,
                                  result.report, result)
        earlier = f" (after {', '.join(caught_up)})" if caught_up else ""
        return InstallOutcome(True, f"trust anchors updated to version {new.version}{earlier}; "
                              "in force now", sequence, result.report, result, ("anchors",))

    def _slot_manifest(self, name: str, *, running: bool) -> bytes | None:
        if running:
            found = read_running(self.store, name)
            return found[0] if found is not None else None
        try:
            return self.store.staged(name)
        except SuitError:
            return None

    def uninstall(self, data: bytes, *, nonce: bytes | None = None) -> InstallOutcome:
        """Run a root manifest's suit-uninstall (trust-domains §6) and remove the dependency
        manifests it unlinks from the device's manifest store, in one staged set.

        The envelope verifies as a root (the device's policy) and is not older than the
        images it names. Its uninstall section runs with the stored dependency manifests in
        their slots (process-dependency there runs a dependency's own suit-uninstall); each
        dependency it unlinks (suit-directive-unlink, trust-domains §5.6.5) has its own
        suit-uninstall run in turn ("at zero, the manifest's suit-uninstall runs": one root per
        device, so one reference) and leaves the store. The boot set's images cannot be
        removed (the bootloader boots the whole set): unlinking one fails the uninstall. The
        store without them is staged with the running images and pending until the next
        boot, like an update. Never raises a ``SuitError``.
        """
        if self.dependency_sink is None:
            return InstallOutcome(False, f"rejected: this device's shape ({self.config.shape}) "
                                  "keeps no dependency manifests, so there is nothing to "
                                  "uninstall")
        try:
            anchors = self.config.trust_anchors()
            dependency_anchors = self.config.dependency_anchors()
            facts = self.facts if self.facts is not None else load_facts(self.config.directory)
            envelope = codec.decode_envelope(data, limits=self.limits)
            verified = verify_decoded(envelope, anchors, limits=self.limits)
            if verified.manifest.uninstall is None:
                raise PolicyError("the manifest has no suit-uninstall section")
            self._check_rollback(verified)
            self._check_pending()
            installed_by, stored = self.dependency_sink.installed()
            sequence = verified.manifest.sequence_number
            if sequence < installed_by:
                # RFC 9124 THREAT.UPD.REPLAY: an old uninstall cannot undo a newer install.
                raise PolicyError(f"rollback: sequence number {sequence} is lower than the "
                                  f"installed root's {installed_by}")
        except SuitError as e:
            return InstallOutcome(False, f"rejected: {e}")
        run = _Run(self.config, self.store, envelope, self.identity, anchors=anchors,
                   limits=self.limits, dependency_anchors=dependency_anchors, stored=stored)
        store = _Store(run)
        env = _Environment(self.clock, anchors, self.config.decryption_keys(), facts,
                           self.consent, store, dependency_trust=dependency_anchors)
        device = Device(store=store, environment=env)
        env.dependency_hook = lambda dependency, dependent, identifier: \
            self._accept_dependency(run, device, dependency, identifier)
        removed: list[ComponentIdentifier] = []
        results = [process(verified, "uninstall", device, limits=self.limits,
                           options=self.options, nonce=nonce, extensions=self.extensions)]
        report = results[0].report
        while results:  # each stored manifest is removed once: bounded by the store
            result = results.pop()
            if not result.succeeded:
                return InstallOutcome(False, f"failed: {result.reason}", sequence,
                                      report, result)
            for cid in result.unlinked:
                spec = self.config.component(cid)
                if spec is not None:
                    return InstallOutcome(
                        False, f"failed: unlink of {spec.image}: an image of the boot set "
                        "cannot be removed (the bootloader boots the whole set); install its "
                        "replacement instead", sequence, report, result)
                if cid not in stored or cid in removed:
                    continue
                removed.append(cid)
                try:
                    dependency = verify_stored(stored[cid], anchors, dependency_anchors,
                                               limits=self.limits)
                except SuitError as e:
                    return InstallOutcome(False, f"failed: the stored dependency "
                                          f"{_cid_text(cid)}: {e}", sequence, report)
                # trust-domains §6: at zero references, the manifest's suit-uninstall runs.
                results.append(process(dependency, "uninstall", device, limits=self.limits,
                                       options=self.options, nonce=nonce,
                                       extensions=self.extensions))
        if not removed:
            return InstallOutcome(False, "failed: the uninstall removed nothing (it unlinks "
                                  "no installed dependency manifest)", sequence, report)
        try:
            self._restage_untouched(run)
            self._stage_metadata(run)
            self.dependency_sink.stage(sequence, {cid: envelope for cid, envelope
                                                  in stored.items() if cid not in removed},
                                       root=envelope.authentication.digest.value)
            self.store.check_staged()
            self.store.mark_pending()
        except SuitError as e:
            return InstallOutcome(False, f"failed: {e}", sequence, report)
        names = ", ".join(_cid_text(cid) for cid in removed)
        return InstallOutcome(True, f"uninstalled {names} (sequence number {sequence}); "
                              "pending until the next boot", sequence, report)

    def _accept_dependency(self, run: _Run, device: Device, dependency: VerifiedManifest,
                           identifier: ComponentIdentifier) -> None:
        """The device's policy for a dependency manifest that verified against the
        dependency anchors, in the scope of its signer (trust-domains §5.1, §5.6.4), before
        any of it runs: bounded in number, no rollback of the images it addresses, a sequence
        number the counters can hold, and a digest and size for each image it names (the
        bootloader checks the image against this manifest at every boot).

        Raises:
            PolicyError: refused, naming the dependency and why.
        """
        run.dependencies[dependency.digest.value] = dependency
        run.dependency_slots[identifier] = dependency
        where = f"dependency {_cid_text(identifier)}"
        if len(run.dependencies) > MAX_DEPENDENCIES:
            raise PolicyError(f"{where}: more than {MAX_DEPENDENCIES} dependency manifests in "
                              "one update")
        if _transformed(dependency.envelope):
            run.replayable = False  # its payloads are decrypted or unpacked: no replay
        try:
            self._check_rollback(dependency)
            problem = self._capacity_problem(dependency)
            if problem is not None:
                raise PolicyError(problem)
            self._check_bootable(dependency, device)
        except PolicyError as e:
            raise PolicyError(f"{where}: {e}") from None

    def _check_bootable(self, verified: VerifiedManifest, device: Device) -> None:
        """The bootloader checks each image at every boot against the digest and size the
        shared sequence gives it (``processor.shared_parameters``); refuse a manifest that does
        not give them, since its images could never boot (manifest §7.2 secure boot template).
        """
        try:
            params = shared_parameters(verified, device, limits=self.limits,
                                       extensions=self.extensions)
        except ProcessingError:
            return  # a condition fails: the processor reports it, with the SUIT report
        for cid in verified.manifest.common.components:
            spec = self.config.component(cid)
            if spec is None:
                continue  # the processor refuses unknown components with a report
            found = params.get(cid)
            if found is None or found.image_digest is None or found.image_size is None:
                raise PolicyError(f"the shared sequence sets no image-digest and image-size for "
                                  f"{spec.image}; the bootloader could not check it at boot")

    def _check_bootloader(self, verified: VerifiedManifest) -> None:
        """A manifest for the stage-1 bootloader (docs/selfupdate.md) needs a device with a
        stage 0, and addresses nothing else (stage 0 switches it alone, the bootloader the
        boot set).

        Raises:
            PolicyError: refused, naming why.
        """
        components = addressed_components(verified.manifest)
        if BOOTLOADER_ID not in components:
            return
        if not self.config.stage1:
            raise PolicyError(f"this device ({self.config.shape} shape) has no stage 0, so its "
                              f"bootloader {_cid_text(BOOTLOADER_ID)} cannot be updated "
                              "(an mcu device made with device init --stage1 can; "
                              "docs/selfupdate.md)")
        if tuple(components) != (BOOTLOADER_ID,):
            raise PolicyError(f"a manifest that updates the bootloader {_cid_text(BOOTLOADER_ID)} "
                              "must address nothing else (stage 0 switches it alone); it "
                              f"addresses {', '.join(_cid_text(c) for c in components)}")

    def _already_pending(self, envelope: Envelope) -> bool:
        """Whether the pending update is this envelope: every image of the boot set it names
        is staged with this envelope's slot record."""
        if not self.store.pending_update():
            return False
        if envelope.manifest.common.dependencies:
            # Its images are staged with its dependencies' envelopes: the staged manifest
            # store names the root that staged them (shapes without one cannot tell).
            return self.dependency_sink is not None and \
                self.dependency_sink.staged_root() == envelope.authentication.digest.value
        named = [spec for cid in envelope.manifest.common.components
                 if (spec := self.config.component(cid)) is not None]
        return bool(named) and all(
            self.store.staged(spec.image) == slot_record(spec.suit_id, envelope)
            for spec in named)

    def _check_pending(self) -> None:
        # One staging slot per image: writing a new update there would destroy the pending one
        # before the new one is known to be good.
        if self.store.pending_update():
            raise PolicyError("an update is already pending: boot the device to install it "
                              "before staging another")

    def _check_rollback(self, verified: VerifiedManifest) -> None:
        # RFC 9124 REQ.SEC.SEQUENCE / manifest §8.4.2: refuse a lower sequence number.
        counters = self.store.read_counters()
        sequence = verified.manifest.sequence_number
        for cid in addressed_components(verified.manifest):
            spec = self.config.component(cid)
            if spec is None:
                continue  # the processor refuses unknown components with a report
            installed = counters.get(spec.image, 0)
            if sequence < installed:
                raise PolicyError(f"rollback: sequence number {sequence} is lower than the "
                                  f"installed {installed} of {spec.image}")

    def _check_capacity(self, verified: VerifiedManifest,
                        nonce: bytes | None) -> InstallOutcome | None:
        """A sequence number beyond what a security counter can hold could never be confirmed
        (the bootloader refuses it at boot): refuse it before staging, with a SUIT report whose
        record points at the sequence number (manifest member 2) and the component."""
        capacity = self.store.counter_capacity()
        sequence = verified.manifest.sequence_number
        for index, cid in enumerate(addressed_components(verified.manifest)):
            spec = self.config.component(cid)
            most = capacity.get(spec.image) if spec is not None else None
            if spec is None or most is None or sequence <= most:
                continue
            problem = self._capacity_problem(verified)
            record = Record((), int(ManifestKey.SEQUENCE_NUMBER), 0, index)
            report = Report(reference=Reference(verified.manifest.reference_uri or "",
                                                verified.digest),
                            nonce=nonce, result=ResultFailure(
                                int(ReportReason.OPERATION_FAILED), record,
                                int(ReportReason.OPERATION_FAILED)))
            return InstallOutcome(False, f"rejected: {problem}", sequence, report)
        return None

    def _capacity_problem(self, verified: VerifiedManifest) -> str | None:
        capacity = self.store.counter_capacity()
        sequence = verified.manifest.sequence_number
        for cid in addressed_components(verified.manifest):
            spec = self.config.component(cid)
            most = capacity.get(spec.image) if spec is not None else None
            if spec is not None and most is not None and sequence > most:
                return (f"sequence number {sequence} exceeds what the security counter of "
                        f"{spec.image} can hold ({most}); the bootloader could never "
                        "confirm it")
        return None

    def _stage_metadata(self, run: _Run) -> None:
        """Component metadata goes with the images it describes (update-management §4.6)."""
        if self.metadata_sink is None:
            return
        for name in self.store.components:
            if name in run.written:
                self.metadata_sink.stage(name, run.metadata.get(name))
            else:
                self.metadata_sink.carry(name)

    def _restage_untouched(self, run: _Run) -> None:
        """Boot sets move together: stage what the manifest left alone as it runs now."""
        for name in self.store.components:
            if name in run.written:
                continue
            found = read_running(self.store, name)
            if found is None:
                raise StorageError(f"the update leaves {name} without an image; it must "
                                   "include it")
            manifest, reader = found
            writer = self.store.open_inactive(name, manifest=manifest, image_size=reader.size)
            for chunk in reader_chunks(reader, CHUNK):
                writer.write(chunk)
            writer.finish()
