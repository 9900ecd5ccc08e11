"""The one door through which a device accepts a manifest (draft-ietf-suit-manifest-34 §6.2, §8.3).

``verify_envelope(data, anchors)`` decodes the envelope, checks the manifest digest over the bytes
received, checks the COSE authentication blocks against the device's trust anchors, enforces the
signer policy (several authorities, component scopes: RFC 9019 §3.9, RFC 9124 REQ.SEC.RIGHTS and
REQ.SEC.ACCESS_CONTROL), checks every severable member present in the envelope against its
digest, and only then returns a ``VerifiedManifest``. It raises on any failure; it never returns a
bool.

The trust anchor decides which algorithms and keys are acceptable; the message never chooses its
own algorithm. Authentication blocks from keys the device does not know are ignored, so an
envelope can carry signatures for other audiences; a block whose key id names a trust anchor must
verify.

Trust-anchor updates (docs/keys.md): a manifest for ``ANCHORS_COMPONENT`` addresses nothing
else and needs ``root_threshold`` signatures of distinct ``root`` keys; root keys sign nothing
else (their scope). A manifest signed only by a key in ``revoked`` is refused naming the
revocation. ``recorded`` manifest digests (the running images when a rotation revoked their
signer) are accepted without a signature check: the device verified them when it recorded them.

Not here: rollback (sequence numbers are device state, see the processor and device), image
digests (the processor checks them when it fetches), dependency manifests (process-dependency).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from suitkit.core import cbor, codec, cose, crypto
from suitkit.core.model import (
    Authentication,
    CommandSequence,
    ComponentIdentifier,
    Decoded,
    Digest,
    Envelope,
    Manifest,
    Text,
)
from suitkit.core.numbers import CoseAlg, ManifestKey, name_of
from suitkit.errors import AuthenticationError, DecodeError, PolicyError
from suitkit.limits import Limits

__all__ = [
    "ANCHORS_COMPONENT",
    "ROOT_ROLE",
    "TrustAnchor",
    "TrustAnchors",
    "VerifiedManifest",
    "addressed_components",
    "check_severable",
    "verify_decoded",
    "verify_envelope",
]


ANCHORS_COMPONENT: ComponentIdentifier = (b"suitkit", b"anchors")
"""The component a device's trust anchors are (``suitkit.core.anchors``, docs/keys.md)."""
ROOT_ROLE = "root"
"""The role whose keys sign updates of ``ANCHORS_COMPONENT``, and nothing else."""


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A key the device trusts, the authority it speaks for, and what it may update.

    ``role`` names the authority (e.g. ``"author"``, ``"operator"``). ``components`` scopes the
    signer: every component of a manifest it signs must start with one of these prefixes
    (``None``: any component).
    """

    key: crypto.Verifier
    role: str = "author"
    components: tuple[ComponentIdentifier, ...] | None = None
    name: str | None = None
    """What the device calls this signer in messages (e.g. its anchor file); ``None``: none."""

    def may_update(self, component: ComponentIdentifier) -> bool:
        """Whether ``component`` lies within this signer's scope."""
        if self.components is None:
            return True
        return any(component[: len(prefix)] == prefix for prefix in self.components)


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """The device's trust anchors and its signer policy.

    ``required_roles``: a valid signature from a key of each of these roles must be present
    (e.g. ``("author", "operator")``). Empty: one valid signature from any anchor suffices.
    ``digest_algorithms``: manifest digest algorithms accepted.
    """

    anchors: tuple[TrustAnchor, ...]
    required_roles: tuple[str, ...] = ()
    digest_algorithms: frozenset[int] = frozenset({CoseAlg.SHA256})
    root_threshold: int = 1
    """Signatures of distinct ``root`` keys a manifest of ``ANCHORS_COMPONENT`` needs."""
    revoked: tuple[crypto.Verifier, ...] = ()
    """Keys revoked for good: never trusted; named when one of them signed a refused manifest."""
    recorded: frozenset[bytes] = frozenset()
    """SHA-256 manifest digests accepted without a signature check: manifests this device
    verified before a rotation revoked their signer (its running images; docs/keys.md). Only
    the boot-time verifier is given them; the consumer installs nothing new on their strength."""
    version: int = 0
    """The anchor version these anchors are (``suitkit.core.anchors``)."""

    @classmethod
    def of(cls, *keys: crypto.Verifier, required_roles: Sequence[str] = ()) -> TrustAnchors:
        """Anchors for ``keys``, all of role ``author``."""
        return cls(tuple(TrustAnchor(k) for k in keys), tuple(required_roles))


@dataclass(frozen=True)
class VerifiedManifest(Decoded):
    """A manifest whose signatures and severable members have been checked.

    Only the processor consumes it. ``digest`` is the manifest digest (its identity in reports and
    for dependencies); ``signers`` the trust anchors whose signatures verified. Severable members
    are resolved: inline, or from the envelope after their digest matched; ``None`` when absent.
    """

    envelope: Envelope
    digest: Digest
    signers: tuple[TrustAnchor, ...]
    dependency_resolution: CommandSequence | None = None
    payload_fetch: CommandSequence | None = None
    candidate_verification: CommandSequence | None = None
    install: CommandSequence | None = None
    text: Text | None = None
    severed: frozenset[int] = frozenset()

    @property
    def manifest(self) -> Manifest:
        """The verified SUIT_Manifest."""
        return self.envelope.manifest


def verify_envelope(data: bytes, anchors: TrustAnchors, *,
                    limits: Limits = codec.DEFAULT_LIMITS) -> VerifiedManifest:
    """Verify a SUIT envelope against the device's trust anchors.

    Raises:
        DecodeError: the envelope is malformed or over a limit.
        AuthenticationError: a digest, signature or MAC did not verify, or no trusted key signed.
        PolicyError: a required authority did not sign, a signer acted outside its scope, or an
            algorithm is not accepted.
    """
    # manifest §6.2: verify the signature before parsing the manifest, so that the manifest
    # parser only ever sees authenticated bytes.
    parts = codec.decode_envelope_parts(data, limits=limits)
    signers = _authenticate(parts.authentication, parts.manifest_bytes, anchors)
    manifest = codec.decode_manifest(parts.manifest_bytes, limits=limits)
    return _accept(parts.with_manifest(manifest), signers, anchors, limits)


def verify_decoded(envelope: Envelope, anchors: TrustAnchors, *,
                   limits: Limits = codec.DEFAULT_LIMITS) -> VerifiedManifest:
    """``verify_envelope`` for an envelope already decoded (by the same strict codec)."""
    signers = _authenticate(envelope.authentication, envelope.manifest_bytes, anchors)
    return _accept(envelope, signers, anchors, limits)


def _authenticate(auth: Authentication, manifest_bytes: bytes,
                  anchors: TrustAnchors) -> tuple[TrustAnchor, ...] | None:
    """Check the manifest digest and the authentication blocks; return who signed (``None``:
    no current key, but the manifest's digest is recorded in ``anchors.recorded``)."""
    # manifest §8.3: the SUIT_Digest covers the bstr-wrapped manifest as carried in the envelope.
    if auth.digest.algorithm not in anchors.digest_algorithms:
        name = crypto.algorithm_name(auth.digest.algorithm)
        raise PolicyError(f"manifest digest algorithm {name} is not accepted")
    actual = _digest(auth.digest.algorithm, cbor.wrap(manifest_bytes))
    if not hmac.compare_digest(actual, auth.digest.value):
        raise AuthenticationError(f"manifest digest mismatch: the authentication wrapper says "
                                  f"{auth.digest.value.hex()}, the manifest hashes to "
                                  f"{actual.hex()}")
    try:
        return _check_blocks(auth.blocks, auth.digest_bytes, anchors)
    except (AuthenticationError, PolicyError):
        # docs/keys.md: a running image whose signer a rotation revoked keeps booting; the
        # device recorded its manifest's digest when it still verified.
        if auth.digest.algorithm == _SHA256 and actual in anchors.recorded:
            return None
        raise


def _digest(algorithm: int, data: bytes) -> bytes:
    # The same SHA-256 as crypto.digest, from hashlib: without the per-call set-up of a
    # cryptography Hash object, which costs more than hashing a small manifest.
    if algorithm == _SHA256:
        return hashlib.sha256(data).digest()
    return crypto.digest(algorithm, data)


_SHA256 = int(CoseAlg.SHA256)


def _accept(envelope: Envelope, signers: tuple[TrustAnchor, ...] | None,
            anchors: TrustAnchors, limits: Limits) -> VerifiedManifest:
    """The checks that need the parsed manifest: signer policy, version, severable members
    (``signers`` ``None``: a recorded manifest, which met the policy of its time)."""
    if signers is None:
        signers = ()
    else:
        _check_policy(envelope.manifest, signers, anchors)
    # manifest §8.1/§8.4.1: only version 1 is defined.
    if envelope.manifest.version != 1:
        raise PolicyError(f"manifest version {envelope.manifest.version} is not supported; "
                          "expected 1")
    return _resolve_severable(envelope, signers, limits)


def _check_blocks(blocks: Sequence[bytes], payload: bytes,
                  anchors: TrustAnchors) -> tuple[TrustAnchor, ...]:
    # manifest §8.3: "The Manifest Processor requires a SUIT_Authentication_Block to be present."
    if not blocks:
        raise AuthenticationError("the envelope carries no authentication block (unsigned)")
    signed: list[TrustAnchor] = []
    refused: list[str] = []
    for index, raw in enumerate(blocks, start=1):
        path = _BLOCK_PATHS[index] if index < len(_BLOCK_PATHS) else \
            f"envelope.authentication-wrapper[{index}]"
        block = cose.decode_auth_block(raw, path=path)
        if block.payload is not None:
            # manifest §8.3: the payload is detached (the SUIT_Digest); it must be nil.
            raise DecodeError(path, "COSE payload must be nil (detached SUIT_Digest)")
        candidates = _candidates(block, anchors)
        if not candidates:
            # The trust anchor fixes the algorithm; the message never chooses its own.
            refused.append(f"block {index}: algorithm {crypto.algorithm_name(block.algorithm)} is "
                           "not accepted by any trust anchor")
            continue
        for anchor in candidates:
            try:
                cose.verify_detached(block, payload, anchor.key)
            except (AuthenticationError, PolicyError):
                if block.key_id is not None and anchor.key.key_id == block.key_id:
                    raise AuthenticationError(f"authentication block {index} (key id "
                                              f"{block.key_id.hex()}) does not verify") from None
                continue
            if anchor not in signed:
                signed.append(anchor)
            break
        else:
            refused.append(f"block {index} ({crypto.algorithm_name(block.algorithm)}) verifies "
                           "with no trusted key")
    if not signed:
        revoked = _revoked_signer(blocks, payload, anchors)
        if revoked is not None:
            raise AuthenticationError(revoked)
        raise AuthenticationError("no authentication block verifies with a trusted key: "
                                  + "; ".join(refused))
    return tuple(signed)


def _revoked_signer(blocks: Sequence[bytes], payload: bytes,
                    anchors: TrustAnchors) -> str | None:
    """Which revoked key signed a refused manifest, for the error (``None``: none of them)."""
    for index, raw in enumerate(blocks, start=1):
        block = cose.decode_auth_block(raw, path=f"envelope.authentication-wrapper[{index}]")
        for key in anchors.revoked:
            if block.algorithm not in key.algorithms:
                continue
            try:
                cose.verify_detached(block, payload, key)
            except (AuthenticationError, PolicyError):
                continue
            return (f"authentication block {index} is signed by a revoked key (revoked by "
                    f"the device's trust anchors, version {anchors.version}); a revoked key "
                    "is never trusted again")
    return None


_BLOCK_PATHS = tuple(f"envelope.authentication-wrapper[{i}]" for i in range(9))


def _candidates(block: cose.CoseSign1 | cose.CoseMac0,
                anchors: TrustAnchors) -> list[TrustAnchor]:
    alg = block.algorithm
    out = [a for a in anchors.anchors if alg in a.key.algorithms]
    if block.key_id is not None:
        named = [a for a in out if a.key.key_id == block.key_id]
        if named:
            return named
    return out


def addressed_components(manifest: Manifest) -> tuple[ComponentIdentifier, ...]:
    """Every component a manifest can write: its components, and the extra component slots
    that dependencies beyond them open under their prefix (suit-spec.md §16 item 7)."""
    if not manifest.common.dependencies:
        return manifest.common.components
    components = list(manifest.common.components)
    for index, meta in sorted((manifest.common.dependencies or {}).items()):
        if index >= len(manifest.common.components) and meta.prefix is not None:
            components.append(meta.prefix)
    return tuple(components)


def _check_policy(manifest: Manifest, signers: Sequence[TrustAnchor],
                  anchors: TrustAnchors) -> None:
    # RFC 9124 REQ.SEC.ACCESS_CONTROL: a signer's scope covers every component it can write,
    # dependency slots included.
    components = addressed_components(manifest)
    if any(c[: len(ANCHORS_COMPONENT)] == ANCHORS_COMPONENT for c in components):
        _check_anchors_policy(components, signers, anchors)
        return
    for anchor in signers:
        if anchor.components is None:
            continue  # any component
        for component in components:
            if not anchor.may_update(component):
                named = f" ({anchor.name})" if anchor.name else ""
                raise PolicyError(f"signer of role {anchor.role!r}{named} may not update "
                                  f"component {_cid(component)}; its scope is "
                                  + ", ".join(_cid(c) for c in anchor.components))
    if not anchors.required_roles:
        return
    roles = {a.role for a in signers}
    missing = [r for r in anchors.required_roles if r not in roles]
    if missing:
        raise PolicyError("missing a valid signature from: " + ", ".join(missing)
                          + f" (signed by: {', '.join(sorted(roles))})")


def _check_anchors_policy(components: Sequence[ComponentIdentifier],
                          signers: Sequence[TrustAnchor], anchors: TrustAnchors) -> None:
    """A trust-anchor update (docs/keys.md): the anchors component alone, signed by
    ``root_threshold`` distinct root keys of the anchors it replaces."""
    if tuple(components) != (ANCHORS_COMPONENT,):
        raise PolicyError(f"a manifest that updates the trust anchors {_cid(ANCHORS_COMPONENT)} "
                          f"must address nothing else; it addresses "
                          f"{', '.join(_cid(c) for c in components)}")
    roots = sum(1 for a in signers if a.role == ROOT_ROLE)
    if roots < anchors.root_threshold:
        signed = ", ".join(sorted({a.role for a in signers}))
        raise PolicyError(f"a trust-anchor update needs signatures of {anchors.root_threshold} "
                          f"key(s) of role {ROOT_ROLE!r}, it has {roots} (signed by: {signed})")


def _cid(component: ComponentIdentifier) -> str:
    return "[" + ", ".join(f"h'{p.hex()}'" for p in component) + "]"


_SEVERABLE_SEQUENCE_FIELDS: dict[int, str] = {
    ManifestKey.DEPENDENCY_RESOLUTION: "dependency_resolution",
    ManifestKey.PAYLOAD_FETCH: "payload_fetch",
    ManifestKey.CANDIDATE_VERIFICATION: "candidate_verification",
    ManifestKey.INSTALL: "install",
}


def _resolve_severable(envelope: Envelope, signers: tuple[TrustAnchor, ...],
                       limits: Limits) -> VerifiedManifest:
    manifest = envelope.manifest
    members = (manifest.dependency_resolution, manifest.payload_fetch,
               manifest.candidate_verification, manifest.install, manifest.text, manifest.coswid)
    if not envelope.severable and Digest not in map(type, members):
        # Nothing severed and nothing to check: every member is inline (or absent).
        return VerifiedManifest.from_fields({
            "envelope": envelope, "digest": envelope.authentication.digest, "signers": signers,
            "dependency_resolution": manifest.dependency_resolution,
            "payload_fetch": manifest.payload_fetch,
            "candidate_verification": manifest.candidate_verification,
            "install": manifest.install, "text": manifest.text})
    resolved, severed = check_severable(envelope, limits=limits)
    return VerifiedManifest(
        envelope=envelope,
        digest=envelope.authentication.digest,
        signers=signers,
        severed=severed,
        **resolved,  # type: ignore[arg-type]
    )


def check_severable(envelope: Envelope, *, limits: Limits = codec.DEFAULT_LIMITS
                    ) -> tuple[dict[str, object], frozenset[int]]:
    """Check every severable member carried in the envelope against its digest in the manifest.

    Returns the resolved members by field name (inline, or decoded from the envelope) and the
    keys of members that were severed (digest present, content absent).

    Raises:
        AuthenticationError: a member does not match its digest, or has no digest at all.
        DecodeError: a member that matched its digest is malformed.
    """
    manifest = envelope.manifest
    resolved: dict[str, object] = {}
    severed: set[int] = set()
    # manifest §5.4: envelope elements without a matching digest in the manifest must not be used.
    for key in envelope.severable:
        member = getattr(manifest, _member_field(key))
        if not isinstance(member, Digest):
            raise AuthenticationError(f"envelope member {name_of(ManifestKey, key)} has no digest "
                                      "in the manifest")
    for key, name in _SEVERABLE_MEMBER_FIELDS:
        member = getattr(manifest, name)
        if not isinstance(member, Digest):
            if name != "coswid":
                resolved[name] = member
            continue
        content = envelope.severable.get(key)
        if content is None:
            severed.add(key)
            continue
        path = f"envelope.{name_of(ManifestKey, key)}"
        # manifest §8.4.12: the digest covers the bstr-wrapped member.
        actual = _digest(member.algorithm, cbor.wrap(content))
        if not hmac.compare_digest(actual, member.value):
            raise AuthenticationError(f"{path}: digest mismatch: the manifest says "
                                      f"{member.value.hex()}, the member hashes to "
                                      f"{actual.hex()}")
        if key == ManifestKey.TEXT:
            resolved[name] = codec.decode_text(content, path=path, limits=limits)
        elif key != ManifestKey.COSWID:
            resolved[name] = codec.decode_command_sequence(content, path=path, limits=limits)
    return resolved, frozenset(severed)


_SEVERABLE_MEMBER_FIELDS: tuple[tuple[int, str], ...] = (
    *_SEVERABLE_SEQUENCE_FIELDS.items(), (ManifestKey.TEXT, "text"),
    (ManifestKey.COSWID, "coswid"))


def _member_field(key: int) -> str:
    if key == ManifestKey.TEXT:
        return "text"
    if key == ManifestKey.COSWID:
        return "coswid"
    return _SEVERABLE_SEQUENCE_FIELDS[key]
