"""A real in-memory device for the processor tests, and a small manifest builder.

The device implements ``suitkit.core.processor``'s protocols with plain Python objects (bytes in
dicts), counting every write, commit and discard so that tests can prove "no side effect". It is
not a mock of the processor: every answer it gives is computed from its own state, except that a
component may be given a *claimed* digest (what a bootloader reads from a slot trailer), which the
spec's examples need because their image digests are sample patterns nobody can produce.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from uuid import UUID

from suitkit.core import codec, cose, crypto
from suitkit.core.model import (
    Command,
    CommandSequence,
    Common,
    ComponentIdentifier,
    DependencyMetadata,
    Digest,
    FrozenDict,
    Manifest,
    Parameters,
    TryEach,
)
from suitkit.core.numbers import Command as Cmd
from suitkit.core.processor import (
    ComponentIdentity,
    Device,
    ProcessorOptions,
    ProcessResult,
    process,
    stream_digest,
)
from suitkit.core.report import Record, SystemPropertyClaims
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchors, VerifiedManifest, verify_envelope
from suitkit.errors import FetchError, StorageError

from helpers import VECTORS, example_private_pem, example_public_pem

VENDOR = UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
EXAMPLE_IDENTITY = ComponentIdentity(vendor_ids=frozenset({VENDOR}), class_ids=frozenset({CLASS}))
SHA256 = -16
PLAINTEXT = b"This is a real firmware image."
SAMPLE_DIGEST_0 = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")
SAMPLE_DIGEST_1 = bytes.fromhex("0123456789abcdeffedcba987654321000112233445566778899aabbccddeeff")

TEST_KEY = crypto.HmacKey(b"k" * 32, key_id=b"test")
"""Signs the manifests the tests build (HMAC: fast and deterministic)."""
TEST_ANCHORS = TrustAnchors.of(TEST_KEY)
EXAMPLE_SIGNER = crypto.load_private_key(example_private_pem()).signer()
EXAMPLE_ANCHORS = TrustAnchors.of(crypto.load_public_key(example_public_pem()))
KEK = crypto.AesKwKey(b"a" * 16, key_id=b"kid-1")


def _ecdh_key() -> crypto.EcPrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    d = bytes.fromhex("60FE6DD6D85D5740A5349B6F91267EEAC5BA81B8CB53EE249E4B4EB102C476B3")
    return crypto.EcPrivateKey(ec.derive_private_key(int.from_bytes(d, "big"), ec.SECP256R1()),
                               key_id=b"kid-2")


RECIPIENT_KEY = _ecdh_key()
DEPENDENT_SIGNING_ANCHORS = TrustAnchors.of(crypto.load_private_key(
    (VECTORS / "encryption-dependent-signing-key.pem").read_bytes()).public_key())


def sha256(data: bytes) -> bytes:
    return stream_digest([data], SHA256)


# ============================================================================ the device


class MemoryWriter:
    def __init__(self, component: MemoryComponent, max_size: int) -> None:
        self.component = component
        self.max_size = max_size
        self.buffer = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.buffer) + len(data) > self.max_size:
            # The processor must never get here: it checks the bound before writing.
            self.component.overflows += 1
            raise StorageError(f"write past the {self.max_size}-byte bound")
        self.buffer += data
        self.component.bytes_written += len(data)

    def commit(self) -> None:
        self.component.content = bytes(self.buffer)
        self.component.claimed = {}
        self.component.commits += 1

    def discard(self) -> None:
        self.component.discards += 1


class MemoryComponent:
    """A component holding bytes in memory."""

    def __init__(self, content: bytes | None = None, *,
                 identity: ComponentIdentity = EXAMPLE_IDENTITY, slot: int | None = None,
                 claimed: Mapping[int, bytes] | None = None, claimed_size: int | None = None,
                 fail_invoke: bool = False) -> None:
        self.content = content
        self._identity = identity
        self._slot = slot
        self.claimed = dict(claimed or {})
        self.claimed_size = claimed_size
        self.fail_invoke = fail_invoke
        self.bytes_written = 0
        self.commits = 0
        self.discards = 0
        self.overflows = 0
        self.invocations: list[bytes | None] = []
        self.metadata: list[Mapping[int, object] | None] = []
        self.largest_read_chunk = 0

    @property
    def identity(self) -> ComponentIdentity:
        return self._identity

    def size(self) -> int | None:
        if self.claimed and self.claimed_size is not None:
            return self.claimed_size
        return None if self.content is None else len(self.content)

    def digest(self, algorithm: int) -> bytes | None:
        if algorithm in self.claimed:
            return self.claimed[algorithm]
        if self.content is None:
            return None
        return stream_digest(self.read(4096), algorithm)

    def read(self, chunk_size: int) -> Iterator[bytes]:
        data = self.content or b""
        for start in range(0, len(data), chunk_size):
            chunk = data[start:start + chunk_size]
            self.largest_read_chunk = max(self.largest_read_chunk, len(chunk))
            yield chunk

    def open_writer(self, max_size: int, *,
                    metadata: Mapping[int, object] | None) -> MemoryWriter:
        self.metadata.append(metadata)
        return MemoryWriter(self, max_size)

    def invoke(self, arguments: bytes | None) -> None:
        if self.fail_invoke:
            raise StorageError("the image does not boot")
        self.invocations.append(arguments)

    def slot(self) -> int | None:
        return self._slot

    @property
    def untouched(self) -> bool:
        return self.bytes_written == 0 and self.commits == 0 and not self.invocations


class MemoryStore:
    def __init__(self, components: Mapping[ComponentIdentifier, MemoryComponent]) -> None:
        self.components = dict(components)
        self.swaps: list[tuple[ComponentIdentifier, ComponentIdentifier]] = []

    def component(self, identifier: ComponentIdentifier) -> MemoryComponent | None:
        return self.components.get(identifier)

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        a, b = self.components[first], self.components[second]
        a.content, b.content = b.content, a.content
        a.commits += 1
        b.commits += 1
        self.swaps.append((first, second))

    def __getitem__(self, identifier: ComponentIdentifier) -> MemoryComponent:
        return self.components[identifier]

    @property
    def untouched(self) -> bool:
        return all(c.untouched for c in self.components.values()) and not self.swaps


class MemoryFetcher:
    """Serves payloads by URI in small chunks and records what was asked and consumed."""

    def __init__(self, payloads: Mapping[str, bytes], chunk_size: int = 1000) -> None:
        self.payloads = dict(payloads)
        self.chunk_size = chunk_size
        self.requests: list[tuple[str, int, bytes | None]] = []
        self.consumed = 0

    def fetch(self, uri: str, *, max_bytes: int, arguments: bytes | None) -> Iterator[bytes]:
        self.requests.append((uri, max_bytes, arguments))
        if uri not in self.payloads:
            raise FetchError(f"404 {uri}")
        return self._serve(self.payloads[uri])

    def _serve(self, data: bytes) -> Iterator[bytes]:
        # A careless server: it sends everything it has; the processor must stop reading.
        for start in range(0, len(data), self.chunk_size):
            chunk = data[start:start + self.chunk_size]
            self.consumed += len(chunk)
            yield chunk


@dataclass
class MemoryEnvironment:
    time: int | None = 1_700_000_000
    battery: int | None = 5000
    authorized_priorities: frozenset[int] = frozenset({-1, 0, 1})
    versions: dict[ComponentIdentifier, tuple[int, ...]] = field(default_factory=dict)
    wait_result: bool | None = None
    keys: list[cose.RecipientKey] = field(default_factory=list)
    anchors: TrustAnchors | None = None
    reported: list[Record | SystemPropertyClaims] = field(default_factory=list)
    waited: list[Mapping[int, object]] = field(default_factory=list)

    def now(self) -> int | None:
        return self.time

    def battery_level(self) -> int | None:
        return self.battery

    def authorize(self, priority: int) -> bool:
        return priority in self.authorized_priorities

    def version(self, component: ComponentIdentifier) -> tuple[int, ...] | None:
        return self.versions.get(component)

    def wait(self, events: Mapping[int, object]) -> bool | None:
        self.waited.append(events)
        return self.wait_result

    def decryption_key(self, key_id: bytes | None, algorithm: int) -> cose.RecipientKey | None:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        return None

    @property
    def dependency_anchors(self) -> TrustAnchors | None:
        return self.anchors

    def report(self, item: Record | SystemPropertyClaims) -> None:
        self.reported.append(item)


@dataclass
class Rig:
    """A device with its parts, ready for ``run``."""

    store: MemoryStore
    env: MemoryEnvironment = field(default_factory=MemoryEnvironment)
    fetcher: MemoryFetcher | None = None

    @property
    def device(self) -> Device:
        return Device(store=self.store, environment=self.env, fetcher=self.fetcher)

    def run(self, verified: VerifiedManifest, procedure: str = "update", *,
            options: ProcessorOptions | None = None, **kwargs: object) -> ProcessResult:
        if options is not None:
            kwargs["options"] = options
        return process(verified, procedure, self.device, **kwargs)  # type: ignore[arg-type]

    def __getitem__(self, identifier: ComponentIdentifier) -> MemoryComponent:
        return self.store[identifier]


def rig(components: Mapping[ComponentIdentifier, MemoryComponent] | None = None, *,
        payloads: Mapping[str, bytes] | None = None, **env: object) -> Rig:
    store = MemoryStore(components if components is not None
                        else {(b"\x00",): MemoryComponent()})
    return Rig(store, MemoryEnvironment(**env),  # type: ignore[arg-type]
               MemoryFetcher(payloads) if payloads is not None else None)


# ============================================================================ the builder


def c(code: int, argument: object = 15) -> Command:
    """A command; the default argument is reporting policy 15."""
    return Command(code, argument)


def seq(*commands: Command) -> CommandSequence:
    return CommandSequence(tuple(commands))


def override(**fields: object) -> Command:
    return Command(Cmd.OVERRIDE_PARAMETERS, Parameters(**fields))  # type: ignore[arg-type]


def set_params(**fields: object) -> Command:
    return Command(Cmd.SET_PARAMETERS, Parameters(**fields))  # type: ignore[arg-type]


def index(value: int | bool | tuple[int, ...]) -> Command:
    return Command(Cmd.SET_COMPONENT_INDEX, value)


def try_each(*options: CommandSequence, fallback: bool = False) -> Command:
    return Command(Cmd.TRY_EACH, TryEach(tuple(options), fallback))


def run_sequence(*commands: Command) -> Command:
    return Command(Cmd.RUN_SEQUENCE, seq(*commands))


def digest(data: bytes) -> Digest:
    return Digest(SHA256, sha256(data))


COMPATIBILITY = (override(vendor_identifier=VENDOR, class_identifier=CLASS),
                 c(Cmd.VENDOR_IDENTIFIER), c(Cmd.CLASS_IDENTIFIER))


def manifest(components: tuple[ComponentIdentifier, ...] = ((b"\x00",),), *,
             shared: CommandSequence | None = None,
             dependencies: Mapping[int, ComponentIdentifier | None] | None = None,
             sequence_number: int = 1, **sections: CommandSequence | None) -> Manifest:
    """A manifest; ``sections`` are Manifest field names (install=..., validate=...)."""
    deps = None if dependencies is None else FrozenDict(
        {i: DependencyMetadata(prefix) for i, prefix in dependencies.items()})
    return Manifest(sequence_number=sequence_number,
                    common=Common(components=components, shared_sequence=shared,
                                  dependencies=deps),
                    **sections)  # type: ignore[arg-type]


def envelope_bytes(m: Manifest, *, signer: crypto.Signer = TEST_KEY,
                   integrated: Mapping[str, bytes] | None = None,
                   sever: frozenset[int] = frozenset()) -> bytes:
    envelope = codec.build_envelope(m, integrated=integrated, sever_members=sever)
    return codec.encode_envelope(sign_envelope(envelope, signer))


def verified(m: Manifest, *, signer: crypto.Signer = TEST_KEY,
             anchors: TrustAnchors = TEST_ANCHORS,
             integrated: Mapping[str, bytes] | None = None) -> VerifiedManifest:
    return verify_envelope(envelope_bytes(m, signer=signer, integrated=integrated), anchors)


def rewrite(m: Manifest, change: dict[tuple[bytes, int | None], tuple[bytes, int | None]]
            ) -> Manifest:
    """``m`` with every (image-digest, image-size) pair in ``change`` replaced.

    Used to give the spec's examples real digests; the size may be ``None`` in a key when the
    sequence sets only the digest.
    """

    def fix_params(p: Parameters) -> Parameters:
        if p.image_digest is None:
            return p
        key = (p.image_digest.value, p.image_size)
        if key not in change:
            key = (p.image_digest.value, None)
        if key not in change:
            return p
        value, size = change[key]
        return replace(p, image_digest=Digest(SHA256, value),
                       image_size=size if p.image_size is not None else None)

    def fix(sequence: CommandSequence | None) -> CommandSequence | None:
        if sequence is None:
            return None
        out = []
        for command in sequence.commands:
            arg = command.argument
            if isinstance(arg, Parameters):
                arg = fix_params(arg)
            elif isinstance(arg, CommandSequence):
                arg = fix(arg)
            elif isinstance(arg, TryEach):
                arg = TryEach(tuple(fix(s) for s in arg.sequences),  # type: ignore[misc]
                              arg.empty_fallback)
            out.append(Command(command.code, arg))
        return CommandSequence(tuple(out))

    fields = {name: fix(getattr(m, name)) for name in
              ("validate", "load", "invoke", "install", "payload_fetch")
              if isinstance(getattr(m, name), CommandSequence)}
    common = replace(m.common, shared_sequence=fix(m.common.shared_sequence))
    return replace(m, common=common, **fields)  # type: ignore[arg-type]
