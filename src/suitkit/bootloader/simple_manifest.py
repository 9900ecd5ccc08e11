"""A small, CBOR-free signed manifest and its verifier, for the simulator and the tests.

It stands in for the SUIT envelope until the real verifier (``suitkit.core``) is plugged into
the bootloader's :class:`~suitkit.bootloader.verifier.ImageVerifier` seam. The crypto is real:
an Ed25519 signature (``cryptography``) over a sequence number, the image size and the image's
SHA-256 digest, so tampering with any byte of the manifest or the image is detected (RFC 9124
REQ.SEC.AUTHENTIC, REQ.SEC.AUTH.EXEC, REQ.SEC.IMG.COMPLETE_DIGEST).

Format (108 bytes, integers big-endian)::

    offset  size  field
         0     4  magic  b"SKM1"
         4     4  sequence number (u32)
         8     4  image size in bytes (u32)
        12    32  SHA-256 of the image
        44    64  Ed25519 signature over DOMAIN || bytes 0..43

This is not SUIT: no components, no commands, no COSE, one key per verifier, no key ids.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from suitkit.bootloader.verifier import ImageInfo, ImageReader, as_reader
from suitkit.errors import AuthenticationError, DecodeError

MAGIC = b"SKM1"
DOMAIN = b"suitkit simple manifest v1\x00"
_BODY = struct.Struct(">4sII32s")
SIZE = _BODY.size + 64
_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class SimpleManifest:
    """The decoded fields (not yet authenticated: see :class:`SimpleManifestVerifier`)."""

    sequence_number: int
    image_size: int
    digest: bytes
    signature: bytes
    signed: bytes

    @classmethod
    def decode(cls, data: bytes) -> SimpleManifest:
        """Split a manifest into its fields.

        Raises:
            DecodeError: wrong length or magic.
        """
        if len(data) != SIZE:
            raise DecodeError("manifest", f"expected {SIZE} bytes, got {len(data)}")
        magic, seq, size, digest = _BODY.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError("manifest.magic", f"expected {MAGIC!r}, got {magic!r}")
        return cls(seq, size, digest, data[_BODY.size :], data[: _BODY.size])


def make_manifest(key: Ed25519PrivateKey, *, sequence_number: int, image: bytes) -> bytes:
    """Sign a manifest for ``image`` with ``key``."""
    if not 0 <= sequence_number < 1 << 32:
        raise ValueError(f"sequence number {sequence_number} does not fit in 32 bits")
    body = _BODY.pack(MAGIC, sequence_number, len(image), hashlib.sha256(image).digest())
    return body + key.sign(DOMAIN + body)


class SimpleManifestVerifier:
    """Verifies :func:`make_manifest` manifests against one trusted Ed25519 public key."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._key = public_key

    def verify(self, manifest: bytes, image: bytes | ImageReader) -> ImageInfo:
        """Check the signature, then the image size and digest.

        Raises:
            DecodeError: the manifest is malformed.
            AuthenticationError: the signature, the size or the digest does not match.
        """
        m = SimpleManifest.decode(manifest)
        try:
            self._key.verify(m.signature, DOMAIN + m.signed)
        except InvalidSignature as e:
            raise AuthenticationError("manifest signature does not verify") from e
        reader = as_reader(image)
        # RFC 9124 REQ.SEC.IMG.COMPLETE_DIGEST: exactly image_size bytes, no more, no less.
        if reader.size != m.image_size:
            raise AuthenticationError(
                f"image is {reader.size} bytes, the manifest says {m.image_size}"
            )
        h = hashlib.sha256()
        for offset in range(0, reader.size, _CHUNK):
            h.update(reader.read(offset, min(_CHUNK, reader.size - offset)))
        if not hmac.compare_digest(h.digest(), m.digest):
            raise AuthenticationError(
                f"image digest {h.hexdigest()[:16]}... does not match the manifest's "
                f"{m.digest.hex()[:16]}..."
            )
        return ImageInfo(sequence_number=m.sequence_number, digest=m.digest)
