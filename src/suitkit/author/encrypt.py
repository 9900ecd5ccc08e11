"""Encrypt a release's images for its devices (draft-ietf-suit-firmware-encryption; MTI profiles).

An ``EncryptionPlan`` says how: the content algorithm (AES-GCM, ChaCha20/Poly1305, AES-CTR), the
key distribution and the recipients (suit-spec.md §11.2): pre-shared KEKs (AES-KW; one per device
or one per fleet) or devices' ECDH-ES public keys (P-256 or X25519; ECDH-ES+A128KW as every MTI
profile). A plan may name an MTI profile (``core.mti``): its algorithms are then fixed and each
recipient key is checked against it. One random content key per image, wrapped once per
recipient (the draft's option b); a per-device content key is one manifest per device.

``encrypt_manifest`` changes the manifest: for each encrypted component the shared sequence
gains ``override-parameters {encryption-info}`` (manifest §7.1's compatibility section, where the
image digest and size are: the firmware server reads them there to check the ciphertext it
stores), and the image becomes its detached ciphertext (an integrated payload is replaced in the
envelope). The image digest and size stay those of the plaintext: the device decrypts while it
fetches and checks the plaintext it wrote (and an AEAD tag); the server checks the ciphertext's
size against them and the content algorithm. ``encrypt_envelope`` does the same to an existing
envelope; its signatures are dropped (the manifest changed): sign the result again.

Not done: distributing KEKs, a ciphertext digest in the manifest (the encryption draft's
fetch-into-staging-then-copy pattern needs a spare component on the device), two-layer
manifests with a distributor (trust domains).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from suitkit.core import codec, cose, crypto, jsonform, mti
from suitkit.core.model import (
    Command,
    CommandSequence,
    Digest,
    Envelope,
    Manifest,
    Parameters,
)
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import CoseAlg, ManifestKey
from suitkit.errors import DecodeError, KeyMaterialError

__all__ = [
    "CONTENT_ALGORITHMS",
    "SHA256_PLACEHOLDER",
    "EncryptedRelease",
    "EncryptionPlan",
    "encrypt_envelope",
    "encrypt_manifest",
    "expand_uris",
    "parse_encryption",
]

CONTENT_ALGORITHMS: dict[str, int] = {
    "A128GCM": CoseAlg.A128GCM, "A192GCM": CoseAlg.A192GCM, "A256GCM": CoseAlg.A256GCM,
    "ChaCha20/Poly1305": CoseAlg.CHACHA20_POLY1305,
    "A128CTR": CoseAlg.A128CTR, "A192CTR": CoseAlg.A192CTR, "A256CTR": CoseAlg.A256CTR,
}
_CONTENT_BY_FOLDED = {k.casefold(): v for k, v in CONTENT_ALGORITHMS.items()}
_MAX_RECIPIENTS = 1024
_MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class EncryptionPlan:
    """How to encrypt: content algorithm, ECDH-ES algorithm, recipients, an optional profile,
    and which components (indices; ``None``: every component with an image)."""

    content: int
    recipients: tuple[crypto.RecipientPublic, ...]
    key_agreement: int = CoseAlg.ECDH_ES_A128KW
    profile: mti.MtiProfile | None = None
    components: frozenset[int] | None = None
    rng: Callable[[int], bytes] | None = None


@dataclass(frozen=True, slots=True)
class EncryptedRelease:
    """An encrypted manifest with its integrated payloads (ciphertexts for encrypted ones) and
    the detached ciphertexts to upload, by component index."""

    manifest: Manifest
    integrated: Mapping[str, bytes]
    detached: Mapping[int, bytes]


def parse_encryption(raw: Any, *, base: Path, path: str,
                     components: Sequence[tuple[bytes, ...]] = ()) -> EncryptionPlan:
    """The ``encryption:`` section of a description (docs/description.md).

    ``profile`` (an MTI profile name) or ``content`` (an algorithm name), ``recipients`` (a
    list of ``{key: FILE, kid: TEXT}``; a key file is a KEK or a device's ECDH public key), and
    optionally ``components`` (ids as in ``components[].id``, or indices).

    Raises:
        DecodeError: naming the field: unknown keys, bad values, unreadable or unfit keys.
    """
    if not isinstance(raw, Mapping):
        raise DecodeError(path, "expected a map with profile or content, and recipients")
    unknown = set(raw) - {"profile", "content", "recipients", "components"}
    if unknown:
        raise DecodeError(path, f"unknown key {sorted(map(str, unknown))[0]!r}; expected "
                                "profile, content, recipients, components")
    profile: mti.MtiProfile | None = None
    if "profile" in raw:
        if "content" in raw:
            raise DecodeError(path, "give profile or content, not both (a profile fixes the "
                                    "content algorithm)")
        try:
            profile = mti.profile_named(str(raw["profile"]))
        except KeyMaterialError as e:
            raise DecodeError(f"{path}.profile", str(e)) from None
        content = profile.content
    elif "content" in raw:
        name = raw["content"]
        if not isinstance(name, str) or name.strip().casefold() not in _CONTENT_BY_FOLDED:
            raise DecodeError(f"{path}.content", f"unknown content algorithm {name!r}; "
                              f"expected one of {', '.join(CONTENT_ALGORITHMS)}")
        content = _CONTENT_BY_FOLDED[name.strip().casefold()]
    else:
        raise DecodeError(path, "give profile (an MTI profile name) or content (an algorithm)")
    entries = raw.get("recipients")
    if not isinstance(entries, list) or not entries or len(entries) > _MAX_RECIPIENTS:
        raise DecodeError(f"{path}.recipients", f"expected a list of 1 to {_MAX_RECIPIENTS} "
                                                "recipients")
    recipients = tuple(_recipient(entry, base, f"{path}.recipients[{i}]", profile)
                       for i, entry in enumerate(entries))
    chosen: frozenset[int] | None = None
    if "components" in raw:
        chosen = _chosen(raw["components"], components, f"{path}.components")
    return EncryptionPlan(content, recipients, profile=profile, components=chosen)


def _recipient(entry: Any, base: Path, path: str,
               profile: mti.MtiProfile | None) -> crypto.RecipientPublic:
    if isinstance(entry, str):
        entry = {"key": entry}
    if not isinstance(entry, Mapping) or "key" not in entry or set(entry) - {"key", "kid"}:
        raise DecodeError(path, "expected {key: FILE} or {key: FILE, kid: TEXT}")
    file = base / str(entry["key"])
    try:
        with file.open("rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise DecodeError(f"{path}.key", f"cannot read {file}: {e.strerror or e}") from None
    if len(data) > _MAX_KEY_FILE:
        raise DecodeError(f"{path}.key", f"{file} is larger than {_MAX_KEY_FILE} bytes")
    try:
        key = crypto.load_recipient_public(data)
        if profile is not None:
            mti.check_recipient(profile, key, str(file))
    except KeyMaterialError as e:
        raise DecodeError(f"{path}.key", f"{file}: {e}") from None
    if "kid" in entry:
        kid = entry["kid"]
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise DecodeError(f"{path}.kid", "expected a key id of 1 to 256 characters")
        key = _with_kid(key, kid.encode())
    return key


def _with_kid(key: crypto.RecipientPublic, kid: bytes) -> crypto.RecipientPublic:
    if isinstance(key, crypto.AesKwKey):
        return crypto.AesKwKey(key.secret, key_id=kid)
    if isinstance(key, crypto.X25519PublicKey):
        return crypto.X25519PublicKey(key.cryptography_key, key_id=kid)
    return crypto.EcPublicKey(key.cryptography_key, key_id=kid)


def _chosen(raw: Any, ids: Sequence[tuple[bytes, ...]], path: str) -> frozenset[int]:
    if not isinstance(raw, list) or not raw:
        raise DecodeError(path, "expected a non-empty list of component ids or indices")
    chosen = set()
    for i, item in enumerate(raw):
        if isinstance(item, int) and not isinstance(item, bool):
            index = item
        else:
            cid = jsonform.component_id_from_json(item, path=f"{path}[{i}]")
            if cid not in ids:
                raise DecodeError(f"{path}[{i}]", "no component has this id")
            index = list(ids).index(cid)
        if not 0 <= index < len(ids):
            raise DecodeError(f"{path}[{i}]", f"component {index} does not exist; the manifest "
                                              f"has {len(ids)}")
        chosen.add(index)
    return frozenset(chosen)


def encrypt_manifest(manifest: Manifest, plaintexts: Mapping[int, bytes],
                     integrated: Mapping[str, bytes], plan: EncryptionPlan) -> EncryptedRelease:
    """Encrypt the images in ``plaintexts`` (by component index) as ``plan`` says.

    Each image must be what the manifest's shared sequence says (image-digest and image-size):
    the author encrypts the image that was signed for, not another.

    Raises:
        DecodeError: an image does not match its component, or the component is already
            encrypted; KeyMaterialError / PolicyError: a recipient or algorithm cannot be used.
    """
    ids = manifest.common.components
    expected = _shared_parameters(manifest)
    uris = _uris(manifest)
    extra: list[Command] = []
    new_integrated = dict(integrated)
    detached: dict[int, bytes] = {}
    for index in sorted(plaintexts):
        if not 0 <= index < len(ids):
            raise DecodeError(f"component {index}", f"does not exist; the manifest has "
                                                    f"{len(ids)}")
        params = expected.get(ids[index])
        where = f"component {index} [{', '.join(p.hex() for p in ids[index])}]"
        if params is not None and params.encryption_info is not None:
            raise DecodeError(where, "is already encrypted (its shared sequence sets "
                                     "encryption-info)")
        _check_plaintext(params, plaintexts[index], where)
        info, cipher = cose.encryption_info(
            content_alg=plan.content, recipients=plan.recipients,
            key_agreement=plan.key_agreement if any(
                not isinstance(r, crypto.AesKwKey) for r in plan.recipients) else None,
            rng=plan.rng or os.urandom)
        ciphertext = cipher.encrypt(plaintexts[index])
        if len(ids) > 1:
            extra.append(Command(Cmd.SET_COMPONENT_INDEX, index))
        extra.append(Command(Cmd.OVERRIDE_PARAMETERS, Parameters(encryption_info=info)))
        uri = uris.get(index)
        if uri is not None and uri.startswith("#"):
            if uri not in new_integrated:
                raise DecodeError(where, f"the envelope carries no integrated payload {uri!r}")
            new_integrated[uri] = ciphertext
        else:
            detached[index] = ciphertext
    shared = manifest.common.shared_sequence
    commands = (shared.commands if shared is not None else ()) + tuple(extra)
    common = replace(manifest.common, shared_sequence=CommandSequence(commands))
    # A content-addressed uri names what the server stores: the ciphertext now.
    renamed = {i: (hashlib.sha256(plaintexts[i]).hexdigest(), hashlib.sha256(c).hexdigest())
               for i, c in detached.items()}
    return EncryptedRelease(expand_uris(replace(manifest, common=common), renamed),
                            new_integrated, detached)


SHA256_PLACEHOLDER = "{sha256}"
"""In a description's uri: the SHA-256 (hex) of the image as the server stores it."""


def expand_uris(manifest: Manifest, names: Mapping[int, tuple[str, str]]) -> Manifest:
    """``manifest`` with the uri of each component ``i`` in ``names`` rewritten: the
    ``{sha256}`` placeholder, and ``old`` where it appears, become ``new`` (``names[i] =
    (old, new)``), in install and payload-fetch."""
    if not names:
        return manifest
    changes: dict[str, object] = {}
    count = len(manifest.common.components)
    for name in ("install", "payload_fetch"):
        sequence = getattr(manifest, name)
        if isinstance(sequence, CommandSequence):
            changes[name] = _rename(sequence, count, names)
    return replace(manifest, **changes)  # type: ignore[arg-type]


def _rename(sequence: CommandSequence, count: int,
            names: Mapping[int, tuple[str, str]]) -> CommandSequence:
    commands = []
    index = 0
    for command in sequence.commands:
        code, argument = command.code, command.argument
        if code == Cmd.SET_COMPONENT_INDEX and isinstance(argument, int) \
                and not isinstance(argument, bool):
            index = argument
        elif (code in (Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS)
              and isinstance(argument, Parameters) and argument.uri is not None
              and index in names and 0 <= index < count):
            old, new = names[index]
            uri = argument.uri.replace(SHA256_PLACEHOLDER, new).replace(old, new)
            commands.append(Command(code, replace(argument, uri=uri)))
            continue
        commands.append(command)
    return CommandSequence(tuple(commands))


def encrypt_envelope(envelope: Envelope, images: Mapping[int, bytes],
                     plan: EncryptionPlan) -> tuple[Envelope, Mapping[int, bytes]]:
    """An existing envelope with its images encrypted: ``(unsigned envelope, detached
    ciphertexts by component index)``.

    ``images`` are the detached images (by component index); integrated payloads are taken
    from the envelope. Which components: ``plan.components``, else every one with an image.
    Severable members stay severable; authentication blocks are dropped (sign again).
    """
    manifest = envelope.manifest
    uris = _uris(manifest, envelope)
    plaintexts: dict[int, bytes] = {}
    for index, uri in uris.items():
        if uri.startswith("#") and uri in envelope.integrated:
            plaintexts[index] = envelope.integrated[uri]
    for index, image in images.items():
        if index in plaintexts:
            raise DecodeError(f"image {index}", "this component's image is integrated in the "
                                                "envelope; give no file for it")
        plaintexts[index] = image
    if plan.components is not None:
        missing = sorted(plan.components - set(plaintexts))
        if missing:
            raise DecodeError(f"component {missing[0]}", "has no image to encrypt (give it as "
                                                         "INDEX=FILE)")
        plaintexts = {i: p for i, p in plaintexts.items() if i in plan.components}
    if not plaintexts:
        raise DecodeError("envelope", "no image to encrypt: it integrates none and no "
                                      "INDEX=FILE was given")
    if any(isinstance(s, Digest) and k not in envelope.severable
           for k, s in ((ManifestKey.INSTALL, manifest.install),
                        (ManifestKey.PAYLOAD_FETCH, manifest.payload_fetch))):
        raise DecodeError("envelope", "its install or payload-fetch sequence was severed; "
                                      "encrypt the complete envelope")
    severable = frozenset(int(k) for k in envelope.severable)
    full = _unsevered(envelope)
    release = encrypt_manifest(full, plaintexts, envelope.integrated, plan)
    rebuilt = codec.build_envelope(release.manifest, sever_members=severable,
                                   integrated=release.integrated,
                                   digest_algorithm=envelope.authentication.digest.algorithm)
    return replace(rebuilt, tagged=envelope.tagged), release.detached


def _unsevered(envelope: Envelope) -> Manifest:
    """The manifest with each severable member carried in the envelope put back in place."""
    changes: dict[str, object] = {}
    for key, name in ((ManifestKey.INSTALL, "install"), (ManifestKey.PAYLOAD_FETCH,
                                                          "payload_fetch"),
                      (ManifestKey.DEPENDENCY_RESOLUTION, "dependency_resolution"),
                      (ManifestKey.CANDIDATE_VERIFICATION, "candidate_verification")):
        if isinstance(getattr(envelope.manifest, name), Digest) and key in envelope.severable:
            changes[name] = codec.decode_command_sequence(
                envelope.severable[key], path=f"envelope.{name}")
    if ManifestKey.TEXT in envelope.severable and isinstance(envelope.manifest.text, Digest):
        changes["text"] = codec.decode_text(envelope.severable[ManifestKey.TEXT])
    if ManifestKey.COSWID in envelope.severable and isinstance(envelope.manifest.coswid,
                                                                 Digest):
        changes["coswid"] = envelope.severable[ManifestKey.COSWID]
    return replace(envelope.manifest, **changes) if changes else envelope.manifest  # type: ignore[arg-type]


def _check_plaintext(params: Parameters | None, image: bytes, where: str) -> None:
    digest = params.image_digest if params is not None else None
    size = params.image_size if params is not None else None
    if digest is None or size is None:
        raise DecodeError(where, "has no image-digest and image-size in the shared sequence; "
                                 "cannot tell which image to encrypt")
    if len(image) != size:
        raise DecodeError(where, f"the image is {len(image)} bytes, the manifest says {size}")
    if not hmac.compare_digest(crypto.digest(digest.algorithm, image), digest.value):
        raise DecodeError(where, "the image's digest is not the manifest's image-digest")


def _shared_parameters(manifest: Manifest) -> Mapping[tuple[bytes, ...], Parameters]:
    """Each component's parameters after the shared sequence (override/set-parameters by
    component index; the conditions are the device's to check)."""
    out: dict[tuple[bytes, ...], dict[str, object]] = {}
    ids = manifest.common.components
    for index, params in _walk(manifest.common.shared_sequence, len(ids)):
        fields = out.setdefault(ids[index], {})
        for name in Parameters.__dataclass_fields__:
            value = getattr(params, name)
            if value is not None and name != "extra":
                fields[name] = value
    return {cid: Parameters(**fields) for cid, fields in out.items()}  # type: ignore[arg-type]


def _uris(manifest: Manifest, envelope: Envelope | None = None) -> dict[int, str]:
    """The uri each component is fetched from, as install and payload-fetch set it."""
    out: dict[int, str] = {}
    count = len(manifest.common.components)
    for name, key in (("payload_fetch", ManifestKey.PAYLOAD_FETCH),
                      ("install", ManifestKey.INSTALL)):
        sequence = getattr(manifest, name)
        if isinstance(sequence, Digest) and envelope is not None and key in envelope.severable:
            sequence = codec.decode_command_sequence(envelope.severable[key], path=name)
        for index, params in _walk(sequence if isinstance(sequence, CommandSequence) else None,
                                   count):
            if params.uri is not None:
                out[index] = params.uri
    return out


def _walk(sequence: CommandSequence | None, count: int) -> list[tuple[int, Parameters]]:
    """(component index, parameters) of each override/set-parameters in ``sequence``, with the
    index set by integer set-component-index commands before it."""
    found: list[tuple[int, Parameters]] = []
    index = 0
    for command in sequence.commands if sequence is not None else ():
        if command.code == Cmd.SET_COMPONENT_INDEX and isinstance(command.argument, int) \
                and not isinstance(command.argument, bool):
            index = command.argument
        elif command.code in (Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS) and isinstance(
                command.argument, Parameters) and 0 <= index < count:
            found.append((index, command.argument))
    return found

