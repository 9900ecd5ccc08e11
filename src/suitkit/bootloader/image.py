"""The image format inside a slot: a small header, the opaque signed manifest, the image.

::

    offset          size            field
    0               8               magic b"SKTIMG01"
    8               4               manifest length (u32, big-endian)
    12              4               image length (u32)
    16              4               image offset from the slot start (u32)
    20              12              reserved (0xFF)
    H               manifest len    the manifest, as received (never re-encoded: design rule 3)
    image offset    image len       the image bytes (what executes in place)

``H`` is the header size, 32 bytes rounded up to the trailer unit; the image starts at the first
unit boundary after the manifest. The header is **written last** when an image is staged, so a
slot whose staging was cut has no valid header. Nothing in the header is trusted: the lengths
are bounded by the slot and by :class:`~suitkit.limits.Limits`, and the verifier checks the
manifest's signature, the image size and its digest.

This module does not verify anything; it only finds the manifest and the image in a slot.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from suitkit.bootloader.flash import ERASED, Flash
from suitkit.bootloader.layout import Region
from suitkit.errors import DecodeError
from suitkit.limits import Limits

MAGIC = b"SKTIMG01"
_HEADER = struct.Struct(">8sIII")
RAW_HEADER_SIZE = 32


def header_size(unit: int) -> int:
    return -(-RAW_HEADER_SIZE // unit) * unit


def align_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


@dataclass(frozen=True, slots=True)
class ImageHeader:
    manifest_length: int
    image_length: int
    image_offset: int

    def encode(self) -> bytes:
        body = _HEADER.pack(MAGIC, self.manifest_length, self.image_length, self.image_offset)
        return body + bytes([ERASED]) * (RAW_HEADER_SIZE - len(body))

    @classmethod
    def plan(cls, *, manifest_length: int, image_length: int, unit: int) -> ImageHeader:
        """Where a manifest and an image of these lengths go in a slot."""
        offset = align_up(header_size(unit) + manifest_length, unit)
        return cls(manifest_length, image_length, offset)

    @property
    def end(self) -> int:
        return self.image_offset + self.image_length

    @classmethod
    def decode(cls, raw: bytes, *, slot_size: int, unit: int, limits: Limits) -> ImageHeader:
        """Decode and bound-check a header read from a slot.

        Raises:
            DecodeError: erased, wrong magic, or lengths that do not fit the slot or the limits.
        """
        raw = raw[:RAW_HEADER_SIZE]
        if raw == bytes([ERASED]) * len(raw):
            raise DecodeError("slot.header", "slot is empty (header erased)")
        magic, mlen, ilen, ioff = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise DecodeError("slot.header.magic", f"expected {MAGIC!r}, got {magic!r}")
        if mlen > limits.max_manifest_bytes:
            raise DecodeError(
                "slot.header.manifest_length",
                f"manifest of {mlen} bytes exceeds the limit of {limits.max_manifest_bytes}",
            )
        expected = cls.plan(manifest_length=mlen, image_length=ilen, unit=unit)
        if ioff != expected.image_offset:
            raise DecodeError(
                "slot.header.image_offset", f"expected {expected.image_offset}, got {ioff}"
            )
        if expected.end > slot_size:
            raise DecodeError(
                "slot.header.image_length",
                f"image ends at {expected.end}, past the slot's {slot_size} bytes",
            )
        return expected


@dataclass(frozen=True, slots=True)
class SlotImageReader:
    """An :class:`~suitkit.bootloader.verifier.ImageReader` over the image bytes in a slot."""

    flash: Flash
    offset: int
    length: int

    @property
    def size(self) -> int:
        return self.length

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(f"read {offset}+{length} outside an image of {self.length} bytes")
        return self.flash.read(self.offset + offset, length)


def open_slot(
    flash: Flash, region: Region, *, unit: int, limits: Limits
) -> tuple[bytes, SlotImageReader]:
    """The manifest bytes and an image reader for the image stored in ``region``.

    Raises:
        DecodeError: no valid header (see :meth:`ImageHeader.decode`).
    """
    header = ImageHeader.decode(
        flash.read(region.offset, RAW_HEADER_SIZE), slot_size=region.size, unit=unit, limits=limits
    )
    manifest = flash.read(region.offset + header_size(unit), header.manifest_length)
    return manifest, SlotImageReader(
        flash, region.offset + header.image_offset, header.image_length
    )
