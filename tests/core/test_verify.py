"""verify_envelope: the spec's signed examples verify; anything else is refused with a reason."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from suitkit.core import codec, crypto
from suitkit.core.model import Common, Manifest
from suitkit.core.numbers import CoseAlg, ManifestKey
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchor, TrustAnchors, verify_decoded, verify_envelope
from suitkit.errors import AuthenticationError, DecodeError, PolicyError, SuitError

from helpers import (
    SIGNED_EXAMPLES,
    TRUST_DOMAIN_EXAMPLES,
    UNSIGNED_EXAMPLES,
    VECTORS,
    example_public_pem,
    vector,
)

pytestmark = pytest.mark.usefixtures("both_decoders")  # fast path and reference alone

EXAMPLE_KEY = crypto.load_public_key(example_public_pem())
ANCHORS = TrustAnchors.of(EXAMPLE_KEY)
MAC_KEY = crypto.HmacKey(b"a" * 32)


@pytest.mark.parametrize("name", SIGNED_EXAMPLES + TRUST_DOMAIN_EXAMPLES
                         + ["encryption-suit-manifest-es-ecdh-content"])
def test_spec_examples_verify_with_the_example_key(name: str) -> None:
    verified = verify_envelope(vector(name), ANCHORS)
    assert verified.signers == (ANCHORS.anchors[0],)
    assert verified.digest == verified.envelope.authentication.digest


@pytest.mark.parametrize("name", ["encryption-suit-manifest-aes-kw-content",
                                  "encryption-suit-manifest-aes-kw",
                                  "encryption-suit-manifest-aes-kw-slot"])
def test_mac_examples_verify_with_the_shared_key(name: str) -> None:
    verify_envelope(vector(name), TrustAnchors.of(MAC_KEY))
    with pytest.raises(AuthenticationError):
        verify_envelope(vector(name), TrustAnchors.of(crypto.HmacKey(b"b" * 32)))


def test_dependency_example_outer_envelope_is_signed_by_the_other_key() -> None:
    other = crypto.load_private_key(
        (VECTORS / "encryption-dependent-signing-key.pem").read_bytes()).public_key()
    data = vector("encryption-suit-manifest-es-ecdh-dependency")
    verify_envelope(data, TrustAnchors.of(other))
    with pytest.raises(AuthenticationError):
        verify_envelope(data, ANCHORS)



@pytest.mark.parametrize("name", UNSIGNED_EXAMPLES)
def test_unsigned_envelopes_are_refused(name: str) -> None:
    with pytest.raises(AuthenticationError, match="no authentication block"):
        verify_envelope(vector(name), ANCHORS)


def test_example2_severed_members_are_resolved() -> None:
    verified = verify_envelope(vector("example2"), ANCHORS)
    assert verified.install is not None and verified.text is not None
    assert verified.severed == frozenset()
    severed = verify_envelope(vector("example2-severed"), ANCHORS)
    assert severed.install is None and severed.text is None
    assert severed.severed == {ManifestKey.INSTALL, ManifestKey.TEXT}


def test_every_single_byte_change_of_example0_is_refused() -> None:
    data = vector("example0")
    for position in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            tampered = bytearray(data)
            tampered[position] ^= flip
            with pytest.raises(SuitError):
                verify_envelope(bytes(tampered), ANCHORS)


def test_wrong_key_is_refused() -> None:
    other = crypto.generate_private_key("ES256").public_key()
    with pytest.raises(AuthenticationError, match="verifies with no trusted key"):
        verify_envelope(vector("example0"), TrustAnchors.of(other))


def test_algorithm_not_allowed_by_the_anchor_is_refused() -> None:
    # Example 0 is signed ES256 (-7); an anchor pinned to ESP256 (-9) must not accept it,
    # although the maths is the same: the trust anchor, not the message, picks the algorithm.
    pinned = crypto.EcPublicKey(EXAMPLE_KEY.cryptography_key,  # type: ignore[attr-defined]
                                algorithms=[CoseAlg.ESP256])
    with pytest.raises(AuthenticationError, match="ES256 is not accepted by any trust anchor"):
        verify_envelope(vector("example0"), TrustAnchors.of(pinned))


def _unsigned(components: tuple[tuple[bytes, ...], ...] = ((b"\x00",),)) -> codec.Envelope:
    manifest = Manifest(sequence_number=1, common=Common(components=components))
    return codec.build_envelope(manifest)


def test_author_and_operator_both_required() -> None:
    author = crypto.generate_private_key("ES256")
    operator = crypto.generate_private_key("EdDSA")
    policy = TrustAnchors((TrustAnchor(author.public_key(), role="author"),
                           TrustAnchor(operator.public_key(), role="operator")),
                          required_roles=("author", "operator"))
    only_author = sign_envelope(_unsigned(), author.signer())
    with pytest.raises(PolicyError, match="missing a valid signature from: operator"):
        verify_decoded(only_author, policy)
    both = sign_envelope(only_author, operator.signer())
    verified = verify_envelope(codec.encode_envelope(both), policy)
    assert {a.role for a in verified.signers} == {"author", "operator"}


def test_signer_scoped_to_components() -> None:
    key = crypto.generate_private_key("ES256")
    anchors = TrustAnchors((TrustAnchor(key.public_key(), components=((b"app",),)),))
    ok = sign_envelope(_unsigned(((b"app", b"main"),)), key.signer())
    verify_decoded(ok, anchors)
    outside = sign_envelope(_unsigned(((b"app",), (b"bootloader",))), key.signer())
    with pytest.raises(PolicyError, match=re.escape("may not update component [h'626f6f74")):
        verify_decoded(outside, anchors)


def test_tampered_severed_member_is_refused() -> None:
    envelope = codec.decode_envelope(vector("example2"))
    text = bytearray(envelope.severable[ManifestKey.TEXT])
    text[-1] ^= 1
    bad = replace(envelope, severable=codec.FrozenDict({**envelope.severable,
                                                       ManifestKey.TEXT: bytes(text)}))
    with pytest.raises(AuthenticationError, match=r"envelope\.text: digest mismatch"):
        verify_envelope(codec.encode_envelope(bad), ANCHORS)


def test_envelope_member_without_digest_is_refused() -> None:
    envelope = codec.decode_envelope(vector("example1"))  # install is inline in the manifest
    extra = replace(envelope, severable=codec.FrozenDict({ManifestKey.INSTALL: b"\x80"}))
    with pytest.raises(AuthenticationError, match="install has no digest in the manifest"):
        verify_envelope(codec.encode_envelope(extra), ANCHORS)


def test_manifest_version_other_than_one_is_refused() -> None:
    key = crypto.generate_private_key("ES256")
    manifest = Manifest(version=2, sequence_number=1,
                        common=Common(components=((b"\x00",),)))
    envelope = sign_envelope(codec.build_envelope(manifest), key.signer())
    with pytest.raises(PolicyError, match="version 2 is not supported"):
        verify_decoded(envelope, TrustAnchors.of(key.public_key()))


def test_sign_refuses_an_envelope_whose_digest_does_not_match() -> None:
    envelope = _unsigned()
    forged = replace(envelope, manifest_bytes=envelope.manifest_bytes[:-1] + b"\x01")
    with pytest.raises(AuthenticationError, match="refusing to sign"):
        sign_envelope(forged, crypto.generate_private_key("ES256").signer())


def test_unknown_extra_block_is_ignored_but_a_known_key_must_verify() -> None:
    author = crypto.generate_private_key("ES256")
    stranger = crypto.generate_private_key("EdDSA")
    envelope = sign_envelope(sign_envelope(_unsigned(), stranger.signer()), author.signer())
    verify_decoded(envelope, TrustAnchors.of(author.public_key()))


def test_payload_must_be_detached() -> None:
    data = bytearray(vector("example0"))
    index = data.index(bytes.fromhex("a0f65840"))  # unprotected {}, payload null, signature
    data[index + 1] = 0x40  # payload h''
    with pytest.raises(DecodeError):
        verify_envelope(bytes(data), ANCHORS)


def test_manifest_is_not_parsed_before_it_is_authenticated() -> None:
    # manifest §6.2: verify the signature before parsing the manifest. A manifest that would
    # not even parse, behind a wrong digest, is refused as unauthentic, not as malformed.
    import cbor2

    top = cbor2.loads(vector("example0"))
    body = dict(top.value)
    body[3] = b"\xff\xff\xff"  # not CBOR at all
    data = cbor2.dumps(cbor2.CBORTag(107, body))
    with pytest.raises(AuthenticationError, match="manifest digest mismatch"):
        verify_envelope(data, ANCHORS)
    with pytest.raises(DecodeError):
        codec.decode_envelope(data)  # the plain decoder parses it and says why it is bad
