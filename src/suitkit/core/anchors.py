"""The trust-anchor document: a device's keys, roles, scopes and revocations as a SUIT payload.

A device's trust anchors are a component of their own, ``ANCHORS_COMPONENT``
(``['suitkit', 'anchors']``, docs/keys.md). Its payload is an ``AnchorsDocument``, a small,
strict, bounded, versioned CBOR map (text keys)::

    {
      "format": 1,
      "version": uint,                 ; the anchor version (0: what device init wrote)
      "previous": uint,                ; the version it replaces: version - 1
      "keys": [+ {"key": bstr,         ; a public COSE_Key (RFC 9052 §7), no private part
                  "role": tstr,        ; "root", "author", "operator", ...
                  ? "components": [+ [+ bstr]]}],   ; scope (component-id prefixes)
      "required-roles": [* tstr],      ; every one of them signs firmware manifests
      "root-threshold": uint,          ; root signatures an anchors manifest needs
      "revoked": [* bstr],             ; public COSE_Keys revoked for good
    }

A rotation is a SUIT manifest for ``ANCHORS_COMPONENT`` carrying the next document, signed by
``root-threshold`` keys of role ``root`` of the anchors it replaces (TUF's root rotation chain).
``check_successor`` is the chain rule: version N+1 replaces exactly N, and every key revoked in
N stays revoked. ``parse_document`` refuses a document that would leave the device unable to
sign anything (no root key, fewer root keys than the threshold, no key for firmware, a required
role without a key) or that trusts a revoked key.

Root keys sign anchors manifests only: ``trust_anchors`` scopes them to ``ANCHORS_COMPONENT``.
Symmetric (HMAC) keys are refused: a document travels in clear, a MAC key is a secret.

Not here: where a device keeps its document (``suitkit.device.anchors``), the verification of
the manifest that carries it (``suitkit.core.verify``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from suitkit.core import cbor, crypto
from suitkit.core.model import ComponentIdentifier
from suitkit.core.verify import ANCHORS_COMPONENT, ROOT_ROLE, TrustAnchor, TrustAnchors
from suitkit.errors import DecodeError, KeyMaterialError, PolicyError

__all__ = [
    "ANCHORS_COMPONENT",
    "CHAIN_PREFIX",
    "DOCUMENT_URI",
    "FORMAT",
    "MAX_DOCUMENT_BYTES",
    "MAX_KEYS",
    "MAX_REVOKED",
    "ROOT_ROLE",
    "AnchorKey",
    "AnchorsDocument",
    "check_successor",
    "fingerprint",
    "parse_document",
]

FORMAT = 1
CHAIN_PREFIX = "#suitkit-anchors-chain/"
"""Integrated payloads ``CHAIN_PREFIX + version`` of a rotation envelope: the signed envelopes
of earlier rotations, for a device that missed them (``suitkit anchors rotate --chain``)."""
DOCUMENT_URI = "#anchors.cbor"
"""The integrated payload of a rotation envelope made by ``suitkit anchors rotate``: the
document (any name works for a device; this one is what the tools read back)."""
MAX_DOCUMENT_BYTES = 16 * 1024
MAX_KEYS = 16
MAX_REVOKED = 64
MAX_REQUIRED_ROLES = 8
MAX_SCOPES = 16
_MAX_ROLE = 32
_MEMBERS = {"format", "version", "previous", "keys", "required-roles", "root-threshold",
            "revoked"}
_KEY_MEMBERS = {"key", "role", "components"}
_UINT64 = (1 << 64) - 1


def fingerprint(key: crypto.Verifier) -> bytes:
    """SHA-256 of a public key's material (its COSE_Key without kid and alg): the same key
    has one fingerprint whatever its key id or algorithm narrowing."""
    cose_key = _cose_key(key)
    return hashlib.sha256(cbor.encode({k: v for k, v in cose_key.items()
                                       if k not in (2, 3)})).digest()


def _cose_key(key: crypto.Verifier) -> dict[int, object]:
    to_cose = getattr(key, "to_cose_key", None)
    if to_cose is None:
        raise KeyMaterialError(f"a {type(key).__name__} cannot be written as a COSE_Key")
    out = to_cose()
    if not isinstance(out, dict):
        raise KeyMaterialError("expected a COSE_Key map")
    return out


@dataclass(frozen=True, slots=True)
class AnchorKey:
    """One trusted key of a document: its encoded COSE_Key, role and scope."""

    key: bytes
    role: str
    components: tuple[ComponentIdentifier, ...] | None = None

    def verifier(self) -> crypto.Verifier:
        """The key, loaded (checked by ``parse_document``)."""
        return crypto.load_public_key(self.key)


@dataclass(frozen=True, slots=True)
class AnchorsDocument:
    """A parsed and checked trust-anchor document (``parse_document``)."""

    version: int
    previous: int
    keys: tuple[AnchorKey, ...]
    required_roles: tuple[str, ...] = ()
    root_threshold: int = 1
    revoked: tuple[bytes, ...] = ()
    """Public COSE_Keys revoked for good."""

    def encode(self) -> bytes:
        """The canonical CBOR encoding (what an author ships, byte for byte)."""
        keys = []
        for k in self.keys:
            entry: dict[str, object] = {"key": k.key, "role": k.role}
            if k.components is not None:
                entry["components"] = [list(c) for c in k.components]
            keys.append(entry)
        return cbor.encode({"format": FORMAT, "version": self.version,
                            "previous": self.previous, "keys": keys,
                            "required-roles": list(self.required_roles),
                            "root-threshold": self.root_threshold,
                            "revoked": list(self.revoked)})

    def digest(self) -> bytes:
        """SHA-256 of the encoding: the document's identity in an inventory."""
        return hashlib.sha256(self.encode()).digest()

    def revoked_fingerprints(self) -> frozenset[bytes]:
        return frozenset(fingerprint(crypto.load_public_key(k)) for k in self.revoked)

    def trust_anchors(self, *, recorded: frozenset[bytes] = frozenset()) -> TrustAnchors:
        """The verification policy of this document. Root keys are scoped to the anchors
        component; ``recorded``: manifest digests accepted at boot whatever signed them
        (the running images when a rotation revoked their signer, docs/keys.md)."""
        anchors = tuple(
            TrustAnchor(k.verifier(), role=k.role,
                        components=(ANCHORS_COMPONENT,) if k.role == ROOT_ROLE else k.components)
            for k in self.keys)
        return TrustAnchors(anchors, self.required_roles, root_threshold=self.root_threshold,
                            revoked=tuple(crypto.load_public_key(k) for k in self.revoked),
                            recorded=recorded, version=self.version)

    @classmethod
    def of(cls, keys: Sequence[tuple[str, crypto.Verifier,
                                     tuple[ComponentIdentifier, ...] | None]], *,
           version: int, required_roles: Sequence[str] = (), root_threshold: int = 1,
           revoked: Sequence[crypto.Verifier] = (), check: bool = True) -> AnchorsDocument:
        """A document from loaded keys ``(role, key, scope)``; checked unless ``check=False``
        (the version 0 of a device made before anchors were a component may lack a root key).

        Raises:
            PolicyError, KeyMaterialError: as ``parse_document``.
        """
        doc = cls(version, max(version - 1, 0),
                  tuple(AnchorKey(_encode_key(key), role, scope) for role, key, scope in keys),
                  tuple(required_roles), root_threshold,
                  tuple(_encode_key(k) for k in revoked))
        if check:
            return parse_document(doc.encode())
        return doc


def _encode_key(key: crypto.Verifier) -> bytes:
    if isinstance(key, crypto.HmacKey):
        raise KeyMaterialError("an HMAC key is a shared secret: it cannot travel in a trust-"
                               "anchor document (use a public key)")
    return cbor.encode(_cose_key(key))


def parse_document(data: bytes, *, where: str = "anchors document") -> AnchorsDocument:
    """Decode and check a trust-anchor document.

    Raises:
        DecodeError: not a document (malformed, over a bound, a member of the wrong type).
        PolicyError: a document that would leave the device unable to sign anything, or that
            trusts a key it revokes.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DecodeError(where, f"{len(data)} bytes; at most {MAX_DOCUMENT_BYTES}")
    doc = cbor.decode(data, path=where, max_depth=6)
    if not isinstance(doc, Mapping):
        raise DecodeError(where, "expected a map")
    unknown = sorted(str(k) for k in doc if k not in _MEMBERS)
    if unknown:
        raise DecodeError(where, f"unknown member {unknown[0][:40]!r}")
    if doc.get("format") != FORMAT or isinstance(doc.get("format"), bool):
        raise DecodeError(f"{where}.format",
                          f"expected {FORMAT}, got {str(doc.get('format'))[:20]}")
    version = _uint(doc.get("version"), f"{where}.version")
    previous = _uint(doc.get("previous"), f"{where}.previous")
    if version > 0 and previous != version - 1:
        raise DecodeError(f"{where}.previous", f"version {version} must replace version "
                          f"{version - 1}, it names {previous}")
    raw_keys = _list(doc.get("keys"), f"{where}.keys", 1, MAX_KEYS)
    keys: list[AnchorKey] = []
    seen: dict[bytes, int] = {}
    for i, entry in enumerate(raw_keys):
        path = f"{where}.keys[{i}]"
        key, verifier = _key_entry(entry, path)
        fp = fingerprint(verifier)
        if fp in seen:
            raise DecodeError(path, f"the same key as keys[{seen[fp]}]")
        seen[fp] = i
        keys.append(key)
    required = tuple(_role(r, f"{where}.required-roles[{i}]") for i, r in enumerate(
        _list(doc.get("required-roles"), f"{where}.required-roles", 0, MAX_REQUIRED_ROLES)))
    threshold = _uint(doc.get("root-threshold"), f"{where}.root-threshold")
    revoked_raw = _list(doc.get("revoked"), f"{where}.revoked", 0, MAX_REVOKED)
    revoked: list[bytes] = []
    gone: set[bytes] = set()
    for i, item in enumerate(revoked_raw):
        path = f"{where}.revoked[{i}]"
        if not isinstance(item, bytes):
            raise DecodeError(path, "expected a public COSE_Key as a byte string")
        fp = fingerprint(_load(item, path))
        if fp in gone:
            raise DecodeError(path, "revoked twice")
        gone.add(fp)
        revoked.append(item)
    document = AnchorsDocument(version, previous, tuple(keys), required, threshold,
                               tuple(revoked))
    _check_usable(document, seen, gone, where)
    return document


def _check_usable(doc: AnchorsDocument, fingerprints: Mapping[bytes, int],
                  revoked: set[bytes], where: str) -> None:
    """Refuse a document after which the device could not be updated or rotated again."""
    for fp, index in fingerprints.items():
        if fp in revoked:
            raise PolicyError(f"{where}.keys[{index}]: this key is revoked (revocation is "
                              "final: a revoked key is never trusted again)")
    roles = [k.role for k in doc.keys]
    roots = roles.count(ROOT_ROLE)
    if roots == 0:
        raise PolicyError(f"{where}: no key of role {ROOT_ROLE!r}: the anchors could never be "
                          "rotated again")
    if not 1 <= doc.root_threshold <= roots:
        raise PolicyError(f"{where}.root-threshold: {doc.root_threshold} root signatures "
                          f"required, the document has {roots} root key(s)")
    if roots == len(roles):
        raise PolicyError(f"{where}: every key is a {ROOT_ROLE!r} key: no key could sign "
                          "firmware (root keys sign trust-anchor updates only)")
    for role in doc.required_roles:
        if role == ROOT_ROLE:
            raise PolicyError(f"{where}.required-roles: {ROOT_ROLE!r} keys sign trust-anchor "
                              "updates only; they cannot be required on firmware")
        if role not in roles:
            raise PolicyError(f"{where}.required-roles: no key has the role {role!r}: no "
                              "firmware could be signed")


def check_successor(current: AnchorsDocument, new: AnchorsDocument) -> None:
    """The chain rule: ``new`` replaces ``current`` (version N+1 names N as previous) and
    keeps every revocation of it.

    Raises:
        PolicyError: out of order (a missed or an old rotation) or a revocation dropped.
    """
    if new.previous != current.version or new.version != current.version + 1:
        if new.version <= current.version:
            raise PolicyError(f"anchors version {new.version} is not newer than the device's "
                              f"version {current.version} (an old rotation)")
        raise PolicyError(f"anchors version {new.version} replaces version {new.previous}; the "
                          f"device has version {current.version}: install the rotations "
                          f"{current.version + 1} to {new.version - 1} first (or a rotation "
                          "that carries them: suitkit anchors rotate --chain)")
    dropped = current.revoked_fingerprints() - new.revoked_fingerprints()
    if dropped:
        raise PolicyError(f"anchors version {new.version} drops {len(dropped)} revocation(s) "
                          f"of version {current.version}; revocation is final")


def _key_entry(entry: object, path: str) -> tuple[AnchorKey, crypto.Verifier]:
    if not isinstance(entry, Mapping):
        raise DecodeError(path, "expected a map {key, role, components?}")
    unknown = sorted(str(k) for k in entry if k not in _KEY_MEMBERS)
    if unknown:
        raise DecodeError(path, f"unknown member {unknown[0][:40]!r}")
    raw = entry.get("key")
    if not isinstance(raw, bytes):
        raise DecodeError(f"{path}.key", "expected a public COSE_Key as a byte string")
    verifier = _load(raw, f"{path}.key")
    role = _role(entry.get("role"), f"{path}.role")
    scope: tuple[ComponentIdentifier, ...] | None = None
    if "components" in entry:
        if role == ROOT_ROLE:
            raise DecodeError(f"{path}.components", "a root key's scope is the anchors "
                              "component; give it none")
        items = _list(entry["components"], f"{path}.components", 1, MAX_SCOPES)
        parts_list = []
        for j, cid in enumerate(items):
            if not isinstance(cid, list | tuple) or not 1 <= len(cid) <= 8 \
                    or not all(isinstance(p, bytes) and len(p) <= 64 for p in cid):
                raise DecodeError(f"{path}.components[{j}]", "expected a component id: 1 to 8 "
                                  "byte strings")
            parts_list.append(tuple(cid))
        if any(c[: len(ANCHORS_COMPONENT)] == ANCHORS_COMPONENT for c in parts_list):
            raise DecodeError(f"{path}.components", "only root keys update the anchors "
                              "component")
        scope = tuple(parts_list)
    return AnchorKey(raw, role, scope), verifier


def _load(raw: bytes, path: str) -> crypto.Verifier:
    try:
        key = crypto.load_public_key(raw)
    except KeyMaterialError as e:
        raise DecodeError(path, f"not a public key: {e}") from None
    if isinstance(key, crypto.HmacKey):
        raise DecodeError(path, "an HMAC key is a shared secret; a document carries public keys")
    return key


def _uint(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64:
        raise DecodeError(path, f"expected an unsigned integer, got {str(value)[:20]}")
    return value


def _list(value: object, path: str, least: int, most: int) -> Sequence[object]:
    if not isinstance(value, list | tuple) or not least <= len(value) <= most:
        raise DecodeError(path, f"expected a list of {least} to {most} items")
    return value


def _role(value: object, path: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_ROLE or not value.isascii() \
            or not all(c.isalnum() or c in "-_" for c in value):
        raise DecodeError(path, f"expected a role name (1 to {_MAX_ROLE} letters, digits, - "
                          f"or _), got {str(value)[:40]!r}")
    return value
