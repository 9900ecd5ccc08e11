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

On the flash shapes (``mcu``, ``secure-split``, ``dual-cpu``) the same bytes live in a flash
area instead of the file (an :class:`AnchorMedium`, ``device.wiring``: two copies written in
turn, ``bootloader.records``): ``read_store`` and ``write_store`` take it as ``medium``. A
folder made before the area existed keeps its file until the first open copies it into the
area (``migrate_file``); while the area is empty the file (if any) is still what is read, so a
damaged file is refused there too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from suitkit.core import cbor
from suitkit.core.anchors import AnchorsDocument, parse_document
from suitkit.core.verify import TrustAnchors
from suitkit.errors import DecodeError, KeyMaterialError, SuitError
from suitkit.fileio import atomic_write

__all__ = ["STORE", "AnchorMedium", "StoredAnchors", "migrate_file", "read_store",
           "write_store"]

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


class AnchorMedium(Protocol):
    """Where a device keeps its anchor store's bytes other than ``anchors.cbor`` (a flash
    area): replaced as a whole, atomically and power-safely."""

    @property
    def where(self) -> str:
        """What it is, for messages (e.g. ``DEV: flash area of the trust anchors``)."""
        ...

    def load(self) -> bytes | None:
        """The stored bytes; ``None``: none stored yet.

        Raises:
            StorageError: damaged or unreadable.
        """
        ...

    def save(self, data: bytes) -> None:
        """Replace the stored bytes (the old ones or the new ones after a power cut).

        Raises:
            StorageError: it cannot be written (the old bytes are kept).
        """
        ...


_cache: dict[str, tuple[tuple[int, int, int, int], StoredAnchors]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 256


_medium_cache: dict[str, tuple[bytes, StoredAnchors]] = {}


def read_store(directory: Path, medium: AnchorMedium | None = None) -> StoredAnchors | None:
    """The device's stored anchors, checked; ``None``: none stored (device init's, version 0).
    ``medium``: the device keeps them there (a flash area), the file only until migrated.

    Raises:
        KeyMaterialError: the store is damaged or unreadable (naming the file and what is wrong).
    """
    if medium is not None:
        stored = _read_medium(medium)
        if stored is not None:
            return stored
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


def _read_medium(medium: AnchorMedium) -> StoredAnchors | None:
    try:
        data = medium.load()
    except SuitError as e:
        raise KeyMaterialError(f"{medium.where}: damaged trust-anchor store, refused (the "
                               f"device trusts no older anchors in its place): {e}") from None
    if data is None:
        return None
    digest = hashlib.sha256(data).digest()
    with _cache_lock:
        hit = _medium_cache.get(medium.where)
    if hit is not None and hit[0] == digest:
        return hit[1]
    try:
        stored = _parse(data, medium.where)
    except SuitError as e:
        raise KeyMaterialError(f"{medium.where}: damaged trust-anchor store, refused (the "
                               f"device trusts no older anchors in its place): {e}") from None
    with _cache_lock:
        if len(_medium_cache) >= _CACHE_MAX:
            _medium_cache.clear()
        _medium_cache[medium.where] = (digest, stored)
    return stored


def migrate_file(directory: Path, medium: AnchorMedium) -> bool:
    """Copy a folder's ``anchors.cbor`` into ``medium`` when the medium holds none yet (a
    folder made before the flash area); returns whether it did. The file stays until the
    caller has made the medium durable (``OpenDevice.save`` removes it then); while it stays,
    the medium is what is read.

    Raises:
        KeyMaterialError: the file is damaged (it is kept, and refused at every read).
        StorageError: the medium cannot be written.
    """
    try:
        if medium.load() is not None:
            return False
    except SuitError:
        return False  # a damaged area is refused at every read, never replaced by the file
    stored = read_store(directory)
    if stored is None:
        return False
    medium.save(encode_store(stored.raw, stored.recorded))
    return True


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
                crash: Callable[[str], None] | None = None,
                medium: AnchorMedium | None = None) -> StoredAnchors:
    """Replace the device's anchors with ``raw_document`` (checked again here) and the
    ``recorded`` manifest digests, atomically and durably (``medium``: there, not in the
    file).

    Raises:
        DecodeError, PolicyError: not a usable document; too many recorded manifests.
        StorageError: the store could not be written (the old one is untouched).
    """
    recorded = frozenset(recorded)
    if len(recorded) > MAX_RECORDED:
        raise DecodeError(STORE, f"{len(recorded)} recorded manifests; at most {MAX_RECORDED}")
    document = parse_document(raw_document)
    data = encode_store(raw_document, recorded)
    if medium is not None:
        medium.save(data)
    else:
        if crash is not None:
            crash(f"anchors {STORE}")
        atomic_write(directory / STORE, data)
    return StoredAnchors(document, raw_document, recorded,
                         document.trust_anchors(recorded=recorded))
