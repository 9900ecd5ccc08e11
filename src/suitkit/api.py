"""suitkit as a library: build, sign, verify and process SUIT manifests in a few calls.

Everything here is re-exported from the top package, so a program needs only ``import suitkit``::

    key = suitkit.generate_key()
    unsigned = suitkit.build({"sequence-number": 1, "vendor-domain": "example.com",
                              "class-name": "sensor", "components": [{"image": "fw.bin"}]})
    envelope = suitkit.sign(unsigned, key)
    suitkit.verify(envelope, key.public_key())
    device = suitkit.MemoryDevice("example.com", "sensor")
    assert suitkit.process(envelope, key.public_key(), device).succeeded

The functions are thin: each is one of the recipes the CLI runs (``suitkit create``, ``sign``,
``verify``) over the same core. ``verify`` and ``process`` trust nothing but the keys given.
Errors are the ``SuitError`` tree (``suitkit.SuitError``): each message says what was expected
and what was seen.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suitkit.author.describe import load_description, parse_description
from suitkit.core import codec, crypto
from suitkit.core.model import ComponentIdentifier, Envelope
from suitkit.core.processor import (
    ComponentIdentity,
    Device,
    Procedure,
    ProcessResult,
    stream_digest,
)
from suitkit.core.processor import process as _process
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchors, VerifiedManifest, verify_envelope
from suitkit.errors import FetchError, PolicyError, StorageError

__all__ = [
    "MemoryDevice",
    "build",
    "generate_key",
    "process",
    "sign",
    "verify",
]

Keys = crypto.Verifier | Sequence[crypto.Verifier] | TrustAnchors
"""What ``verify`` and ``process`` trust: one public (or MAC) key, several (any one of them
suffices), or a full ``TrustAnchors`` policy (roles, scopes, required signers)."""


def generate_key(algorithm: str = "ESP256") -> crypto.PrivateKey:
    """A new private key: ``ESP256`` (P-256, the MTI default), ``ES384``, ``ES512``,
    ``Ed25519``, ``HMAC-256`` or ``HSS-LMS``. ``key.public_key()`` is the device's trust anchor.

    Raises:
        PolicyError: unknown algorithm.
    """
    return crypto.generate_private_key(algorithm)


def build(description: Mapping[str, Any] | str | Path, *, base: str | Path = ".") -> bytes:
    """An unsigned SUIT envelope from a description (docs/description.md): a mapping, or the
    path of a YAML or JSON file. Image files are read relative to ``base`` for a mapping, and
    to the file's folder for a path.

    Detached encrypted images (an ``encryption:`` section with ``uri``) are not returned here:
    use ``suitkit create``, which writes them beside the envelope.

    Raises:
        DecodeError: the description is malformed (the message names the key), or an image
            cannot be read.
    """
    if isinstance(description, Mapping):
        desc = parse_description(description, base=Path(base))
    else:
        desc = load_description(Path(description))
    if desc.detached:
        raise PolicyError("this description encrypts detached images: build it with "
                          "`suitkit create`, which also writes the ciphertexts to upload")
    envelope = codec.build_envelope(desc.manifest, sever_members=desc.sever,
                                    integrated=desc.integrated)
    return codec.encode_envelope(envelope)


def sign(envelope: bytes | Envelope, key: crypto.PrivateKey | crypto.Signer,
         *, algorithm: int | None = None) -> bytes:
    """``envelope`` with one more signature (or MAC) by ``key``; existing ones are kept, so an
    author and an operator can each sign. ``algorithm`` overrides the key's default COSE
    algorithm (e.g. ``-7`` ES256 for a P-256 key, which signs ESP256 by default).

    Raises:
        DecodeError: ``envelope`` is not a well-formed SUIT envelope.
        AuthenticationError: its digests do not match its contents (nothing is signed).
    """
    decoded = codec.decode_envelope(envelope) if isinstance(envelope, bytes) else envelope
    signer = key.signer(algorithm) if isinstance(key, crypto.PrivateKey) else key
    return codec.encode_envelope(sign_envelope(decoded, signer))


def verify(envelope: bytes, keys: Keys) -> VerifiedManifest:
    """The verified manifest of ``envelope``; raises unless a trusted key signed it and every
    member matches its digest. ``result.manifest`` is the ``Manifest``.

    Raises:
        DecodeError: malformed or over a limit.
        AuthenticationError: no trusted key signed it, or a digest does not match.
        PolicyError: a required signer is missing, or a signer acted outside its scope.
    """
    return verify_envelope(envelope, _anchors(keys))


def process(envelope: bytes, keys: Keys, device: MemoryDevice | Device, *,
            procedure: Procedure = "update") -> ProcessResult:
    """Verify ``envelope`` with ``keys``, then run its ``procedure`` (``"update"``: fetch,
    install and validate; ``"invoke"``: validate and boot; ``"staging"``, ``"installation"``)
    on ``device``. Processing failures do not raise: ``result.succeeded`` is ``False`` and
    ``result.reason`` and ``result.report`` (the SUIT report) say why.

    Raises:
        DecodeError, AuthenticationError, PolicyError: as ``verify`` (nothing is processed).
    """
    verified = verify(envelope, keys)
    target = device.device if isinstance(device, MemoryDevice) else device
    return _process(verified, procedure, target)


def _anchors(keys: Keys) -> TrustAnchors:
    if isinstance(keys, TrustAnchors):
        return keys
    if isinstance(keys, crypto.Verifier):
        return TrustAnchors.of(keys)
    if not keys:
        raise PolicyError("no trusted key given: pass a public key, several, or TrustAnchors")
    return TrustAnchors.of(*keys)


# ============================================================================ an in-memory device


ComponentName = ComponentIdentifier | Sequence[str | bytes] | str
"""A component id as the processor has it (a tuple of bytes), or as a description writes it:
a list of parts, each ``"0x<hex>"`` or UTF-8 text; one string is a one-part id."""


def _component_id(value: ComponentName) -> ComponentIdentifier:
    if isinstance(value, str):
        value = [value]
    parts: list[bytes] = []
    for part in value:
        if isinstance(part, bytes):
            parts.append(part)
        elif part.startswith("0x"):
            parts.append(bytes.fromhex(part[2:]))
        else:
            parts.append(part.encode())
    return tuple(parts)


class MemoryDevice:
    """A device whose components are bytes in memory: for trying manifests out, for tests, and
    as the smallest example of the processor's device interfaces (``suitkit.core.processor``).

    ``vendor`` and ``klass`` are the domain and class name a description uses (the identifiers
    are derived as the description does: UUID5, manifest §8.4.8.1-2) or UUIDs. ``components``
    lists the component ids the device has (default: ``["0x00"]``). ``payloads`` serves
    detached images by URI. Nothing is written unless its digest matched.
    """

    def __init__(self, vendor: str | uuid.UUID, klass: str | uuid.UUID, *,
                 components: Sequence[ComponentName] = ("0x00",),
                 payloads: Mapping[str, bytes] | None = None) -> None:
        vendor_id = vendor if isinstance(vendor, uuid.UUID) else \
            uuid.uuid5(uuid.NAMESPACE_DNS, vendor)
        class_id = klass if isinstance(klass, uuid.UUID) else uuid.uuid5(vendor_id, klass)
        identity = ComponentIdentity(vendor_ids=frozenset({vendor_id}),
                                     class_ids=frozenset({class_id}))
        self._slots = {_component_id(c): _MemoryComponent(identity) for c in components}
        self._payloads = dict(payloads or {})
        self.invoked: list[ComponentIdentifier] = []
        """Components invoked (booted), in order."""
        self.device = Device(store=_MemoryStore(self), environment=_MemoryEnvironment(),
                             fetcher=_MemoryFetcher(self._payloads))
        """The processor's view of this device."""

    def image(self, component: ComponentName = "0x00") -> bytes:
        """The content of ``component`` (empty if nothing was installed).

        Raises:
            KeyError: the device has no such component.
        """
        return self._slots[_component_id(component)].content


@dataclass(slots=True)
class _MemoryComponent:
    identity: ComponentIdentity
    content: bytes = b""
    owner: MemoryDevice | None = None
    cid: ComponentIdentifier = ()

    def size(self) -> int | None:
        return len(self.content) if self.content else None

    def digest(self, algorithm: int) -> bytes | None:
        return stream_digest([self.content], algorithm) if self.content else None

    def read(self, chunk_size: int) -> Iterator[bytes]:
        for start in range(0, len(self.content), chunk_size):
            yield self.content[start:start + chunk_size]

    def open_writer(self, max_size: int, *,
                    metadata: Mapping[int, object] | None) -> _MemoryWriter:
        if metadata:
            raise StorageError("a memory device keeps no component metadata")
        return _MemoryWriter(self, max_size)

    def invoke(self, arguments: bytes | None) -> None:
        if self.owner is not None:
            self.owner.invoked.append(self.cid)

    def slot(self) -> int | None:
        return None


class _MemoryWriter:
    def __init__(self, component: _MemoryComponent, max_size: int) -> None:
        self._component, self._max, self._parts = component, max_size, bytearray()

    def write(self, data: bytes) -> None:
        if len(self._parts) + len(data) > self._max:
            raise StorageError(f"content exceeds the {self._max} bytes the writer was opened "
                               "for")
        self._parts += data

    def commit(self) -> None:
        self._component.content = bytes(self._parts)

    def discard(self) -> None:
        self._parts.clear()


class _MemoryStore:
    def __init__(self, owner: MemoryDevice) -> None:
        self._owner = owner

    def component(self, identifier: ComponentIdentifier) -> _MemoryComponent | None:
        found = self._owner._slots.get(identifier)
        if found is not None:
            found.owner, found.cid = self._owner, identifier
        return found

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        a, b = self.component(first), self.component(second)
        if a is None or b is None:
            raise StorageError("swap needs two components this device has")
        a.content, b.content = b.content, a.content


class _MemoryFetcher:
    def __init__(self, payloads: Mapping[str, bytes]) -> None:
        self._payloads = payloads

    def fetch(self, uri: str, *, max_bytes: int, arguments: bytes | None) -> Iterator[bytes]:
        data = self._payloads.get(uri)
        if data is None:
            raise FetchError(f"no payload for {uri!r} (give it in MemoryDevice(payloads=...))")
        if len(data) > max_bytes:
            raise FetchError(f"{uri}: {len(data)} bytes, more than the {max_bytes} expected")
        yield data


class _MemoryEnvironment:
    """No clock, no battery, no stored versions: the conditions that need them fail (as on a
    device that cannot answer them), authorization and waits are granted."""

    def now(self) -> int | None:
        return None

    def battery_level(self) -> int | None:
        return None

    def authorize(self, priority: int) -> bool:
        return True

    def version(self, component: ComponentIdentifier) -> tuple[int, ...] | bool | None:
        return None

    def wait(self, events: Mapping[int, object]) -> bool | None:
        return True

    def decryption_key(self, key_id: bytes | None, algorithm: int) -> None:
        return None

    @property
    def dependency_anchors(self) -> TrustAnchors | None:
        return None

    def report(self, item: object) -> None:
        pass
