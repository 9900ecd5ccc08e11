"""The SUIT command interpreter: runs a verified manifest against abstract device components.

Implements the manifest processor of draft-ietf-suit-manifest-34 §6 (abstract machine §6.4,
component index §6.5, strict order §6.7) and §8.4.9-§8.4.10 (every core condition and directive),
with the extensions that change processing: trust domains (dependencies, set-parameters,
process-dependency, dependency-integrity, is-dependency, unlink, the staging and installation
procedures; draft-ietf-suit-trust-domains-12 §5-§7), update management (use-before, image-not-match,
minimum-battery, update-authorized, version, wait, override-multiple, copy-params;
draft-ietf-suit-update-management-14 §4-§5) and payload encryption (write / copy / fetch decrypt
with encryption-info; draft-ietf-suit-firmware-encryption). Failures become SUIT_Report records
(draft-ietf-suit-report-18, ``core.report``). suit-spec.md §6-§13 digests all of these.

The processor is pure: it touches the device only through the small protocols below
(``ComponentStore``/``Component``/``ComponentWriter``, ``Fetcher``, ``Environment``), so the
clock, the battery, keys and storage are all the caller's. Everything it reads from the manifest
or the network is bounded: the number of components (``Limits.max_components``), the payload size
(``image-size``, else ``Limits.max_payload_bytes``; a payload longer than image-size is refused,
never truncated), dependency envelopes (``Limits.max_envelope_bytes``), dependency nesting and the
total number of command executions (``ProcessorOptions``). Payloads stream in chunks through the
writer, so memory stays bounded whatever the image size; what is written is hashed on the way and
committed only when image-size and image-digest match (RFC 9124 THREAT.IMG.EXTRA,
THREAT.NET.REDIRECT).

Before any side effect the processor checks the whole manifest (manifest §6.1/§6.2): every command
and parameter of every available sequence is known, set-component-index and source-component name
existing components, soft-failure is set only inside try-each / run-sequence, the shared sequence
only sets parameters and tests conditions, every component exists on the device
(THREAT.IMG.LOCATION), each sequence begins with set-component-index when there is more than one
component (§6.2; ``ProcessorOptions.require_initial_set_component_index``), encryption-info decodes
and digest algorithms are supported. Dependencies are checked the same way when they are processed.

Decisions on ambiguities (see also docs of ``ProcessorOptions``):

- Parameters are stored per component identifier and cleared before each section of the root
  manifest (§6.2 "no leakage"); a dependency shares the store with its dependent, so "parameter
  changes made by the dependency persist in the dependent" (trust-domains §5.4) and dependents can
  pre-set values the dependency's set-parameters will not override (THREAT.MFST.OVERRIDE). Keying
  by identifier is what the encryption dependency example needs (suit-spec.md §16 item 10).
- Dependency indices beyond suit-components are extra component slots identified by their
  suit-dependency-prefix (suit-spec.md §16 item 7, libcsuit's reading); indices inside
  suit-components are the draft's reading. The prefix is not prepended to the dependency's
  component identifiers (the trust-domains and encryption examples need them unprefixed).
- process-dependency requires a successful dependency-integrity in the same procedure
  (trust-domains §5.6.2) unless ``require_dependency_integrity=False``; then a successful
  image-match on the dependency also counts (trust-domains example 2, suit-spec.md §16 item 9).
  Either way the dependency envelope is verified against ``Environment.dependency_anchors`` and its
  manifest digest compared with image-digest (or the digest checked earlier) before it runs.
- A try-each whose sequences all fail is a condition failure (it can be caught by an enclosing
  try-each), not a directive failure. A failure inside a dependency aborts the dependent.
- Index changes made inside try-each / run-sequence do not leak out of them (each invocation runs
  with the integer index of one component, §6.5).
- image-digest on a dependency component is the dependency's manifest digest (trust-domains
  §5.2.2): fetch into a dependency does not check it; image-match / dependency-integrity do.
- For fetch with decryption, image-size and image-digest describe the plaintext written; the
  fetch may read image-size + the AEAD tag bytes. To check a ciphertext digest before decrypting
  (RFC 9459 §8), fetch into a staging component, image-match it, then copy with encryption-info
  (the encryption draft's fetch + copy example).
- A dependency envelope is read from its component; while the component is empty, from the
  integrated dependency named by its ``#`` uri (no fetch needed to process it).
- A section severed from the envelope cannot run: a procedure that needs it fails before any side
  effect.
- Record locations: section-offset is the byte offset of the failing command inside the encoded
  section (nested try-each / run-sequence commands included, since their bytes are inside it); a
  failure in the shared sequence is reported with manifest-section 3 (suit-common) and the offset
  inside the shared sequence; setup failures (e.g. an unsupported component) with section 3,
  offset 0. The report's manifest-id walks dependency component indices.

Custom commands and parameters (negative numbers, manifest §8.4.11, §8.4.8.16) are refused as
unsupported (manifest §6.1) unless the caller registers them in an ``Extensions`` registry passed
to ``process`` / ``shared_parameters`` (never a global): each registered command says whether it
is a condition (its failure honours soft-failure; only conditions may sit in the shared
sequence) and checks its argument before any side effect; each registered parameter checks its
value. A wait directive whose events do not hold yet ends the procedure with
``ProcessResult.waiting`` set (update-management §5.6 allows "aborting the update entirely, then
restarting"), so the caller can retry instead of failing the update.

Trust domains on a device: a store that keeps dependency envelopes apart from its images
implements ``DependencyStore`` (dependency indices are asked of ``dependency``), a component
that keeps the manifest describing its image implements ``ManifestAwareComponent`` (told which
manifest, root or dependency, writes it), and an environment with a device policy for
dependencies implements ``DependencyPolicy`` (anti-rollback, counts). The ``"uninstall"``
procedure runs suit-uninstall (trust-domains §6; process-dependency there runs the
dependency's own suit-uninstall); unlink is recorded in ``ProcessResult.unlinked``, and the
reference counts and the removal are the device's (``suitkit.device``).

Deliberately not done: parallel execution (strict-order
False is accepted and processed in order; its copy/swap and run-sequence rules are enforced),
the fetch/copy skip optimisation, checking that each dependency section ran by the end of the
dependent's section (the trust-domains examples do not), anti-rollback (device state, the
caller's job), prefix-routed secondary processors, decompression and relative-URI resolution
(the fetcher's job).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable
from uuid import UUID

from suitkit.core import cbor, codec, cose, crypto
from suitkit.core.model import (
    Command,
    CommandSequence,
    ComponentIdentifier,
    DependencyMetadata,
    Digest,
    FrozenDict,
    Parameters,
    Pen,
    TryEach,
    VendorIdentifier,
    VersionMatch,
)
from suitkit.core.numbers import (
    CONDITIONS,
    ManifestKey,
    ReportingPolicy,
    ReportReason,
    WaitEvent,
    name_of,
)
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import Parameter as P
from suitkit.core.report import Record, Reference, Report, ResultFailure, SystemPropertyClaims
from suitkit.core.verify import TrustAnchors, VerifiedManifest, verify_envelope
from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    PolicyError,
    ProcessingError,
    SuitError,
)
from suitkit.limits import Limits

__all__ = [
    "PROCEDURES",
    "Component",
    "ComponentIdentity",
    "ComponentStore",
    "ComponentWriter",
    "CustomCall",
    "CustomCommand",
    "CustomParameter",
    "DependencyPolicy",
    "DependencyStore",
    "Device",
    "Environment",
    "Extensions",
    "Fetcher",
    "InstalledEnvironment",
    "Invocation",
    "ManifestAwareComponent",
    "Procedure",
    "ProcessResult",
    "ProcessorOptions",
    "RandomAccessComponent",
    "UnpackCall",
    "Unpacker",
    "process",
    "shared_parameters",
    "stream_digest",
    "version_matches",
]

_T = TypeVar("_T")

Procedure = Literal["staging", "installation", "update", "invoke", "uninstall"]

PROCEDURES: Mapping[str, tuple[int, ...]] = {
    # trust-domains §7: Staging = dependency-resolution, payload-fetch
    "staging": (ManifestKey.DEPENDENCY_RESOLUTION, ManifestKey.PAYLOAD_FETCH),
    # trust-domains §7: Installation = candidate-verification, install
    "installation": (ManifestKey.CANDIDATE_VERIFICATION, ManifestKey.INSTALL),
    # manifest §8.4.6 Update Procedure, split as above, followed by validate
    "update": (ManifestKey.DEPENDENCY_RESOLUTION, ManifestKey.PAYLOAD_FETCH,
               ManifestKey.CANDIDATE_VERIFICATION, ManifestKey.INSTALL, ManifestKey.VALIDATE),
    # manifest §8.4.6 Invocation Procedure
    "invoke": (ManifestKey.VALIDATE, ManifestKey.LOAD, ManifestKey.INVOKE),
    # trust-domains §6: suit-uninstall runs when the manifest is removed
    "uninstall": (ManifestKey.UNINSTALL,),
}
"""The manifest sections each procedure runs, in order (each preceded by the shared sequence)."""


# ============================================================================ device protocols


@dataclass(frozen=True, slots=True)
class ComponentIdentity:
    """Who a component is, for the vendor / class / device identifier conditions (§8.4.9.1).

    Sets, because a device (or one of its modules) may match several identifiers (suit-spec.md
    §7.1). The manifest's parameters are compared against these; identifiers are compatibility
    checks, never identity assertions.
    """

    vendor_ids: frozenset[VendorIdentifier] = frozenset()
    class_ids: frozenset[UUID] = frozenset()
    device_ids: frozenset[UUID] = frozenset()


class ComponentWriter(Protocol):
    """Stages new content for one component; nothing is visible until ``commit``.

    The processor writes at most the ``max_size`` it opened the writer with, then calls exactly
    one of ``commit`` (content verified) or ``discard`` (anything failed). Raise ``StorageError``
    on failure.
    """

    def write(self, data: bytes) -> None:
        """Append ``data`` to the staged content."""
        ...

    def commit(self) -> None:
        """Make the staged content the component's content (atomically, if the store can)."""
        ...

    def discard(self) -> None:
        """Drop the staged content; the component keeps its previous content."""
        ...


@runtime_checkable
class DigestAwareWriter(Protocol):
    """A :class:`ComponentWriter` that wants the digest the processor checked its content
    against, so that it need not hash the same bytes again (one pass over a payload).

    ``verified`` is called just before ``commit``, only when the content matched the
    image-digest parameter (with that parameter's algorithm and value).
    """

    def verified(self, digest: Digest) -> None:
        ...


@runtime_checkable
class Component(Protocol):
    """One storage location the manifest may address: a slot, a file, RAM, a manifest store.

    All methods raise ``StorageError`` (or another ``SuitError``) when the device cannot comply.
    """

    @property
    def identity(self) -> ComponentIdentity:
        """Vendor, class and device identifiers this component matches."""
        ...

    def size(self) -> int | None:
        """Size of the current content in bytes; ``None`` if the component holds nothing."""
        ...

    def digest(self, algorithm: int) -> bytes | None:
        """Digest of the current content with COSE algorithm ``algorithm``; ``None`` if empty.

        Compute it by streaming (``stream_digest(self.read(n), algorithm)``), or return a value
        the device trusts (a hardware hash engine, a digest recorded when the content was
        committed, a bootloader trailer).
        """
        ...

    def read(self, chunk_size: int) -> Iterator[bytes]:
        """The current content in chunks of at most ``chunk_size`` bytes (empty if none)."""
        ...

    def open_writer(self, max_size: int, *,
                    metadata: Mapping[int, object] | None) -> ComponentWriter:
        """A writer staging at most ``max_size`` bytes of new content.

        ``metadata`` is suit-parameter-component-metadata when set (update-management §4.6:
        applied at fetch, copy or write time); the store may refuse it with StorageError.
        """
        ...

    def invoke(self, arguments: bytes | None) -> None:
        """Run the component with suit-parameter-invoke-args (§8.4.10.7).

        Return when control comes back to the processor (processing then continues with the next
        command); raise if the component cannot be invoked.
        """
        ...

    def slot(self) -> int | None:
        """The slot index of this component for suit-condition-component-slot; ``None``: none."""
        ...


@runtime_checkable
class RandomAccessComponent(Protocol):
    """A component whose current content can be read at any offset (a delta's precursor)."""

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the current content from ``offset``."""
        ...


class ComponentStore(Protocol):
    """Maps SUIT_Component_Identifiers to the device's components."""

    def component(self, identifier: ComponentIdentifier) -> Component | None:
        """The component for ``identifier``, or ``None`` if the device has no such component."""
        ...

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        """Exchange the contents of two components (§8.4.10.9); raise StorageError if unable."""
        ...


@runtime_checkable
class DependencyStore(Protocol):
    """A ``ComponentStore`` that keeps dependency manifests apart from its images.

    For every component index a manifest lists in suit-dependencies (trust-domains §5.2.2) the
    processor asks ``dependency(identifier)`` instead of ``component``: the component that
    holds the dependency's envelope (a manifest store: RAM, a file). ``None``: no such
    dependency slot here (the manifest is refused before any side effect).
    """

    def dependency(self, identifier: ComponentIdentifier) -> Component | None:
        ...


@runtime_checkable
class ManifestAwareComponent(Protocol):
    """A component that wants to know which manifest writes it (the root or a dependency):
    ``writing_for`` is called with that verified manifest just before ``open_writer``, so
    that the device can keep the manifest that describes the image with it (a bootloader
    checks the image against it at every boot)."""

    def writing_for(self, verified: VerifiedManifest) -> None:
        ...


@runtime_checkable
class DependencyPolicy(Protocol):
    """An ``Environment`` with a device policy for dependency manifests.

    ``accept_dependency`` is called each time a dependency envelope has verified against
    ``dependency_anchors`` and matched its dependent's digest (dependency-integrity,
    process-dependency), before anything of it runs; ``identifier`` is the dependency's
    component in the dependent. Raise ``SuitError`` to refuse it (e.g. anti-rollback of the
    components it addresses, a bound on how many dependencies one update may bring).
    """

    def accept_dependency(self, dependency: VerifiedManifest, dependent: VerifiedManifest,
                          identifier: ComponentIdentifier) -> None:
        ...


class Fetcher(Protocol):
    """Fetches payloads and dependency envelopes by URI (§8.4.10.4).

    URIs that start with ``#`` are integrated payloads; the processor serves them from the
    envelope itself and never asks the fetcher.
    """

    def fetch(self, uri: str, *, max_bytes: int,
              arguments: bytes | None) -> Iterator[bytes]:
        """The resource at ``uri`` in chunks.

        Never read more than ``max_bytes`` bytes from the network; a resource known to be
        longer (e.g. by its Content-Length) may be refused with ``FetchError``, and if more is
        yielded the processor refuses the payload rather than truncating it. ``arguments`` is
        suit-parameter-fetch-arguments (§8.4.8.13, implementation-defined) or ``None``.
        Raise ``FetchError`` on failure.
        """
        ...


class Environment(Protocol):
    """The rest of the device the conditions consult. ``None`` answers mean "unavailable" and
    make the condition fail (a condition whose input is missing reports failure, §6.4)."""

    def now(self) -> int | None:
        """Trusted time in seconds since 1970-01-01 UTC (for use-before), or ``None``."""
        ...

    def battery_level(self) -> int | None:
        """Remaining battery energy in mWh (for minimum-battery), or ``None``."""
        ...

    def authorize(self, priority: int) -> bool:
        """Ask the application whether an update of ``priority`` may proceed (update-authorized,
        update-management §5.4; smaller is more urgent)."""
        ...

    def version(self, component: ComponentIdentifier) -> tuple[int, ...] | bool | None:
        """The installed version of ``component`` as SUIT version integers, or ``None`` when
        unknown (the version condition fails). ``True``: version conditions hold here without
        a comparison (``InstalledEnvironment``: they guarded the installation)."""
        ...

    def wait(self, events: Mapping[int, object]) -> bool | None:
        """Wait until every event of suit-parameter-wait-info holds (update-management §4.5).

        ``True``: all satisfied, continue. ``False``: they cannot be satisfied now (the directive
        fails). ``None``: this device does not support waiting on these events.
        """
        ...

    def decryption_key(self, key_id: bytes | None, algorithm: int) -> cose.RecipientKey | None:
        """A key for a COSE recipient with ``key_id`` and key-distribution ``algorithm``:
        an ``AesKwKey`` (A128KW/A192KW/A256KW) or an ``EcPrivateKey`` (ECDH-ES+A*KW); ``None``
        if the device has none."""
        ...

    @property
    def dependency_anchors(self) -> TrustAnchors | None:
        """Trust anchors for dependency manifests; ``None``: dependencies are not supported
        (a manifest that declares one is then rejected, trust-domains §5.1)."""
        ...

    def report(self, item: Record | SystemPropertyClaims) -> None:
        """Called with each record as it is produced (e.g. to stream it to a status tracker)."""
        ...


class InstalledEnvironment:
    """What a manifest's conditions see when an *installed* image is checked or started.

    use-before, minimum-battery, update-authorized, version and wait guard the installation of
    an update (update-management §5): an image installed while they held keeps booting after the
    deadline passes, the battery runs low or the image's own version no longer matches the
    "installed version before the update" a manifest asked for. So here they hold: the clock
    reads the epoch, the battery is full, versions match, authorization and waits are granted.
    The compatibility conditions (vendor, class, device, slot) and image digests are checked
    for real.
    """

    def __init__(self, anchors: TrustAnchors | None = None) -> None:
        self._anchors = anchors

    def now(self) -> int | None:
        return 0

    def battery_level(self) -> int | None:
        return 1 << 62

    def authorize(self, priority: int) -> bool:
        return True

    def version(self, component: ComponentIdentifier) -> tuple[int, ...] | bool | None:
        return True

    def wait(self, events: Mapping[int, object]) -> bool | None:
        return True

    def decryption_key(self, key_id: bytes | None, algorithm: int) -> cose.RecipientKey | None:
        return None

    @property
    def dependency_anchors(self) -> TrustAnchors | None:
        return self._anchors

    def report(self, item: Record | SystemPropertyClaims) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Device:
    """Everything the processor drives. ``fetcher`` may be ``None`` on a device that only
    processes integrated payloads (a bootloader)."""

    store: ComponentStore
    environment: Environment
    fetcher: Fetcher | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessorOptions:
    """Policy knobs of the interpreter."""

    require_dependency_integrity: bool = True
    """process-dependency aborts unless dependency-integrity succeeded on that dependency in the
    same procedure (trust-domains §5.6.2). ``False`` also accepts an earlier successful
    image-match, as trust-domains example 2 needs (suit-spec.md §16 item 9)."""
    require_initial_set_component_index: bool = True
    """With more than one component (or dependency), each sequence must begin with
    set-component-index (manifest §6.2)."""
    chunk_size: int = 64 * 1024
    """Bytes per chunk when reading components and integrated payloads."""
    max_steps: int = 100_000
    """Command executions per procedure (per component, nested sequences included): bounds the
    work a manifest can demand with try-each, run-sequence and component index lists."""
    max_dependency_depth: int = 4
    """Nesting of process-dependency (the root is depth 0)."""
    allow_unverified_staging: bool = True
    """Commit fetched or copied bytes into a component that has no image-digest (neither
    checked nor AEAD-decrypted). The spec's examples do this (the encryption draft stages
    ciphertext and authenticates it with AES-GCM at copy time); a device that stores only
    bootable images should turn it off, as ``suitkit.device`` does (manifest §7: "A digest MUST
    always be set")."""


DEFAULT_OPTIONS = ProcessorOptions()


@dataclass(frozen=True, slots=True)
class CustomCall:
    """What a custom command's handler is given: the component it runs on (``component`` is
    the device's, ``identifier`` its SUIT identifier), the command's argument (bstr, tstr, int
    or nil, manifest §8.4.11), the component's parameters as set at this point (custom ones in
    ``parameters.extra``) and the device's environment."""

    code: int
    identifier: ComponentIdentifier
    component: Component
    argument: object
    parameters: Parameters
    environment: Environment


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomCommand:
    """A custom command (a negative number, manifest §8.4.11) the device implements.

    ``run(call)`` returns ``True`` on success; ``False`` is a condition failure (for a
    ``condition``, which soft-failure may absorb) or a directive failure; raising a
    ``SuitError`` fails the command with its message. ``check(argument)`` runs before any
    side effect (manifest §6.1) and raises ``ValueError`` or ``SuitError`` naming what is
    wrong with the argument. Only conditions may appear in the shared sequence (§6.2).
    """

    name: str
    run: Callable[[CustomCall], bool]
    condition: bool = False
    check: Callable[[object], None] | None = None


@dataclass(frozen=True, slots=True)
class UnpackCall:
    """What an unpacking parameter's factory is given when fetch, copy or write is about to
    store content: the parameter's value, the target component (whose current content is a
    delta's precursor), and ``max_output``, the most bytes its decoder may produce (image-size,
    or what the next decoder may read)."""

    code: int
    value: object
    identifier: ComponentIdentifier
    component: Component
    max_output: int
    environment: Environment


@dataclass(frozen=True, slots=True)
class Unpacker:
    """A streaming decoder between the source of fetch / copy / write and the component:
    ``run(chunks)`` yields the decoded bytes (never more than the call's ``max_output``);
    ``max_input`` bounds what it may read (the fetch is cut off beyond it)."""

    max_input: int
    run: Callable[[Iterable[bytes]], Iterator[bytes]]


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomParameter:
    """A custom parameter (a negative number, manifest §8.4.8.16) the device understands.

    ``check(value)`` runs before any side effect and raises ``ValueError`` or ``SuitError``
    naming what is wrong; the value is then stored per component like any parameter and read
    by custom commands (``CustomCall.parameters.extra``). Standard commands never consume it,
    unless it has an ``unpack`` factory: then fetch, copy and write pass what they store
    through its decoder (after decryption; several in ascending ``stage``, the lowest nearest
    the source), e.g. decompression or a delta patch (``core.packing``). The factory runs
    before anything is written and raises a ``SuitError`` to refuse (a wrong precursor).
    """

    name: str
    check: Callable[[object], None] | None = None
    unpack: Callable[[UnpackCall], Unpacker] | None = None
    stage: int = 0


@dataclass(frozen=True, slots=True)
class Extensions:
    """The custom commands and parameters a device implements, by number.

    Passed to ``process`` and ``shared_parameters`` (no global registry: design.md rule 1).
    Numbers must be negative (the CDDL's ``nint``; the IANA registries keep numbers below
    -256 for private use). Anything not registered is refused as unsupported (manifest §6.1).

    Raises:
        ValueError: a non-negative number, or a name that is not a short text.
    """

    commands: Mapping[int, CustomCommand] = field(default_factory=dict)
    parameters: Mapping[int, CustomParameter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, table in (("command", self.commands), ("parameter", self.parameters)):
            for number, entry in table.items():
                if isinstance(number, bool) or not isinstance(number, int) or number >= 0:
                    raise ValueError(f"custom {kind} number {number!r} must be a negative "
                                     "integer (manifest §8.4.11)")
                if not entry.name or len(entry.name) > 64:
                    raise ValueError(f"custom {kind} {number}: name must be 1 to 64 "
                                     "characters")
        object.__setattr__(self, "commands", FrozenDict(self.commands))
        object.__setattr__(self, "parameters", FrozenDict(self.parameters))


NO_EXTENSIONS = Extensions()


@dataclass(frozen=True, slots=True)
class Invocation:
    """A component the processor invoked, with its invoke-args."""

    component: ComponentIdentifier
    arguments: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessResult:
    """What happened: success or not, the SUIT report, and the side effects performed.

    ``reason`` is one human-readable line, e.g. ``"install[3] condition-image-match on
    component [h'00']: digest 5a3f... does not match expected 0011..."``. ``error`` is the
    ``ProcessingError`` (section, offset, component, reason) when processing failed.
    ``written`` lists components whose content changed (fetch, write, copy, swap) in order.
    """

    procedure: Procedure
    succeeded: bool
    reason: str
    report: Report
    written: tuple[ComponentIdentifier, ...] = ()
    invoked: tuple[Invocation, ...] = ()
    unlinked: tuple[ComponentIdentifier, ...] = ()
    error: ProcessingError | None = None
    waiting: bool = False
    """The procedure stopped at a wait directive whose events do not hold yet
    (update-management §5.6): nothing failed for good, run it again later."""


# ============================================================================ public helpers


def stream_digest(chunks: Iterable[bytes], algorithm: int) -> bytes:
    """The SUIT digest of streamed content (for ``Component.digest`` implementations).

    Raises:
        PolicyError: the algorithm is not supported.
    """
    hasher = crypto.new_hasher(algorithm)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


def version_matches(current: Sequence[int], match: VersionMatch) -> bool:
    """Update-management §4.4 version comparison of ``current`` against ``match``.

    Integers are compared in sequence; comparison stops when the manifest's integers are consumed
    or at the first difference, so "equal [1]" matches 1.x.y. Pre-release markers are negative
    (-1 rc, -2 beta, -3 alpha) and compare below releases: [2,0,-1,1] < [2,0,0]. A position the
    device's version lacks counts as 0 (so 2.0 equals 2.0.0 and is above 2.0-rc).

    Raises:
        ValueError: unknown comparison type.
    """
    order = 0
    for position, wanted in enumerate(match.value):
        have = current[position] if position < len(current) else 0
        if have != wanted:
            order = -1 if have < wanted else 1
            break
    comparison = match.comparison
    if comparison == 1:  # greater
        return order > 0
    if comparison == 2:  # greater-equal
        return order >= 0
    if comparison == 3:  # equal
        return order == 0
    if comparison == 4:  # lesser-equal
        return order <= 0
    if comparison == 5:  # lesser
        return order < 0
    raise ValueError(f"unknown version comparison type {comparison}; expected 1 to 5")


def process(verified: VerifiedManifest, procedure: Procedure, device: Device, *,
            limits: Limits = codec.DEFAULT_LIMITS, options: ProcessorOptions = DEFAULT_OPTIONS,
            nonce: bytes | None = None,
            extensions: Extensions = NO_EXTENSIONS) -> ProcessResult:
    """Run ``procedure`` of a verified manifest on ``device``.

    ``procedure`` is ``"staging"`` (dependency-resolution, payload-fetch), ``"installation"``
    (candidate-verification, install), ``"update"`` (both, then validate) or ``"invoke"``
    (validate, load, invoke). Each section is preceded by the shared sequence; absent sections
    are skipped. Processing failures do not raise: they are in the result and its report
    (``nonce`` goes into the report). Device code that raises anything but a ``SuitError`` is a
    bug and propagates. ``extensions``: the custom commands and parameters the device
    implements (none by default: a manifest using any is refused).

    Raises:
        ValueError: ``procedure`` is not one of the four names.
    """
    sections = PROCEDURES.get(procedure)
    if sections is None:
        raise ValueError(f"unknown procedure {procedure!r}; expected one of "
                         f"{', '.join(PROCEDURES)}")
    return _Processor(device, limits, options, extensions).run(verified, procedure, sections,
                                                               nonce)


def shared_parameters(verified: VerifiedManifest, device: Device, *,
                      limits: Limits = codec.DEFAULT_LIMITS,
                      options: ProcessorOptions = DEFAULT_OPTIONS,
                      extensions: Extensions = NO_EXTENSIONS
                      ) -> Mapping[ComponentIdentifier, Parameters]:
    """The parameters each component has after the shared sequence alone.

    The shared sequence has no side effects besides setting parameters (manifest §5.3.2, §6.2),
    so this is what a bootloader needs to check an image against its manifest at every boot
    (RFC 9124 REQ.SEC.AUTH.EXEC) without running any section: the image digest and size for the
    slot it is about to boot, with the compatibility conditions (vendor, class, slot) evaluated
    against ``device``.

    Raises:
        ProcessingError: the manifest is unsupported here, or a condition of the shared sequence
            failed (e.g. the wrong vendor or class).
    """
    processor = _Processor(device, limits, options, extensions)
    try:
        root = processor._prepare(verified, (), 0, ())
        shared = verified.manifest.common.shared_sequence
        if shared is not None:
            processor._run_top(root, _SHARED, _SHARED, shared)
    except _Failure as failure:
        message = failure.message()
        raise ProcessingError(message, section=failure.section, offset=failure.offset,
                              component=failure.component, reason=int(failure.reason),
                              manifest_id=failure.manifest_id) from None
    return {cid: Parameters.from_items({k: v for k, v in params.items()
                                        if k not in _SEQUENCE_FLAGS})
            for cid, params in processor.params.items()}


# ============================================================================ internals

_SHARED = int(ManifestKey.COMMON)  # the section key reported for the shared sequence
_EMPTY_PARAMETERS = Parameters()
_KNOWN_COMMANDS = frozenset(int(c) for c in Cmd)
_KNOWN_PARAMETERS = frozenset(int(p) for p in P)
_STRUCTURED = frozenset({
    Cmd.SET_COMPONENT_INDEX, Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS, Cmd.TRY_EACH,
    Cmd.RUN_SEQUENCE, Cmd.OVERRIDE_MULTIPLE, Cmd.COPY_PARAMS,
})
# Shared sequence: "MUST NOT have any side-effects outside of setting parameter values"
# (manifest §5.3.2, §6.2); its CDDL allows conditions and the parameter / flow commands only.
_SHARED_ALLOWED = frozenset(CONDITIONS) | {
    Cmd.SET_COMPONENT_INDEX, Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS, Cmd.TRY_EACH,
    Cmd.RUN_SEQUENCE, Cmd.OVERRIDE_MULTIPLE, Cmd.COPY_PARAMS,
}
_SEQUENCE_FLAGS = frozenset({P.STRICT_ORDER, P.SOFT_FAILURE})  # not per component (§8.4.8)
_GCM_TAG_BYTES = crypto.AEAD_TAG_BYTES
_GCM_ALGORITHMS = crypto.AEAD_ALGORITHMS  # AES-GCM and ChaCha20/Poly1305 (MTI): tagged


class _Failure(Exception):
    """A command failed. Raised by command implementations, located by the sequence loop.

    ``condition``: a condition failure, which soft-failure may absorb (§8.4.8.15); directive
    failures and Aborts always propagate.
    """

    def __init__(self, reason: ReportReason, detail: str, *, condition: bool = False,
                 properties: Parameters = _EMPTY_PARAMETERS) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.condition = condition
        self.properties = properties
        self.located = False
        self.waiting = False
        self.manifest_id: tuple[int, ...] = ()
        self.section = _SHARED
        self.offset = 0
        self.component = 0
        self.where = ""

    def message(self) -> str:
        return f"{self.where}: {self.detail}" if self.where else self.detail


def _condition_failed(detail: str, properties: Parameters = _EMPTY_PARAMETERS) -> _Failure:
    return _Failure(ReportReason.CONDITION_FAILED, detail, condition=True, properties=properties)


def _operation_failed(detail: str, properties: Parameters = _EMPTY_PARAMETERS) -> _Failure:
    return _Failure(ReportReason.OPERATION_FAILED, detail, properties=properties)


_Step = tuple[int, int | None]
"""A step into a nested sequence: (command position, try-each option or None for run-sequence)."""


@dataclass(eq=False)
class _Context:
    """One manifest being processed: the root or a dependency."""

    verified: VerifiedManifest
    manifest_id: tuple[int, ...]
    ids: tuple[ComponentIdentifier, ...]
    dependencies: Mapping[int, DependencyMetadata]
    components: tuple[Component, ...]
    depth: int
    encoded: dict[int, bytes] = field(default_factory=dict)

    def label(self) -> str:
        if not self.manifest_id:
            return ""
        return "dependency " + "/".join(str(i) for i in self.manifest_id) + " "


@dataclass(eq=False)
class _Frame:
    """The state of one executing command sequence (§6.4, §8.4.10.2, §8.4.10.8)."""

    ctx: _Context
    section: int
    run_section: int
    """The procedure section being run (differs from ``section`` in the shared sequence)."""
    path: tuple[_Step, ...]
    index: int | tuple[int, ...] | Literal[True]
    nested: bool
    soft_failure: bool = False
    strict_order: bool = True
    in_run_sequence: bool = False


class _Processor:
    def __init__(self, device: Device, limits: Limits, options: ProcessorOptions,
                 extensions: Extensions = NO_EXTENSIONS) -> None:
        if options.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.device = device
        self.extensions = extensions
        self.env = device.environment
        self.limits = limits
        self.options = options
        self.params: dict[ComponentIdentifier, dict[int, object]] = {}
        self.integrity: dict[tuple[tuple[int, ...], int], Digest] = {}
        self.records: list[Record | SystemPropertyClaims] = []
        self.written: list[ComponentIdentifier] = []
        self.invoked: list[Invocation] = []
        self.unlinked: list[ComponentIdentifier] = []
        self.steps = 0

    # ------------------------------------------------------------------------ procedure

    def run(self, verified: VerifiedManifest, procedure: Procedure, sections: tuple[int, ...],
            nonce: bytes | None) -> ProcessResult:
        reference = Reference(verified.manifest.reference_uri or "", verified.digest)
        try:
            root = self._prepare(verified, (), 0, sections)
            for key in sections:
                # manifest §6.2: clear all parameter storage before execution.
                self.params.clear()
                self._run_section(root, key)
        except _Failure as failure:
            record = Record(failure.manifest_id, failure.section, failure.offset,
                            failure.component, failure.properties)
            report = Report(reference=reference, nonce=nonce, records=tuple(self.records),
                            result=ResultFailure(int(failure.reason), record,
                                                 int(failure.reason)))
            message = failure.message()
            return ProcessResult(
                procedure=procedure, succeeded=False, reason=message, report=report,
                written=tuple(self.written), invoked=tuple(self.invoked),
                unlinked=tuple(self.unlinked),
                error=ProcessingError(message, section=failure.section, offset=failure.offset,
                                      component=failure.component, reason=int(failure.reason),
                                      manifest_id=failure.manifest_id),
                waiting=failure.waiting,
            )
        finally:
            # trust-domains §5.6.4: integrity results do not outlive the procedure.
            self.integrity.clear()
        ran = [name_of(ManifestKey, k) for k in sections if _section(verified, k) is not None]
        summary = ", ".join(ran) if ran else "no sections present"
        return ProcessResult(
            procedure=procedure, succeeded=True, reason=f"{procedure} succeeded ({summary})",
            report=Report(reference=reference, nonce=nonce, records=tuple(self.records)),
            written=tuple(self.written), invoked=tuple(self.invoked),
            unlinked=tuple(self.unlinked),
        )

    def _run_section(self, ctx: _Context, key: int) -> None:
        sequence = _section(ctx.verified, key)
        if sequence is None:
            return
        shared = ctx.verified.manifest.common.shared_sequence
        if shared is not None:
            self._run_top(ctx, _SHARED, key, shared)
        self._run_top(ctx, key, key, sequence)

    def _run_top(self, ctx: _Context, section: int, run_section: int,
                 sequence: CommandSequence) -> None:
        frame = _Frame(ctx=ctx, section=section, run_section=run_section, path=(), index=0,
                       nested=False)
        self._run(frame, sequence)

    # ------------------------------------------------------------------------ setup checks

    def _prepare(self, verified: VerifiedManifest, manifest_id: tuple[int, ...], depth: int,
                 sections: Sequence[int]) -> _Context:
        """Check everything that can be checked before any side effect (manifest §6.1, §6.2)."""
        common = verified.manifest.common
        ids = list(common.components)
        dependencies: Mapping[int, DependencyMetadata] = common.dependencies or {}
        placeholder = _Context(verified, manifest_id, (), dependencies, (), depth)

        def setup_failure(failure: _Failure, component: int = 0) -> _Failure:
            failure.located = True
            failure.manifest_id = manifest_id
            failure.section, failure.offset, failure.component = _SHARED, 0, component
            failure.where = f"{placeholder.label()}common".lstrip()
            return failure

        if dependencies and self.env.dependency_anchors is None:
            # trust-domains §5.1: a processor without dependency support MUST Abort.
            raise setup_failure(_Failure(ReportReason.COMPONENT_UNSUPPORTED,
                                         "the manifest declares dependencies and this device "
                                         "has no trust anchors for dependency manifests"))
        for index in sorted(dependencies):
            if index < len(ids):
                continue  # trust-domains §5.2.2: a component from suit-components
            # suit-spec.md §16 item 7: an extra component slot identified by its prefix.
            prefix = dependencies[index].prefix
            if index != len(ids) or prefix is None:
                raise setup_failure(_Failure(
                    ReportReason.COMPONENT_UNSUPPORTED,
                    f"dependency index {index} is beyond the {len(ids)} declared component(s)"
                    + ("" if prefix is not None else " and has no dependency-prefix")
                    + (f"; expected index {len(ids)}" if index != len(ids) else "")), index)
            ids.append(prefix)
        if len(ids) > self.limits.max_components:
            # manifest §6.2: the number of components must not exceed what the device supports.
            raise setup_failure(_Failure(
                ReportReason.COMPONENT_UNSUPPORTED,
                f"{len(ids)} components is over the device limit of "
                f"{self.limits.max_components}"))
        components: list[Component] = []
        store = self.device.store
        dependency_store = store if isinstance(store, DependencyStore) else None
        for index, identifier in enumerate(ids):
            try:
                if dependency_store is not None and index in dependencies:
                    component = dependency_store.dependency(identifier)
                else:
                    component = store.component(identifier)
            except SuitError as e:
                raise setup_failure(_operation_failed(f"component {_cid(identifier)}: {e}"),
                                    index) from e
            if component is None:
                # RFC 9124 THREAT.IMG.LOCATION: only components the device has.
                raise setup_failure(_Failure(
                    ReportReason.COMPONENT_UNSUPPORTED,
                    f"component {index} {_cid(identifier)} does not exist on this device"),
                    index)
            components.append(component)
        ctx = _Context(verified, manifest_id, tuple(ids), dependencies, tuple(components), depth)
        for key in sections:
            if key in verified.severed:
                raise setup_failure(_operation_failed(
                    f"{name_of(ManifestKey, key)} was severed from the envelope; the procedure "
                    "needs the envelope that still carries it"))
        if common.shared_sequence is not None:
            self._scan(ctx, _SHARED, common.shared_sequence, (), top=True, shared=True)
        for key in _SECTION_KEYS:
            sequence = _section(verified, key)
            if sequence is not None:
                self._scan(ctx, key, sequence, (), top=True, shared=False)
        return ctx

    def _scan(self, ctx: _Context, section: int, sequence: CommandSequence,
              path: tuple[_Step, ...], *, top: bool, shared: bool) -> None:
        """Reject unsupported or malformed commands and parameters before running anything."""

        def fail(failure: _Failure, position: int, command: Command) -> _Failure:
            self._locate(failure, ctx, section, path, position=position, command=command,
                         index=0)
            return failure

        if (top and self.options.require_initial_set_component_index and len(ctx.ids) > 1
                and sequence.commands and sequence.commands[0].code != Cmd.SET_COMPONENT_INDEX):
            # manifest §6.2 / trust-domains §5.1: with more than one component or dependency,
            # each command sequence MUST begin with set-component-index.
            raise fail(_operation_failed(
                f"with {len(ctx.ids)} components the sequence must begin with "
                f"set-component-index, not {_command_name(sequence.commands[0].code)}"),
                0, sequence.commands[0])
        for position, command in enumerate(sequence.commands):
            code = command.code
            arg = command.argument
            custom = self.extensions.commands.get(code) if code < 0 else None
            if code not in _KNOWN_COMMANDS and custom is None:
                # manifest §6.1, §8.4.9: unknown and unregistered custom commands exclude the
                # manifest.
                raise fail(_Failure(ReportReason.COMMAND_UNSUPPORTED,
                                    f"command {code} is not supported"
                                    + (" (no custom command of that number is registered)"
                                       if code < 0 else "")),
                           position, command)
            if custom is not None:
                if shared and not custom.condition:
                    raise fail(_operation_failed(
                        f"custom directive {custom.name} ({code}) is not allowed in the shared "
                        "sequence, which may only set parameters and test conditions "
                        "(manifest §6.2)"), position, command)
                if custom.check is not None:
                    try:
                        custom.check(arg)
                    except (ValueError, SuitError) as e:
                        raise fail(_Failure(ReportReason.PARAMETER_UNSUPPORTED,
                                            f"custom command {custom.name} ({code}): bad "
                                            f"argument: {e}"), position, command) from None
                continue
            if shared and code not in _SHARED_ALLOWED:
                raise fail(_operation_failed(
                    f"{_command_name(code)} is not allowed in the shared sequence, which may "
                    "only set parameters and test conditions (manifest §6.2)"),
                    position, command)
            try:
                if code == Cmd.SET_COMPONENT_INDEX:
                    self._check_index_argument(ctx, arg)
                elif code in (Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS):
                    self._check_parameters(ctx, _as(arg, Parameters), nested=not top)
                elif code == Cmd.OVERRIDE_MULTIPLE:
                    for index, params in _as(arg, FrozenDict).items():
                        self._check_index(ctx, index)
                        self._check_parameters(ctx, _as(params, Parameters), nested=not top)
                elif code == Cmd.COPY_PARAMS:
                    for index, numbers in _as(arg, FrozenDict).items():
                        self._check_index(ctx, index)
                        for number in _as(numbers, tuple):
                            if (number not in _KNOWN_PARAMETERS
                                    and number not in self.extensions.parameters):
                                raise _Failure(ReportReason.PARAMETER_UNSUPPORTED,
                                               f"parameter {name_of(P, number)} is not "
                                               "supported")
            except _Failure as failure:
                raise fail(failure, position, command) from None
            if code == Cmd.RUN_SEQUENCE:
                self._scan(ctx, section, _as(arg, CommandSequence), (*path, (position, None)),
                           top=False, shared=shared)
            elif code == Cmd.TRY_EACH:
                for option, inner in enumerate(_as(arg, TryEach).sequences):
                    self._scan(ctx, section, inner, (*path, (position, option)), top=False,
                               shared=shared)

    def _check_index_argument(self, ctx: _Context, arg: object) -> None:
        if arg is True:
            return
        if isinstance(arg, tuple):
            for index in arg:
                self._check_index(ctx, index)
            return
        self._check_index(ctx, arg)

    def _check_index(self, ctx: _Context, index: object) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _operation_failed(f"component index {index!r} is not an unsigned integer")
        if index >= len(ctx.ids):
            raise _Failure(ReportReason.COMPONENT_UNSUPPORTED,
                           f"component index {index} is out of range; the manifest has "
                           f"{len(ctx.ids)} component(s)")
        return index

    def _check_parameters(self, ctx: _Context, params: Parameters, *, nested: bool) -> None:
        for number, value in params.extra.items():
            custom = self.extensions.parameters.get(number) if number < 0 else None
            if custom is None:
                # manifest §6.1: unsupported parameters exclude the manifest (custom ones
                # included unless registered).
                raise _Failure(ReportReason.PARAMETER_UNSUPPORTED,
                               f"parameter {name_of(P, number)} is not supported"
                               + (" (no custom parameter of that number is registered)"
                                  if number < 0 else ""))
            if custom.check is not None:
                try:
                    custom.check(value)
                except (ValueError, SuitError) as e:
                    raise _Failure(ReportReason.PARAMETER_UNSUPPORTED,
                                   f"custom parameter {custom.name} ({number}): {e}") from None
        if params.soft_failure is not None and not nested:
            # manifest §8.4.8.15: setting soft-failure outside try-each / run-sequence aborts.
            raise _operation_failed("soft-failure may only be set inside try-each or "
                                    "run-sequence")
        if params.image_digest is not None:
            _hasher(params.image_digest.algorithm)
        if params.source_component is not None:
            self._check_index(ctx, params.source_component)
        if params.version is not None and params.version.comparison not in range(1, 6):
            raise _Failure(ReportReason.PARAMETER_UNSUPPORTED,
                           f"version comparison type {params.version.comparison} is not one "
                           "of 1 to 5")
        if params.encryption_info is not None:
            _encryption_info(params.encryption_info)

    # ------------------------------------------------------------------------ execution

    def _run(self, frame: _Frame, sequence: CommandSequence) -> bool:
        """Run ``sequence``; ``False`` when a condition failed and soft-failure absorbed it."""
        for position, command in enumerate(sequence.commands):
            try:
                self._command(frame, position, command)
            except _Failure as failure:
                # manifest §8.4.8.15: soft-failure ends this sequence on a condition failure.
                if failure.condition and frame.soft_failure:
                    return False
                raise
        return True

    def _command(self, frame: _Frame, position: int, command: Command) -> None:
        code = command.code
        if code in (Cmd.SET_COMPONENT_INDEX, Cmd.OVERRIDE_MULTIPLE):
            # Not repeated per component: they change the index itself.
            self._tick()
            try:
                if code == Cmd.SET_COMPONENT_INDEX:
                    self._set_component_index(frame, command.argument)
                else:
                    self._override_multiple(frame, _as(command.argument, FrozenDict))
            except _Failure as failure:
                if not failure.located:
                    self._locate(failure, frame.ctx, frame.section, frame.path,
                                 position=position, command=command, index=_first(frame.index))
                raise
            return
        handler = _HANDLERS.get(code, _Processor._custom)
        for index in self._selected(frame, position, command):
            if (code == Cmd.PROCESS_DEPENDENCY and frame.index is True
                    and index not in frame.ctx.dependencies):
                continue  # trust-domains §5.6.2: with index True, all dependencies
            policy = _policy(command)
            try:
                self._tick()
                measured = handler(self, frame, position, command, index)
            except _Failure as failure:
                if not failure.located:
                    self._locate(failure, frame.ctx, frame.section, frame.path,
                                 position=position, command=command, index=index)
                    self._emit(frame.ctx, failure, policy, index, success=False)
                raise
            except SuitError as error:
                wrapped = _from_suit_error(error)
                self._locate(wrapped, frame.ctx, frame.section, frame.path,
                             position=position, command=command, index=index)
                self._emit(frame.ctx, wrapped, policy, index, success=False)
                raise wrapped from error
            if policy & (ReportingPolicy.SEND_RECORD_ON_SUCCESS
                         | ReportingPolicy.SEND_SYSINFO_SUCCESS):
                self._emit_success(frame, position, index, measured=measured, policy=policy)

    def _selected(self, frame: _Frame, position: int, command: Command) -> tuple[int, ...]:
        # manifest §6.5: True = every component in order; a list = those, in list order.
        if frame.index is True:
            return tuple(range(len(frame.ctx.ids)))
        if isinstance(frame.index, tuple):
            return frame.index
        if frame.index >= len(frame.ctx.ids):
            failure = _Failure(ReportReason.COMPONENT_UNSUPPORTED,
                               f"component index {frame.index} is out of range; the manifest "
                               f"has {len(frame.ctx.ids)} component(s)")
            self._locate(failure, frame.ctx, frame.section, frame.path, position=position,
                         command=command, index=0)
            raise failure
        return (frame.index,)

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.options.max_steps:
            raise _operation_failed(f"more than {self.options.max_steps} command executions "
                                    "in one procedure")

    # ------------------------------------------------------------------------ reporting

    def _locate(self, failure: _Failure, ctx: _Context, section: int, path: tuple[_Step, ...],
                *, position: int, command: Command, index: int) -> None:
        failure.located = True
        failure.manifest_id = ctx.manifest_id
        failure.section = int(section)
        failure.offset = self._offset(ctx, section, path, position)
        failure.component = index
        target = (f" on component {_cid(ctx.ids[index])}" if index < len(ctx.ids)
                  else f" on component index {index}")
        failure.where = (f"{ctx.label()}{_section_name(section)}{_path_text(path)}[{position}] "
                         f"{_command_name(command.code)}{target}")

    def _offset(self, ctx: _Context, section: int, path: tuple[_Step, ...],
                position: int) -> int:
        data = ctx.encoded.get(section)
        if data is None:
            sequence = (ctx.verified.manifest.common.shared_sequence if section == _SHARED
                        else _section(ctx.verified, section))
            if sequence is None:
                return 0
            # Byte-identical to the received bytes for a manifest decoded by codec (RFC 8949
            # deterministic encoding round-trips; tests/core/test_codec_vectors.py).
            data = ctx.encoded[section] = codec.encode_command_sequence(sequence)
        return _command_offset(data, path, position)

    def _emit(self, ctx: _Context, failure: _Failure, policy: int, index: int, *,
              success: bool) -> None:
        if not success and policy & ReportingPolicy.SEND_RECORD_ON_FAILURE:
            self._add(Record(failure.manifest_id, failure.section, failure.offset,
                             failure.component, failure.properties))
        if (not success and policy & ReportingPolicy.SEND_SYSINFO_FAILURE
                and failure.properties != _EMPTY_PARAMETERS and index < len(ctx.ids)):
            self._add(SystemPropertyClaims(ctx.ids[index], failure.properties))

    def _emit_success(self, frame: _Frame, position: int, index: int, *,
                      measured: Parameters, policy: int) -> None:
        # manifest §8.4.7: reporting policy bits are hints to the reporting engine.
        ctx = frame.ctx
        if policy & ReportingPolicy.SEND_RECORD_ON_SUCCESS:
            self._add(Record(ctx.manifest_id, int(frame.section),
                             self._offset(ctx, frame.section, frame.path, position), index,
                             measured))
        if policy & ReportingPolicy.SEND_SYSINFO_SUCCESS and measured != _EMPTY_PARAMETERS:
            self._add(SystemPropertyClaims(ctx.ids[index], measured))

    def _add(self, item: Record | SystemPropertyClaims) -> None:
        self.records.append(item)
        self.env.report(item)

    # ------------------------------------------------------------------------ parameters

    def _get(self, ctx: _Context, index: int, number: int, kind: type[_T]) -> _T | None:
        value = self.params.get(ctx.ids[index], {}).get(number)
        return value if isinstance(value, kind) else None

    def _require(self, ctx: _Context, index: int, number: int, kind: type[_T], *,
                 condition: bool) -> _T:
        value = self._get(ctx, index, number, kind)
        if value is None:
            # manifest §6.4: a command whose parameter is unset fails.
            detail = f"parameter {name_of(P, number)} is not set"
            raise _condition_failed(detail) if condition else _operation_failed(detail)
        return value

    def _set_parameters(self, frame: _Frame, index: int, params: Parameters, *,
                        only_if_unset: bool) -> None:
        ctx = frame.ctx
        store = self.params.setdefault(ctx.ids[index], {})
        for number, value in params.items():
            if number in _SEQUENCE_FLAGS:
                self._set_flag(frame, number, value)
            elif not only_if_unset or number not in store:
                # trust-domains §5.6.1: set-parameters never replaces a value already set, so a
                # dependency cannot undo its dependent's choice (THREAT.MFST.OVERRIDE).
                store[number] = value

    def _set_flag(self, frame: _Frame, number: int, value: object) -> None:
        if number == P.SOFT_FAILURE:
            if not frame.nested:
                # manifest §8.4.8.15: setting soft-failure outside try-each / run-sequence.
                raise _operation_failed("soft-failure may only be set inside try-each or "
                                        "run-sequence")
            frame.soft_failure = bool(value)
        else:
            frame.strict_order = bool(value)

    # ------------------------------------------------------------------------ index, flow

    def _set_component_index(self, frame: _Frame, arg: object) -> None:
        if frame.in_run_sequence and not frame.strict_order:
            # manifest §6.7: set-component-index inside run-sequence while strict-order is
            # False MUST Abort.
            raise _operation_failed("set-component-index inside run-sequence while "
                                    "strict-order is false")
        self._check_index_argument(frame.ctx, arg)
        if arg is True:
            frame.index = True
        elif isinstance(arg, tuple):
            frame.index = arg
        else:
            frame.index = _as(arg, int)

    def _override_multiple(self, frame: _Frame, arg: FrozenDict[int, Parameters]) -> None:
        if frame.in_run_sequence and not frame.strict_order:
            raise _operation_failed("override-multiple changes the component index inside "
                                    "run-sequence while strict-order is false")
        last = 0
        for index, params in arg.items():
            last = self._check_index(frame.ctx, index)
            self._set_parameters(frame, last, params, only_if_unset=False)
        # update-management §5.7: afterwards the index is the last component listed.
        frame.index = last

    def _try_each(self, frame: _Frame, position: int, command: Command,
                  index: int) -> Parameters:
        arg = _as(command.argument, TryEach)
        for option, sequence in enumerate(arg.sequences):
            # manifest §8.4.10.2: soft-failure is True at the start of each sequence.
            inner = _Frame(ctx=frame.ctx, section=frame.section, run_section=frame.run_section,
                           path=(*frame.path, (position, option)), index=index, nested=True,
                           soft_failure=True, strict_order=frame.strict_order)
            if self._run(inner, sequence):
                return _EMPTY_PARAMETERS
        if arg.empty_fallback:
            return _EMPTY_PARAMETERS  # a trailing nil: an empty sequence that succeeds
        raise _condition_failed(f"none of the {len(arg.sequences)} try-each sequences "
                                "succeeded")

    def _run_sequence(self, frame: _Frame, position: int, command: Command,
                      index: int) -> Parameters:
        sequence = _as(command.argument, CommandSequence)
        forced = not frame.strict_order and not isinstance(frame.index, tuple) \
            and frame.index is not True
        if forced and (not sequence.commands
                       or sequence.commands[0].code != Cmd.SET_COMPONENT_INDEX):
            # manifest §6.7: with strict-order False and an integer index, the run-sequence
            # argument MUST begin with set-component-index.
            raise _operation_failed("with strict-order false, the run-sequence argument must "
                                    "begin with set-component-index")
        # manifest §8.4.10.8: soft-failure defaults to False; with strict-order False and an
        # integer index, strict order is forced True inside; with True / a list it is preset.
        inner = _Frame(ctx=frame.ctx, section=frame.section, run_section=frame.run_section,
                       path=(*frame.path, (position, None)), index=index, nested=True,
                       soft_failure=False, strict_order=True if forced else frame.strict_order,
                       in_run_sequence=True)
        self._run(inner, sequence)
        return _EMPTY_PARAMETERS

    # ------------------------------------------------------------------------ conditions

    def _identifier(self, frame: _Frame, position: int, command: Command,
                    index: int) -> Parameters:
        # manifest §8.4.9.1: vendor, class and device identifier conditions.
        ctx = frame.ctx
        identity = ctx.components[index].identity
        known: frozenset[VendorIdentifier]
        if command.code == Cmd.VENDOR_IDENTIFIER:
            number, known = P.VENDOR_IDENTIFIER, identity.vendor_ids
        elif command.code == Cmd.CLASS_IDENTIFIER:
            number, known = P.CLASS_IDENTIFIER, frozenset(identity.class_ids)
        else:
            number, known = P.DEVICE_IDENTIFIER, frozenset(identity.device_ids)
        expected = self._require(ctx, index, number, object, condition=True)
        if expected not in known:
            have = ", ".join(sorted(_identifier_text(k) for k in known)) or "none"
            raise _condition_failed(f"{name_of(P, number)} {_identifier_text(expected)} does "
                                    f"not match the component's ({have})")
        return _EMPTY_PARAMETERS

    def _image_match(self, frame: _Frame, position: int, command: Command,
                     index: int) -> Parameters:
        # manifest §8.4.9.2 (image-match) and update-management §5.2 (image-not-match).
        ctx = frame.ctx
        expected = self._require(ctx, index, P.IMAGE_DIGEST, Digest, condition=True)
        actual, size = self._measure(ctx, index, expected.algorithm)
        measured = Parameters(image_digest=Digest(expected.algorithm, actual), image_size=size)
        same = hmac.compare_digest(actual, expected.value)
        if command.code == Cmd.IMAGE_NOT_MATCH:
            if same:
                raise _condition_failed(f"digest {_short(actual)} matches image-digest, "
                                        "expected a different image", measured)
            return measured
        if not same:
            raise _condition_failed(f"digest {_short(actual)} does not match expected "
                                    f"{_short(expected.value)}", measured)
        wanted = self._get(ctx, index, P.IMAGE_SIZE, int)
        if wanted is not None and size != wanted:
            raise _condition_failed(f"size {size} does not match expected image-size {wanted}",
                                    measured)
        if index in ctx.dependencies and not self.options.require_dependency_integrity:
            self.integrity[(ctx.manifest_id, index)] = expected
        return measured

    def _measure(self, ctx: _Context, index: int, algorithm: int) -> tuple[bytes, int]:
        if index in ctx.dependencies:
            # trust-domains §5.2.2: a dependency's digest covers just its bstr-wrapped manifest.
            data = self._dependency_bytes(ctx, index)
            try:
                envelope = codec.decode_envelope(data, limits=self.limits)
            except DecodeError as e:
                raise _condition_failed(f"dependency component does not hold a SUIT envelope: "
                                        f"{e}") from e
            return _digest(algorithm, cbor.wrap(envelope.manifest_bytes)), len(data)
        component = ctx.components[index]
        actual = component.digest(algorithm)
        size = component.size()
        if actual is None or size is None:
            raise _condition_failed("the component holds no image")
        return actual, size

    def _component_slot(self, frame: _Frame, position: int, command: Command,
                        index: int) -> Parameters:
        # manifest §8.4.9.4
        expected = self._require(frame.ctx, index, P.COMPONENT_SLOT, int, condition=True)
        actual = frame.ctx.components[index].slot()
        measured = _EMPTY_PARAMETERS if actual is None else Parameters(component_slot=actual)
        if actual != expected:
            raise _condition_failed(f"component is in slot {actual}, expected slot {expected}",
                                    measured)
        return measured

    def _check_content(self, frame: _Frame, position: int, command: Command,
                       index: int) -> Parameters:
        # manifest §8.4.9.3: the comparison MUST be constant time.
        expected = self._require(frame.ctx, index, P.CONTENT, bytes, condition=True)
        actual = self._read_all(frame.ctx.components[index], len(expected), over_ok=True)
        if not hmac.compare_digest(actual, expected):
            raise _condition_failed(f"content does not match the {len(expected)}-byte "
                                    "suit-parameter-content")
        return _EMPTY_PARAMETERS

    def _use_before(self, frame: _Frame, position: int, command: Command,
                    index: int) -> Parameters:
        # update-management §5.1: assert(now() < use-before), evaluated in 64 bits (Python
        # ints are unbounded).
        deadline = self._require(frame.ctx, index, P.USE_BEFORE, int, condition=True)
        now = self.env.now()
        if now is None:
            raise _condition_failed("the device has no trusted time for use-before")
        if not now < deadline:
            raise _condition_failed(f"manifest expired: use-before {deadline} is not after the "
                                    f"device time {now}", Parameters(use_before=now))
        return _EMPTY_PARAMETERS

    def _minimum_battery(self, frame: _Frame, position: int, command: Command,
                         index: int) -> Parameters:
        # update-management §5.3
        minimum = self._require(frame.ctx, index, P.MINIMUM_BATTERY, int, condition=True)
        level = self.env.battery_level()
        if level is None:
            raise _condition_failed("the device cannot measure its battery")
        measured = Parameters(minimum_battery=level)
        if level < minimum:
            raise _condition_failed(f"battery {level} mWh is below the required {minimum} mWh",
                                    measured)
        return measured

    def _update_authorized(self, frame: _Frame, position: int, command: Command,
                           index: int) -> Parameters:
        # update-management §5.4
        priority = self._require(frame.ctx, index, P.UPDATE_PRIORITY, int, condition=True)
        if not self.env.authorize(priority):
            raise _condition_failed(f"the application did not authorize an update of priority "
                                    f"{priority}")
        return _EMPTY_PARAMETERS

    def _version(self, frame: _Frame, position: int, command: Command,
                 index: int) -> Parameters:
        # update-management §5.5
        ctx = frame.ctx
        match = self._require(ctx, index, P.VERSION, VersionMatch, condition=True)
        current = self.env.version(ctx.ids[index])
        if current is True:
            return _EMPTY_PARAMETERS  # a check of an installed image: it held at install time
        if current is None or current is False:
            raise _condition_failed("the device does not know the component's version")
        try:
            ok = version_matches(current, match)
        except ValueError as e:
            raise _Failure(ReportReason.PARAMETER_UNSUPPORTED, str(e)) from e
        if not ok:
            raise _condition_failed(
                f"version {_version_text(current)} is not "
                f"{_COMPARISONS.get(match.comparison, '?')} {_version_text(match.value)}")
        return _EMPTY_PARAMETERS

    def _abort(self, frame: _Frame, position: int, command: Command, index: int) -> Parameters:
        # manifest §8.4.9.5: assert(0)
        raise _condition_failed("suit-condition-abort")

    def _is_dependency(self, frame: _Frame, position: int, command: Command,
                       index: int) -> Parameters:
        # trust-domains §5.6.3
        if index not in frame.ctx.dependencies:
            raise _condition_failed(f"component {index} is not a dependency")
        return _EMPTY_PARAMETERS

    def _dependency_integrity(self, frame: _Frame, position: int, command: Command,
                              index: int) -> Parameters:
        # trust-domains §5.6.4: verify the signature, compare the digest with image-digest,
        # verify the manifest against its digest; any failure is an immediate Abort.
        ctx = frame.ctx
        if index not in ctx.dependencies:
            raise _operation_failed(f"component {index} is not a dependency")
        expected = self._get(ctx, index, P.IMAGE_DIGEST, Digest)
        if expected is None:
            raise _operation_failed(f"parameter {name_of(P, P.IMAGE_DIGEST)} is not set")
        self._load_dependency(ctx, index, expected)
        self.integrity[(ctx.manifest_id, index)] = expected
        return Parameters(image_digest=expected)

    def _load_dependency(self, ctx: _Context, index: int, expected: Digest) -> VerifiedManifest:
        anchors = self.env.dependency_anchors
        if anchors is None:
            raise _Failure(ReportReason.COMPONENT_UNSUPPORTED,
                           "this device has no trust anchors for dependency manifests")
        data = self._dependency_bytes(ctx, index)
        if not data:
            raise _operation_failed("the dependency component holds no envelope")
        try:
            dependency = verify_envelope(data, anchors, limits=self.limits)
        except DecodeError as e:
            raise _Failure(ReportReason.CBOR_PARSE, f"dependency envelope: {e}") from e
        except (AuthenticationError, PolicyError) as e:
            raise _Failure(ReportReason.UNAUTHORISED, f"dependency envelope: {e}") from e
        actual = _digest(expected.algorithm, cbor.wrap(dependency.envelope.manifest_bytes))
        if not hmac.compare_digest(actual, expected.value):
            raise _Failure(ReportReason.UNAUTHORISED,
                           f"dependency manifest digest {_short(actual)} does not match "
                           f"expected {_short(expected.value)}",
                           properties=Parameters(image_digest=Digest(expected.algorithm,
                                                                     actual)))
        if isinstance(self.env, DependencyPolicy):
            try:
                self.env.accept_dependency(dependency, ctx.verified, ctx.ids[index])
            except SuitError as e:
                raise _Failure(ReportReason.UNAUTHORISED, f"dependency envelope: {e}") from e
        return dependency

    def _dependency_bytes(self, ctx: _Context, index: int) -> bytes:
        """The dependency envelope: the component's content or, while the component is empty,
        the integrated dependency its uri names (trust-domains §8.1.1)."""
        data = self._read_all(ctx.components[index], self.limits.max_envelope_bytes)
        uri = self._get(ctx, index, P.URI, str)
        if not data and uri is not None and uri.startswith("#"):
            data = ctx.verified.envelope.integrated.get(uri, b"")
            if len(data) > self.limits.max_envelope_bytes:
                raise _operation_failed(f"integrated dependency {uri!r} is over the limit of "
                                        f"{self.limits.max_envelope_bytes} bytes")
        return data

    # ------------------------------------------------------------------------ directives

    def _override(self, frame: _Frame, position: int, command: Command,
                  index: int) -> Parameters:
        # manifest §8.4.10.3 override (always overwrites); trust-domains §5.6.1 set
        # (set-if-unset).
        self._set_parameters(frame, index, _as(command.argument, Parameters),
                             only_if_unset=command.code == Cmd.SET_PARAMETERS)
        return _EMPTY_PARAMETERS

    def _copy_params(self, frame: _Frame, position: int, command: Command,
                     index: int) -> Parameters:
        # update-management §5.8: same-key copies from the listed components; unset stays unset.
        ctx = frame.ctx
        target = self.params.setdefault(ctx.ids[index], {})
        for source, numbers in _as(command.argument, FrozenDict).items():
            values = self.params.get(ctx.ids[self._check_index(ctx, source)], {})
            for number in _as(numbers, tuple):
                if number in values:
                    target[number] = values[number]
        return _EMPTY_PARAMETERS

    def _fetch(self, frame: _Frame, position: int, command: Command,
               index: int) -> Parameters:
        # manifest §8.4.10.4
        ctx = frame.ctx
        uri = self._require(ctx, index, P.URI, str, condition=False)
        decryptor = self._decryptor(ctx, index)
        unpackers = self._unpackers(ctx, index)
        bound = unpackers[0].max_input if unpackers else self._bound(ctx, index)
        raw_limit = bound + (_GCM_TAG_BYTES if decryptor is not None
                             and decryptor.algorithm in _GCM_ALGORITHMS else 0)
        chunks: Iterable[bytes]
        if uri.startswith("#"):
            # manifest §7.5, trust-domains §8.1.1: the envelope key is the URI itself.
            payload = ctx.verified.envelope.integrated.get(uri)
            if payload is None:
                raise _operation_failed(f"the envelope carries no integrated payload {uri!r}")
            chunks = _chunks(payload, self.options.chunk_size)
        else:
            if self.device.fetcher is None:
                raise _operation_failed(f"this device cannot fetch {uri!r}")
            try:
                chunks = self.device.fetcher.fetch(
                    uri, max_bytes=raw_limit,
                    arguments=self._get(ctx, index, P.FETCH_ARGUMENTS, bytes))
            except SuitError as e:
                raise _from_suit_error(e, f"payload {uri!r}") from e
        return self._store(ctx, index, chunks, decryptor=decryptor, raw_limit=raw_limit,
                           source=f"payload {uri!r}", unpackers=unpackers)

    def _write(self, frame: _Frame, position: int, command: Command,
               index: int) -> Parameters:
        # manifest §8.4.10.6 (+ encryption: write decrypts suit-parameter-content)
        ctx = frame.ctx
        content = self._require(ctx, index, P.CONTENT, bytes, condition=False)
        return self._store(ctx, index, _chunks(content, self.options.chunk_size),
                           decryptor=self._decryptor(ctx, index), raw_limit=None,
                           source="content", authenticated=True,
                           unpackers=self._unpackers(ctx, index))

    def _copy(self, frame: _Frame, position: int, command: Command, index: int) -> Parameters:
        # manifest §8.4.10.5 (+ encryption: copy decrypts the source component)
        ctx = frame.ctx
        source = self._source(frame, index, "copy")
        component = ctx.components[source]
        if component.size() is None:
            raise _operation_failed(f"source component {source} {_cid(ctx.ids[source])} holds "
                                    "no content")
        return self._store(ctx, index, component.read(self.options.chunk_size),
                           decryptor=self._decryptor(ctx, index), raw_limit=None,
                           source=f"component {_cid(ctx.ids[source])}",
                           unpackers=self._unpackers(ctx, index))

    def _swap(self, frame: _Frame, position: int, command: Command, index: int) -> Parameters:
        # manifest §8.4.10.9
        ctx = frame.ctx
        source = self._source(frame, index, "swap")
        self.device.store.swap(ctx.ids[index], ctx.ids[source])
        for changed in (index, source):
            self._changed(ctx, changed)
        return _EMPTY_PARAMETERS

    def _source(self, frame: _Frame, index: int, what: str) -> int:
        ctx = frame.ctx
        source = self._require(ctx, index, P.SOURCE_COMPONENT, int, condition=False)
        self._check_index(ctx, source)
        if source == index and not frame.strict_order:
            # manifest §6.7: source == target while strict-order is False MUST Abort.
            raise _operation_failed(f"{what} with the same source and target component while "
                                    "strict-order is false")
        return source

    def _invoke(self, frame: _Frame, position: int, command: Command,
                index: int) -> Parameters:
        # manifest §8.4.10.7
        ctx = frame.ctx
        arguments = self._get(ctx, index, P.INVOKE_ARGS, bytes)
        self.invoked.append(Invocation(ctx.ids[index], arguments))
        ctx.components[index].invoke(arguments)
        return _EMPTY_PARAMETERS

    def _wait(self, frame: _Frame, position: int, command: Command, index: int) -> Parameters:
        # update-management §5.6: all events must be satisfied.
        events = self._require(frame.ctx, index, P.WAIT_INFO, FrozenDict, condition=False)
        satisfied = self.env.wait(events)
        if satisfied is None:
            raise _Failure(ReportReason.COMMAND_UNSUPPORTED,
                           "this device cannot wait for events "
                           + ", ".join(name_of(WaitEvent, k) for k in events))
        if not satisfied:
            failure = _operation_failed(
                "waiting: the wait events ("
                + ", ".join(name_of(WaitEvent, k) for k in events)
                + ") do not hold yet; process the manifest again later")
            failure.waiting = True  # update-management §5.6: retry, nothing failed for good
            raise failure
        return _EMPTY_PARAMETERS

    def _custom(self, frame: _Frame, position: int, command: Command,
                index: int) -> Parameters:
        # manifest §8.4.11: a custom command the caller registered (checked by _scan).
        ctx = frame.ctx
        custom = self.extensions.commands[command.code]
        params = Parameters.from_items({k: v for k, v in self.params.get(ctx.ids[index],
                                                                         {}).items()
                                        if k not in _SEQUENCE_FLAGS})
        call = CustomCall(command.code, ctx.ids[index], ctx.components[index], command.argument,
                          params, self.env)
        if not custom.run(call):
            kind = "condition" if custom.condition else "directive"
            detail = f"custom {kind} {custom.name} ({command.code}) failed"
            raise _condition_failed(detail) if custom.condition else _operation_failed(detail)
        return _EMPTY_PARAMETERS

    def _unlink(self, frame: _Frame, position: int, command: Command,
                index: int) -> Parameters:
        # trust-domains §5.6.5: recorded only; reference counts are the device's.
        self.unlinked.append(frame.ctx.ids[index])
        return _EMPTY_PARAMETERS

    def _process_dependency(self, frame: _Frame, position: int, command: Command,
                            index: int) -> Parameters:
        # trust-domains §5.6.2
        ctx = frame.ctx
        if frame.section == _SHARED:
            raise _operation_failed("process-dependency is not allowed in the shared sequence")
        if index not in ctx.dependencies:
            raise _operation_failed(f"component {index} is not a dependency")
        checked = self.integrity.get((ctx.manifest_id, index))
        if checked is None and self.options.require_dependency_integrity:
            raise _operation_failed("the dependency has not been the target of "
                                    "dependency-integrity in this procedure")
        expected = self._get(ctx, index, P.IMAGE_DIGEST, Digest) or checked
        if expected is None:
            raise _operation_failed("neither image-digest nor an earlier integrity check "
                                    "identifies the dependency")
        if checked is not None and checked != expected:
            raise _Failure(ReportReason.UNAUTHORISED, "image-digest changed since the "
                           "dependency's integrity was checked")
        if ctx.depth + 1 > self.options.max_dependency_depth:
            raise _operation_failed(f"dependencies nested deeper than "
                                    f"{self.options.max_dependency_depth}")
        dependency = self._load_dependency(ctx, index, expected)
        section = frame.run_section
        if _section(dependency, section) is None and section not in dependency.severed:
            return _EMPTY_PARAMETERS  # trust-domains §5.6.2: succeeds immediately
        child = self._prepare(dependency, (*ctx.manifest_id, index), ctx.depth + 1, (section,))
        try:
            self._run_section(child, section)
        except _Failure as failure:
            failure.condition = False  # a failure in a dependency aborts the dependent
            raise
        return _EMPTY_PARAMETERS

    # ------------------------------------------------------------------------ storing content

    def _bound(self, ctx: _Context, index: int) -> int:
        size = self._get(ctx, index, P.IMAGE_SIZE, int)
        limit = self.limits.max_payload_bytes
        if size is not None and size > limit:
            raise _operation_failed(f"image-size {size} is over the device limit of {limit}")
        return limit if size is None else size

    def _unpackers(self, ctx: _Context, index: int) -> list[Unpacker]:
        """The decoders the component's unpacking parameters ask for, nearest the source
        first; each one's output bound is the next one's input bound, the last one's is
        image-size. Made before anything is written (a factory may refuse)."""
        values = self.params.get(ctx.ids[index], {})
        chosen = sorted(((custom.stage, number, custom) for number, custom
                         in self.extensions.parameters.items()
                         if custom.unpack is not None and number in values),
                        key=lambda item: (item[0], item[1]))
        made: list[Unpacker] = []
        bound = self._bound(ctx, index)
        for _stage, number, custom in reversed(chosen):
            assert custom.unpack is not None
            call = UnpackCall(number, values[number], ctx.ids[index], ctx.components[index],
                              bound, self.env)
            try:
                unpacker = custom.unpack(call)
            except SuitError as e:
                raise _from_suit_error(e, f"{custom.name} ({number})") from e
            made.insert(0, unpacker)
            bound = unpacker.max_input
        return made

    def _store(self, ctx: _Context, index: int, chunks: Iterable[bytes], *,
               decryptor: crypto.ContentDecryptor | None, raw_limit: int | None,
               source: str, authenticated: bool = False,
               unpackers: Sequence[Unpacker] = ()) -> Parameters:
        """Stream ``chunks`` (decrypted, then unpacked, if asked) into the component; commit
        only if verified.

        ``authenticated``: the bytes come from the signed manifest itself (write's content);
        otherwise (fetch, copy) an image-digest must be set, or nothing is written.
        """
        component = ctx.components[index]
        bound = self._bound(ctx, index)
        size = self._get(ctx, index, P.IMAGE_SIZE, int)
        expected = None if index in ctx.dependencies else self._get(ctx, index, P.IMAGE_DIGEST,
                                                                    Digest)
        aead = decryptor is not None and decryptor.algorithm in _GCM_ALGORITHMS
        if (expected is None and index not in ctx.dependencies and not authenticated
                and not aead and not self.options.allow_unverified_staging):
            # manifest §7: "A digest MUST always be set"; never commit unauthenticated bytes
            # (an AEAD decryption authenticates them by itself).
            raise _operation_failed(f"{source}: no image-digest is set for this component, so "
                                    "what arrives cannot be checked; refused")
        hasher = _hasher(expected.algorithm) if expected is not None else None
        metadata = self._get(ctx, index, P.COMPONENT_METADATA, FrozenDict)
        if isinstance(component, ManifestAwareComponent):
            component.writing_for(ctx.verified)
        writer = component.open_writer(bound, metadata=metadata)
        written = received = 0
        committed = False

        def put(data: bytes) -> None:
            nonlocal written
            if written + len(data) > bound:
                # RFC 9124 THREAT.IMG.EXTRA: refuse, never truncate.
                raise _operation_failed(
                    f"{source} is longer than the {bound} bytes allowed"
                    + (" by image-size" if size is not None else "")
                    + "; refused", Parameters(image_size=written + len(data)))
            if data:
                writer.write(data)
                if hasher is not None:
                    hasher.update(data)
                written += len(data)

        def plain() -> Iterator[bytes]:
            nonlocal received
            for chunk in chunks:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise _operation_failed(f"{source}: the source produced "
                                            f"{type(chunk).__name__}, expected bytes")
                received += len(chunk)
                if raw_limit is not None and received > raw_limit:
                    raise _operation_failed(f"{source} is longer than the {raw_limit} bytes "
                                            "allowed; refused",
                                            Parameters(image_size=received))
                yield decryptor.update(bytes(chunk)) if decryptor is not None else bytes(chunk)
            if decryptor is not None:
                try:
                    yield decryptor.finalize()
                except AuthenticationError as e:
                    raise _Failure(ReportReason.UNAUTHORISED, f"{source}: {e}") from e

        try:
            stream: Iterable[bytes] = plain()
            for unpacker in unpackers:
                stream = unpacker.run(stream)
            for data in stream:
                put(data)
            measured = Parameters(image_size=written)
            if expected is not None and hasher is not None:
                measured = Parameters(image_digest=Digest(expected.algorithm, hasher.digest()),
                                      image_size=written)
            if size is not None and written != size:
                raise _operation_failed(f"{source} is {written} bytes, expected image-size "
                                        f"{size}", measured)
            if expected is not None and hasher is not None:
                actual = hasher.digest()
                if not hmac.compare_digest(actual, expected.value):
                    # RFC 9124 THREAT.NET.REDIRECT / ONPATH: the bytes are not the image signed.
                    raise _operation_failed(f"digest {_short(actual)} of {source} does not "
                                            f"match expected {_short(expected.value)}",
                                            measured)
                if isinstance(writer, DigestAwareWriter):
                    writer.verified(Digest(expected.algorithm, actual))
            writer.commit()
            committed = True
        except SuitError as e:
            raise _from_suit_error(e, source) from e
        finally:
            if not committed:
                with contextlib.suppress(SuitError):  # the failure being raised matters more
                    writer.discard()
        self._changed(ctx, index)
        return measured

    def _changed(self, ctx: _Context, index: int) -> None:
        self.written.append(ctx.ids[index])
        # trust-domains §5.6.4: a fetch or copy into a dependency invalidates its integrity.
        self.integrity.pop((ctx.manifest_id, index), None)

    def _decryptor(self, ctx: _Context, index: int) -> crypto.ContentDecryptor | None:
        raw = self._get(ctx, index, P.ENCRYPTION_INFO, bytes)
        if raw is None:
            return None
        info = _encryption_info(raw)
        tried: list[cose.RecipientKey] = []
        problems: list[str] = []
        for recipient in info.recipients:
            key = self.env.decryption_key(recipient.key_id, recipient.algorithm)
            if key is None or any(key is k for k in tried):
                continue
            tried.append(key)
            try:
                return cose.decryptor(info, key)
            except SuitError as e:
                problems.append(str(e))
        kids = ", ".join(
            f"{crypto.algorithm_name(r.algorithm)}"
            + (f" kid {r.key_id!r}" if r.key_id is not None else "") for r in info.recipients)
        detail = "; ".join(problems) if problems else "the device has no key for any of them"
        raise _Failure(ReportReason.UNAUTHORISED,
                       f"cannot open encryption-info (recipients: {kids}): {detail}")

    def _read_all(self, component: Component, limit: int, *, over_ok: bool = False) -> bytes:
        """The component's content, refusing more than ``limit`` bytes (or, with ``over_ok``,
        returning ``limit + 1`` bytes so that the caller sees a mismatch)."""
        parts: list[bytes] = []
        total = 0
        for chunk in component.read(self.options.chunk_size):
            parts.append(bytes(chunk))
            total += len(chunk)
            if total > limit:
                if over_ok:
                    return b"".join(parts)[: limit + 1]
                raise _operation_failed(f"component content is over the limit of {limit} "
                                        "bytes")
        return b"".join(parts)


_Handler = Callable[[_Processor, _Frame, int, Command, int], Parameters]

_HANDLERS: dict[int, _Handler] = {
    Cmd.VENDOR_IDENTIFIER: _Processor._identifier,
    Cmd.CLASS_IDENTIFIER: _Processor._identifier,
    Cmd.DEVICE_IDENTIFIER: _Processor._identifier,
    Cmd.IMAGE_MATCH: _Processor._image_match,
    Cmd.IMAGE_NOT_MATCH: _Processor._image_match,
    Cmd.USE_BEFORE: _Processor._use_before,
    Cmd.COMPONENT_SLOT: _Processor._component_slot,
    Cmd.CHECK_CONTENT: _Processor._check_content,
    Cmd.DEPENDENCY_INTEGRITY: _Processor._dependency_integrity,
    Cmd.IS_DEPENDENCY: _Processor._is_dependency,
    Cmd.PROCESS_DEPENDENCY: _Processor._process_dependency,
    Cmd.ABORT: _Processor._abort,
    Cmd.TRY_EACH: _Processor._try_each,
    Cmd.WRITE: _Processor._write,
    Cmd.SET_PARAMETERS: _Processor._override,
    Cmd.OVERRIDE_PARAMETERS: _Processor._override,
    Cmd.FETCH: _Processor._fetch,
    Cmd.COPY: _Processor._copy,
    Cmd.INVOKE: _Processor._invoke,
    Cmd.MINIMUM_BATTERY: _Processor._minimum_battery,
    Cmd.UPDATE_AUTHORIZED: _Processor._update_authorized,
    Cmd.VERSION: _Processor._version,
    Cmd.WAIT: _Processor._wait,
    Cmd.SWAP: _Processor._swap,
    Cmd.RUN_SEQUENCE: _Processor._run_sequence,
    Cmd.UNLINK: _Processor._unlink,
    Cmd.COPY_PARAMS: _Processor._copy_params,
}

_SECTION_KEYS = (ManifestKey.DEPENDENCY_RESOLUTION, ManifestKey.PAYLOAD_FETCH,
                 ManifestKey.CANDIDATE_VERIFICATION, ManifestKey.INSTALL, ManifestKey.VALIDATE,
                 ManifestKey.LOAD, ManifestKey.INVOKE, ManifestKey.UNINSTALL)

_COMPARISONS = {1: "greater than", 2: "greater than or equal to", 3: "equal to",
                4: "lesser than or equal to", 5: "lesser than"}


def _section(verified: VerifiedManifest, key: int) -> CommandSequence | None:
    """A command sequence of the manifest by member key (severable ones as resolved)."""
    manifest = verified.manifest
    members: dict[int, object] = {
        ManifestKey.VALIDATE: manifest.validate,
        ManifestKey.LOAD: manifest.load,
        ManifestKey.INVOKE: manifest.invoke,
        ManifestKey.UNINSTALL: manifest.uninstall,
        ManifestKey.DEPENDENCY_RESOLUTION: verified.dependency_resolution,
        ManifestKey.PAYLOAD_FETCH: verified.payload_fetch,
        ManifestKey.CANDIDATE_VERIFICATION: verified.candidate_verification,
        ManifestKey.INSTALL: verified.install,
    }
    member = members.get(key)
    return member if isinstance(member, CommandSequence) else None


def _policy(command: Command) -> int:
    if command.code in _STRUCTURED or command.code < 0:
        return 0  # a custom command's argument is its own (manifest §8.4.11), not a policy
    arg = command.argument
    return arg if isinstance(arg, int) and not isinstance(arg, bool) else 0


def _first(index: int | tuple[int, ...] | Literal[True]) -> int:
    if index is True:
        return 0
    if isinstance(index, tuple):
        return index[0] if index else 0
    return index


def _as(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind):
        raise _operation_failed(f"malformed argument: expected {kind.__name__}, got "
                                f"{type(value).__name__}")
    return value


def _hasher(algorithm: int) -> crypto.Hasher:
    try:
        return crypto.new_hasher(algorithm)
    except PolicyError as e:
        raise _Failure(ReportReason.ALG_UNSUPPORTED, str(e)) from e


def _digest(algorithm: int, data: bytes) -> bytes:
    hasher = _hasher(algorithm)
    hasher.update(data)
    return hasher.digest()


def _encryption_info(raw: bytes) -> cose.CoseEncrypt:
    try:
        info = cose.decode_encryption_info(raw, path="encryption-info")
        crypto.content_key_size(info.algorithm)
    except DecodeError as e:
        raise _Failure(ReportReason.COSE_UNSUPPORTED, str(e)) from e
    except PolicyError as e:
        raise _Failure(ReportReason.ALG_UNSUPPORTED, str(e)) from e
    return info


def _from_suit_error(error: SuitError, context: str = "") -> _Failure:
    prefix = f"{context}: " if context else ""
    if isinstance(error, AuthenticationError):
        reason = ReportReason.UNAUTHORISED
    elif isinstance(error, DecodeError):
        reason = ReportReason.CBOR_PARSE
    else:
        reason = ReportReason.OPERATION_FAILED
    return _Failure(reason, f"{prefix}{type(error).__name__}: {error}")


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start:start + size])


def _cid(identifier: ComponentIdentifier) -> str:
    return "[" + ", ".join(f"h'{part.hex()}'" for part in identifier) + "]"


def _short(value: bytes) -> str:
    text = value.hex()
    return text if len(text) <= 16 else text[:16] + "..."


def _identifier_text(value: object) -> str:
    if isinstance(value, Pen):
        return f"PEN h'{value.oid.hex()}'"
    return str(value)


def _version_text(value: Sequence[int]) -> str:
    return "[" + ",".join(str(v) for v in value) + "]"


def _command_name(code: int) -> str:
    """``condition-image-match``, ``directive-fetch``: the spec's names without ``suit-``."""
    if code not in _KNOWN_COMMANDS:
        return f"command {name_of(Cmd, code)}"
    kind = "condition" if code in CONDITIONS else "directive"
    return f"{kind}-{name_of(Cmd, code)}"


def _section_name(section: int) -> str:
    return "shared-sequence" if section == _SHARED else name_of(ManifestKey, section)


def _path_text(path: tuple[_Step, ...]) -> str:
    out = []
    for position, option in path:
        out.append(f"[{position}].run-sequence" if option is None
                   else f"[{position}].try-each[{option}]")
    return "".join(out)


# ---------------------------------------------------------------------------- byte offsets
# A minimal CBOR walker over the encoded section: it finds where the N-th item of an array
# starts, so records can name the byte offset of a command (draft-ietf-suit-report §4).


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, head length) of the item at ``pos``."""
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, 1
    extra = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if extra is None:
        raise ValueError(f"unsupported CBOR additional information {info} at byte {pos}")
    return major, int.from_bytes(data[pos + 1:pos + 1 + extra], "big"), 1 + extra


def _skip(data: bytes, pos: int) -> int:
    """The position just after the item at ``pos``."""
    major, arg, length = _head(data, pos)
    pos += length
    if major in (2, 3):
        return pos + arg
    if major == 4:
        for _ in range(arg):
            pos = _skip(data, pos)
        return pos
    if major == 5:
        for _ in range(2 * arg):
            pos = _skip(data, pos)
        return pos
    if major == 6:
        return _skip(data, pos)
    return pos  # 0, 1, 7: the head is the whole item


def _array_item(data: bytes, pos: int, item: int) -> int:
    major, count, length = _head(data, pos)
    if major != 4 or item >= count:
        raise ValueError(f"no item {item} in the array at byte {pos}")
    pos += length
    for _ in range(item):
        pos = _skip(data, pos)
    return pos


def _bstr_content(data: bytes, pos: int) -> int:
    major, _, length = _head(data, pos)
    if major != 2:
        raise ValueError(f"expected a byte string at byte {pos}")
    return pos + length


def _command_offset(data: bytes, path: tuple[_Step, ...], position: int) -> int:
    start = 0
    for step, option in path:
        argument = _array_item(data, start, 2 * step + 1)
        if option is None:  # run-sequence: bstr .cbor SUIT_Command_Sequence
            start = _bstr_content(data, argument)
        else:  # try-each: [2* bstr .cbor SUIT_Command_Sequence, ?nil]
            start = _bstr_content(data, _array_item(data, argument, option))
    return _array_item(data, start, 2 * position)

