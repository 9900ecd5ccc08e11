"""The MTI profiles' algorithms that were missing: ChaCha20/Poly1305 content encryption
(RFC 8439) and ECDH-ES+A128KW with X25519 (draft-ietf-suit-mti-23), each checked against bytes
and code that are not suitkit's: RFC 8439's own test vector, cryptography's one-shot AEAD, and
the COSE_KDF_Context and key unwrap rebuilt by hand with cbor2."""

from __future__ import annotations

import os

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from suitkit.core import cose, crypto, mti
from suitkit.errors import AuthenticationError, KeyMaterialError, PolicyError

CHACHA = 24

# RFC 8439 §2.8.2: the AEAD_CHACHA20_POLY1305 example.
RFC8439_KEY = bytes(range(0x80, 0xA0))
RFC8439_NONCE = bytes.fromhex("070000004041424344454647")
RFC8439_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC8439_PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one "
                     b"tip for the future, sunscreen would be it.")
RFC8439_CIPHERTEXT_HEAD = bytes.fromhex("d31a8d34648e60db7b86afbc53ef7ec2")
RFC8439_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")


def _stream(decryptor: crypto.ContentDecryptor, data: bytes, step: int) -> bytes:
    out = b"".join(decryptor.update(data[i:i + step]) for i in range(0, len(data), step))
    return out + decryptor.finalize()


def test_chacha20_poly1305_matches_rfc8439() -> None:
    sealed = crypto.content_encrypt(CHACHA, RFC8439_KEY, RFC8439_NONCE, RFC8439_PLAINTEXT,
                                    RFC8439_AAD)
    assert sealed[:16] == RFC8439_CIPHERTEXT_HEAD and sealed[-16:] == RFC8439_TAG
    for step in (1, 7, 16, 64, 1000):
        decryptor = crypto.content_decryptor(CHACHA, RFC8439_KEY, RFC8439_NONCE, RFC8439_AAD)
        assert _stream(decryptor, sealed, step) == RFC8439_PLAINTEXT


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4095, 70_001])
def test_chacha20_poly1305_stream_agrees_with_the_one_shot_aead(size: int) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(12), os.urandom(size % 37)
    plaintext = os.urandom(size)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)
    assert _stream(crypto.content_decryptor(CHACHA, key, nonce, aad), sealed, 4096) == plaintext
    for where in (0, len(sealed) // 2, len(sealed) - 1):  # a flipped bit anywhere, tag included
        tampered = bytearray(sealed)
        tampered[where] ^= 0x01
        with pytest.raises(AuthenticationError, match="ChaCha20/Poly1305 tag does not verify"):
            _stream(crypto.content_decryptor(CHACHA, key, nonce, aad), bytes(tampered), 4096)
    with pytest.raises(AuthenticationError, match="tag does not verify"):
        _stream(crypto.content_decryptor(CHACHA, key, nonce, aad + b"x"), sealed, 4096)


def test_chacha20_poly1305_short_ciphertext_and_sizes() -> None:
    decryptor = crypto.content_decryptor(CHACHA, b"k" * 32, b"n" * 12)
    decryptor.update(b"short")
    with pytest.raises(AuthenticationError, match="shorter than the ChaCha20"):
        decryptor.finalize()
    with pytest.raises(KeyMaterialError, match="needs a 32-byte key"):
        crypto.content_decryptor(CHACHA, b"k" * 16, b"n" * 12)
    assert crypto.ciphertext_size(CHACHA, 100) == 116
    assert crypto.ciphertext_size(-65534, 100) == 100


def _kek_by_hand(shared: bytes, protected: bytes, kw_alg: int = -3, bits: int = 128) -> bytes:
    """RFC 9053 §5.2 with the encryption draft's SuppPubInfo 'other', built with cbor2."""
    context = cbor2.dumps([kw_alg, [None, None, None], [None, None, None],
                           [bits, protected, b"SUIT Payload Encryption"]])
    return HKDF(hashes.SHA256(), bits // 8, None, context).derive(shared)


def test_x25519_recipient_opens_by_hand_and_by_suitkit() -> None:
    device = x25519.X25519PrivateKey.generate()
    public = crypto.X25519PublicKey(device.public_key(), key_id=b"dev-1")
    plaintext = os.urandom(3000)
    info, ciphertext = cose.encrypt_payload(plaintext, content_alg=CHACHA, recipients=[public],
                                            key_agreement=-29)
    # by hand: COSE_Encrypt -> recipient -> ephemeral OKP key -> KDF -> unwrap -> AEAD
    tagged = cbor2.loads(info)
    assert tagged.tag == 96
    protected, unprotected, nil, recipients = tagged.value
    assert cbor2.loads(protected) == {1: 24} and nil is None and len(unprotected[5]) == 12
    (r_protected, r_unprotected, wrapped), = recipients
    assert cbor2.loads(r_protected) == {1: -29} and r_unprotected[4] == b"dev-1"
    ephemeral = r_unprotected[-1]
    assert (ephemeral[1], ephemeral[-1]) == (1, 4) and set(ephemeral) == {1, -1, -2}
    shared = device.exchange(x25519.X25519PublicKey.from_public_bytes(ephemeral[-2]))
    cek = keywrap.aes_key_unwrap(_kek_by_hand(shared, r_protected), wrapped)
    assert len(cek) == 32
    aad = cbor2.dumps(["Encrypt", protected, b""])
    assert ChaCha20Poly1305(cek).decrypt(unprotected[5], ciphertext, aad) == plaintext
    # and suitkit's own device side
    key = crypto.X25519PrivateKey(device, key_id=b"dev-1")
    decoded = cose.decode_encryption_info(info, path="ei")
    assert cose.decrypt_payload(decoded, ciphertext, key) == plaintext


def test_a_p256_key_does_not_open_an_x25519_recipient() -> None:
    device = crypto.X25519PrivateKey.generate()
    info, _ = cose.encrypt_payload(b"x" * 10, content_alg=1, recipients=[device.public_key()])
    p256 = crypto.generate_recipient_key("ECDH-P256")
    assert isinstance(p256, crypto.EcPrivateKey)
    with pytest.raises(PolicyError, match="no recipient is meant for this key"):
        cose.decryptor(cose.decode_encryption_info(info, path="ei"), p256)
    with pytest.raises(PolicyError, match="expected X25519"):
        device.exchange(p256.public_key())


def test_ecdh_es_a128kw_with_a_256_bit_content_key() -> None:
    # The MTI profiles use ECDH-ES+A128KW (-29) whatever the content key: A128KW wraps 32 bytes.
    private = ec.generate_private_key(ec.SECP256R1())
    device = crypto.EcPrivateKey(private)
    info, ciphertext = cose.encrypt_payload(b"firmware" * 100, content_alg=3,
                                            recipients=[device.public_key()], key_agreement=-29)
    (r_protected, r_unprotected, wrapped), = cbor2.loads(info).value[3]
    assert cbor2.loads(r_protected) == {1: -29}
    ephemeral = r_unprotected[-1]
    peer = serialization.load_der_public_key(_p256_spki(ephemeral[-2], ephemeral[-3]))
    assert isinstance(peer, ec.EllipticCurvePublicKey)
    shared = private.exchange(ec.ECDH(), peer)
    cek = keywrap.aes_key_unwrap(_kek_by_hand(shared, r_protected), wrapped)
    protected, unprotected = cbor2.loads(info).value[:2]
    aad = cbor2.dumps(["Encrypt", protected, b""])
    assert AESGCM(cek).decrypt(unprotected[5], ciphertext, aad) == b"firmware" * 100


def _p256_spki(x: bytes, y: bytes) -> bytes:
    header = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
    return header + b"\x04" + x + y


def test_recipient_key_files_round_trip_and_stay_apart_from_signing_keys() -> None:
    for kind in crypto.RECIPIENT_KINDS:
        key = crypto.generate_recipient_key(kind, key_id=b"k1")
        pem = crypto.recipient_to_pem(key)
        again = crypto.load_recipient_private(pem)
        assert type(again) is type(key) and again.key_id == b"k1"
        if isinstance(key, crypto.AesKwKey):
            assert crypto.load_recipient_public(pem) == key  # a KEK is its own "public" half
            continue
        with pytest.raises(KeyMaterialError, match="got a private key"):
            crypto.load_recipient_public(pem)
        public_pem = crypto.recipient_to_pem(key.public_key())
        public = crypto.load_recipient_public(public_pem)
        assert public.key_id == b"k1"
        with pytest.raises(KeyMaterialError):
            crypto.load_recipient_private(public_pem)
        with pytest.raises(KeyMaterialError):  # alg -29 marks it: never a signing key
            crypto.load_private_key(pem)


def test_the_six_profiles_and_their_recipients() -> None:
    names = [p.name for p in mti.MTI_PROFILES]
    assert names == ["suit-sha256-hmac-a128kw-a128ctr", "suit-sha256-esp256-ecdh-a128ctr",
                     "suit-sha256-ed25519-ecdh-a128ctr", "suit-sha256-esp256-ecdh-a128gcm",
                     "suit-sha256-ed25519-ecdh-chacha-poly", "suit-sha256-hsslms-a256kw-a256ctr"]
    assert [list(p.descriptor) for p in mti.MTI_PROFILES] == [
        [-16, 5, -3, -65534], [-16, -9, -29, -65534], [-16, -19, -29, -65534],
        [-16, -9, -29, 1], [-16, -19, -29, 24], [-16, -46, -5, -65532]]
    x = crypto.X25519PrivateKey.generate().public_key()
    p = crypto.generate_recipient_key("ECDH-P256")
    assert isinstance(p, crypto.EcPrivateKey)
    chacha = mti.profile_named("suit-sha256-ed25519-ecdh-chacha-poly")
    mti.check_recipient(chacha, x, "dev.pub")
    with pytest.raises(KeyMaterialError, match=r"dev\.pub: .* on X25519"):
        mti.check_recipient(chacha, p.public_key(), "dev.pub")
    hss = mti.profile_named("suit-sha256-hsslms-a256kw-a256ctr")
    with pytest.raises(KeyMaterialError, match="give a A256KW key-encryption key"):
        mti.check_recipient(hss, crypto.AesKwKey(b"k" * 16), "fleet.kek")
    with pytest.raises(KeyMaterialError, match="unknown MTI profile 'suit-sha256-es256"):
        mti.profile_named("suit-sha256-es256-ecdh-a128ctr")
