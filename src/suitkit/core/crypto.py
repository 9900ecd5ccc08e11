"""Signers, verifiers, keys, digests and ciphers for SUIT (pure: no files, no network, no clock).

Implements the algorithms of the SUIT MTI profiles (draft-ietf-suit-mti-23; suit-spec.md §12) on
top of pyca/cryptography, and HSS-LMS (RFC 8554, COSE alg -46 per RFC 8778) on top of pyhsslms:

- ``Signer`` / ``Verifier`` protocols (design rule 9). A ``Verifier`` is a trust anchor: it fixes
  the COSE algorithms it accepts, so a message never picks its own algorithm (design rule 4).
- ECDSA P-256 (ES256 -7, ESP256 -9) and P-384 (ES384 -35) with raw ``r||s`` signatures
  (RFC 9053 §2.1), Ed25519 (EdDSA -8, Ed25519 -19), HMAC 256/256 (5), HSS-LMS (-46).
- HSS-LMS one-time keys are state: the signer hands the advanced private state to an
  ``HssLmsStateStore`` and releases the signature only after ``reserve`` returned.
- Key files: PEM (PKCS#8 / SubjectPublicKeyInfo) for EC and Ed25519; a ``COSE KEY`` PEM armor
  around a CBOR COSE_Key (RFC 9052 §7) for HMAC (kty 4) and HSS-LMS (kty 5, RFC 8778 §4); plain
  CBOR COSE_Keys are read too. An optional ``suitkit-algorithm: NAME`` line before the PEM block
  records the algorithm a key is used with.
- Digests for SUIT_Digest (manifest §10), AES key wrap (RFC 3394), ECDH on P-256/P-384 and
  X25519 (RFC 7748; COSE OKP crv 4, RFC 9053 §7.2), HKDF and the content ciphers of the
  encryption draft and the MTI profiles (AES-GCM, AES-CTR per RFC 9459, ChaCha20/Poly1305 per
  RFC 8439) as streaming decryptors.
- Recipient key files (the keys of key distribution, ``load_recipient_private`` /
  ``load_recipient_public``): AES-KW KEKs and ECDH-ES keys as COSE_Keys in PEM armor, whose
  ``alg`` (label 3) marks what they are for, so a recipient key never loads as a signing key.

Deliberately not here: COSE structures (``cose.py``), anything touching files (``author/keys.py``),
RSA, curves other than P-256/P-384 and X25519 for ECDH, encrypted PEM files.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import pyhsslms
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import constant_time, hashes, hmac, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import (
    AEADDecryptionContext,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.poly1305 import Poly1305

from suitkit.core import cbor
from suitkit.core.numbers import CoseAlg
from suitkit.errors import AuthenticationError, DecodeError, KeyMaterialError, PolicyError

__all__ = [
    "AEAD_ALGORITHMS",
    "AEAD_TAG_BYTES",
    "RECIPIENT_KINDS",
    "AesKwKey",
    "ContentDecryptor",
    "EcPrivateKey",
    "EcPublicKey",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "Hasher",
    "HmacKey",
    "HssLmsParameters",
    "HssLmsPrivateKey",
    "HssLmsPublicKey",
    "HssLmsSigner",
    "HssLmsStateStore",
    "PrivateKey",
    "Signer",
    "Verifier",
    "X25519PrivateKey",
    "X25519PublicKey",
    "algorithm_from_name",
    "algorithm_name",
    "ciphertext_size",
    "content_decryptor",
    "content_encrypt",
    "digest",
    "ecdh_public_from_cose_key",
    "encode_hss_lms_private_key",
    "ephemeral_like",
    "generate_private_key",
    "generate_recipient_key",
    "hkdf_sha256",
    "hss_lms_state_usage",
    "load_private_key",
    "load_public_key",
    "load_recipient_private",
    "load_recipient_public",
    "new_hasher",
    "public_key_from_cose_key",
    "public_key_to_pem",
    "recipient_to_pem",
]


# --------------------------------------------------------------------------------------------
# Protocols


@runtime_checkable
class Signer(Protocol):
    """Anything that signs (or MACs) a COSE ToBeSigned: a file key, an HSS-LMS state, an HSM."""

    @property
    def key_id(self) -> bytes | None: ...

    @property
    def algorithm(self) -> int: ...

    def sign(self, message: bytes) -> bytes:
        """Raw COSE signature bytes (ECDSA as fixed-width ``r||s``, RFC 9053 §2.1)."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """A trust anchor: one key and the COSE algorithms it may be used with."""

    @property
    def key_id(self) -> bytes | None: ...

    @property
    def algorithms(self) -> frozenset[int]: ...

    def verify(self, algorithm: int, message: bytes, signature: bytes) -> None:
        """Raise PolicyError if ``algorithm`` is not allowed, AuthenticationError if it fails."""
        ...


@runtime_checkable
class PrivateKey(Protocol):
    """A private (or secret) key that yields signers and its public half."""

    @property
    def algorithm(self) -> int:
        """The COSE algorithm this key signs with unless told otherwise."""
        ...

    def public_key(self) -> Verifier: ...

    def signer(self, algorithm: int | None = None, *, key_id: bytes | None = None) -> Signer: ...

    def to_pem(self) -> bytes: ...


class HssLmsStateStore(Protocol):
    """Durable home of an HSS-LMS private state (RFC 8554 §5.2: a one-time key is used once).

    ``reserve`` must persist ``new_state`` (already advanced past the index just used) durably
    before returning; it raises if it cannot, and the signature is then never released.
    """

    def reserve(self, new_state: bytes) -> None: ...


# --------------------------------------------------------------------------------------------
# Algorithm names

_NAMES: dict[str, int] = {
    "ES256": CoseAlg.ES256,
    "ESP256": CoseAlg.ESP256,
    "ES384": CoseAlg.ES384,
    "EdDSA": CoseAlg.EDDSA,
    "Ed25519": CoseAlg.ED25519,
    "HSS-LMS": CoseAlg.HSS_LMS,
    "HMAC-256": CoseAlg.HMAC_256_256,
}
_NAME_OF = {alg: name for name, alg in _NAMES.items()}
_BY_FOLDED_NAME = {name.casefold(): alg for name, alg in _NAMES.items()}

# What each key type may sign with, and its default (first). ES256/ESP256 and EdDSA/Ed25519 are
# the same mathematics (suit-spec.md §12); the fully specified ids came with suit-mti-23, whose
# profiles name ESP256 (-9) and Ed25519 (-19) only, so those are the defaults a key signs with
# (libcsuit refuses -7). Verifiers still accept both ids unless a key file narrows them.
_P256_ALGS = (int(CoseAlg.ESP256), int(CoseAlg.ES256))
_P384_ALGS = (int(CoseAlg.ES384),)
_ED25519_ALGS = (int(CoseAlg.ED25519), int(CoseAlg.EDDSA))
_HMAC_ALGS = (int(CoseAlg.HMAC_256_256),)
_HSS_ALGS = (int(CoseAlg.HSS_LMS),)


def algorithm_from_name(name: str) -> int:
    """The COSE algorithm id of a signing algorithm name such as ``"ES256"`` (case-insensitive)."""
    try:
        return _BY_FOLDED_NAME[name.strip().casefold()]
    except KeyError:
        raise KeyMaterialError(
            f"unknown signing algorithm {name!r}; expected one of {', '.join(_NAMES)}"
        ) from None


_DISPLAY_NAMES = {
    int(CoseAlg.CHACHA20_POLY1305): "ChaCha20/Poly1305",
    int(CoseAlg.ECDH_ES_A128KW): "ECDH-ES+A128KW",
    int(CoseAlg.ECDH_ES_A192KW): "ECDH-ES+A192KW",
    int(CoseAlg.ECDH_ES_A256KW): "ECDH-ES+A256KW",
}


def algorithm_name(alg: int) -> str:
    """The name of a COSE algorithm id for people: ``-7 -> "ES256"``, ``-3 -> "A128KW"``."""
    if alg in _NAME_OF:
        return _NAME_OF[alg]
    if alg in _DISPLAY_NAMES:
        return _DISPLAY_NAMES[alg]
    try:
        return CoseAlg(alg).name.replace("_", "-")
    except ValueError:
        return f"unknown({alg})"


def _allowed(key_type: str, options: tuple[int, ...], algorithms: Iterable[int] | None,
             ) -> frozenset[int]:
    chosen = frozenset(options) if algorithms is None else frozenset(algorithms)
    if not chosen:
        raise KeyMaterialError(f"a {key_type} key needs at least one algorithm")
    wrong = chosen - set(options)
    if wrong:
        raise KeyMaterialError(
            f"a {key_type} key cannot be used with {', '.join(map(algorithm_name, sorted(wrong)))}"
            f"; it allows {', '.join(map(algorithm_name, options))}"
        )
    return chosen


def _check_allowed(algorithm: int, allowed: frozenset[int]) -> None:
    # Design rule 4: the trust anchor, not the message, decides the algorithm.
    if algorithm not in allowed:
        raise PolicyError(
            f"algorithm {algorithm_name(algorithm)} is not allowed for this key; allowed: "
            f"{', '.join(algorithm_name(a) for a in sorted(allowed))}"
        )


def _header_line(alg: int) -> bytes:
    return f"suitkit-algorithm: {algorithm_name(alg)}\n".encode()


# --------------------------------------------------------------------------------------------
# ECDSA (RFC 9053 §2.1)

_CURVES: dict[str, tuple[int, tuple[int, ...]]] = {
    # curve name -> (COSE crv, allowed algorithms)
    "secp256r1": (1, _P256_ALGS),
    "secp384r1": (2, _P384_ALGS),
}
_HASH_OF_ALG: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    CoseAlg.ES256: hashes.SHA256,
    CoseAlg.ESP256: hashes.SHA256,
    CoseAlg.ES384: hashes.SHA384,
}


def _coordinate_size(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def _curve_algs(curve: ec.EllipticCurve) -> tuple[int, ...]:
    if curve.name not in _CURVES:
        raise KeyMaterialError(f"unsupported elliptic curve {curve.name}; expected P-256 or P-384")
    return _CURVES[curve.name][1]


class EcPublicKey:
    """A P-256 or P-384 public key: an ECDSA ``Verifier`` and an ECDH-ES recipient."""

    def __init__(self, key: ec.EllipticCurvePublicKey, *, algorithms: Iterable[int] | None = None,
                 key_id: bytes | None = None) -> None:
        self._key = key
        self.key_id = key_id
        self.algorithms = _allowed(key.curve.name, _curve_algs(key.curve), algorithms)
        self._size = _coordinate_size(key.curve)
        self._ecdsa = {alg: ec.ECDSA(_HASH_OF_ALG[alg]()) for alg in self.algorithms}

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._key.curve

    @property
    def cryptography_key(self) -> ec.EllipticCurvePublicKey:
        return self._key

    def verify(self, algorithm: int, message: bytes, signature: bytes) -> None:
        _check_allowed(algorithm, self.algorithms)
        size = self._size
        # RFC 9053 §2.1: the signature is r and s, each left-padded to the curve size.
        if len(signature) != 2 * size:
            raise AuthenticationError(
                f"{algorithm_name(algorithm)} signature must be {2 * size} bytes, "
                f"got {len(signature)}"
            )
        der = encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                   int.from_bytes(signature[size:], "big"))
        try:
            self._key.verify(der, message, self._ecdsa[algorithm])
        except InvalidSignature:
            raise AuthenticationError("signature does not verify") from None

    def to_cose_key(self) -> dict[int, object]:
        """The COSE_Key (RFC 9053 §7.1.1): kty EC2, crv, x, y (and kid when set)."""
        size = _coordinate_size(self._key.curve)
        numbers = self._key.public_numbers()
        out: dict[int, object] = {1: 2, -1: _CURVES[self._key.curve.name][0],
                                  -2: numbers.x.to_bytes(size, "big"),
                                  -3: numbers.y.to_bytes(size, "big")}
        if self.key_id is not None:
            out[2] = self.key_id
        return out

    def __repr__(self) -> str:
        return f"EcPublicKey({self._key.curve.name}, algorithms={sorted(self.algorithms)})"


class EcPrivateKey:
    """A P-256 or P-384 private key; it is itself a ``Signer`` for ``algorithm``."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, *, algorithm: int | None = None,
                 key_id: bytes | None = None) -> None:
        options = _curve_algs(key.curve)
        self._key = key
        self.algorithm = options[0] if algorithm is None else algorithm
        _allowed(key.curve.name, options, [self.algorithm])
        self.key_id = key_id

    def sign(self, message: bytes) -> bytes:
        der = self._key.sign(message, ec.ECDSA(_HASH_OF_ALG[self.algorithm]()))
        r, s = decode_dss_signature(der)
        size = _coordinate_size(self._key.curve)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def signer(self, algorithm: int | None = None, *, key_id: bytes | None = None) -> EcPrivateKey:
        return EcPrivateKey(self._key, algorithm=self.algorithm if algorithm is None else algorithm,
                            key_id=key_id if key_id is not None else self.key_id)

    def public_key(self) -> EcPublicKey:
        return EcPublicKey(self._key.public_key(), key_id=self.key_id)

    def exchange(self, peer: EcPublicKey | X25519PublicKey) -> bytes:
        """ECDH shared secret Z with ``peer`` (RFC 9053 §6.3.1)."""
        if not isinstance(peer, EcPublicKey):
            raise PolicyError(f"ECDH peer key is X25519, expected {self._key.curve.name}")
        if peer.curve.name != self._key.curve.name:
            raise PolicyError(f"ECDH peer key is on {peer.curve.name}, "
                              f"expected {self._key.curve.name}")
        return self._key.exchange(ec.ECDH(), peer.cryptography_key)

    def private_scalar(self) -> int:
        """The private value d (for writing the key as a COSE_Key, RFC 9053 §7.1.1)."""
        return self._key.private_numbers().private_value

    @classmethod
    def generate_like(cls, peer: EcPublicKey) -> EcPrivateKey:
        """A fresh key on ``peer``'s curve (an ECDH-ES ephemeral key, RFC 9053 §6.3.1)."""
        return cls(ec.generate_private_key(peer.curve))

    def to_pem(self) -> bytes:
        return _header_line(self.algorithm) + self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def __repr__(self) -> str:
        return f"EcPrivateKey({self._key.curve.name}, {algorithm_name(self.algorithm)})"


# --------------------------------------------------------------------------------------------
# EdDSA with Ed25519 (RFC 9053 §2.2)


class Ed25519PublicKey:
    """An Ed25519 ``Verifier`` (EdDSA -8 and Ed25519 -19 by default)."""

    def __init__(self, key: ed25519.Ed25519PublicKey, *, algorithms: Iterable[int] | None = None,
                 key_id: bytes | None = None) -> None:
        self._key = key
        self.key_id = key_id
        self.algorithms = _allowed("Ed25519", _ED25519_ALGS, algorithms)

    @property
    def cryptography_key(self) -> ed25519.Ed25519PublicKey:
        return self._key

    def verify(self, algorithm: int, message: bytes, signature: bytes) -> None:
        _check_allowed(algorithm, self.algorithms)
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            raise AuthenticationError("signature does not verify") from None

    def to_cose_key(self) -> dict[int, object]:
        """The COSE_Key (RFC 9053 §7.2): kty OKP, crv Ed25519, x (and kid when set)."""
        out: dict[int, object] = {1: 1, -1: 6, -2: self._key.public_bytes_raw()}
        if self.key_id is not None:
            out[2] = self.key_id
        return out

    def __repr__(self) -> str:
        return f"Ed25519PublicKey(algorithms={sorted(self.algorithms)})"


class Ed25519PrivateKey:
    """An Ed25519 private key; it is itself a ``Signer`` for ``algorithm``."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, *, algorithm: int | None = None,
                 key_id: bytes | None = None) -> None:
        self._key = key
        self.algorithm = _ED25519_ALGS[0] if algorithm is None else algorithm
        _allowed("Ed25519", _ED25519_ALGS, [self.algorithm])
        self.key_id = key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def signer(self, algorithm: int | None = None, *,
               key_id: bytes | None = None) -> Ed25519PrivateKey:
        return Ed25519PrivateKey(self._key,
                                 algorithm=self.algorithm if algorithm is None else algorithm,
                                 key_id=key_id if key_id is not None else self.key_id)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey(self._key.public_key(), key_id=self.key_id)

    def to_pem(self) -> bytes:
        return _header_line(self.algorithm) + self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def __repr__(self) -> str:
        return f"Ed25519PrivateKey({algorithm_name(self.algorithm)})"


# --------------------------------------------------------------------------------------------
# HMAC 256/256 (RFC 9053 §3.1)

_HMAC_MIN_KEY = 32  # RFC 2104 §3: keys shorter than the hash output (L = 32) are discouraged


@dataclass(frozen=True)
class HmacKey:
    """A shared HMAC-SHA-256 key: both ``Signer`` and ``Verifier`` (its "public half" is itself)."""

    secret: bytes = field(repr=False)
    key_id: bytes | None = None

    algorithm = int(CoseAlg.HMAC_256_256)
    algorithms = frozenset(_HMAC_ALGS)

    def __post_init__(self) -> None:
        if len(self.secret) < _HMAC_MIN_KEY:
            raise KeyMaterialError(
                f"HMAC-256 key must be at least {_HMAC_MIN_KEY} bytes, got {len(self.secret)}")

    def sign(self, message: bytes) -> bytes:
        mac = hmac.HMAC(self.secret, hashes.SHA256())
        mac.update(message)
        return mac.finalize()

    def verify(self, algorithm: int, message: bytes, signature: bytes) -> None:
        _check_allowed(algorithm, self.algorithms)
        if not constant_time.bytes_eq(self.sign(message), signature):
            raise AuthenticationError("MAC does not verify")

    def signer(self, algorithm: int | None = None, *, key_id: bytes | None = None) -> HmacKey:
        _allowed("HMAC", _HMAC_ALGS, [self.algorithm if algorithm is None else algorithm])
        return HmacKey(self.secret, key_id if key_id is not None else self.key_id)

    def public_key(self) -> HmacKey:
        return self

    def to_cose_key(self) -> dict[int, object]:
        """The COSE_Key (RFC 9053 §7.3): kty Symmetric, k (and kid when set)."""
        out: dict[int, object] = {1: 4, -1: self.secret}
        if self.key_id is not None:
            out[2] = self.key_id
        return out

    def to_pem(self) -> bytes:
        return _header_line(self.algorithm) + _cose_pem(self.to_cose_key())


# --------------------------------------------------------------------------------------------
# HSS-LMS (RFC 8554; COSE per RFC 8778)

_HSS_STATE_LABEL = -65537
"""Private-use COSE_Key label (RFC 9052 §7.1: below -65536) holding pyhsslms ``serialize()``."""

_LMS_HEIGHT = {5: pyhsslms.lms_sha256_m32_h5, 10: pyhsslms.lms_sha256_m32_h10,
               15: pyhsslms.lms_sha256_m32_h15, 20: pyhsslms.lms_sha256_m32_h20,
               25: pyhsslms.lms_sha256_m32_h25}
_LMOTS_W = {1: pyhsslms.lmots_sha256_n32_w1, 2: pyhsslms.lmots_sha256_n32_w2,
            4: pyhsslms.lmots_sha256_n32_w4, 8: pyhsslms.lmots_sha256_n32_w8}
_LMS_TYPES: dict[int, tuple[str, int, int]] = {
    # RFC 8554 §5.1 and SP 800-208 typecode -> (hash, m, h), as pyhsslms supports them
    int.from_bytes(code, "big"): params for code, params in pyhsslms.pyhsslms.lms_params.items()
}
_LMOTS_TYPES: dict[int, tuple[str, int, int]] = {
    # typecode -> (hash, n, p)
    int.from_bytes(code, "big"): (alg, n, p)
    for code, (alg, n, p, _w, _ls) in pyhsslms.pyhsslms.lmots_params.items()
}
_HSS_MAX_LEVELS = 8  # RFC 8554 §6: L is between 1 and 8


@dataclass(frozen=True)
class HssLmsParameters:
    """HSS shape for key generation: SHA-256/M32 trees of ``height``, LM-OTS ``winternitz``.

    The default (3 levels of H5, W8: 32,768 signatures of 3,992 bytes) generates in about a
    second in pure Python. Tests use ``HssLmsParameters(1, 5, 4)`` (32 signatures, ~30 ms).
    """

    levels: int = 3
    height: int = 5
    winternitz: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= _HSS_MAX_LEVELS:
            raise KeyMaterialError(f"HSS levels must be 1..8, got {self.levels}")
        if self.height not in _LMS_HEIGHT:
            raise KeyMaterialError(f"LMS height must be 5, 10, 15, 20 or 25, got {self.height}")
        if self.winternitz not in _LMOTS_W:
            raise KeyMaterialError(f"LM-OTS w must be one of 1, 2, 4, 8, got {self.winternitz}")


def _u32(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise KeyMaterialError("HSS-LMS data is truncated")
    return int.from_bytes(data[pos:pos + 4], "big")


def _lms_types(data: bytes, pos: int) -> tuple[int, int]:
    """The LMS and LM-OTS typecodes at ``pos``, checked known and on one hash (RFC 8554 §5.1)."""
    lms_type, lmots_type = _u32(data, pos), _u32(data, pos + 4)
    if lms_type not in _LMS_TYPES or lmots_type not in _LMOTS_TYPES:
        raise KeyMaterialError(f"unknown LMS/LM-OTS typecode {lms_type:#x}/{lmots_type:#x}")
    if _LMS_TYPES[lms_type][0] != _LMOTS_TYPES[lmots_type][0]:
        raise KeyMaterialError("LMS and LM-OTS typecodes use different hash functions")
    return lms_type, lmots_type


def hss_lms_state_usage(state: bytes) -> tuple[int, int]:
    """``(used, total)`` signatures of a pyhsslms ``serialize()`` state, without rebuilding trees.

    Also validates the state's structure, so a malformed key file fails here with a clear message.
    """
    if len(state) < 8 or state[4:8] != b"\x11\x11\x11\x11":  # pyhsslms v2 marker
        raise KeyMaterialError("HSS-LMS private state is not in pyhsslms v2 format")
    levels = _u32(state, 0)
    if not 1 <= levels <= _HSS_MAX_LEVELS:
        raise KeyMaterialError(f"HSS-LMS private state has {levels} levels, expected 1..8")
    pos = 8
    indexes: list[int] = []
    types: set[tuple[int, int]] = set()
    for level in range(levels):
        if level:  # skip the parent's LMS signature over this tree's public key
            pos += 4 + _u32(state, pos)
        length = _u32(state, pos)
        key = state[pos + 4:pos + 4 + length]
        pos += 4 + length
        if pos > len(state):
            raise KeyMaterialError("HSS-LMS private state is truncated")
        lms_type, lmots_type = _lms_types(key, 0)
        height = _LMS_TYPES[lms_type][2]
        n = _LMOTS_TYPES[lmots_type][1]
        if length != 8 + n + 16 + 4:  # RFC 8554 §5.2 key: types, SEED, I, q
            raise KeyMaterialError(f"HSS-LMS level {level} private key has {length} bytes")
        q = _u32(key, 8 + n + 16)
        # A parent has signed at least its current child (q >= 1); no tree exceeds 2^h leaves.
        if q > 1 << height or (level < levels - 1 and q == 0):
            raise KeyMaterialError(f"HSS-LMS level {level} has an impossible index {q}")
        indexes.append(q)
        types.add((lms_type, lmots_type))
    if pos != len(state):
        raise KeyMaterialError(f"HSS-LMS private state has {len(state) - pos} extra bytes")
    if len(types) != 1:
        raise KeyMaterialError("HSS-LMS levels use different LMS/LM-OTS types")
    # Every finished child of the tree at level i stands for 2^(h * levels below) signatures.
    used = indexes[-1] + sum((q - 1) << (height * (levels - 1 - i))
                             for i, q in enumerate(indexes[:-1]))
    return used, 1 << (height * levels)


class HssLmsPublicKey:
    """An HSS-LMS ``Verifier`` (COSE alg -46, RFC 8778 §2; signature format RFC 8554 §6.2)."""

    def __init__(self, public: bytes, *, key_id: bytes | None = None,
                 algorithms: Iterable[int] | None = None) -> None:
        # RFC 8554 §6.1: u32str(L) || LMS public key (§5.3: types, I, T[1])
        if not 1 <= _u32(public, 0) <= _HSS_MAX_LEVELS:
            raise KeyMaterialError(f"HSS-LMS public key has {_u32(public, 0)} levels")
        end = 4 + 8 + 16 + _LMS_TYPES[_lms_types(public, 4)[0]][1]
        if end != len(public):
            raise KeyMaterialError(f"HSS-LMS public key must be {end} bytes, got {len(public)}")
        self.public_bytes = bytes(public)
        self.key_id = key_id
        self.algorithms = _allowed("HSS-LMS", _HSS_ALGS, algorithms)
        self._key = pyhsslms.HssPublicKey.deserialize(self.public_bytes)

    def verify(self, algorithm: int, message: bytes, signature: bytes) -> None:
        _check_allowed(algorithm, self.algorithms)
        # RFC 8554 §6.3: Nspk + 1 must equal the public key's L.
        ok = len(signature) > 4 and _u32(signature, 0) + 1 == self._key.levels
        try:
            if ok:
                sig = pyhsslms.HssSignature.deserialize(signature)
                # pyhsslms ignores trailing bytes and does not compare LM-OTS types (RFC 8554
                # §5.4.2 step 2c): insist on the canonical encoding and matching types here.
                ok = sig.serialize() == signature and self._types_match(sig)
                ok = ok and bool(self._key.verify(message, signature))
        except (ValueError, IndexError, KeyError, TypeError):
            ok = False
        if not ok:
            raise AuthenticationError("signature does not verify")

    def _types_match(self, sig: Any) -> bool:
        """Each LMS signature in the chain has the types of the key that verifies it."""
        keys = [self._key.pub, *sig.pub]
        sigs = [*sig.sig, sig.lms_sig]
        return len(keys) == len(sigs) and all(
            s.lmots_type == k.lmots_type and s.type == k.lms_type
            for k, s in zip(keys, sigs, strict=True))

    def to_cose_key(self) -> dict[int, object]:
        """The COSE_Key (RFC 8778 §4): kty HSS-LMS (5), pub (and kid when set)."""
        out: dict[int, object] = {1: 5, -1: self.public_bytes}
        if self.key_id is not None:
            out[2] = self.key_id
        return out

    def __repr__(self) -> str:
        return f"HssLmsPublicKey(levels={_u32(self.public_bytes, 0)})"


class HssLmsPrivateKey:
    """An HSS-LMS private key. It signs only through ``signer(state_store=...)``."""

    algorithm = int(CoseAlg.HSS_LMS)

    def __init__(self, hss: Any, *, key_id: bytes | None = None) -> None:
        """Wrap a ``pyhsslms.HssPrivateKey``; use ``from_state`` or ``generate`` instead."""
        self._hss = hss
        self._lock = threading.Lock()
        self.key_id = key_id
        self._public = bytes(hss.publicKey().serialize())
        self.total = int(hss.maxSignatures())
        self.used = self.total - int(hss.remaining())

    @classmethod
    def from_state(cls, state: bytes, *, key_id: bytes | None = None,
                   public: bytes | None = None) -> HssLmsPrivateKey:
        """Load a pyhsslms ``serialize()`` state, checked against ``public`` when given."""
        used, total = hss_lms_state_usage(state)
        try:
            key = cls(pyhsslms.HssPrivateKey.deserialize(bytes(state)), key_id=key_id)
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise KeyMaterialError(f"HSS-LMS private state does not load: {e}") from e
        if public is not None and public != key._public:
            raise KeyMaterialError("HSS-LMS private state does not match its public key")
        if (key.used, key.total) != (used, total):
            raise KeyMaterialError("HSS-LMS private state has an inconsistent signature count")
        return key

    @classmethod
    def generate(cls, parameters: HssLmsParameters | None = None) -> HssLmsPrivateKey:
        p = parameters or HssLmsParameters()
        return cls(pyhsslms.HssPrivateKey(levels=p.levels, lms_type=_LMS_HEIGHT[p.height],
                                          lmots_type=_LMOTS_W[p.winternitz]))

    @property
    def state(self) -> bytes:
        """The current private state (pyhsslms ``serialize()``); it changes with every signature."""
        return bytes(self._hss.serialize())

    @property
    def remaining(self) -> int:
        return self.total - self.used

    def public_key(self) -> HssLmsPublicKey:
        return HssLmsPublicKey(self._public, key_id=self.key_id)

    def signer(self, algorithm: int | None = None, *, key_id: bytes | None = None,
               state_store: HssLmsStateStore | None = None) -> HssLmsSigner:
        _allowed("HSS-LMS", _HSS_ALGS, [self.algorithm if algorithm is None else algorithm])
        if state_store is None:
            raise KeyMaterialError("an HSS-LMS signer needs a state store to reserve indexes")
        return HssLmsSigner(self, state_store, key_id=key_id if key_id is not None
                            else self.key_id)

    def _sign_and_reserve(self, message: bytes, store: HssLmsStateStore) -> bytes:
        with self._lock:  # one index at a time, whichever signer asks
            if self.remaining <= 0:
                raise KeyMaterialError(f"HSS-LMS key is exhausted: all {self.total} one-time "
                                       "signatures are used")
            try:
                signature = bytes(self._hss.sign(message))
            except ValueError as e:
                raise KeyMaterialError(f"HSS-LMS signing failed: {e}") from e
            self.used += 1
            store.reserve(self.state)  # RFC 8554 §5.2: durable before the signature leaves
            return signature

    def to_pem(self) -> bytes:
        return encode_hss_lms_private_key(self.state, self._public, key_id=self.key_id)

    def __repr__(self) -> str:
        return f"HssLmsPrivateKey(used={self.used}, total={self.total})"


def encode_hss_lms_private_key(state: bytes, public: bytes, *,
                               key_id: bytes | None = None) -> bytes:
    """The key-file bytes of an HSS-LMS private ``state`` (a ``COSE KEY`` PEM with kty 5)."""
    cose_key: dict[int, object] = {1: 5, -1: public, _HSS_STATE_LABEL: state}
    if key_id is not None:
        cose_key[2] = key_id
    return _header_line(CoseAlg.HSS_LMS) + _cose_pem(cose_key)


class HssLmsSigner:
    """Signs with an HSS-LMS key and releases a signature only after its state is reserved.

    The private state advances in memory first; ``store.reserve(new_state)`` must then succeed.
    If it raises, the signature is dropped (its index stays burnt) and the error propagates.
    """

    algorithm = int(CoseAlg.HSS_LMS)

    def __init__(self, key: HssLmsPrivateKey, store: HssLmsStateStore, *,
                 key_id: bytes | None = None) -> None:
        self._key = key
        self._store = store
        self.key_id = key_id

    def sign(self, message: bytes) -> bytes:
        return self._key._sign_and_reserve(message, self._store)


# --------------------------------------------------------------------------------------------
# Key generation and (de)serialisation


def generate_private_key(algorithm: str, *,
                         hss_lms: HssLmsParameters | None = None) -> PrivateKey:
    """A fresh private key for a signing algorithm name (``"ES256"``, ``"HSS-LMS"``, ...)."""
    alg = algorithm_from_name(algorithm)
    if alg in _P256_ALGS:
        return EcPrivateKey(ec.generate_private_key(ec.SECP256R1()), algorithm=alg)
    if alg in _P384_ALGS:
        return EcPrivateKey(ec.generate_private_key(ec.SECP384R1()), algorithm=alg)
    if alg in _ED25519_ALGS:
        return Ed25519PrivateKey(ed25519.Ed25519PrivateKey.generate(), algorithm=alg)
    if alg in _HMAC_ALGS:
        return HmacKey(os.urandom(32))
    return HssLmsPrivateKey.generate(hss_lms)


_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\s*", re.DOTALL)
_COSE_LABEL = "COSE KEY"


def _cose_pem(cose_key: Mapping[int, object]) -> bytes:
    body = base64.b64encode(cbor.encode(cose_key)).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {_COSE_LABEL}-----\n{lines}\n-----END {_COSE_LABEL}-----\n".encode()


def _split_pem(data: bytes) -> tuple[int | None, str, str] | None:
    """(algorithm from the header line, PEM label, PEM block) or None if ``data`` is not PEM."""
    if b"-----BEGIN " not in data:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyMaterialError("PEM key file contains non-ASCII bytes") from None
    if text.count("-----BEGIN ") != 1:
        raise KeyMaterialError(f"expected one PEM block, found {text.count('-----BEGIN ')}")
    start = text.index("-----BEGIN ")
    algorithm: int | None = None
    for line in text[:start].splitlines():
        name, sep, value = line.strip().partition(":")
        if not line.strip():
            continue
        if not sep or name.strip().lower() != "suitkit-algorithm":
            raise KeyMaterialError(f"unexpected text before the PEM block: {line.strip()[:40]!r}")
        if algorithm is not None:
            raise KeyMaterialError("the suitkit-algorithm line appears twice")
        algorithm = algorithm_from_name(value)
    match = _PEM.fullmatch(text, start)
    if match is None:
        raise KeyMaterialError("malformed PEM block (missing or mismatched END line?)")
    return algorithm, match.group(1), match.group(0)


def _decode_cose_key(data: bytes) -> Mapping[object, object]:
    try:
        # a key file may come from another tool: any valid encoding of the key is the key
        item = cbor.decode(data, path="COSE_Key", max_depth=4, preferred=False)
    except DecodeError as e:
        raise KeyMaterialError(f"COSE_Key is not valid CBOR: {e.reason}") from e
    if not isinstance(item, Mapping):
        raise KeyMaterialError("COSE_Key must be a CBOR map")
    return item


def _pem_body(block: str) -> bytes:
    body = block.split("\n", 1)[1].rsplit("-----END ", 1)[0]  # _split_pem checked the shape
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error as e:
        raise KeyMaterialError(f"PEM body is not valid base64: {e}") from e


def _bstr(cose_key: Mapping[object, object], label: int, what: str, size: int | None = None,
          ) -> bytes:
    value = cose_key.get(label)
    if not isinstance(value, bytes):
        raise KeyMaterialError(f"COSE_Key {what} (label {label}) must be a byte string")
    if size is not None and len(value) != size:
        raise KeyMaterialError(f"COSE_Key {what} must be {size} bytes, got {len(value)}")
    return value


def _from_cose_key(cose_key: Mapping[object, object], *, algorithm: int | None,
                   want_private: bool) -> tuple[Verifier, PrivateKey | None]:
    """(public half, private key or None) of a decoded COSE_Key (RFC 9052 §7, RFC 9053 §7,
    RFC 8778 §4). The private key is built only when ``want_private``."""
    kid = cose_key.get(2)
    if kid is not None and not isinstance(kid, bytes):
        raise KeyMaterialError("COSE_Key kid (label 2) must be a byte string")
    alg = cose_key.get(3)
    if alg is not None:
        if not isinstance(alg, int) or isinstance(alg, bool):
            raise KeyMaterialError("COSE_Key alg (label 3) must be an integer")
        if algorithm is not None and algorithm != alg:
            raise KeyMaterialError(f"COSE_Key alg {algorithm_name(alg)} disagrees with the "
                                   f"suitkit-algorithm line {algorithm_name(algorithm)}")
        algorithm = alg
    algs = None if algorithm is None else [algorithm]
    kty = cose_key.get(1)
    if kty == 2 and not isinstance(kty, bool):  # EC2
        crv = cose_key.get(-1)
        curve: ec.EllipticCurve
        if crv == 1 and not isinstance(crv, bool):
            curve = ec.SECP256R1()
        elif crv == 2:
            curve = ec.SECP384R1()
        else:
            raise KeyMaterialError(f"unsupported EC2 curve {crv!r}; expected 1 (P-256) or "
                                   "2 (P-384)")
        size = _coordinate_size(curve)
        x = _bstr(cose_key, -2, "x", size)
        y = cose_key.get(-3)
        # y may be a sign bit for a compressed point (RFC 9053 §7.1.1)
        point = bytes([3 if y else 2]) + x if isinstance(y, bool) else (
            b"\x04" + x + _bstr(cose_key, -3, "y", size))
        try:
            ec_public = EcPublicKey(ec.EllipticCurvePublicKey.from_encoded_point(curve, point),
                                    algorithms=algs, key_id=kid)
        except ValueError as e:
            raise KeyMaterialError(f"COSE_Key x/y is not a point on {curve.name}: {e}") from e
        if not want_private or -4 not in cose_key:
            return ec_public, None
        d = int.from_bytes(_bstr(cose_key, -4, "d", size), "big")
        try:
            ec_private = ec.derive_private_key(d, curve)
        except ValueError as e:
            raise KeyMaterialError(f"COSE_Key d is not a valid {curve.name} scalar") from e
        if ec_private.public_key() != ec_public.cryptography_key:
            raise KeyMaterialError("COSE_Key d does not match x and y")
        return ec_public, EcPrivateKey(ec_private, algorithm=algorithm, key_id=kid)
    if kty == 1 and not isinstance(kty, bool):  # OKP
        crv = cose_key.get(-1)
        if crv != 6:
            raise KeyMaterialError(f"unsupported OKP curve {crv!r}; expected 6 (Ed25519)")
        try:
            ed_public = Ed25519PublicKey(
                ed25519.Ed25519PublicKey.from_public_bytes(_bstr(cose_key, -2, "x", 32)),
                algorithms=algs, key_id=kid)
            if not want_private or -4 not in cose_key:
                return ed_public, None
            ed_private = ed25519.Ed25519PrivateKey.from_private_bytes(
                _bstr(cose_key, -4, "d", 32))
        except ValueError as e:
            raise KeyMaterialError(f"COSE_Key is not a valid Ed25519 key: {e}") from e
        if ed_private.public_key() != ed_public.cryptography_key:
            raise KeyMaterialError("COSE_Key d does not match x")
        return ed_public, Ed25519PrivateKey(ed_private, algorithm=algorithm, key_id=kid)
    if kty == 4:  # Symmetric
        _allowed("HMAC", _HMAC_ALGS, algs)
        secret = HmacKey(_bstr(cose_key, -1, "k"), kid)
        return secret, secret
    if kty == 5:  # HSS-LMS
        _allowed("HSS-LMS", _HSS_ALGS, algs)
        hss_public = HssLmsPublicKey(_bstr(cose_key, -1, "pub"), key_id=kid)
        if not want_private or _HSS_STATE_LABEL not in cose_key:
            return hss_public, None
        state = _bstr(cose_key, _HSS_STATE_LABEL, "HSS-LMS private state")
        return hss_public, HssLmsPrivateKey.from_state(state, key_id=kid,
                                                       public=hss_public.public_bytes)
    raise KeyMaterialError(f"unsupported COSE_Key kty {kty!r}; expected 1 (OKP), 2 (EC2), "
                           "4 (Symmetric) or 5 (HSS-LMS)")


def load_private_key(data: bytes) -> PrivateKey:
    """Read a private key: PKCS#8/SEC1 PEM, a ``COSE KEY`` PEM, or a CBOR COSE_Key."""
    pem = _split_pem(data)
    if pem is None or pem[1] == _COSE_LABEL:
        cose_key = _decode_cose_key(data if pem is None else _pem_body(pem[2]))
        algorithm = None if pem is None else pem[0]
        _public, private = _from_cose_key(cose_key, algorithm=algorithm, want_private=True)
        if private is None:
            raise KeyMaterialError("the COSE_Key holds a public key, not a private key")
        return private
    algorithm, label, block = pem
    if label == "ENCRYPTED PRIVATE KEY":
        raise KeyMaterialError("encrypted private keys are not supported; decrypt the file first")
    if label not in ("PRIVATE KEY", "EC PRIVATE KEY"):
        raise KeyMaterialError(f"expected a private key, got a PEM {label!r} block")
    try:
        key = serialization.load_pem_private_key(block.encode(), password=None)
    except TypeError as e:  # a password-protected SEC1 file
        raise KeyMaterialError("encrypted private keys are not supported") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyMaterialError(f"private key does not load: {e}") from e
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return EcPrivateKey(key, algorithm=algorithm)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Ed25519PrivateKey(key, algorithm=algorithm)
    raise KeyMaterialError(f"unsupported key type {type(key).__name__.lstrip('_')}; expected "
                           "EC P-256/P-384 or Ed25519")


_NOT_PUBLIC = ("expected a public key, got a private key; a trust anchor must never hold "
               "the private half (write the public one with: suitkit pubkey KEY --out PUB)")


def load_public_key(data: bytes) -> Verifier:
    """Read a public key (a trust anchor) as a ``Verifier``.

    A private key is refused (KeyMaterialError): whoever holds a trust anchor file, a device
    included, must not hold the signing key with it. An HMAC key is a shared secret on both
    sides, so a symmetric COSE_Key is accepted.

    A ``suitkit-algorithm`` line on a public key narrows it to that one algorithm; otherwise the
    key type's set applies (P-256: ES256 and ESP256; Ed25519: EdDSA and Ed25519).
    """
    pem = _split_pem(data)
    if pem is None or pem[1] == _COSE_LABEL:
        cose_key = _decode_cose_key(data if pem is None else _pem_body(pem[2]))
        if -4 in cose_key or _HSS_STATE_LABEL in cose_key:
            raise KeyMaterialError(_NOT_PUBLIC)
        algorithm = None if pem is None else pem[0]
        return _from_cose_key(cose_key, algorithm=algorithm, want_private=False)[0]
    algorithm, label, block = pem
    if "PRIVATE KEY" in label:
        raise KeyMaterialError(f"{_NOT_PUBLIC} (a PEM {label!r} block)")
    if label != "PUBLIC KEY":
        raise KeyMaterialError(f"expected a public key, got a PEM {label!r} block")
    try:
        public = serialization.load_pem_public_key(block.encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyMaterialError(f"public key does not load: {e}") from e
    algs = None if algorithm is None else [algorithm]
    if isinstance(public, ec.EllipticCurvePublicKey):
        return EcPublicKey(public, algorithms=algs)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return Ed25519PublicKey(public, algorithms=algs)
    raise KeyMaterialError(f"unsupported key type {type(public).__name__.lstrip('_')}; "
                           "expected EC P-256/P-384 or Ed25519")


def public_key_from_cose_key(cose_key: Mapping[object, object]) -> Verifier:
    """A ``Verifier`` from a decoded COSE_Key map (e.g. an ECDH-ES ephemeral key)."""
    return _from_cose_key(cose_key, algorithm=None, want_private=False)[0]


def public_key_to_pem(key: Verifier) -> bytes:
    """PEM bytes of a public key (``COSE KEY`` armor for HMAC and HSS-LMS).

    A ``suitkit-algorithm`` line is written when the key allows exactly one algorithm. For an
    ``HmacKey`` this writes the shared secret: treat the file as secret.
    """
    header = _header_line(next(iter(key.algorithms))) if len(key.algorithms) == 1 else b""
    if isinstance(key, EcPublicKey | Ed25519PublicKey):
        return header + key.cryptography_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if isinstance(key, HmacKey | HssLmsPublicKey):
        return header + _cose_pem(key.to_cose_key())
    raise KeyMaterialError(f"cannot serialise a {type(key).__name__} public key")


# --------------------------------------------------------------------------------------------
# Digests (manifest §10; suit-spec.md §4.2)

_DIGESTS: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    CoseAlg.SHA256: hashes.SHA256,
    CoseAlg.SHA384: hashes.SHA384,
    CoseAlg.SHA512: hashes.SHA512,
    CoseAlg.SHAKE128: lambda: hashes.SHAKE128(32),
    CoseAlg.SHAKE256: lambda: hashes.SHAKE256(64),
}


class Hasher:
    """Incremental SUIT digest: ``update`` in chunks, ``digest`` any time (it does not finish)."""

    def __init__(self, algorithm: int) -> None:
        if algorithm not in _DIGESTS:
            raise PolicyError(f"digest algorithm {algorithm_name(algorithm)} is not supported; "
                              "expected SHA-256, SHA-384, SHA-512, SHAKE128 or SHAKE256")
        self.algorithm = algorithm
        self._hash = hashes.Hash(_DIGESTS[algorithm]())

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.copy().finalize()


def new_hasher(algorithm: int) -> Hasher:
    """A streaming hasher for a COSE digest algorithm id; PolicyError if unsupported."""
    return Hasher(algorithm)


def digest(algorithm: int, data: bytes) -> bytes:
    """The digest of ``data`` (SHAKE128 gives 32 bytes, SHAKE256 64); PolicyError if unknown."""
    hasher = Hasher(algorithm)
    hasher.update(data)
    return hasher.digest()


# --------------------------------------------------------------------------------------------
# Key wrap, key agreement and content ciphers (suit-spec.md §11)

_KW_ALG_BY_SIZE = {16: int(CoseAlg.A128KW), 24: int(CoseAlg.A192KW), 32: int(CoseAlg.A256KW)}


@dataclass(frozen=True)
class AesKwKey:
    """A pre-shared AES key-encryption key (RFC 3394); its size picks A128KW/A192KW/A256KW."""

    secret: bytes = field(repr=False)
    key_id: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.secret) not in _KW_ALG_BY_SIZE:
            raise KeyMaterialError(f"AES-KW key must be 16, 24 or 32 bytes, got "
                                   f"{len(self.secret)}")

    @property
    def algorithm(self) -> int:
        return _KW_ALG_BY_SIZE[len(self.secret)]

    def wrap(self, cek: bytes) -> bytes:
        return keywrap.aes_key_wrap(self.secret, cek)

    def unwrap(self, wrapped: bytes) -> bytes:
        return aes_unwrap(self.secret, wrapped)


class X25519PublicKey:
    """An X25519 public key (RFC 7748): an ECDH-ES recipient (COSE OKP, crv 4)."""

    def __init__(self, key: x25519.X25519PublicKey, *, key_id: bytes | None = None) -> None:
        self._key = key
        self.key_id = key_id

    @property
    def cryptography_key(self) -> x25519.X25519PublicKey:
        return self._key

    def to_cose_key(self) -> dict[int, object]:
        """The COSE_Key (RFC 9053 §7.2): kty OKP, crv X25519, x (and kid when set)."""
        out: dict[int, object] = {1: 1, -1: 4, -2: self._key.public_bytes_raw()}
        if self.key_id is not None:
            out[2] = self.key_id
        return out

    def __repr__(self) -> str:
        return "X25519PublicKey()"


class X25519PrivateKey:
    """An X25519 private key: a device's ECDH-ES recipient key, or a sender's ephemeral key."""

    def __init__(self, key: x25519.X25519PrivateKey, *, key_id: bytes | None = None) -> None:
        self._key = key
        self.key_id = key_id

    @classmethod
    def generate(cls, *, key_id: bytes | None = None) -> X25519PrivateKey:
        return cls(x25519.X25519PrivateKey.generate(), key_id=key_id)

    def public_key(self) -> X25519PublicKey:
        return X25519PublicKey(self._key.public_key(), key_id=self.key_id)

    def exchange(self, peer: EcdhPublicKey) -> bytes:
        """The shared secret Z with ``peer`` (RFC 7748 §6.1; RFC 9053 §6.3.1)."""
        if not isinstance(peer, X25519PublicKey):
            raise PolicyError("ECDH peer key is on P-256/P-384, expected X25519")
        try:
            return self._key.exchange(peer.cryptography_key)
        except ValueError as e:  # an all-zero shared secret (a low-order point)
            raise AuthenticationError(f"X25519 key agreement failed: {e}") from None

    def secret_bytes(self) -> bytes:
        return self._key.private_bytes_raw()

    def __repr__(self) -> str:
        return "X25519PrivateKey()"


EcdhPublicKey: TypeAlias = EcPublicKey | X25519PublicKey
EcdhPrivateKey: TypeAlias = EcPrivateKey | X25519PrivateKey
RecipientPublic: TypeAlias = AesKwKey | EcPublicKey | X25519PublicKey
RecipientPrivate: TypeAlias = AesKwKey | EcPrivateKey | X25519PrivateKey


def ephemeral_like(peer: EcdhPublicKey) -> EcdhPrivateKey:
    """A fresh ECDH-ES ephemeral key on ``peer``'s curve (RFC 9053 §6.3.1)."""
    if isinstance(peer, X25519PublicKey):
        return X25519PrivateKey.generate()
    return EcPrivateKey.generate_like(peer)


def ecdh_public_from_cose_key(cose_key: Mapping[object, object]) -> EcdhPublicKey:
    """An ECDH public key (EC2 P-256/P-384, or OKP X25519) from a decoded COSE_Key map.

    Raises:
        KeyMaterialError: not such a key, or not a valid point.
    """
    kid = cose_key.get(2)
    if kid is not None and not isinstance(kid, bytes):
        raise KeyMaterialError("COSE_Key kid (label 2) must be a byte string")
    kty, crv = cose_key.get(1), cose_key.get(-1)
    if kty == 1 and not isinstance(kty, bool):
        if crv != 4 or isinstance(crv, bool):
            raise KeyMaterialError(f"unsupported OKP curve {crv!r} for key agreement; "
                                   "expected 4 (X25519)")
        try:
            return X25519PublicKey(x25519.X25519PublicKey.from_public_bytes(
                _bstr(cose_key, -2, "x", 32)), key_id=kid)
        except ValueError as e:
            raise KeyMaterialError(f"COSE_Key is not a valid X25519 key: {e}") from e
    if kty != 2 or isinstance(kty, bool):
        raise KeyMaterialError(f"unsupported COSE_Key kty {kty!r} for key agreement; expected "
                               "2 (EC2) or 1 (OKP X25519)")
    public, _ = _from_cose_key({k: v for k, v in cose_key.items() if k not in (3, -4)},
                               algorithm=None, want_private=False)
    assert isinstance(public, EcPublicKey)
    return public


_RECIPIENT_ECDH_ALG = int(CoseAlg.ECDH_ES_A128KW)  # marks a key file as a recipient key


def recipient_to_pem(key: RecipientPublic | RecipientPrivate) -> bytes:
    """A recipient key as a COSE_Key in PEM armor: a KEK (kty 4, alg A*KW), or an ECDH-ES key
    (EC2 P-256 or OKP X25519, alg ECDH-ES+A128KW -29), private (with d) or public."""
    if isinstance(key, AesKwKey):
        return kek_to_pem(key)
    if isinstance(key, X25519PrivateKey):
        cose_key = key.public_key().to_cose_key()
        cose_key[-4] = key.secret_bytes()
    elif isinstance(key, EcPrivateKey):
        public = key.public_key()
        cose_key = public.to_cose_key()
        size = _coordinate_size(public.curve)
        cose_key[-4] = key.private_scalar().to_bytes(size, "big")
    else:
        cose_key = key.to_cose_key()
    if key.key_id is not None:
        cose_key[2] = key.key_id
    cose_key[3] = _RECIPIENT_ECDH_ALG
    return _cose_pem(cose_key)


def generate_recipient_key(kind: str, *, key_id: bytes | None = None) -> RecipientPrivate:
    """A fresh recipient key: ``A128KW``/``A192KW``/``A256KW`` (a KEK), ``ECDH-P256`` or
    ``X25519`` (an ECDH-ES key pair)."""
    folded = kind.strip().casefold()
    sizes = {"a128kw": 16, "a192kw": 24, "a256kw": 32}
    if folded in sizes:
        return AesKwKey(os.urandom(sizes[folded]), key_id=key_id)
    if folded == "ecdh-p256":
        return EcPrivateKey(ec.generate_private_key(ec.SECP256R1()), key_id=key_id)
    if folded == "x25519":
        return X25519PrivateKey.generate(key_id=key_id)
    raise KeyMaterialError(f"unknown recipient key kind {kind!r}; expected one of "
                           f"{', '.join(RECIPIENT_KINDS)}")


RECIPIENT_KINDS = ("A128KW", "A192KW", "A256KW", "ECDH-P256", "X25519")


def _recipient_cose(data: bytes) -> Mapping[object, object] | None:
    """The COSE_Key of a recipient key file, or None for a standard (PKCS#8 / SPKI) PEM."""
    split = _split_pem(data)
    if split is not None and split[1] != _COSE_LABEL:
        return None
    return _decode_cose_key(data if split is None else _pem_body(split[2]))


def load_recipient_private(data: bytes) -> RecipientPrivate:
    """A device's key for opening SUIT_Encryption_Info: a KEK (COSE_Key kty 4), or an ECDH-ES
    private key (COSE_Key EC2/OKP X25519 with d, or a PKCS#8 P-256 / X25519 PEM).

    Raises:
        KeyMaterialError: not such a key.
    """
    cose_key = _recipient_cose(data)
    if cose_key is None:
        _alg, label, block = _split_pem(data) or (None, "", "")
        if "PRIVATE KEY" not in label:
            raise KeyMaterialError(f"expected a private recipient key, got a PEM {label!r} "
                                   "block")
        try:
            key = serialization.load_pem_private_key(block.encode(), password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as e:
            raise KeyMaterialError(f"private key does not load: {e}") from e
        if isinstance(key, x25519.X25519PrivateKey):
            return X25519PrivateKey(key)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return EcPrivateKey(key)
        raise KeyMaterialError(f"a {type(key).__name__.lstrip('_')} key cannot open "
                               "encryption-info; expected a KEK, P-256 or X25519 key")
    if cose_key.get(1) == 4:
        return load_kek(data)
    public = ecdh_public_from_cose_key(cose_key)
    d = cose_key.get(-4)
    if not isinstance(d, bytes):
        raise KeyMaterialError("the COSE_Key holds a public key, not a private recipient key "
                               "(d, label -4, is missing)")
    if isinstance(public, X25519PublicKey):
        try:
            private = x25519.X25519PrivateKey.from_private_bytes(d)
        except ValueError as e:
            raise KeyMaterialError(f"COSE_Key d is not a valid X25519 key: {e}") from e
        if private.public_key().public_bytes_raw() != public.cryptography_key.public_bytes_raw():
            raise KeyMaterialError("COSE_Key d does not match x")
        return X25519PrivateKey(private, key_id=public.key_id)
    _pub, ec_private = _from_cose_key({k: v for k, v in cose_key.items() if k != 3},
                                      algorithm=None, want_private=True)
    assert isinstance(ec_private, EcPrivateKey)
    return ec_private


def load_recipient_public(data: bytes) -> RecipientPublic:
    """What an author encrypts for: a KEK (a shared secret, COSE_Key kty 4), or a device's
    ECDH-ES public key (COSE_Key EC2 P-256 / OKP X25519, or a SubjectPublicKeyInfo PEM).

    Raises:
        KeyMaterialError: not such a key, or an ECDH private key (the author never holds a
            device's private key).
    """
    cose_key = _recipient_cose(data)
    if cose_key is None:
        _alg, label, block = _split_pem(data) or (None, "", "")
        if label != "PUBLIC KEY":
            raise KeyMaterialError(f"expected a recipient public key, got a PEM {label!r} block"
                                   " (write the public half with: suitkit pubkey KEY --out PUB)")
        try:
            key = serialization.load_pem_public_key(block.encode())
        except (ValueError, UnsupportedAlgorithm) as e:
            raise KeyMaterialError(f"public key does not load: {e}") from e
        if isinstance(key, x25519.X25519PublicKey):
            return X25519PublicKey(key)
        if isinstance(key, ec.EllipticCurvePublicKey):
            return EcPublicKey(key)
        raise KeyMaterialError(f"a {type(key).__name__.lstrip('_')} key cannot receive a "
                               "content key; expected a KEK, P-256 or X25519 key")
    if cose_key.get(1) == 4:
        return load_kek(data)
    if -4 in cose_key:
        raise KeyMaterialError("expected a recipient public key, got a private key (write the "
                               "public half with: suitkit pubkey KEY --out PUB)")
    return ecdh_public_from_cose_key(cose_key)


def kek_to_pem(key: AesKwKey) -> bytes:
    """An AES-KW key-encryption key as a COSE_Key (kty 4 Symmetric) in PEM armor."""
    cose_key: dict[int, object] = {1: 4, -1: key.secret, 3: key.algorithm}
    if key.key_id is not None:
        cose_key[2] = key.key_id
    return _cose_pem(cose_key)


def load_kek(data: bytes) -> AesKwKey:
    """An AES-KW key-encryption key from a COSE_Key (PEM armored or plain CBOR).

    Raises:
        KeyMaterialError: not a symmetric COSE_Key of 16, 24 or 32 bytes.
    """
    split = _split_pem(data)
    raw = data if split is None else _pem_body(split[2])
    cose_key = _decode_cose_key(raw)
    if cose_key.get(1) != 4:
        raise KeyMaterialError("a key-encryption key must be a COSE_Key of kty 4 (Symmetric)")
    kid = cose_key.get(2)
    if kid is not None and not isinstance(kid, bytes):
        raise KeyMaterialError("COSE_Key kid (label 2) must be a byte string")
    return AesKwKey(_bstr(cose_key, -1, "k"), key_id=kid)


def aes_unwrap(kek: bytes, wrapped: bytes) -> bytes:
    """RFC 3394 unwrap; AuthenticationError when the integrity check fails."""
    try:
        return keywrap.aes_key_unwrap(kek, wrapped)
    except (keywrap.InvalidUnwrap, ValueError):
        raise AuthenticationError("content key does not unwrap with this key") from None


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-SHA-256 (RFC 5869); ``salt=None`` means no salt."""
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


_GCM, _CTR, _CHACHA = "gcm", "ctr", "chacha"
_CONTENT_ALGS: dict[int, tuple[str, int]] = {
    # COSE alg -> (cipher, key bytes); GCM per RFC 9053 §4.1, CTR per RFC 9459 §4,
    # ChaCha20/Poly1305 per RFC 9053 §4.3 (RFC 8439)
    CoseAlg.A128GCM: (_GCM, 16),
    CoseAlg.A192GCM: (_GCM, 24),
    CoseAlg.A256GCM: (_GCM, 32),
    CoseAlg.CHACHA20_POLY1305: (_CHACHA, 32),
    CoseAlg.A128CTR: (_CTR, 16),
    CoseAlg.A192CTR: (_CTR, 24),
    CoseAlg.A256CTR: (_CTR, 32),
}
_GCM_TAG = 16
AEAD_TAG_BYTES = 16
"""The tag an AEAD content algorithm appends to the ciphertext (AES-GCM, ChaCha20/Poly1305)."""

AEAD_ALGORITHMS: frozenset[int] = frozenset(
    alg for alg, (cipher, _size) in _CONTENT_ALGS.items() if cipher != _CTR)
"""Content algorithms with a tag and an Enc_structure AAD (RFC 9052 §5.3)."""


def content_key_size(algorithm: int) -> int:
    """Bytes of content-encryption key for a content algorithm; PolicyError if unsupported."""
    if algorithm not in _CONTENT_ALGS:
        raise PolicyError(f"content encryption algorithm {algorithm_name(algorithm)} is not "
                          "supported; expected A128GCM/A192GCM/A256GCM, ChaCha20/Poly1305 or "
                          "A128CTR/A192CTR/A256CTR")
    return _CONTENT_ALGS[algorithm][1]


def content_iv_size(algorithm: int) -> int:
    """IV bytes: a 96-bit GCM or ChaCha20/Poly1305 nonce (RFC 9053 §4.1, §4.3) or the 16-byte
    CTR counter (RFC 9459 §4)."""
    content_key_size(algorithm)
    return 16 if _CONTENT_ALGS[algorithm][0] == _CTR else 12


def ciphertext_size(algorithm: int, plaintext_size: int) -> int:
    """Bytes of detached ciphertext for ``plaintext_size`` bytes (an AEAD appends its tag)."""
    content_key_size(algorithm)
    return plaintext_size + (AEAD_TAG_BYTES if algorithm in AEAD_ALGORITHMS else 0)


def _cipher(algorithm: int, key: bytes, iv: bytes) -> str:
    size = content_key_size(algorithm)
    if len(key) != size:
        raise KeyMaterialError(f"{algorithm_name(algorithm)} needs a {size}-byte key, "
                               f"got {len(key)}")
    if len(iv) != content_iv_size(algorithm):
        raise DecodeError("IV", f"{algorithm_name(algorithm)} needs a "
                                f"{content_iv_size(algorithm)}-byte IV, got {len(iv)}")
    return _CONTENT_ALGS[algorithm][0]


class _ChaCha20Poly1305Decryptor:
    """RFC 8439 §2.8 AEAD decryption as a stream: ChaCha20 from block counter 1, Poly1305 keyed
    with block 0 over AAD || pad || ciphertext || pad || lengths (``update`` feeds ciphertext
    without the tag; the caller holds the tag back)."""

    def __init__(self, key: bytes, nonce: bytes, aad: bytes) -> None:
        block0 = Cipher(algorithms.ChaCha20(key, b"\x00\x00\x00\x00" + nonce), None).encryptor()
        self._mac = Poly1305(block0.update(b"\x00" * 32))
        self._stream = Cipher(algorithms.ChaCha20(key, b"\x01\x00\x00\x00" + nonce),
                              None).decryptor()
        self._mac.update(aad + b"\x00" * (-len(aad) % 16))
        self._aad_len = len(aad)
        self._ct_len = 0

    def update(self, ciphertext: bytes) -> bytes:
        self._mac.update(ciphertext)
        self._ct_len += len(ciphertext)
        return self._stream.update(ciphertext)

    def finalize_with_tag(self, tag: bytes) -> bytes:
        self._mac.update(b"\x00" * (-self._ct_len % 16)
                         + self._aad_len.to_bytes(8, "little") + self._ct_len.to_bytes(8, "little"))
        try:
            self._mac.verify(tag)
        except InvalidSignature:
            raise AuthenticationError("ChaCha20/Poly1305 tag does not verify") from None
        return self._stream.finalize()


class ContentDecryptor:
    """Streaming decryption of a detached SUIT payload in bounded memory.

    AEAD (AES-GCM, ChaCha20/Poly1305): ``update`` returns plaintext that is NOT yet
    authenticated (the last 16 bytes of the stream are held back as the tag); ``finalize``
    checks the tag and raises AuthenticationError. Write the output somewhere inert until
    ``finalize`` returns. AES-CTR has no tag: its integrity must come from the image digest
    (suit-spec.md §11.3).
    """

    def __init__(self, algorithm: int, key: bytes, iv: bytes, aad: bytes = b"") -> None:
        self.algorithm = algorithm
        self._gcm: AEADDecryptionContext | None = None
        self._chacha: _ChaCha20Poly1305Decryptor | None = None
        self._ctx: CipherContext | None = None
        cipher = _cipher(algorithm, key, iv)
        if cipher == _GCM:
            self._gcm = Cipher(algorithms.AES(key), modes.GCM(iv)).decryptor()
            self._gcm.authenticate_additional_data(aad)
        elif cipher == _CHACHA:
            self._chacha = _ChaCha20Poly1305Decryptor(key, iv, aad)
        else:
            self._ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
        self._tail = b""

    def update(self, chunk: bytes) -> bytes:
        if self._ctx is not None:
            return self._ctx.update(chunk)
        data = self._tail + chunk
        cut = max(0, len(data) - AEAD_TAG_BYTES)
        self._tail = data[cut:]
        body = data[:cut]
        if self._chacha is not None:
            return self._chacha.update(body)
        assert self._gcm is not None
        return self._gcm.update(body)

    def finalize(self) -> bytes:
        if self._ctx is not None:
            return self._ctx.finalize()
        if len(self._tail) < AEAD_TAG_BYTES:
            raise AuthenticationError(f"ciphertext is shorter than the "
                                      f"{algorithm_name(self.algorithm)} tag")
        if self._chacha is not None:
            return self._chacha.finalize_with_tag(self._tail)
        assert self._gcm is not None
        try:
            return self._gcm.finalize_with_tag(self._tail)
        except InvalidTag:
            raise AuthenticationError("AES-GCM tag does not verify") from None


def content_decryptor(algorithm: int, key: bytes, iv: bytes, aad: bytes = b"",
                      ) -> ContentDecryptor:
    """A streaming decryptor for a content algorithm (see ``ContentDecryptor``)."""
    return ContentDecryptor(algorithm, key, iv, aad)


def content_encrypt(algorithm: int, key: bytes, iv: bytes, plaintext: bytes,
                    aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext``; an AEAD appends its 16-byte tag (RFC 9053 §4.1, §4.3)."""
    cipher = _cipher(algorithm, key, iv)
    if cipher == _GCM:
        gcm = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
        gcm.authenticate_additional_data(aad)
        return gcm.update(plaintext) + gcm.finalize() + gcm.tag
    if cipher == _CHACHA:
        return ChaCha20Poly1305(key).encrypt(iv, plaintext, aad)
    ctr = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctr.update(plaintext) + ctr.finalize()
