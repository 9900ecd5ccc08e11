"""The SUIT manifest as frozen dataclasses named after the spec (draft-ietf-suit-manifest-34 §8).

Field names are the spec's names in snake_case without the ``suit-`` prefix, so code reads
``envelope.manifest.sequence_number``. Registry numbers are plain ``int`` (see ``numbers``) so that
values unknown to us survive a round trip; members unknown to us are kept in ``extra``.

Extensions covered: trust domains (dependencies, manifest component id, dependency resolution,
candidate verification, uninstall), update management (set-version, coswid, version, wait and
component-metadata parameters), firmware encryption (the encryption-info parameter, kept as the
exact COSE_Encrypt bytes; ``core.cose`` reads it).

Not here: bytes (``codec``), signatures (``cose``, ``verify``), meaning (``processor``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Self, TypeVar
from uuid import UUID

from suitkit.core.numbers import Parameter

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(Mapping[K, V], Generic[K, V]):
    """An immutable, hashable mapping that keeps insertion order."""

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        self._data: dict[K, V] = dict(items) if items else {}
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


EMPTY: FrozenDict[int, object] = FrozenDict()
NO_MEMBERS: FrozenDict[int, bytes] = FrozenDict()
NO_PAYLOADS: FrozenDict[str, bytes] = FrozenDict()


class Decoded:
    """Base of the model classes the decoder builds on every manifest: ``from_fields`` makes one
    without the frozen dataclass ``__init__``, which calls ``object.__setattr__`` once per member
    and cost more than the rest of decoding a small manifest (benchmarks/README.md). These
    classes have no ``__slots__``: unset members fall back to the class defaults and only the
    set ones are stored. Instances are as frozen as any other (``__setattr__`` raises)."""

    __slots__ = ()

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> Self:
        """An instance of ``fields``, decoded and checked by the caller; every member without a
        default must be there."""
        obj = object.__new__(cls)
        obj.__dict__.update(fields)
        return obj

ComponentIdentifier = tuple[bytes, ...]
"""SUIT_Component_Identifier: a list of byte strings, e.g. ``(b"\\x00",)``."""


@dataclass(frozen=True, slots=True)
class Digest:
    """SUIT_Digest: ``[algorithm-id, digest-bytes]`` (manifest §10)."""

    algorithm: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Pen:
    """A vendor identified by a CBOR PEN: ``#6.112(bstr)``, a relative OID (manifest §8.4.8.3)."""

    oid: bytes


VendorIdentifier = UUID | Pen


@dataclass(frozen=True, slots=True)
class VersionMatch:
    """SUIT_Parameter_Version_Match (update-management §4.4)."""

    comparison: int
    value: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Parameters(Decoded):
    """A set of SUIT parameters (manifest §8.4.8); unset ones are ``None``.

    ``encryption_info`` is the exact bstr content of SUIT_Encryption_Info (a tagged COSE_Encrypt).
    ``wait_info`` and ``component_metadata`` are the decoded maps. ``extra`` holds custom
    (< -256) and unknown parameters by number.
    """

    vendor_identifier: VendorIdentifier | None = None
    class_identifier: UUID | None = None
    image_digest: Digest | None = None
    use_before: int | None = None
    component_slot: int | None = None
    strict_order: bool | None = None
    soft_failure: bool | None = None
    image_size: int | None = None
    content: bytes | None = None
    encryption_info: bytes | None = None
    uri: str | None = None
    source_component: int | None = None
    invoke_args: bytes | None = None
    device_identifier: UUID | None = None
    fetch_arguments: bytes | None = None
    minimum_battery: int | None = None
    update_priority: int | None = None
    version: VersionMatch | None = None
    wait_info: FrozenDict[int, object] | None = None
    component_metadata: FrozenDict[int, object] | None = None
    extra: FrozenDict[int, object] = EMPTY


    def items(self) -> Iterator[tuple[int, object]]:
        """The set parameters as ``(number, value)`` pairs, in registry order, then extras."""
        for number, name in PARAMETER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                yield number, value
        yield from self.extra.items()

    @classmethod
    def from_items(cls, items: Mapping[int, object]) -> Parameters:
        """Build from ``{number: value}``; numbers without a field go to ``extra``."""
        kwargs: dict[str, object] = {}
        extra: dict[int, object] = {}
        for number, value in items.items():
            name = FIELD_OF_PARAMETER.get(number)
            if name is None:
                extra[number] = value
            else:
                kwargs[name] = value
        return cls(**kwargs, extra=FrozenDict(extra))  # type: ignore[arg-type]


PARAMETER_FIELDS: tuple[tuple[int, str], ...] = tuple(
    (int(p), p.name.lower()) for p in Parameter
)
FIELD_OF_PARAMETER: dict[int, str] = dict(PARAMETER_FIELDS)


ComponentIndex = int | bool | tuple[int, ...]
"""set-component-index argument: an index, ``True`` (all components) or a list of indices."""


@dataclass(frozen=True, slots=True)
class CommandSequence:
    """SUIT_Command_Sequence: the flat ``[command, argument, ...]`` list (manifest §8.4.6)."""

    commands: tuple[Command, ...]

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands)

    def __len__(self) -> int:
        return len(self.commands)


@dataclass(frozen=True, slots=True)
class TryEach:
    """Argument of suit-directive-try-each: 2 or more sequences, optionally a trailing nil
    (an empty sequence that succeeds when every other one failed) (manifest §8.4.10.2)."""

    sequences: tuple[CommandSequence, ...]
    empty_fallback: bool = False


CommandArgument = (
    int  # SUIT_Rep_Policy, or an int custom argument
    | bool
    | tuple[int, ...]  # set-component-index list
    | Parameters  # override / set parameters
    | CommandSequence  # run-sequence
    | TryEach
    | FrozenDict[int, Parameters]  # override-multiple
    | FrozenDict[int, tuple[int, ...]]  # copy-params
    | bytes
    | str
    | None
    | object  # the argument of a command number we do not know, as decoded
)


class Command(NamedTuple):
    """One condition or directive with its argument (manifest §8.4.6).

    A typed NamedTuple, not a frozen dataclass like the rest of the model: a manifest holds
    many, and the decoder makes one for a third of the cost (benchmarks/README.md)."""

    code: int
    argument: CommandArgument


@dataclass(frozen=True, slots=True)
class DependencyMetadata:
    """SUIT_Dependency_Metadata (trust-domains §5.2)."""

    prefix: ComponentIdentifier | None = None
    extra: FrozenDict[int, object] = field(default_factory=FrozenDict)


@dataclass(frozen=True, kw_only=True)
class Common(Decoded):
    """SUIT_Common (manifest §8.4.5)."""

    components: tuple[ComponentIdentifier, ...] = ()
    shared_sequence: CommandSequence | None = None
    dependencies: FrozenDict[int, DependencyMetadata] | None = None
    extra: FrozenDict[int, object] = EMPTY



@dataclass(frozen=True, slots=True)
class LocalizedText:
    """SUIT_Text_LMap: manifest-level text keys plus per-component maps (manifest §8.4.4)."""

    fields: FrozenDict[int, str] = field(default_factory=FrozenDict)
    components: FrozenDict[ComponentIdentifier, FrozenDict[int, str]] = field(
        default_factory=FrozenDict
    )


@dataclass(frozen=True, slots=True)
class Text:
    """SUIT_Text_Map: one LocalizedText per language tag, e.g. ``"en-US"``."""

    languages: FrozenDict[str, LocalizedText]


Severable = CommandSequence | Digest | None
"""A severable member is inline, or a digest of the member carried in (or severed from) the
envelope."""


@dataclass(frozen=True, kw_only=True)
class Manifest(Decoded):
    """SUIT_Manifest (manifest §8.4) with the trust-domains and update-management members."""

    version: int = 1
    sequence_number: int
    common: Common
    reference_uri: str | None = None
    manifest_component_id: ComponentIdentifier | None = None
    set_version: tuple[int, ...] | None = None
    validate: CommandSequence | None = None
    load: CommandSequence | None = None
    invoke: CommandSequence | None = None
    uninstall: CommandSequence | None = None
    dependency_resolution: Severable = None
    payload_fetch: Severable = None
    candidate_verification: Severable = None
    install: Severable = None
    text: Text | Digest | None = None
    coswid: bytes | Digest | None = None
    extra: FrozenDict[int, object] = EMPTY



@dataclass(frozen=True, slots=True)
class Authentication:
    """SUIT_Authentication (manifest §8.3): the manifest digest and the COSE blocks over it.

    ``digest_bytes`` is the encoded SUIT_Digest exactly as carried (the detached COSE payload);
    ``blocks`` are the encoded COSE_Sign1 / COSE_Mac0 items, parsed by ``core.cose``.
    """

    digest: Digest
    digest_bytes: bytes
    blocks: tuple[bytes, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Envelope(Decoded):
    """SUIT_Envelope (manifest §8.2).

    ``manifest_bytes`` is the SUIT_Manifest exactly as received (the content of the bstr at key
    3); the manifest digest covers ``cbor.wrap(manifest_bytes)``. ``severable`` holds the
    severable members present in the envelope (key -> exact bstr content), ``integrated`` the
    integrated payloads and dependencies (URI key such as ``"#app.bin"`` -> bytes).
    """

    authentication: Authentication
    manifest: Manifest
    manifest_bytes: bytes
    severable: FrozenDict[int, bytes] = NO_MEMBERS
    integrated: FrozenDict[str, bytes] = NO_PAYLOADS
    extra: FrozenDict[int, object] = EMPTY
    tagged: bool = True
