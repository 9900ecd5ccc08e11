"""The COSE structures SUIT uses, built directly on ``suitkit.core.cbor`` (pure).

- COSE_Sign1 (tag 18) and COSE_Mac0 (tag 17) authentication blocks with the SUIT detached
  payload (RFC 9052 §4.4, §6.3; manifest §8.3; suit-spec.md §3): the payload is the encoded
  SUIT_Digest, carried once as a bstr in the ToBeSigned, and the COSE payload field is nil.
  The protected header is kept exactly as received and signed as received.
- COSE_Encrypt (tag 96) as SUIT_Encryption_Info (draft-ietf-suit-firmware-encryption;
  suit-spec.md §11): AES-KW and ECDH-ES+AES-KW recipients (P-256, P-384 and X25519 ephemeral
  keys), AES-GCM, ChaCha20/Poly1305 and AES-CTR content with a detached ciphertext, decrypted
  as a stream. Every algorithm of the six MTI profiles (draft-ietf-suit-mti-23).

Deliberately not done: COSE_Sign (98) and COSE_Mac (97) (SUIT uses one signer per block; several
blocks give several signers), untagged messages, critical headers, nested recipients, HPKE,
out-of-band IVs, and choosing a trust anchor by ``kid`` (that is ``verify.py``'s job).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from suitkit.core import cbor, crypto
from suitkit.core.cbor import CBORTag, frozendict
from suitkit.core.numbers import CoseAlg, CoseHeader, Tag
from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    KeyMaterialError,
    PolicyError,
    SuitError,
)

__all__ = [
    "ContentCipher",
    "CoseEncrypt",
    "CoseMac0",
    "CoseRecipient",
    "CoseSign1",
    "KeyRing",
    "decode_auth_block",
    "decode_encryption_info",
    "decrypt_payload",
    "decryptor",
    "enc_structure",
    "encrypt_payload",
    "encryption_info",
    "kdf_context",
    "mac_structure",
    "sig_structure",
    "sign_detached",
    "unwrap_cek",
    "verify_detached",
]

_T = TypeVar("_T")

_MAC_ALGORITHMS = frozenset({int(CoseAlg.HMAC_256_256)})
_AEAD_ALGORITHMS = crypto.AEAD_ALGORITHMS  # AES-GCM and ChaCha20/Poly1305: Enc_structure AAD
_CTR_ALGORITHMS = frozenset({int(CoseAlg.A128CTR), int(CoseAlg.A192CTR), int(CoseAlg.A256CTR)})
_ECDH_ES_KW: dict[int, int] = {
    # ECDH-ES + AES-KW (RFC 9053 §6.4.1) -> the key-wrap algorithm it derives a KEK for
    CoseAlg.ECDH_ES_A128KW: CoseAlg.A128KW,
    CoseAlg.ECDH_ES_A192KW: CoseAlg.A192KW,
    CoseAlg.ECDH_ES_A256KW: CoseAlg.A256KW,
}
_KW_KEY_BYTES: dict[int, int] = {CoseAlg.A128KW: 16, CoseAlg.A192KW: 24, CoseAlg.A256KW: 32}
_SUIT_KDF_OTHER = b"SUIT Payload Encryption"  # encryption draft, COSE_KDF_Context SuppPubInfo


# --------------------------------------------------------------------------------------------
# Headers (RFC 9052 §3)


@dataclass(frozen=True)
class _Headers:
    protected: bytes
    """The protected-header bstr content exactly as received (signed/MACed/AAD as is)."""
    unprotected: Mapping[object, object]

    @cached_property
    def protected_map(self) -> Mapping[object, object]:
        """The decoded protected header (decoded once, on first use)."""
        return _protected_map(self.protected, "protected")

    def header(self, label: int) -> object:
        """A header value from either bucket (RFC 9052 §3 forbids a label in both), or None."""
        value = self.protected_map.get(label)
        return self.unprotected.get(label) if value is None else value

    @cached_property
    def key_id(self) -> bytes | None:
        kid = self.header(CoseHeader.KID)
        return kid if isinstance(kid, bytes) else None

    def _typed(self, label: int, kind: type[_T], name: str) -> _T:
        value = self.header(label)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise DecodeError("headers", f"{name} ({label}) is missing or not "
                                         f"{_kind(kind())}")
        return value


def _protected_map(protected: bytes, path: str) -> Mapping[object, object]:
    # RFC 9052 §3: a zero-length bstr is an empty map.
    if not protected:
        return MappingProxyType({})
    value = cbor.decode(protected, path=path)
    if not isinstance(value, Mapping):
        raise DecodeError(path, f"protected header must be a map, got {_kind(value)}")
    return value


_SCALARS = frozenset({int, bytes, str, bool})
_SIGN1_PROTECTED: dict[bytes, tuple[Mapping[object, object], int]] = {}
"""Protected headers of authentication blocks already decoded and found valid on their own
(labels, no crit, alg an int, kid/IV types), with their alg. Every manifest from one signer
carries the same few bytes (``{1: -7}`` is ``a10126``); the map is read-only."""


def _sign1_protected(protected: object, path: str) -> tuple[Mapping[object, object], int]:
    """The checked protected header of a COSE_Sign1/COSE_Mac0 block and its alg."""
    if type(protected) is bytes:
        known = _SIGN1_PROTECTED.get(protected)
        if known is not None:
            return known
    if not isinstance(protected, bytes):
        raise DecodeError(f"{path}.protected", f"expected a bstr, got {_kind(protected)}")
    pmap = MappingProxyType(dict(_protected_map(protected, f"{path}.protected")))
    _check_headers(protected, _NO_HEADERS, path, pmap)
    # suit-mti App. A: the protected header is {1 => alg, * int => any}.
    alg = pmap.get(CoseHeader.ALG)
    if not isinstance(alg, int):
        raise DecodeError(f"{path}.protected", "alg (1) must be in the protected header")
    if len(protected) <= 64 and all(type(v) in _SCALARS for v in pmap.values()):
        if len(_SIGN1_PROTECTED) >= 64:
            _SIGN1_PROTECTED.clear()
        _SIGN1_PROTECTED[protected] = pmap, alg
    return pmap, alg


def _check_headers(protected: object, unprotected: object, path: str,
                   pmap: Mapping[object, object] | None = None) -> tuple[
        bytes, Mapping[object, object]]:
    """Validate a protected bstr and unprotected map; return them typed.

    ``pmap``: the protected map when the caller has already decoded ``protected``.
    """
    if not isinstance(protected, bytes):
        raise DecodeError(f"{path}.protected", f"expected a bstr, got {_kind(protected)}")
    if pmap is None:
        pmap = _protected_map(protected, f"{path}.protected")
    if not isinstance(unprotected, Mapping):
        raise DecodeError(f"{path}.unprotected", f"expected a map, got "
                                                 f"{_kind(unprotected)}")
    for label in (*pmap, *unprotected):
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise DecodeError(path, f"header label {label!r} is not an int or text")
    both = set(pmap) & set(unprotected)
    if both:  # RFC 9052 §3: a label MUST NOT occur in both buckets
        raise DecodeError(path, f"header {sorted(map(str, both))} is both protected and "
                                "unprotected")
    if CoseHeader.CRIT in pmap or CoseHeader.CRIT in unprotected:
        raise DecodeError(path, "critical headers (label 2) are not supported")
    for label, kind in ((CoseHeader.ALG, int), (CoseHeader.KID, bytes), (CoseHeader.IV, bytes)):
        value = pmap.get(label, unprotected.get(label))
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise DecodeError(path, f"header {int(label)} must be {_kind(kind())}, got "
                                    f"{_kind(value)}")
    return protected, MappingProxyType(dict(unprotected))


def _array(item: object, tag: int, size: int, name: str, path: str) -> Sequence[object]:
    if not isinstance(item, CBORTag):
        raise DecodeError(path, f"expected a tagged {name} (tag {tag}), got untagged "
                                f"{_kind(item)}")
    if item.tag != tag:
        raise DecodeError(path, f"expected {name} (tag {tag}), got tag {item.tag}")
    return _plain_array(item.value, size, name, path)


def _plain_array(value: object, size: int, name: str, path: str) -> Sequence[object]:
    if not isinstance(value, list | tuple) or len(value) != size:
        raise DecodeError(path, f"{name} must be an array of {size} items")
    return value


# --------------------------------------------------------------------------------------------
# COSE_Sign1 / COSE_Mac0 with a detached payload (manifest §8.3)


@dataclass(frozen=True)
class _Single(_Headers):
    payload: bytes | None

    @cached_property
    def algorithm(self) -> int:
        """The ``alg`` of the protected header (checked present and int by the decoder)."""
        alg = self.protected_map.get(CoseHeader.ALG)
        if not isinstance(alg, int):
            raise DecodeError("protected", "alg (1) is missing from the protected header")
        return alg


@dataclass(frozen=True)
class CoseSign1(_Single):
    """COSE_Sign1 (RFC 9052 §4.2)."""

    signature: bytes


@dataclass(frozen=True)
class CoseMac0(_Single):
    """COSE_Mac0 (RFC 9052 §6.2)."""

    tag: bytes


def decode_auth_block(data: bytes, *, path: str) -> CoseSign1 | CoseMac0:
    """Decode one SUIT_Authentication_Block: a tagged COSE_Sign1 or COSE_Mac0.

    Raises:
        DecodeError: naming ``path``: not CBOR, untagged, COSE_Sign/COSE_Mac, wrong shape,
            ``alg`` missing from the protected header or not an int, a non-nil payload.
    """
    item = cbor.decode(data, path=path)
    if not isinstance(item, CBORTag):
        raise DecodeError(path, "expected a tagged COSE_Sign1 (18) or COSE_Mac0 (17), got "
                                f"untagged {_kind(item)}")
    tag = item.tag  # compared with int constants: an IntEnum member lookup costs more
    if tag in (_SIGN, _MAC):
        name = "COSE_Sign" if tag == _SIGN else "COSE_Mac"
        raise DecodeError(path, f"{name} (tag {tag}) is not supported; use one "
                                "COSE_Sign1 or COSE_Mac0 block per signer")
    if tag not in (_SIGN1, _MAC0):
        raise DecodeError(path, "expected COSE_Sign1 (tag 18) or COSE_Mac0 (tag 17), got "
                                f"tag {tag}")
    mac = tag == _MAC0
    protected, unprotected, payload, signature = _plain_array(
        item.value, 4, "COSE_Mac0" if mac else "COSE_Sign1", path)
    pmap, alg = _sign1_protected(protected, path)
    if unprotected:
        # The protected header passed on its own; now both buckets together.
        _, headers = _check_headers(protected, unprotected, path, pmap)
    elif type(unprotected) in _EMPTY_MAP_TYPES or isinstance(unprotected, Mapping):
        headers = _NO_HEADERS
    else:
        raise DecodeError(f"{path}.unprotected", f"expected a map, got {_kind(unprotected)}")
    # Manifest §8.3: authentication blocks are computed over a detached payload.
    if payload is not None:
        raise DecodeError(f"{path}.payload", "must be nil: SUIT signs a detached payload")
    if type(signature) is not bytes:
        raise DecodeError(f"{path}.signature", f"expected a bstr, got {_kind(signature)}")
    # The dataclass fields and the cached properties, filled from this decode at once (a
    # frozen dataclass __init__ costs as much as the rest of this function).
    block: CoseSign1 | CoseMac0 = object.__new__(CoseMac0) if mac else object.__new__(CoseSign1)
    kid = pmap.get(_KID)
    if kid is None:
        kid = headers.get(_KID)
    block.__dict__.update({
        "protected": protected, "unprotected": headers, "payload": None,
        "tag" if mac else "signature": signature, "protected_map": pmap, "algorithm": alg,
        "key_id": kid if isinstance(kid, bytes) else None,
    })
    return block


_NO_HEADERS: Mapping[object, object] = MappingProxyType({})
_SIGN, _MAC, _SIGN1, _MAC0 = (int(Tag.COSE_SIGN), int(Tag.COSE_MAC), int(Tag.COSE_SIGN1),
                              int(Tag.COSE_MAC0))
_KID = int(CoseHeader.KID)
_EMPTY_MAP_TYPES = (dict, frozendict)  # the maps cbor.decode returns


def _kind(item: object) -> str:
    """The CBOR name of a decoded item's type, for messages."""
    if isinstance(item, CBORTag):
        return f"tag {item.tag}"
    for kind, name in ((bool, "bool"), (int, "int"), (bytes, "bstr"), (str, "tstr"),
                       (Mapping, "map"), (list | tuple, "array"), (type(None), "nil")):
        if isinstance(item, kind):
            return name
    return type(item).__name__


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The COSE_Sign1 ToBeSigned (RFC 9052 §4.4): ["Signature1", protected, aad, payload]."""
    # Deterministic CBOR, assembled directly: array(4), tstr "Signature1", then three bstrs.
    wrap = cbor.wrap
    aad = wrap(external_aad) if external_aad else b"\x40"
    return b"\x84\x6aSignature1" + wrap(protected) + aad + wrap(payload)


def mac_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The COSE_Mac0 ToBeMaced (RFC 9052 §6.3): ["MAC0", protected, aad, payload]."""
    wrap = cbor.wrap
    return b"\x84\x64MAC0" + wrap(protected) + wrap(external_aad) + wrap(payload)


def sign_detached(signer: crypto.Signer, payload: bytes) -> bytes:
    """A tagged COSE_Sign1 (or COSE_Mac0 for HMAC 256/256) over a detached ``payload``.

    For SUIT, ``payload`` is the encoded SUIT_Digest (manifest §8.3). The protected header is
    ``{1: alg}``, the unprotected header ``{4: kid}`` when the signer has a key id.
    """
    protected = cbor.encode({CoseHeader.ALG: signer.algorithm})
    unprotected = {} if signer.key_id is None else {CoseHeader.KID: signer.key_id}
    if signer.algorithm in _MAC_ALGORITHMS:
        tag = signer.sign(mac_structure(protected, payload))
        return cbor.encode(CBORTag(Tag.COSE_MAC0, [protected, unprotected, None, tag]))
    signature = signer.sign(sig_structure(protected, payload))
    return cbor.encode(CBORTag(Tag.COSE_SIGN1, [protected, unprotected, None, signature]))


def verify_detached(block: CoseSign1 | CoseMac0, payload: bytes,
                    verifier: crypto.Verifier) -> None:
    """Verify ``block`` over the detached ``payload`` with a trust anchor.

    Raises:
        PolicyError: the algorithm is not allowed by ``verifier``, or does not fit the block
            (a MAC algorithm in a COSE_Sign1, a signature algorithm in a COSE_Mac0).
        AuthenticationError: the signature or tag does not verify.
    """
    alg = block.algorithm
    if isinstance(block, CoseMac0):
        if alg not in _MAC_ALGORITHMS:
            raise PolicyError(f"COSE_Mac0 with non-MAC algorithm {crypto.algorithm_name(alg)}")
        verifier.verify(alg, mac_structure(block.protected, payload), block.tag)
    else:
        if alg in _MAC_ALGORITHMS:
            raise PolicyError(f"COSE_Sign1 with MAC algorithm {crypto.algorithm_name(alg)}")
        verifier.verify(alg, sig_structure(block.protected, payload), block.signature)


# --------------------------------------------------------------------------------------------
# SUIT_Encryption_Info = COSE_Encrypt (suit-spec.md §11)


@dataclass(frozen=True)
class CoseRecipient(_Headers):
    """One COSE_recipient (RFC 9052 §5.1): a wrapped content-encryption key."""

    ciphertext: bytes

    @property
    def algorithm(self) -> int:
        return self._typed(CoseHeader.ALG, int, "alg")

    @property
    def ephemeral_key(self) -> crypto.EcdhPublicKey:
        """The sender's ECDH-ES ephemeral public key (header -1, RFC 9053 §6.3.1): EC2 P-256 /
        P-384 or OKP X25519."""
        cose_key = self.header(CoseHeader.EPHEMERAL_KEY)
        if not isinstance(cose_key, Mapping):
            raise DecodeError("recipient", "ECDH-ES recipient has no ephemeral key (-1)")
        try:
            return crypto.ecdh_public_from_cose_key(cose_key)
        except KeyMaterialError as e:
            raise DecodeError("recipient", f"ephemeral key: {e}") from e


@dataclass(frozen=True)
class CoseEncrypt(_Headers):
    """COSE_Encrypt (RFC 9052 §5.1) used as SUIT_Encryption_Info."""

    ciphertext: bytes | None
    """Normally nil: SUIT carries the ciphertext as the payload (encryption draft)."""
    recipients: tuple[CoseRecipient, ...]

    @property
    def algorithm(self) -> int:
        return self._typed(CoseHeader.ALG, int, "alg")

    @property
    def iv(self) -> bytes:
        return self._typed(CoseHeader.IV, bytes, "IV")


def decode_encryption_info(data: bytes, *, path: str) -> CoseEncrypt:
    """Decode SUIT_Encryption_Info: a tagged COSE_Encrypt (96) with one or more recipients.

    Raises:
        DecodeError: naming ``path``: malformed structure or headers, no alg or IV, an AES-CTR
            message with protected headers, a recipient without alg or with nested recipients.
    """
    protected, unprotected, ciphertext, recipients = _array(
        cbor.decode(data, path=path), Tag.COSE_ENCRYPT, 4, "COSE_Encrypt", path)
    protected, headers = _check_headers(protected, unprotected, path)
    info_headers = _Headers(protected, headers)
    alg = info_headers.header(CoseHeader.ALG)
    if alg is None:
        raise DecodeError(path, "content encryption alg (1) is missing")
    if info_headers.header(CoseHeader.IV) is None:
        raise DecodeError(path, "IV (5) is missing; out-of-band IVs are not supported")
    # RFC 9459 §4 (suit-spec.md §11.3): AES-CTR has no AAD, so nothing may be "protected".
    if alg in _CTR_ALGORITHMS and protected:
        raise DecodeError(f"{path}.protected", "must be a zero-length bstr for AES-CTR")
    if ciphertext is not None and not isinstance(ciphertext, bytes):
        raise DecodeError(f"{path}.ciphertext", f"expected nil or a bstr, got {_kind(ciphertext)}")
    if not isinstance(recipients, list | tuple) or not recipients:
        raise DecodeError(f"{path}.recipients", "expected a non-empty array")
    decoded = []
    for i, item in enumerate(recipients):
        where = f"{path}.recipients[{i}]"
        r_protected, r_unprotected, wrapped = _plain_array(item, 3, "COSE_recipient", where)
        r_protected, r_headers = _check_headers(r_protected, r_unprotected, where)
        if not isinstance(wrapped, bytes):
            raise DecodeError(f"{where}.ciphertext", f"expected a bstr, got {_kind(wrapped)}")
        recipient = CoseRecipient(r_protected, r_headers, wrapped)
        if recipient.header(CoseHeader.ALG) is None:
            raise DecodeError(where, "key distribution alg (1) is missing")
        if recipient.algorithm in _ECDH_ES_KW:
            try:
                recipient.ephemeral_key  # noqa: B018  (validated here to report the path)
            except DecodeError as e:
                raise DecodeError(where, e.reason) from e
        decoded.append(recipient)
    return CoseEncrypt(protected, headers, ciphertext, tuple(decoded))


def enc_structure(protected: bytes, external_aad: bytes = b"") -> bytes:
    """The AEAD additional data (RFC 9052 §5.3): ["Encrypt", protected, external_aad]."""
    return cbor.encode(["Encrypt", protected, external_aad])


def kdf_context(kw_alg: int, protected: bytes) -> bytes:
    """COSE_KDF_Context for SUIT ECDH-ES (RFC 9053 §5.2; suit-spec.md §11.2).

    AlgorithmID is the key-wrap algorithm, PartyU/PartyV are nil, SuppPubInfo holds the key
    length in bits, the recipient's protected header as sent and the bstr 'SUIT Payload
    Encryption'.
    """
    bits = 8 * _KW_KEY_BYTES[kw_alg]
    return cbor.encode([kw_alg, [None, None, None], [None, None, None],
                        [bits, protected, _SUIT_KDF_OTHER]])


def _ecdh_kek(ecdh_alg: int, recipient_protected: bytes, shared_secret: bytes,
              salt: object) -> bytes:
    # RFC 9053 §5.1: a salt, when sent, travels in header -20 and must be used.
    if salt is not None and not isinstance(salt, bytes):
        raise DecodeError("recipient", "salt (-20) must be a bstr")
    kw_alg = _ECDH_ES_KW[ecdh_alg]
    return crypto.hkdf_sha256(shared_secret, info=kdf_context(kw_alg, recipient_protected),
                              length=_KW_KEY_BYTES[kw_alg], salt=salt)


@dataclass(frozen=True)
class KeyRing:
    """Several of a device's keys that may open one recipient, tried in turn (a device that
    implements several MTI profiles holds a P-256 and an X25519 key; without kids, the
    recipient's algorithm alone does not tell which)."""

    keys: tuple[crypto.AesKwKey | crypto.EcPrivateKey | crypto.X25519PrivateKey, ...]
    key_id: bytes | None = None


RecipientKey: TypeAlias = (crypto.AesKwKey | crypto.EcPrivateKey | crypto.X25519PrivateKey
                           | KeyRing)
"""What a device holds to open SUIT_Encryption_Info: a pre-shared KEK or an ECDH private key
(P-256 or X25519), or several of them."""


def unwrap_cek(info: CoseEncrypt, key: RecipientKey) -> bytes:
    """The content-encryption key, from the first recipient that ``key`` can open.

    Recipients are tried when their algorithm fits the key (A*KW for an ``AesKwKey`` of that
    size, ECDH-ES+A*KW for an ``EcPrivateKey``) and their kid, if both sides have one, matches.

    Raises:
        PolicyError: unsupported content algorithm, or no recipient is meant for this key.
        AuthenticationError: no fitting recipient unwraps (AES-KW integrity check failed).
    """
    if isinstance(key, KeyRing):
        failure: SuitError | None = None
        for each in key.keys:
            try:
                return unwrap_cek(info, each)
            except (PolicyError, AuthenticationError) as e:
                # an unwrap that failed says more than "not meant for this key"
                if failure is None or isinstance(e, AuthenticationError):
                    failure = e
        raise failure or PolicyError("no key to try")
    size = crypto.content_key_size(info.algorithm)
    tried = 0
    for recipient in info.recipients:
        if key.key_id is not None and recipient.key_id not in (None, key.key_id):
            continue
        alg = recipient.algorithm
        if isinstance(key, crypto.AesKwKey):
            if alg != key.algorithm:
                continue
            kek = key.secret
        else:
            if alg not in _ECDH_ES_KW or not _same_curve(key, recipient.ephemeral_key):
                continue
            shared = key.exchange(recipient.ephemeral_key)
            kek = _ecdh_kek(alg, recipient.protected, shared, recipient.header(CoseHeader.SALT))
        tried += 1
        try:
            cek = crypto.aes_unwrap(kek, recipient.ciphertext)
        except AuthenticationError:
            continue
        if len(cek) != size:
            raise KeyMaterialError(f"unwrapped content key is {len(cek)} bytes, "
                                   f"{crypto.algorithm_name(info.algorithm)} needs {size}")
        return cek
    if not tried:
        algs = ", ".join(crypto.algorithm_name(r.algorithm) for r in info.recipients)
        raise PolicyError(f"no recipient is meant for this key (recipients use {algs})")
    raise AuthenticationError("content key does not unwrap with this key")


def _same_curve(key: crypto.EcPrivateKey | crypto.X25519PrivateKey,
                peer: crypto.EcdhPublicKey) -> bool:
    if isinstance(key, crypto.X25519PrivateKey) or isinstance(peer, crypto.X25519PublicKey):
        return isinstance(key, crypto.X25519PrivateKey) == isinstance(peer,
                                                                      crypto.X25519PublicKey)
    return key.public_key().curve.name == peer.curve.name


def decryptor(info: CoseEncrypt, key: RecipientKey) -> crypto.ContentDecryptor:
    """A streaming decryptor for the detached ciphertext that ``info`` describes.

    With AES-GCM, output before ``finalize()`` is unauthenticated (see ``ContentDecryptor``).
    """
    cek = unwrap_cek(info, key)
    aad = enc_structure(info.protected) if info.algorithm in _AEAD_ALGORITHMS else b""
    return crypto.content_decryptor(info.algorithm, cek, info.iv, aad)


def decrypt_payload(info: CoseEncrypt, ciphertext: bytes, key: RecipientKey) -> bytes:
    """Decrypt a whole detached ciphertext in memory."""
    stream = decryptor(info, key)
    return stream.update(ciphertext) + stream.finalize()


def encrypt_payload(
    plaintext: bytes,
    *,
    content_alg: int,
    recipients: Sequence[crypto.RecipientPublic],
    key_agreement: int | None = None,
    cek: bytes | None = None,
    iv: bytes | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, bytes]:
    """Encrypt a payload for SUIT: ``(encoded SUIT_Encryption_Info, detached ciphertext)``.

    Recipients are pre-shared KEKs (AES-KW, alg from the KEK size) or ECDH-ES public keys
    (P-256 or X25519; a fresh ephemeral key per recipient). ``key_agreement`` is the ECDH-ES
    algorithm (ECDH-ES+A128KW -29, as every MTI profile; default: the AES-KW size of the content
    key). ``cek`` and ``iv`` are drawn from ``rng`` unless given; a key+IV pair must never be
    reused (suit-spec.md §11.3).
    """
    info, cipher = encryption_info(content_alg=content_alg, recipients=recipients,
                                   key_agreement=key_agreement, cek=cek, iv=iv, rng=rng)
    return info, cipher.encrypt(plaintext)


@dataclass(frozen=True)
class ContentCipher:
    """The content key and IV of one SUIT_Encryption_Info, to encrypt its payload with."""

    algorithm: int
    cek: bytes
    iv: bytes
    aad: bytes

    def encrypt(self, plaintext: bytes) -> bytes:
        return crypto.content_encrypt(self.algorithm, self.cek, self.iv, plaintext, self.aad)


def encryption_info(
    *,
    content_alg: int,
    recipients: Sequence[crypto.RecipientPublic],
    key_agreement: int | None = None,
    cek: bytes | None = None,
    iv: bytes | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, ContentCipher]:
    """A new SUIT_Encryption_Info (encoded) and the cipher for its detached payload."""
    if not recipients:
        raise KeyMaterialError("encrypting needs at least one recipient")
    size = crypto.content_key_size(content_alg)
    cek = rng(size) if cek is None else cek
    iv = rng(crypto.content_iv_size(content_alg)) if iv is None else iv
    if key_agreement is None:
        key_agreement = next(a for a, kw in _ECDH_ES_KW.items() if _KW_KEY_BYTES[kw] == len(cek))
    elif key_agreement not in _ECDH_ES_KW:
        raise PolicyError(f"key agreement {crypto.algorithm_name(key_agreement)} is not "
                          "supported; expected ECDH-ES+A128KW/A192KW/A256KW")
    if content_alg in _AEAD_ALGORITHMS:
        protected = cbor.encode({CoseHeader.ALG: content_alg})
        unprotected: dict[int, object] = {CoseHeader.IV: iv}
        aad = enc_structure(protected)
    else:  # AES-CTR: empty protected header, no AAD (RFC 9459 §4)
        protected, aad = b"", b""
        unprotected = {CoseHeader.ALG: content_alg, CoseHeader.IV: iv}
    cipher = ContentCipher(content_alg, cek, iv, aad)
    cipher.encrypt(b"")  # checks the key and IV sizes before anything is wrapped
    encoded = [_recipient(r, cek, key_agreement) for r in recipients]
    info = cbor.encode(CBORTag(Tag.COSE_ENCRYPT, [protected, unprotected, None, encoded]))
    return info, cipher


def _recipient(recipient: crypto.RecipientPublic, cek: bytes,
               ecdh_alg: int) -> list[object]:
    headers: dict[int, object] = {}
    if recipient.key_id is not None:
        headers[CoseHeader.KID] = recipient.key_id
    if isinstance(recipient, crypto.AesKwKey):
        # Encryption draft, AES-KW: the recipient protected header is a zero-length bstr.
        headers[CoseHeader.ALG] = recipient.algorithm
        return [b"", headers, recipient.wrap(cek)]
    protected = cbor.encode({CoseHeader.ALG: ecdh_alg})
    ephemeral = crypto.ephemeral_like(recipient)
    kek = _ecdh_kek(ecdh_alg, protected, ephemeral.exchange(recipient), None)
    headers[CoseHeader.EPHEMERAL_KEY] = ephemeral.public_key().to_cose_key()
    return [protected, headers, crypto.AesKwKey(kek).wrap(cek)]
