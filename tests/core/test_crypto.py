"""Keys, signers, verifiers, digests and content ciphers of suitkit.core.crypto."""

from __future__ import annotations

import hashlib
import hmac
import re

import cbor2
import pyhsslms
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from suitkit.core import crypto
from suitkit.errors import AuthenticationError, DecodeError, KeyMaterialError, PolicyError

from helpers import VECTORS

SMALL_HSS = crypto.HssLmsParameters(levels=1, height=5, winternitz=4)  # 32 signatures, ~30 ms
MESSAGE = b"the ToBeSigned bytes"


class MemoryStore:
    """An HssLmsStateStore that keeps every reserved state, or fails when told to."""

    def __init__(self) -> None:
        self.states: list[bytes] = []
        self.fail = False

    def reserve(self, new_state: bytes) -> None:
        if self.fail:
            raise OSError("disk full")
        self.states.append(new_state)


def make_signer(name: str) -> tuple[crypto.Signer, crypto.Verifier]:
    if name == "HSS-LMS":
        key = crypto.HssLmsPrivateKey.generate(SMALL_HSS)
        return key.signer(state_store=MemoryStore()), key.public_key()
    private = crypto.generate_private_key(name)
    return private.signer(crypto.algorithm_from_name(name)), private.public_key()


ALL_ALGORITHMS = ["ES256", "ESP256", "ES384", "EdDSA", "Ed25519", "HMAC-256", "HSS-LMS"]


@pytest.mark.parametrize("name", ALL_ALGORITHMS)
def test_sign_verify_round_trip(name: str) -> None:
    signer, verifier = make_signer(name)
    assert signer.algorithm == crypto.algorithm_from_name(name)
    signature = signer.sign(MESSAGE)
    verifier.verify(signer.algorithm, MESSAGE, signature)


@pytest.mark.parametrize("name", ALL_ALGORITHMS)
def test_flipped_bit_in_message_or_signature_is_rejected(name: str) -> None:
    signer, verifier = make_signer(name)
    signature = signer.sign(MESSAGE)
    with pytest.raises(AuthenticationError):
        verifier.verify(signer.algorithm, MESSAGE[:-1] + b"X", signature)
    bad = bytearray(signature)
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(AuthenticationError):
        verifier.verify(signer.algorithm, MESSAGE, bytes(bad))


@pytest.mark.parametrize("name", ALL_ALGORITHMS)
def test_wrong_key_is_rejected(name: str) -> None:
    signer, _ = make_signer(name)
    _, other = make_signer(name)
    with pytest.raises(AuthenticationError):
        other.verify(signer.algorithm, MESSAGE, signer.sign(MESSAGE))


@pytest.mark.parametrize("name", ["ES256", "ES384"])
def test_ecdsa_signature_is_raw_r_s_of_fixed_width(name: str) -> None:
    """RFC 9053 §2.1: r and s are left-padded to the curve size, also when they are short."""
    signer, verifier = make_signer(name)
    size = 32 if name == "ES256" else 48
    for _ in range(20000):  # about 1 signature in 128 has an r or s below 2^(8 * (size - 1))
        signature = signer.sign(MESSAGE)
        assert len(signature) == 2 * size  # never DER, never shortened
        if signature[0] == 0 or signature[size] == 0:
            break
    else:
        pytest.fail("no signature with a short r or s")
    der = encode_dss_signature(int.from_bytes(signature[:size], "big"),
                               int.from_bytes(signature[size:], "big"))
    hash_alg = hashes.SHA256() if name == "ES256" else hashes.SHA384()
    verifier.cryptography_key.verify(der, MESSAGE, ec.ECDSA(hash_alg))  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationError, match=f"must be {2 * size} bytes"):
        verifier.verify(signer.algorithm, MESSAGE, signature + b"\x00")


def test_message_cannot_pick_the_algorithm() -> None:
    p256 = crypto.generate_private_key("ES256")
    es256_only = crypto.EcPublicKey(p256.public_key().cryptography_key,  # type: ignore[attr-defined]
                                    algorithms=[-7])
    with pytest.raises(PolicyError, match="ESP256 is not allowed"):
        es256_only.verify(-9, MESSAGE, p256.signer(-9).sign(MESSAGE))
    # ES256 and ESP256 are both allowed by default for P-256 (suit-spec.md §12).
    assert p256.public_key().algorithms == {-7, -9}
    with pytest.raises(PolicyError):
        p256.public_key().verify(-35, MESSAGE, b"\x00" * 96)
    with pytest.raises(PolicyError):
        crypto.HmacKey(b"k" * 32).verify(-7, MESSAGE, b"")
    ed = crypto.generate_private_key("EdDSA").public_key()
    assert ed.algorithms == {-8, -19}
    with pytest.raises(PolicyError):
        ed.verify(-7, MESSAGE, b"")


def test_signer_algorithm_is_validated_against_the_key_type() -> None:
    p256 = crypto.generate_private_key("ES256")
    with pytest.raises(KeyMaterialError, match="cannot be used with ES384"):
        p256.signer(-35)
    with pytest.raises(KeyMaterialError, match="cannot be used with ES256"):
        crypto.generate_private_key("Ed25519").signer(-7)
    with pytest.raises(KeyMaterialError):
        crypto.EcPublicKey(p256.public_key().cryptography_key,  # type: ignore[attr-defined]
                           algorithms=[-8])
    with pytest.raises(KeyMaterialError, match="needs a state store"):
        crypto.HssLmsPrivateKey.generate(SMALL_HSS).signer()


def test_hmac_matches_hashlib_and_refuses_short_keys() -> None:
    key = crypto.HmacKey(b"\x0b" * 32)
    expected = hmac.new(b"\x0b" * 32, b"Hi There", hashlib.sha256).digest()
    assert key.sign(b"Hi There") == expected
    with pytest.raises(KeyMaterialError, match="at least 32 bytes"):
        crypto.HmacKey(b"short")
    assert "0b0b" not in repr(key)


def test_algorithm_names() -> None:
    for name in ALL_ALGORITHMS:
        assert crypto.algorithm_name(crypto.algorithm_from_name(name)) == name
    assert crypto.algorithm_from_name("esp256") == -9
    assert crypto.algorithm_name(-16) == "SHA256"
    assert crypto.algorithm_name(-29) == "ECDH-ES+A128KW"  # RFC 9053 §6.4.1 writes it with a plus
    assert crypto.algorithm_name(-999) == "unknown(-999)"
    with pytest.raises(KeyMaterialError, match="unknown signing algorithm 'RS256'"):
        crypto.algorithm_from_name("RS256")


# ------------------------------------------------------------------------------ HSS-LMS state


def leaf_index(signature: bytes) -> int:
    """q of an L=1 HSS signature (RFC 8554 §6.2: u32 Nspk, then the LMS signature's u32 q)."""
    assert signature[:4] == b"\x00\x00\x00\x00"
    return int.from_bytes(signature[4:8], "big")


def test_hss_lms_persists_state_before_returning_and_never_reuses_an_index() -> None:
    key = crypto.HssLmsPrivateKey.generate(SMALL_HSS)
    store = MemoryStore()
    signer = key.signer(state_store=store)
    indexes = []
    for i in range(32):
        signature = signer.sign(b"m%d" % i)
        # The state reserved during sign() is already past the index this signature used.
        assert len(store.states) == i + 1
        assert crypto.hss_lms_state_usage(store.states[-1]) == (i + 1, 32)
        indexes.append(leaf_index(signature))
    assert indexes == list(range(32))
    with pytest.raises(KeyMaterialError, match="exhausted"):
        signer.sign(b"one too many")
    assert len(store.states) == 32


def test_hss_lms_failing_reserve_releases_no_signature_and_burns_the_index() -> None:
    key = crypto.HssLmsPrivateKey.generate(SMALL_HSS)
    store = MemoryStore()
    signer = key.signer(state_store=store)
    assert leaf_index(signer.sign(b"first")) == 0
    store.fail = True
    with pytest.raises(OSError, match="disk full"):
        signer.sign(b"second")
    store.fail = False
    # Index 1 may have been computed, but was never released; it is not used again.
    assert leaf_index(signer.sign(b"third")) == 2


def test_hss_lms_state_reloads_and_continues() -> None:
    key = crypto.HssLmsPrivateKey.generate(crypto.HssLmsParameters(2, 5, 4))
    store = MemoryStore()
    signer = key.signer(state_store=store)
    for i in range(34):  # crosses into the second bottom tree
        signer.sign(b"m%d" % i)
    used, total = crypto.hss_lms_state_usage(store.states[-1])
    assert (used, total) == (34, 1024)
    assert pyhsslms.HssPrivateKey.deserialize(store.states[-1]).remaining() == total - used
    again = crypto.HssLmsPrivateKey.from_state(store.states[-1],
                                               public=key.public_key().public_bytes)
    assert (again.used, again.remaining) == (34, 990)
    signature = again.signer(state_store=MemoryStore()).sign(b"after reload")
    key.public_key().verify(-46, b"after reload", signature)


def test_hss_lms_verifier_rejects_non_canonical_signatures() -> None:
    signer, verifier = make_signer("HSS-LMS")
    signature = signer.sign(MESSAGE)
    for bad in (signature + b"\x00", signature[:-1], b"\x00\x00\x00\x01" + signature[4:], b""):
        with pytest.raises(AuthenticationError):
            verifier.verify(-46, MESSAGE, bad)


@pytest.mark.parametrize(("state", "message"), [
    (b"", "not in pyhsslms v2 format"),
    (b"\x00\x00\x00\x09\x11\x11\x11\x11", "9 levels"),
    (b"\x00\x00\x00\x01\x11\x11\x11\x11\x00\x00\x00\x40", "truncated"),
])
def test_hss_lms_malformed_state(state: bytes, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        crypto.HssLmsPrivateKey.from_state(state)


def test_hss_lms_state_checks() -> None:
    key = crypto.HssLmsPrivateKey.generate(SMALL_HSS)
    state = key.state
    with pytest.raises(KeyMaterialError, match="extra bytes"):
        crypto.hss_lms_state_usage(state + b"\x00")
    over = state[:-4] + (33).to_bytes(4, "big")  # q past 2^h
    with pytest.raises(KeyMaterialError, match="impossible index 33"):
        crypto.hss_lms_state_usage(over)
    other = crypto.HssLmsPrivateKey.generate(SMALL_HSS).public_key().public_bytes
    with pytest.raises(KeyMaterialError, match="does not match its public key"):
        crypto.HssLmsPrivateKey.from_state(state, public=other)
    with pytest.raises(KeyMaterialError, match="height"):
        crypto.HssLmsParameters(1, 7, 4)


# ------------------------------------------------------------------------------ key files


@pytest.mark.parametrize("name", ALL_ALGORITHMS)
def test_private_key_file_round_trip(name: str) -> None:
    key = (crypto.HssLmsPrivateKey.generate(SMALL_HSS) if name == "HSS-LMS"
           else crypto.generate_private_key(name))
    pem = key.to_pem()
    assert pem.startswith(f"suitkit-algorithm: {name}\n".encode())
    again = crypto.load_private_key(pem)
    assert again.algorithm == crypto.algorithm_from_name(name)
    assert crypto.public_key_to_pem(again.public_key()) == crypto.public_key_to_pem(
        key.public_key())
    # A private key file is refused where a public key (a trust anchor) is expected; an HMAC
    # key is the same shared secret on both sides.
    if name == "HMAC-256":
        public = crypto.load_public_key(pem)
        assert crypto.public_key_to_pem(public) == crypto.public_key_to_pem(key.public_key())
    else:
        with pytest.raises(KeyMaterialError, match="expected a public key, got a private key"):
            crypto.load_public_key(pem)


def test_standard_pem_is_readable_by_cryptography() -> None:
    key = crypto.generate_private_key("ES256")
    pem = key.to_pem()
    loaded = serialization.load_pem_private_key(pem, password=None)  # ignores the header line
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    public_pem = crypto.public_key_to_pem(key.public_key())
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")  # default set: no header


def test_spec_example_keys_load() -> None:
    private = crypto.load_private_key((VECTORS / "example-key-private.pem").read_bytes())
    public = crypto.load_public_key((VECTORS / "example-key-public.pem").read_bytes())
    assert crypto.public_key_to_pem(private.public_key()) == crypto.public_key_to_pem(public)
    x = public.to_cose_key()[-2]  # type: ignore[attr-defined]
    assert x.hex() == "8496811aae0baaabd26157189eecda26beaa8bf11b6f3fe6e2b5659c85dbc0ad"
    sec1 = crypto.load_private_key(
        (VECTORS / "encryption-dependent-signing-key.pem").read_bytes())  # EC PRIVATE KEY
    assert sec1.public_key().to_cose_key()[-2].hex() == (  # type: ignore[attr-defined]
        "0e908aa8f066db1f084e0c3652c63952bd99f2a5bdb22f9e01367aad03aba68b")


def test_algorithm_line_narrows_a_public_key() -> None:
    key = crypto.generate_private_key("ESP256")
    narrowed = crypto.EcPublicKey(key.public_key().cryptography_key,  # type: ignore[attr-defined]
                                  algorithms=[-9])
    pem = crypto.public_key_to_pem(narrowed)
    assert pem.startswith(b"suitkit-algorithm: ESP256\n")
    assert crypto.load_public_key(pem).algorithms == {-9}
    plain = pem.split(b"\n", 1)[1]
    assert crypto.load_public_key(plain).algorithms == {-7, -9}
    assert crypto.load_private_key(key.to_pem()).algorithm == -9


def test_plain_cbor_cose_keys() -> None:
    ec_key = crypto.generate_private_key("ES256")
    cose_pub = ec_key.public_key().to_cose_key()  # type: ignore[attr-defined]
    assert crypto.load_public_key(cbor2.dumps(cose_pub)).algorithms == {-7, -9}
    # Compressed point: y replaced by its sign bit (RFC 9053 §7.1.1).
    y_odd = cose_pub[-3][-1] & 1 == 1
    compressed = {**cose_pub, -3: y_odd}
    signature = ec_key.sign(MESSAGE)  # type: ignore[attr-defined]
    crypto.load_public_key(cbor2.dumps(compressed)).verify(-7, MESSAGE, signature)
    ed = ed25519.Ed25519PrivateKey.generate()
    raw = ed.public_key().public_bytes_raw()
    okp = crypto.load_public_key(cbor2.dumps({1: 1, -1: 6, -2: raw, 2: b"kid"}))
    assert okp.key_id == b"kid"
    okp.verify(-19, MESSAGE, ed.sign(MESSAGE))
    hmac_key = crypto.load_private_key(cbor2.dumps({1: 4, -1: b"s" * 32, 3: 5}))
    assert isinstance(hmac_key, crypto.HmacKey)
    hss = crypto.HssLmsPrivateKey.generate(SMALL_HSS).public_key()
    assert crypto.load_public_key(cbor2.dumps({1: 5, -1: hss.public_bytes})).algorithms == {-46}
    # A private EC2 COSE_Key (the encryption draft's recipient key).
    lines = (VECTORS / "encryption-keys.txt").read_text()
    assert "60FE6DD6" in lines
    d = bytes.fromhex("60FE6DD6D85D5740A5349B6F91267EEAC5BA81B8CB53EE249E4B4EB102C476B3")
    x = bytes.fromhex("5886CD61DD875862E5AAA820E7A15274C968A9BC96048DDCACE32F50C3651BA3")
    y = bytes.fromhex("9EED8125E932CD60C0EAD3650D0A485CF726D378D1B016ED4298B2961E258F1B")
    recipient = crypto.load_private_key(cbor2.dumps({1: 2, -1: 1, -2: x, -3: y, -4: d,
                                                     2: b"kid-2"}))
    assert isinstance(recipient, crypto.EcPrivateKey)
    assert recipient.key_id == b"kid-2"


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _encrypted_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))


def _p521_pem() -> bytes:
    return ec.generate_private_key(ec.SECP521R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


P256_PEM = crypto.generate_private_key("ES256").to_pem()
PUBLIC_PEM = crypto.public_key_to_pem(crypto.generate_private_key("ES256").public_key())
X = b"\x01" * 32


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not valid CBOR"),
    (b"hello world", "not valid CBOR"),
    (cbor2.dumps([1, 2]), "must be a CBOR map"),
    (b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
     "does not load"),
    (b"-----BEGIN COSE KEY-----\n@@@@\n-----END COSE KEY-----\n", "not valid base64"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n", "malformed PEM block"),
    (P256_PEM + P256_PEM, "expected one PEM block, found 2"),
    (b"Bag Attributes\n" + P256_PEM.split(b"\n", 1)[1], "unexpected text before the PEM"),
    (b"suitkit-algorithm: RS256\n" + P256_PEM.split(b"\n", 1)[1], "unknown signing algorithm"),
    (b"suitkit-algorithm: ES384\n" + P256_PEM.split(b"\n", 1)[1], "cannot be used with ES384"),
    (b"suitkit-algorithm: ES256\n" + P256_PEM, "appears twice"),
    (_rsa_pem(), "unsupported key type RSA"),
    (_p521_pem(), "unsupported elliptic curve secp521r1"),
    (_encrypted_pem(), "encrypted private keys are not supported"),
    (PUBLIC_PEM, "expected a private key, got a PEM 'PUBLIC KEY' block"),
    ("é".encode() + P256_PEM, "non-ASCII"),
    (cbor2.dumps({-1: 1}), "unsupported COSE_Key kty None"),
    (cbor2.dumps({1: 3}), "unsupported COSE_Key kty 3"),
    (cbor2.dumps({1: 2, -1: 1, -2: X, -3: X, -4: X}), "not a point on secp256r1"),
    (cbor2.dumps({1: 2, -1: 1, -2: b"\x01", -3: X}), "x must be 32 bytes, got 1"),
    (cbor2.dumps({1: 2, -1: 7, -2: X, -3: X}), "unsupported EC2 curve 7"),
    (cbor2.dumps({1: 1, -1: 4, -2: X}), "unsupported OKP curve 4"),
    (cbor2.dumps({1: 4, -1: b"short"}), "at least 32 bytes"),
    (cbor2.dumps({1: 4, -1: "text"}), "k (label -1) must be a byte string"),
    (cbor2.dumps({1: 4, -1: X, 2: "kid"}), "kid (label 2) must be a byte string"),
    (cbor2.dumps({1: 4, -1: X, 3: -7}), "HMAC key cannot be used with ES256"),
    (cbor2.dumps({1: 5, -1: b"\x00\x00\x00\x01"}), "truncated"),
    (cbor2.dumps({1: 5, -1: b"\x00" * 60}), "levels"),
    (cbor2.dumps({1: 2, -1: 1, -2: X, -3: X}), "not a point on secp256r1"),
])
def test_malformed_private_key_data(data: bytes, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=re.escape(message)) as info:
        crypto.load_private_key(data)
    assert "\n" not in str(info.value)


def test_public_cose_key_is_not_a_private_key() -> None:
    ed = crypto.generate_private_key("EdDSA").public_key().to_cose_key()  # type: ignore[attr-defined]
    with pytest.raises(KeyMaterialError, match="holds a public key, not a private key"):
        crypto.load_private_key(cbor2.dumps(ed))


def test_cose_private_key_must_match_its_public_part() -> None:
    a = ed25519.Ed25519PrivateKey.generate()
    b = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    d = a.private_bytes_raw()
    with pytest.raises(KeyMaterialError, match="d does not match x"):
        crypto.load_private_key(cbor2.dumps({1: 1, -1: 6, -2: b, -4: d}))


# ------------------------------------------------------------------------------ digests


@pytest.mark.parametrize(("alg", "oracle"), [
    (-16, lambda d: hashlib.sha256(d).digest()),
    (-43, lambda d: hashlib.sha384(d).digest()),
    (-44, lambda d: hashlib.sha512(d).digest()),
    (-18, lambda d: hashlib.shake_128(d).digest(32)),
    (-45, lambda d: hashlib.shake_256(d).digest(64)),
])
def test_digests_match_hashlib_one_shot_and_streaming(alg: int, oracle: object) -> None:
    data = bytes(range(256)) * 41
    expected = oracle(data)  # type: ignore[operator]
    assert crypto.digest(alg, data) == expected
    hasher = crypto.new_hasher(alg)
    for i in range(0, len(data), 1000):
        hasher.update(data[i:i + 1000])
    assert hasher.digest() == expected
    assert hasher.digest() == expected  # digest() does not finish the hasher


def test_unknown_digest_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="not supported"):
        crypto.digest(-17, b"")  # SHA-512/256
    with pytest.raises(PolicyError):
        crypto.new_hasher(5)


# ------------------------------------------------------------------------------ ciphers


def test_aes_key_wrap_rfc_3394_vector() -> None:
    # RFC 3394 §4.1: 128-bit key data with a 128-bit KEK.
    kek = crypto.AesKwKey(bytes.fromhex("000102030405060708090A0B0C0D0E0F"))
    cek = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    wrapped = kek.wrap(cek)
    assert wrapped.hex().upper() == "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"
    assert kek.unwrap(wrapped) == cek
    assert kek.algorithm == -3
    with pytest.raises(AuthenticationError):
        crypto.AesKwKey(b"\x00" * 16).unwrap(wrapped)
    with pytest.raises(KeyMaterialError, match="16, 24 or 32 bytes"):
        crypto.AesKwKey(b"\x00" * 20)


@pytest.mark.parametrize("alg", [1, 2, 3, -65534, -65533, -65532])
def test_content_cipher_streaming_matches_one_shot(alg: int) -> None:
    key = bytes(range(crypto.content_key_size(alg)))
    iv = bytes(crypto.content_iv_size(alg))
    plaintext = bytes(range(256)) * 10 + b"tail"
    ciphertext = crypto.content_encrypt(alg, key, iv, plaintext, b"aad")
    gcm = alg in (1, 2, 3)
    assert len(ciphertext) == len(plaintext) + (16 if gcm else 0)
    for chunk in (1, 7, 16, 17, 4096):
        stream = crypto.content_decryptor(alg, key, iv, b"aad")
        out = b"".join(stream.update(ciphertext[i:i + chunk])
                       for i in range(0, len(ciphertext), chunk))
        assert out + stream.finalize() == plaintext


def test_gcm_tag_and_aad_are_checked() -> None:
    key, iv = b"k" * 16, b"i" * 12
    ciphertext = crypto.content_encrypt(1, key, iv, b"firmware", b"aad")
    for bad_ct, aad in ((ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]), b"aad"),
                        (ciphertext, b"other aad"),
                        (bytes([ciphertext[0] ^ 1]) + ciphertext[1:], b"aad")):
        stream = crypto.content_decryptor(1, key, iv, aad)
        stream.update(bad_ct)
        with pytest.raises(AuthenticationError, match="tag does not verify"):
            stream.finalize()
    stream = crypto.content_decryptor(1, key, iv)
    stream.update(b"short")
    with pytest.raises(AuthenticationError, match="shorter than the A128GCM tag"):
        stream.finalize()


def test_content_cipher_parameters_are_checked() -> None:
    with pytest.raises(PolicyError, match="not supported"):
        crypto.content_decryptor(10, b"k" * 16, b"i" * 13)  # AES-CCM-16-64-128
    with pytest.raises(KeyMaterialError, match="needs a 16-byte key"):
        crypto.content_decryptor(1, b"k" * 32, b"i" * 12)
    with pytest.raises(DecodeError, match="needs a 16-byte IV"):
        crypto.content_decryptor(-65534, b"k" * 16, b"i" * 12)
