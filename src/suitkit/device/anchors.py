"""Where a device keeps its trust anchors once they are a component (docs/keys.md).

``anchors.cbor`` in the device folder holds the current trust-anchor document
(``suitkit.core.anchors``) and the digests of the manifests the device recorded when a rotation
revoked their signer (its running images: they keep booting, nothing new signed by a revoked
key is accepted)::

    {"format": 1, "body": bstr .cbor [document: bstr, recorded: [* bstr .size 32]],
     "sha256": bstr}

It is written whole, atomically and durably (``fileio.atomic_write``: temp file, fsync, rename,
directory fsync), so a power cut leaves the old anchors or the new ones, never a mix; it is
checked at every read (the SHA-256 over the body, then ``parse_document``) and a damaged store
is refused (fail closed: a device never falls back to older anchors, whose revocations may be
fewer). A folder without the file has the anchors ``device init`` wrote (``device.json`` and
``anchors/``), version 0, until its first rotation.

Reads are cached by the file's identity (inode, size, modification time), so the bootloader's
verifier, which asks at every slot it checks, parses the file once per change.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from suitkit.core import cbor
from suitkit.core.anchors import AnchorsDocument, parse_document
from suitkit.core.verify import TrustAnchors
from suitkit.errors import DecodeError, KeyMaterialError, SuitError
from suitkit.fileio import atomic_write

__all__ = ["STORE", "StoredAnchors", "read_store", "write_store"]

STORE = "anchors.cbor"
FORMAT = 1
MAX_RECORDED = 32
"""Manifests recorded at a rotation: two slots of at most a boot set's images (and margin)."""
_MAX_STORE = 64 * 1024


@dataclass(frozen=True, slots=True)
class StoredAnchors:
    """The anchors a device keeps: its document (and its bytes) and the recorded manifests."""

    document: AnchorsDocument
    raw: bytes
    recorded: frozenset[bytes]
    anchors: TrustAnchors
    """The verification policy (the document's keys loaded once, with ``recorded``)."""

    def trust_anchors(self) -> TrustAnchors:
        return self.anchors


_cache: dict[str, tuple[tuple[int, int, int, int], StoredAnchors]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 256


def read_store(directory: Path) -> StoredAnchors | None:
    """The device's stored anchors, checked; ``None``: none stored (device init's, version 0).

    Raises:
        KeyMaterialError: the store is damaged or unreadable (naming the file and what is wrong).
    """
    path = directory / STORE
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KeyMaterialError(f"{path}: cannot read the trust anchors: {e.strerror}") from None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key = str(path)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    if st.st_size > _MAX_STORE:
        raise KeyMaterialError(f"{path}: {st.st_size} bytes; a trust-anchor store is at most "
                               f"{_MAX_STORE}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyMaterialError(f"{path}: cannot read the trust anchors: {e.strerror}") from None
    try:
        stored = _parse(data, str(path))
    except SuitError as e:
        raise KeyMaterialError(f"{path}: damaged trust-anchor store, refused (the device "
                               f"trusts no older anchors in its place): {e}") from None
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = (stamp, stored)
    return stored


def _parse(data: bytes, where: str) -> StoredAnchors:
    doc = cbor.decode(data, path=where, max_depth=4)
    if not isinstance(doc, dict) or set(doc) != {"format", "body", "sha256"} \
            or doc["format"] != FORMAT:
        raise DecodeError(where, f"expected {{format: {FORMAT}, body, sha256}}")
    body, digest = doc["body"], doc["sha256"]
    if not isinstance(body, bytes) or not isinstance(digest, bytes) \
            or not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise DecodeError(where, "its SHA-256 does not match its content")
    item = cbor.decode(body, path=f"{where}.body", max_depth=3)
    if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[0], bytes) \
            or not isinstance(item[1], list | tuple) or len(item[1]) > MAX_RECORDED \
            or not all(isinstance(d, bytes) and len(d) == 32 for d in item[1]):
        raise DecodeError(f"{where}.body", "expected [document, [* 32-byte digests]]")
    document = parse_document(item[0], where=f"{where} document")
    recorded = frozenset(item[1])
    return StoredAnchors(document, item[0], recorded, document.trust_anchors(recorded=recorded))


def encode_store(raw_document: bytes, recorded: Iterable[bytes]) -> bytes:
    """The bytes of a store holding ``raw_document`` and the ``recorded`` manifest digests."""
    body = cbor.encode([raw_document, sorted(set(recorded))])
    return cbor.encode({"format": FORMAT, "body": body,
                        "sha256": hashlib.sha256(body).digest()})


def write_store(directory: Path, raw_document: bytes, recorded: Iterable[bytes], *,
                crash: Callable[[str], None] | None = None) -> StoredAnchors:
    """Replace the device's anchors with ``raw_document`` (checked again here) and the
    ``recorded`` manifest digests, atomically and durably.

    Raises:
        DecodeError, PolicyError: not a usable document; too many recorded manifests.
        StorageError: the store could not be written (the old one is untouched).
    """
    recorded = frozenset(recorded)
    if len(recorded) > MAX_RECORDED:
        raise DecodeError(STORE, f"{len(recorded)} recorded manifests; at most {MAX_RECORDED}")
    document = parse_document(raw_document)
    data = encode_store(raw_document, recorded)
    if crash is not None:
        crash(f"anchors {STORE}")
    atomic_write(directory / STORE, data)
    return StoredAnchors(document, raw_document, recorded,
                         document.trust_anchors(recorded=recorded))
