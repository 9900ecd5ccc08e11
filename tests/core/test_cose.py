"""COSE_Sign1 / COSE_Mac0 with SUIT's detached payload, and SUIT_Encryption_Info (COSE_Encrypt).

The independent checks build the Sig_structure / MAC_structure / KDF context with cbor2 and
verify with cryptography, hashlib or pyhsslms directly, not with suitkit's helpers.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import cbor2
import pyhsslms
import pytest
from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from suitkit.core import cose, crypto
from suitkit.errors import AuthenticationError, DecodeError, KeyMaterialError, PolicyError

from helpers import (
    ENCRYPTION_MANIFESTS,
    SIGNED_EXAMPLES,
    TRUST_DOMAIN_EXAMPLES,
    VECTORS,
    example_public_pem,
    vector,
)

PLAINTEXT = b"This is a real firmware image."
EXAMPLE0_TBS = ("846a5369676e61747572653143a10126405824822f58206658ea560262696dd1f13b782239a064"
                "da7c6c5cbaf52fded428a6fc83c7e5af")
MAC_KEY = crypto.HmacKey(b"a" * 32)
KEK = crypto.AesKwKey(b"a" * 16, key_id=b"kid-1")
RECIPIENT_D = bytes.fromhex("60FE6DD6D85D5740A5349B6F91267EEAC5BA81B8CB53EE249E4B4EB102C476B3")
GCM_CEK = bytes.fromhex("15F785B5C931414411B4B71373A9C0F7")
GCM_IV = bytes.fromhex("F14AAB9D81D51F7AD943FE87")
CTR_CEK = bytes.fromhex("261DE6165070FB8951EC5D7B92A065FE")
CTR_IV = bytes.fromhex("DAE613B2E0DC55F4322BE38BDBA9DC68")
PAYLOAD = cbor2.dumps([-16, hashlib.sha256(b"manifest").digest()])  # an encoded SUIT_Digest


def recipient_key(key_id: bytes | None = b"kid-2") -> crypto.EcPrivateKey:
    return crypto.EcPrivateKey(ec.derive_private_key(int.from_bytes(RECIPIENT_D, "big"),
                                                     ec.SECP256R1()), key_id=key_id)


def auth_wrapper(name: str) -> list[bytes]:
    """[digest bstr content, block bstr content...] of a vector envelope, read with cbor2."""
    envelope = cbor2.loads(vector(name))
    return list(cbor2.loads(envelope.value[2]))


# ------------------------------------------------------------------------------ spec vectors


def test_example0_sig_structure_and_signature() -> None:
    digest, block_bytes = auth_wrapper("example0")
    block = cose.decode_auth_block(block_bytes, path="auth[1]")
    assert isinstance(block, cose.CoseSign1)
    assert (block.algorithm, block.key_id, block.protected) == (-7, None, b"\xa1\x01\x26")
    assert cose.sig_structure(block.protected, digest).hex() == EXAMPLE0_TBS
    cose.verify_detached(block, digest, crypto.load_public_key(example_public_pem()))


SIGNED = SIGNED_EXAMPLES + TRUST_DOMAIN_EXAMPLES + ["encryption-suit-manifest-es-ecdh-content"]


@pytest.mark.parametrize("name", SIGNED)
def test_spec_signatures_verify(name: str) -> None:
    digest, block_bytes = auth_wrapper(name)
    block = cose.decode_auth_block(block_bytes, path="auth[1]")
    key = crypto.load_public_key(example_public_pem())
    cose.verify_detached(block, digest, key)
    with pytest.raises(AuthenticationError):
        cose.verify_detached(block, digest[:-1] + bytes([digest[-1] ^ 1]), key)


def test_dependency_example_outer_envelope_uses_the_second_key() -> None:
    digest, block_bytes = auth_wrapper("encryption-suit-manifest-es-ecdh-dependency")
    block = cose.decode_auth_block(block_bytes, path="auth[1]")
    assert block.algorithm == -9
    second = crypto.load_private_key(
        (VECTORS / "encryption-dependent-signing-key.pem").read_bytes()).public_key()
    cose.verify_detached(block, digest, second)
    with pytest.raises(AuthenticationError):
        cose.verify_detached(block, digest, crypto.load_public_key(example_public_pem()))


MAC_MANIFESTS = [n for n in ENCRYPTION_MANIFESTS if "aes-kw" in n]


@pytest.mark.parametrize("name", MAC_MANIFESTS)
def test_spec_mac0_verifies(name: str) -> None:
    digest, block_bytes = auth_wrapper(name)
    block = cose.decode_auth_block(block_bytes, path="auth[1]")
    assert isinstance(block, cose.CoseMac0)
    assert block.algorithm == 5
    cose.verify_detached(block, digest, MAC_KEY)
    # Independent: HMAC-SHA-256 over a MAC_structure built with cbor2.
    to_mac = cbor2.dumps(["MAC0", block.protected, b"", digest])
    assert hmac.new(b"a" * 32, to_mac, hashlib.sha256).digest() == block.tag
    # HMAC is deterministic: signing again gives the same block bytes.
    assert cose.sign_detached(MAC_KEY, digest) == block_bytes
    with pytest.raises(AuthenticationError):
        cose.verify_detached(block, digest, crypto.HmacKey(b"b" * 32))


# ------------------------------------------------------------------------------ our signatures


SMALL_HSS = crypto.HssLmsParameters(1, 5, 4)


class NullStore:
    def reserve(self, new_state: bytes) -> None:
        pass


def signer_and_verifier(name: str) -> tuple[crypto.Signer, crypto.Verifier]:
    if name == "HSS-LMS":
        key = crypto.HssLmsPrivateKey.generate(SMALL_HSS)
        return key.signer(state_store=NullStore()), key.public_key()
    private = crypto.generate_private_key(name)
    return private.signer(crypto.algorithm_from_name(name), key_id=b"kid-7"), private.public_key()


@pytest.mark.parametrize("name", ["ES256", "ESP256", "ES384", "EdDSA", "Ed25519", "HMAC-256",
                                  "HSS-LMS"])
def test_sign_detached_round_trip(name: str) -> None:
    signer, verifier = signer_and_verifier(name)
    data = cose.sign_detached(signer, PAYLOAD)
    block = cose.decode_auth_block(data, path="b")
    assert block.algorithm == signer.algorithm
    assert block.key_id == signer.key_id
    assert block.payload is None
    assert isinstance(block, cose.CoseMac0 if name == "HMAC-256" else cose.CoseSign1)
    cose.verify_detached(block, PAYLOAD, verifier)
    with pytest.raises(AuthenticationError):
        cose.verify_detached(block, PAYLOAD + b"\x00", verifier)


@pytest.mark.parametrize("name", ["ES256", "ESP256", "ES384", "EdDSA", "Ed25519", "HMAC-256",
                                  "HSS-LMS"])
def test_independent_check_of_our_signatures(name: str) -> None:
    """Rebuild the ToBeSigned with cbor2 and verify with the primitive library directly."""
    signer, verifier = signer_and_verifier(name)
    tag = cbor2.loads(cose.sign_detached(signer, PAYLOAD))
    protected, unprotected, payload, signature = tag.value
    assert tag.tag == (17 if name == "HMAC-256" else 18)
    assert cbor2.loads(protected) == {1: crypto.algorithm_from_name(name)}
    assert payload is None
    assert unprotected == ({} if signer.key_id is None else {4: signer.key_id})
    context = "MAC0" if name == "HMAC-256" else "Signature1"
    tbs = cbor2.dumps([context, protected, b"", PAYLOAD])
    if name in ("ES256", "ESP256", "ES384"):
        size = 32 if name != "ES384" else 48
        der = encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                   int.from_bytes(signature[size:], "big"))
        hash_alg = hashes.SHA384() if name == "ES384" else hashes.SHA256()
        verifier.cryptography_key.verify(der, tbs, ec.ECDSA(hash_alg))  # type: ignore[attr-defined]
    elif name in ("EdDSA", "Ed25519"):
        verifier.cryptography_key.verify(signature, tbs)  # type: ignore[attr-defined]
    elif name == "HMAC-256":
        secret = verifier.secret  # type: ignore[attr-defined]
        assert hmac.new(secret, tbs, hashlib.sha256).digest() == signature
    else:
        public = pyhsslms.HssPublicKey.deserialize(verifier.public_bytes)  # type: ignore[attr-defined]
        assert public.verify(tbs, signature)
        assert not public.verify(tbs + b"x", signature)


def test_non_preferred_protected_header_is_refused() -> None:
    """A protected header with a non-minimal integer head ({1: -7} with -7 in two bytes), even
    one that was signed as sent: every CBOR item of the envelope has one encoding (manifest
    §8.1, RFC 8949 §4.2.1), the bstr-wrapped COSE headers included."""
    private = crypto.load_private_key((VECTORS / "example-key-private.pem").read_bytes())
    protected = bytes.fromhex("a1013806")  # {1: -7} with a non-minimal integer head
    signature = private.signer().sign(cbor2.dumps(["Signature1", protected, b"", PAYLOAD]))
    data = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, None, signature]))
    with pytest.raises(DecodeError, match=r"^b\.protected: CBOR is not in preferred "
                                          r"serialization at byte 2"):
        cose.decode_auth_block(data, path="b")
    minimal = bytes.fromhex("a10126")
    signature = private.signer().sign(cbor2.dumps(["Signature1", minimal, b"", PAYLOAD]))
    block = cose.decode_auth_block(cbor2.dumps(cbor2.CBORTag(18, [minimal, {}, None,
                                                                  signature])), path="b")
    assert block.protected == minimal and block.algorithm == -7
    cose.verify_detached(block, PAYLOAD, private.public_key())


def test_verifier_policy_decides_the_algorithm() -> None:
    p256 = crypto.generate_private_key("ES256")
    block = cose.decode_auth_block(cose.sign_detached(p256.signer(-9), PAYLOAD), path="b")
    only_es256 = crypto.EcPublicKey(p256.public_key().cryptography_key,  # type: ignore[attr-defined]
                                    algorithms=[-7])
    with pytest.raises(PolicyError, match="ESP256 is not allowed"):
        cose.verify_detached(block, PAYLOAD, only_es256)
    with pytest.raises(PolicyError):
        cose.verify_detached(block, PAYLOAD, MAC_KEY)


def test_structure_and_algorithm_must_agree() -> None:
    """A MAC algorithm in a COSE_Sign1, or a signature algorithm in a COSE_Mac0, is refused."""
    tag = MAC_KEY.sign(cbor2.dumps(["Signature1", b"\xa1\x01\x05", b"", PAYLOAD]))
    sign1 = cose.decode_auth_block(
        cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x05", {}, None, tag])), path="b")
    with pytest.raises(PolicyError, match="COSE_Sign1 with MAC algorithm"):
        cose.verify_detached(sign1, PAYLOAD, MAC_KEY)
    mac0 = cose.decode_auth_block(
        cbor2.dumps(cbor2.CBORTag(17, [b"\xa1\x01\x26", {}, None, b"x" * 64])), path="b")
    with pytest.raises(PolicyError, match="COSE_Mac0 with non-MAC algorithm"):
        cose.verify_detached(mac0, PAYLOAD, crypto.load_public_key(example_public_pem()))


def _block(tag: int, *items: object) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, list(items)))


ES256 = b"\xa1\x01\x26"


@pytest.mark.parametrize(("data", "message"), [
    (cbor2.dumps([ES256, {}, None, b"sig"]), "got untagged"),
    (_block(98, ES256, {}, None, []), "COSE_Sign (tag 98) is not supported"),
    (_block(97, ES256, {}, None, b"t", []), "COSE_Mac (tag 97) is not supported"),
    (_block(16, ES256, {}, b"ct"), "got tag 16"),
    (_block(18, ES256, {}, None), "array of 4 items"),
    (_block(18, {1: -7}, {}, None, b"sig"), "expected a bstr, got map"),
    (_block(18, b"\xa0", {1: -7}, None, b"sig"), "alg (1) must be in the protected header"),
    (_block(18, b"", {}, None, b"sig"), "alg (1) must be in the protected header"),
    (_block(18, cbor2.dumps({1: "ES256"}), {}, None, b"sig"), "header 1 must be int, got tstr"),
    (_block(18, ES256, {}, b"payload", b"sig"), "must be nil"),
    (_block(18, ES256, {}, None, "sig"), "signature: expected a bstr"),
    (_block(18, ES256, [], None, b"sig"), "expected a map"),
    (_block(18, ES256, {1: -7}, None, b"sig"), "both protected and unprotected"),
    (_block(18, cbor2.dumps({1: -7, 2: [4]}), {}, None, b"sig"), "critical headers"),
    (_block(18, ES256, {4: "kid"}, None, b"sig"), "header 4 must be bstr, got tstr"),
    (_block(18, b"\x83", {}, None, b"sig"), "protected"),
    (_block(18, b"\x01", {}, None, b"sig"), "protected header must be a map"),
    (b"\xd2\x84", "auth[1]"),
])
def test_malformed_auth_blocks(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)) as info:
        cose.decode_auth_block(data, path="auth[1]")
    assert str(info.value).startswith("auth[1]")


# ------------------------------------------------------------------------------ encryption

VECTOR_KEYS: dict[str, crypto.AesKwKey | crypto.EcPrivateKey] = {
    "aes-kw": KEK, "es-ecdh": recipient_key()}
ENCRYPTION_VECTORS = [(k, c) for k in ("aes-kw", "es-ecdh") for c in ("aes-gcm", "aes-ctr")]


def encryption_vector(kind: str, content: str) -> tuple[cose.CoseEncrypt, bytes]:
    info = cose.decode_encryption_info(
        vector(f"encryption-suit-encryption-info-{kind}-{content}"), path="encryption-info")
    return info, vector(f"encryption-encrypted-payload-{kind}-{content}")


@pytest.mark.parametrize(("kind", "content"), ENCRYPTION_VECTORS)
def test_encryption_vectors_decrypt(kind: str, content: str) -> None:
    info, ciphertext = encryption_vector(kind, content)
    key = VECTOR_KEYS[kind]
    assert cose.unwrap_cek(info, key) == (GCM_CEK if content == "aes-gcm" else CTR_CEK)
    assert info.iv == (GCM_IV if content == "aes-gcm" else CTR_IV)
    assert cose.decrypt_payload(info, ciphertext, key) == PLAINTEXT
    for chunk in (1, 3, 16):
        stream = cose.decryptor(info, key)
        parts = [stream.update(ciphertext[i:i + chunk])
                 for i in range(0, len(ciphertext), chunk)]
        assert b"".join(parts) + stream.finalize() == PLAINTEXT


def test_ecdh_kek_derivation_independently() -> None:
    """KDF context, HKDF and unwrap rebuilt with cbor2 + cryptography (suit-spec.md §11.2)."""
    raw = cbor2.loads(vector("encryption-suit-encryption-info-es-ecdh-aes-gcm"))
    r_protected, r_unprotected, wrapped = raw.value[3][0]
    context = cbor2.dumps([-3, [None] * 3, [None] * 3,
                           [128, r_protected, b"SUIT Payload Encryption"]])
    assert context.hex() == ("842283f6f6f683f6f6f683188044a101381c5753554954205061796c6f61642045"
                             "6e6372797074696f6e")
    assert cose.kdf_context(-3, r_protected) == context
    eph = r_unprotected[-1]
    peer = ec.EllipticCurvePublicNumbers(int.from_bytes(eph[-2], "big"),
                                         int.from_bytes(eph[-3], "big"),
                                         ec.SECP256R1()).public_key()
    private = ec.derive_private_key(int.from_bytes(RECIPIENT_D, "big"), ec.SECP256R1())
    kek = HKDF(hashes.SHA256(), 16, None, context).derive(private.exchange(ec.ECDH(), peer))
    assert keywrap.aes_key_unwrap(kek, wrapped) == GCM_CEK


@pytest.mark.parametrize(("content", "alg", "cek", "iv"), [
    ("aes-gcm", 1, GCM_CEK, GCM_IV), ("aes-ctr", -65534, CTR_CEK, CTR_IV)])
def test_aes_kw_encryption_reproduces_the_vectors(content: str, alg: int, cek: bytes,
                                                  iv: bytes) -> None:
    info, ciphertext = cose.encrypt_payload(PLAINTEXT, content_alg=alg, recipients=[KEK],
                                            cek=cek, iv=iv)
    assert info == vector(f"encryption-suit-encryption-info-aes-kw-{content}")
    assert ciphertext == vector(f"encryption-encrypted-payload-aes-kw-{content}")


CONTENT_ALGS = [1, 2, 3, -65534, -65533, -65532]


@pytest.mark.parametrize("alg", CONTENT_ALGS)
def test_encrypt_then_decrypt_for_every_recipient_kind(alg: int) -> None:
    device_keys: list[crypto.AesKwKey | crypto.EcPrivateKey] = [
        crypto.AesKwKey(b"1" * 16, key_id=b"a"), crypto.AesKwKey(b"2" * 24, key_id=b"b"),
        crypto.AesKwKey(b"3" * 32, key_id=b"c"),
        crypto.EcPrivateKey(ec.generate_private_key(ec.SECP256R1()), key_id=b"d"),
        recipient_key(key_id=None)]
    recipients = [k if isinstance(k, crypto.AesKwKey) else k.public_key() for k in device_keys]
    plaintext = bytes(range(256)) * 40
    data, ciphertext = cose.encrypt_payload(plaintext, content_alg=alg,
                                            recipients=recipients)  # type: ignore[arg-type]
    info = cose.decode_encryption_info(data, path="ei")
    assert info.algorithm == alg
    assert len(info.recipients) == 5
    if alg in (-65534, -65533, -65532):
        assert info.protected == b""  # RFC 9459 §4
    ecdh_alg = {16: -29, 24: -30, 32: -31}[crypto.content_key_size(alg)]
    assert [r.algorithm for r in info.recipients] == [-3, -4, -5, ecdh_alg, ecdh_alg]
    for key in device_keys:
        assert cose.decrypt_payload(info, ciphertext, key) == plaintext


def test_two_encryptions_use_fresh_keys_and_ivs() -> None:
    a = cose.encrypt_payload(PLAINTEXT, content_alg=-65534, recipients=[KEK])
    b = cose.encrypt_payload(PLAINTEXT, content_alg=-65534, recipients=[KEK])
    assert a[0] != b[0] and a[1] != b[1]


def test_gcm_tamper_is_detected() -> None:
    info, ciphertext = encryption_vector("aes-kw", "aes-gcm")
    for i in (0, len(ciphertext) - 1):  # first ciphertext byte, last tag byte
        bad = bytearray(ciphertext)
        bad[i] ^= 0x80
        with pytest.raises(AuthenticationError, match="tag does not verify"):
            cose.decrypt_payload(info, bytes(bad), KEK)
    # An equivalent re-encoding of the protected header (it is AAD) is refused before use.
    changed = cose.CoseEncrypt(bytes.fromhex("a1011801"), info.unprotected, None,
                               info.recipients)  # {1: 1} with a non-minimal head
    with pytest.raises(DecodeError, match="not in preferred serialization"):
        cose.decrypt_payload(changed, ciphertext, KEK)


def test_ctr_has_no_tag_so_tampering_yields_wrong_plaintext() -> None:
    """AES-CTR integrity must come from the image digest (suit-spec.md §11.3)."""
    info, ciphertext = encryption_vector("aes-kw", "aes-ctr")
    bad = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    assert cose.decrypt_payload(info, bad, KEK) != PLAINTEXT


def test_wrong_or_unmatched_keys() -> None:
    info, ciphertext = encryption_vector("aes-kw", "aes-gcm")
    with pytest.raises(AuthenticationError, match="does not unwrap"):
        cose.decrypt_payload(info, ciphertext, crypto.AesKwKey(b"b" * 16))
    with pytest.raises(PolicyError, match="no recipient is meant for this key"):
        cose.decrypt_payload(info, ciphertext, crypto.AesKwKey(b"a" * 16, key_id=b"kid-9"))
    with pytest.raises(PolicyError, match="recipients use A128KW"):
        cose.decrypt_payload(info, ciphertext, crypto.AesKwKey(b"a" * 32))
    with pytest.raises(PolicyError):
        cose.decrypt_payload(info, ciphertext, recipient_key())
    ecdh_info, ecdh_ct = encryption_vector("es-ecdh", "aes-ctr")
    stranger = crypto.EcPrivateKey(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AuthenticationError):
        cose.decrypt_payload(ecdh_info, ecdh_ct, stranger)


def _info(protected: bytes, unprotected: object, recipients: object,
          ciphertext: object = None) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(96, [protected, unprotected, ciphertext, recipients]))


KW_RECIPIENT = [b"", {1: -3, 4: b"kid-1"}, b"w" * 24]
GCM = cbor2.dumps({1: 1})
IV12 = {5: b"i" * 12}
EPHEMERAL = {1: 2, -1: 1, -2: b"\x01" * 32, -3: b"\x01" * 32}  # not on the curve


@pytest.mark.parametrize(("data", "message"), [
    (cbor2.dumps(cbor2.CBORTag(18, [])), "expected COSE_Encrypt (tag 96), got tag 18"),
    (_info(GCM, IV12, [KW_RECIPIENT])[2:], "got untagged"),
    (_info(b"", {1: -65534, 5: b"i" * 16}, [KW_RECIPIENT])[:-3], "ei"),
    (_info(GCM, {}, [KW_RECIPIENT]), "IV (5) is missing"),
    (_info(b"", IV12, [KW_RECIPIENT]), "alg (1) is missing"),
    (_info(cbor2.dumps({1: -65534}), {5: b"i" * 16}, [KW_RECIPIENT]),
     "must be a zero-length bstr for AES-CTR"),
    (_info(GCM, IV12, []), "expected a non-empty array"),
    (_info(GCM, IV12, [[b"", {1: -3}, b"w" * 24, []]]), "array of 3 items"),
    (_info(GCM, IV12, [[b"", {4: b"k"}, b"w" * 24]]), "key distribution alg (1) is missing"),
    (_info(GCM, IV12, [[b"", {1: -3}, None]]), "recipients[0].ciphertext: expected a bstr"),
    (_info(GCM, IV12, [KW_RECIPIENT], "ct"), "expected nil or a bstr"),
    (_info(GCM, IV12, [[cbor2.dumps({1: -29}), {}, b"w" * 24]]), "no ephemeral key"),
    (_info(GCM, IV12, [[cbor2.dumps({1: -29}), {-1: EPHEMERAL}, b"w" * 24]]),
     "not a point on secp256r1"),
    (_info(GCM, IV12, [[cbor2.dumps({1: -29}), {-1: {1: 1, -1: 6, -2: b"x" * 32}},
                        b"w" * 24]]), "unsupported OKP curve 6 for key agreement"),
])
def test_malformed_encryption_info(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=re.escape(message)) as info:
        cose.decode_encryption_info(data, path="ei")
    assert str(info.value).startswith("ei")


def test_unsupported_content_algorithm_is_a_policy_error() -> None:
    data = _info(cbor2.dumps({1: 10}), IV12, [KW_RECIPIENT])  # AES-CCM-16-64-128
    info = cose.decode_encryption_info(data, path="ei")
    with pytest.raises(PolicyError, match="not supported"):
        cose.decryptor(info, KEK)


def test_encrypt_needs_a_recipient_and_a_matching_cek() -> None:
    with pytest.raises(KeyMaterialError, match="at least one recipient"):
        cose.encrypt_payload(PLAINTEXT, content_alg=1, recipients=[])
    with pytest.raises(KeyMaterialError, match="needs a 16-byte key"):
        cose.encrypt_payload(PLAINTEXT, content_alg=1, recipients=[KEK], cek=b"k" * 32)
