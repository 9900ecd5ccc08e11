"""The SUIT MTI algorithm profiles (draft-ietf-suit-mti-23 §3; IANA "SUIT MTI profiles").

A profile fixes four algorithms: the digest, the authentication (signature or MAC), the key
distribution (AES-KW with a pre-shared KEK, or ECDH-ES+A128KW) and the content encryption. All six
are MANDATORY for authors, so suitkit can make every one of them; a recipient chooses which it
implements (its trust anchors and keys decide, design rule 4: there is no negotiation).

``check_recipient`` says whether a recipient key fits a profile's key distribution (KEK size, or
the ECDH curve the profile's signature family uses: P-256 for ESP256, X25519 for Ed25519).

Not here: choosing a profile for a device (the author's description names it), the older
profile names of drafts before -23 (ES256 / EdDSA / ECDH-ES+HKDF-256: not accepted as names).
"""

from __future__ import annotations

from dataclasses import dataclass

from suitkit.core import crypto
from suitkit.core.numbers import CoseAlg
from suitkit.errors import KeyMaterialError

__all__ = ["MTI_PROFILES", "MtiProfile", "check_recipient", "profile_named"]


@dataclass(frozen=True, slots=True)
class MtiProfile:
    """One MTI profile: its name and its descriptor array ``[digest, auth, key, content]``."""

    name: str
    digest: int
    authentication: int
    key_distribution: int
    content: int

    @property
    def descriptor(self) -> tuple[int, int, int, int]:
        return (self.digest, self.authentication, self.key_distribution, self.content)

    @property
    def uses_ecdh(self) -> bool:
        return self.key_distribution == CoseAlg.ECDH_ES_A128KW


_A = CoseAlg
MTI_PROFILES: tuple[MtiProfile, ...] = (
    MtiProfile("suit-sha256-hmac-a128kw-a128ctr", _A.SHA256, _A.HMAC_256_256, _A.A128KW,
               _A.A128CTR),
    MtiProfile("suit-sha256-esp256-ecdh-a128ctr", _A.SHA256, _A.ESP256, _A.ECDH_ES_A128KW,
               _A.A128CTR),
    MtiProfile("suit-sha256-ed25519-ecdh-a128ctr", _A.SHA256, _A.ED25519, _A.ECDH_ES_A128KW,
               _A.A128CTR),
    MtiProfile("suit-sha256-esp256-ecdh-a128gcm", _A.SHA256, _A.ESP256, _A.ECDH_ES_A128KW,
               _A.A128GCM),
    MtiProfile("suit-sha256-ed25519-ecdh-chacha-poly", _A.SHA256, _A.ED25519,
               _A.ECDH_ES_A128KW, _A.CHACHA20_POLY1305),
    MtiProfile("suit-sha256-hsslms-a256kw-a256ctr", _A.SHA256, _A.HSS_LMS, _A.A256KW,
               _A.A256CTR),
)
_BY_NAME = {p.name: p for p in MTI_PROFILES}


def profile_named(name: str) -> MtiProfile:
    """The profile called ``name``; KeyMaterialError listing the six names otherwise."""
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        raise KeyMaterialError(f"unknown MTI profile {name!r}; expected one of "
                               f"{', '.join(_BY_NAME)}") from None


def check_recipient(profile: MtiProfile, key: crypto.RecipientPublic, where: str) -> None:
    """Raise KeyMaterialError (naming ``where``) unless ``key`` fits the profile's key
    distribution: a KEK of the profile's AES-KW size, or an ECDH key on the profile's curve."""
    if not profile.uses_ecdh:
        if not isinstance(key, crypto.AesKwKey) or key.algorithm != profile.key_distribution:
            raise KeyMaterialError(
                f"{where}: {profile.name} distributes the content key with "
                f"{crypto.algorithm_name(profile.key_distribution)}: give a "
                f"{crypto.algorithm_name(profile.key_distribution)} key-encryption key "
                f"(suitkit keygen --alg {crypto.algorithm_name(profile.key_distribution)})")
        return
    x25519 = profile.authentication == CoseAlg.ED25519
    wanted = "X25519" if x25519 else "ECDH-P256"
    fits = (isinstance(key, crypto.X25519PublicKey) if x25519 else
            isinstance(key, crypto.EcPublicKey) and key.curve.name == "secp256r1")
    if not fits:
        raise KeyMaterialError(f"{where}: {profile.name} uses ECDH-ES+A128KW on "
                               f"{'X25519' if x25519 else 'P-256'}: give a device's {wanted} "
                               f"public key (suitkit keygen --alg {wanted})")
