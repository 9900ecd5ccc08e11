"""The verifier seam between the bootloader and whatever authenticates an image.

The bootloader (RFC 9019 §4.1 "The Bootloader", the firmware verifier) never parses a manifest
itself: it hands the opaque manifest bytes stored next to an image, and a reader over the image
bytes, to an :class:`ImageVerifier`, and gets back an :class:`ImageInfo` (sequence number and
digest) or a :class:`~suitkit.errors.SuitError`. It does this at every boot, not only after an
update (RFC 9124 §4.2.8 THREAT.IMG.REPLACE, REQ.SEC.AUTH.EXEC).

The real SUIT envelope verifier plugs in here later; :mod:`suitkit.bootloader.simple_manifest`
is a small real (SHA-256 + Ed25519) implementation for the simulator and the tests.

This module does not do rollback checks: the sequence number is compared with the device's
security counter by the bootloader, which owns the counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class ImageReader(Protocol):
    """Random access to image bytes that may not fit in memory (a flash slot, a file)."""

    @property
    def size(self) -> int:
        """The number of image bytes."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the image; ``offset+length <= size``."""
        ...


@runtime_checkable
class VouchedReader(Protocol):
    """An :class:`ImageReader` that may already know its image's digest: the digest the
    update processor checked the same bytes against as it wrote them (one pass over a
    payload). Only the set check before marking an update pending uses it; a boot always
    hashes what the slot holds."""

    def known_digest(self, algorithm: int) -> bytes | None:
        """The image's digest with COSE ``algorithm``, or ``None``: hash the bytes."""
        ...


@dataclass(frozen=True, slots=True)
class BytesReader:
    """An :class:`ImageReader` over bytes already in memory."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a successful verification vouches for."""

    sequence_number: int
    """The manifest's monotonic sequence number (RFC 9124 §3.2, REQ.SEC.SEQUENCE)."""
    digest: bytes
    """The image digest the manifest commits to, and that the image bytes were checked against."""
    vouches: tuple[tuple[str, bytes], ...] = ()
    """``(image name, digest token)`` for every image of the boot set the manifest gives a
    digest for, its own image included. The bootloader only compares tokens for equality (a
    token is opaque: the algorithm and the digest) in its set check
    (:func:`~suitkit.bootloader.api.check_set`); ``()``: the manifest names only its image."""


class ImageVerifier(Protocol):
    """Authenticates a stored image against its stored manifest.

    ``verify`` raises a :class:`~suitkit.errors.SuitError` (``DecodeError`` for a malformed
    manifest, ``AuthenticationError`` for a bad signature, digest or size); it never returns a
    boolean (design rule 4).
    """

    def verify(self, manifest: bytes, image: bytes | ImageReader) -> ImageInfo: ...


def as_reader(image: bytes | ImageReader) -> ImageReader:
    """Wrap bytes in a :class:`BytesReader`; pass readers through."""
    if isinstance(image, bytes | bytearray | memoryview):
        return BytesReader(bytes(image))
    return image


@dataclass(frozen=True, slots=True)
class PatchPlan:
    """What a verified in-place patch rebuilds, and how (``bootloader.inplace``)."""

    info: ImageInfo
    """The new image's sequence number and the digest its manifest commits to."""
    image_size: int
    """The new image's size (the manifest's image-size)."""
    source_size: int
    """The precursor's size (the image the patch rewrites)."""
    unit: int
    """The sector size the patch is ordered for."""
    order: int
    """0: lowest sector first; 1: highest first (``core.packing.Order``)."""
    codec: int
    """The codec of the stored patch (0: none; ``core.packing.Codec``)."""


@runtime_checkable
class PatchVerifier(Protocol):
    """Authenticates a staged in-place patch against its stored manifest (docs/delta.md §9).

    ``verify_patch`` checks the manifest as :meth:`ImageVerifier.verify` does, that
    ``delta_info`` is a suitkit-delta-info value the manifest signs with an in-place member,
    and that the patch has exactly the size and digest it gives. With ``precursor``, it also
    checks the precursor's size and digest (RFC 9124 REQ.SEC.AUTH.PRECURSOR) and applies the
    patch once without writing (a dry run), checking the output against the image digest.
    Raises a :class:`~suitkit.errors.SuitError` otherwise.
    """

    def verify_patch(self, manifest: bytes, delta_info: bytes, patch: ImageReader,
                     precursor: ImageReader | None) -> PatchPlan: ...
