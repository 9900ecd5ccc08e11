"""Trust-anchor rotations, the author's side (docs/keys.md).

``next_document`` edits a trust-anchor document (``suitkit.core.anchors``) into the next
version: keys added, replaced, removed or revoked, roles and scopes changed, required roles and
the root threshold set; the result is checked as a device will check it. ``rotation_envelope``
wraps a document in an unsigned SUIT envelope for the anchors component (the document is its
integrated payload ``#anchors.cbor``), carrying earlier rotations (``chain``) for devices that
missed them; it is then signed by root keys of the version it replaces (``suitkit sign``).

Not here: how a device checks and keeps the document (``suitkit.device.anchors``).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from suitkit.author.describe import parse_description
from suitkit.core import codec, crypto
from suitkit.core.anchors import (
    ANCHORS_COMPONENT,
    CHAIN_PREFIX,
    DOCUMENT_URI,
    AnchorKey,
    AnchorsDocument,
    fingerprint,
    parse_document,
)
from suitkit.core.model import ComponentIdentifier, Envelope
from suitkit.errors import DecodeError, PolicyError

__all__ = ["CHAIN_PREFIX", "DOCUMENT_URI", "Edits", "initial_document", "next_document",
           "rotation_envelope"]


@dataclass(frozen=True, slots=True)
class Edits:
    """What changes from one anchor version to the next. Keys are loaded public keys."""

    add: Sequence[tuple[str, crypto.Verifier]] = ()
    """``(role, key)`` to trust."""
    revoke: Sequence[crypto.Verifier] = ()
    """Keys never trusted again (removed and listed as revoked, for good)."""
    remove: Sequence[crypto.Verifier] = ()
    """Keys no longer trusted, not revoked (may be added again later)."""
    replace: Sequence[tuple[crypto.Verifier, crypto.Verifier]] = ()
    """``(old, new)``: ``new`` takes ``old``'s role and scope, ``old`` is revoked."""
    roles: Sequence[tuple[crypto.Verifier, str]] = ()
    scopes: Sequence[tuple[crypto.Verifier, tuple[ComponentIdentifier, ...] | None]] = ()
    """``(key, component-id prefixes)``; ``None``: any component."""
    required_roles: Sequence[str] | None = None
    root_threshold: int | None = None


def next_document(base: AnchorsDocument, edits: Edits) -> AnchorsDocument:
    """The document of version ``base.version + 1`` after ``edits``, checked.

    Raises:
        PolicyError: an edit names a key the document does not have (or has already), or the
            result would leave a device unable to sign anything.
        DecodeError: the result is not a valid document.
    """
    keys: list[AnchorKey] = list(base.keys)
    revoked: list[bytes] = list(base.revoked)

    def index_of(key: crypto.Verifier, what: str) -> int:
        fp = fingerprint(key)
        for i, k in enumerate(keys):
            if fingerprint(k.verifier()) == fp:
                return i
        raise PolicyError(f"{what}: the key {fp.hex()[:16]} is not in anchors version "
                          f"{base.version}")

    def encoded(key: crypto.Verifier) -> bytes:
        return AnchorsDocument.of([("author", key, None)], version=0, check=False).keys[0].key

    for old, new in edits.replace:
        i = index_of(old, "--replace")
        keys[i] = AnchorKey(encoded(new), keys[i].role, keys[i].components)
        revoked.append(encoded(old))
    for key in edits.revoke:
        keys.pop(index_of(key, "--revoke"))
        revoked.append(encoded(key))
    for key in edits.remove:
        keys.pop(index_of(key, "--remove"))
    for role, key in edits.add:
        if any(fingerprint(k.verifier()) == fingerprint(key) for k in keys):
            raise PolicyError(f"--add: the key {fingerprint(key).hex()[:16]} is already in "
                              f"anchors version {base.version}")
        keys.append(AnchorKey(encoded(key), role))
    for key, role in edits.roles:
        i = index_of(key, "--role")
        keys[i] = AnchorKey(keys[i].key, role, None if role == "root" else keys[i].components)
    for key, scope in edits.scopes:
        i = index_of(key, "--scope")
        keys[i] = AnchorKey(keys[i].key, keys[i].role, scope)
    doc = AnchorsDocument(
        base.version + 1, base.version, tuple(keys),
        tuple(edits.required_roles) if edits.required_roles is not None
        else base.required_roles,
        edits.root_threshold if edits.root_threshold is not None else base.root_threshold,
        tuple(revoked))
    return parse_document(doc.encode(), where=f"anchors version {doc.version}")


def initial_document(keys: Sequence[tuple[str, crypto.Verifier]], *,
                     required_roles: Sequence[str] = (), root_threshold: int = 1
                     ) -> AnchorsDocument:
    """The version-0 document of devices made with ``device init --trust-anchor ROLE=KEY``
    (the base of their first rotation)."""
    return AnchorsDocument.of([(role, key, None) for role, key in keys], version=0,
                              required_roles=required_roles, root_threshold=root_threshold)


def rotation_envelope(document: AnchorsDocument, *, vendor_id: uuid.UUID,
                      class_id: uuid.UUID, chain: Sequence[bytes] = ()) -> Envelope:
    """An unsigned envelope that installs ``document`` on devices of that vendor and class.

    ``chain``: the signed envelopes of earlier rotations (any order), carried for devices that
    missed them; each must be a rotation to a version below ``document.version``.

    Raises:
        DecodeError: a chain member is not a rotation envelope below this version.
    """
    if document.version < 1:
        raise PolicyError("version 0 is what device init wrote; a rotation starts at 1")
    carried: dict[str, bytes] = {}
    for i, data in enumerate(chain):
        version = _rotation_version(data, f"--chain[{i}]")
        if version >= document.version:
            raise DecodeError(f"--chain[{i}]", f"rotation to version {version}; the chain "
                              f"carries versions below {document.version}")
        if f"{CHAIN_PREFIX}{version}" in carried:
            raise DecodeError(f"--chain[{i}]", f"a second rotation to version {version}")
        carried[f"{CHAIN_PREFIX}{version}"] = data
    with tempfile.TemporaryDirectory(prefix="suitkit-anchors-") as tmp:
        (Path(tmp) / DOCUMENT_URI[1:]).write_bytes(document.encode())
        description = parse_description({
            "sequence-number": document.version,
            "vendor-id": str(vendor_id), "class-id": str(class_id),
            "components": [{"id": [part.decode() for part in ANCHORS_COMPONENT],
                            "image": DOCUMENT_URI[1:], "invoke": False}],
        }, base=Path(tmp), source="anchors rotation")
    integrated: Mapping[str, bytes] = {**description.integrated, **carried}
    return codec.build_envelope(description.manifest, integrated=integrated)


def _rotation_version(data: bytes, where: str) -> int:
    """The anchor version a signed rotation envelope installs (read, not verified: the
    device verifies each link under the anchors it replaces)."""
    try:
        envelope = codec.decode_envelope(data)
    except DecodeError as e:
        raise DecodeError(where, f"not an envelope: {e}") from None
    if envelope.manifest.common.components != (ANCHORS_COMPONENT,):
        raise DecodeError(where, "not a trust-anchor rotation (its component is not "
                          "['suitkit', 'anchors'])")
    if not envelope.authentication.blocks:
        raise DecodeError(where, "unsigned: sign each rotation before carrying it")
    payload = envelope.integrated.get(DOCUMENT_URI)
    if payload is None:
        raise DecodeError(where, f"carries no {DOCUMENT_URI}")
    return parse_document(payload, where=f"{where} {DOCUMENT_URI}").version
