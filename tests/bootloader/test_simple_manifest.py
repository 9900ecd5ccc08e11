"""The small real verifier used by the simulator: every tampered byte is caught."""

from __future__ import annotations

import pytest

from suitkit.bootloader.powercut import Fixture
from suitkit.bootloader.simple_manifest import (
    SIZE,
    SimpleManifest,
    SimpleManifestVerifier,
    make_manifest,
)
from suitkit.bootloader.verifier import BytesReader
from suitkit.errors import AuthenticationError, DecodeError

FX = Fixture(("app",))
VERIFIER = FX.verifiers["app"]


def release(seq: int, size: int = 5000) -> tuple[bytes, bytes]:
    return FX.release("app", seq, size=size)


def test_verifies_and_reports_sequence_number_and_digest() -> None:
    manifest, image = release(7, 10000)
    info = VERIFIER.verify(manifest, image)
    assert info.sequence_number == 7
    assert info.digest == SimpleManifest.decode(manifest).digest
    assert VERIFIER.verify(manifest, BytesReader(image)) == info


@pytest.mark.parametrize("offset", [4, 8, 12, 43, 44, SIZE - 1])
def test_any_manifest_byte_flipped_is_rejected(offset: int) -> None:
    manifest, image = release(3)
    bad = bytearray(manifest)
    bad[offset] ^= 0x01
    with pytest.raises(AuthenticationError, match="signature"):
        VERIFIER.verify(bytes(bad), image)


def test_image_tampered_is_rejected() -> None:
    """RFC 9124 THREAT.NET.ONPATH / THREAT.IMG.REPLACE: the digest covers every byte."""
    manifest, image = release(3)
    bad = bytearray(image)
    bad[len(image) // 2] ^= 0x80
    with pytest.raises(AuthenticationError, match="digest"):
        VERIFIER.verify(manifest, bytes(bad))


def test_extra_or_missing_bytes_are_rejected() -> None:
    """RFC 9124 THREAT.IMG.EXTRA: exactly image-size bytes."""
    manifest, image = release(3)
    with pytest.raises(AuthenticationError, match="manifest says"):
        VERIFIER.verify(manifest, image + b"\x00")
    with pytest.raises(AuthenticationError, match="manifest says"):
        VERIFIER.verify(manifest, image[:-1])


def test_wrong_key_is_rejected() -> None:
    """RFC 9124 THREAT.IMG.NON_AUTH."""
    manifest, image = FX.release("app", 3, key=Fixture.key("someone else"))
    with pytest.raises(AuthenticationError):
        VERIFIER.verify(manifest, image)
    other = SimpleManifestVerifier(Fixture.key("someone else").public_key())
    assert other.verify(manifest, image).sequence_number == 3


def test_malformed_manifest_is_a_decode_error() -> None:
    manifest, image = release(3)
    with pytest.raises(DecodeError, match="expected 108 bytes"):
        VERIFIER.verify(manifest[:-1], image)
    with pytest.raises(DecodeError, match="magic"):
        VERIFIER.verify(b"XXXX" + manifest[4:], image)


def test_sequence_number_must_fit() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        make_manifest(FX.keys["app"], sequence_number=1 << 32, image=b"")
