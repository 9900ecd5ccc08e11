"""Signing recipe: add one COSE authentication block to an envelope (manifest §8.3).

The signer re-checks what it signs (RFC 9124 THREAT.MFST.MODIFICATION, REQ.SEC.MFST.CHECK): the
SUIT_Digest in the authentication wrapper must match the manifest bytes, and every severable
member carried must match its digest, before a signature is made. Blocks already present are
kept, so an author and an operator can each add theirs (RFC 9019 §3.9).
"""

from __future__ import annotations

import hmac
from dataclasses import replace

from suitkit.core import cbor, cose, crypto
from suitkit.core.model import Envelope
from suitkit.core.verify import check_severable
from suitkit.errors import AuthenticationError

__all__ = ["sign_envelope"]


def sign_envelope(envelope: Envelope, signer: crypto.Signer) -> Envelope:
    """``envelope`` with one more authentication block, made by ``signer``.

    Raises:
        AuthenticationError: the envelope's digests do not match its contents (nothing signed).
        KeyMaterialError: the signer cannot sign (e.g. an exhausted HSS-LMS key).
    """
    auth = envelope.authentication
    actual = crypto.digest(auth.digest.algorithm, cbor.wrap(envelope.manifest_bytes))
    if not hmac.compare_digest(actual, auth.digest.value):
        raise AuthenticationError("refusing to sign: the manifest does not match the digest in "
                                  "the authentication wrapper")
    check_severable(envelope)
    block = cose.sign_detached(signer, auth.digest_bytes)
    return replace(envelope, authentication=replace(auth, blocks=(*auth.blocks, block)))
