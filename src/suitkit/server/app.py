"""The firmware server's HTTP edge (RFC 9019 §3 firmware server; RFC 9110 §14 range requests).

``create_app(config)`` builds a FastAPI application over a ``BlobStore``:

- ``POST /api/v1/releases`` (multipart/form-data, ``Authorization: Bearer <token>``): a part
  ``envelope`` (the signed SUIT envelope) and zero or more detached images, each a part named
  ``image-<N>`` (for component index N of the manifest) or ``image`` (matched to the component
  whose image-digest it has). The envelope must verify against the author trust anchors; every
  image and every integrated payload must match the image-digest and image-size of a component;
  an encrypted component's image is its detached ciphertext, whose size must be what the
  manifest's image-size and content algorithm make it (the digest is the plaintext's: the
  server holds no content key, the device checks it after decrypting). A compressed image or a
  delta patch (suitkit-compression-info, suitkit-delta-info in the install sequence, set before
  a fetch; docs/delta.md) is decoded here and its result checked against the image-digest and
  image-size; a delta's precursor must be an image the server stores (an earlier release's).
- ``GET/HEAD /firmware/{sha256}``, ``GET/HEAD /envelopes/{sha256}``: immutable, content-addressed
  downloads with Range, If-Range and ETag (Starlette ``FileResponse``; whole files by
  ``sendfile`` through the guarded protocol's ``http.response.pathsend``, server/guard.py),
  answered before the routing of the other routes (``_Downloads``). With
  ``ServerConfig.accel_redirect`` they answer ``X-Accel-Redirect`` and nginx in front sends
  the bytes (``nginx_accel_config`` fills in the template ``nginx-accel.conf``).
- ``GET /api/v1/releases``, ``GET /api/v1/releases/{id}``: release metadata.

Who may call: with ``ServerConfig.authorizer`` (set by the CLI from the status tracker's tokens
when the tracker is mounted) uploads need a token the hook allows for ``"upload"`` (admin,
author) and release metadata one it allows for ``"read"`` (admin, author, operator). A server
deployed alone has only the static ``upload_token``; its metadata reads stay public. Downloads
(``/firmware``, ``/envelopes``) are public on purpose: content-addressed, immutable, cacheable,
and the device verifies everything it fetches.

What each component should contain is read from the manifest itself: the shared sequence is run
by ``processor.shared_parameters`` on a permissive stand-in device (its components match every
vendor, class and device identifier the shared sequence names; use-before and battery
conditions hold) and its image-digest and
image-size parameters are what uploads are checked against. The server is not the device's
policy enforcer: devices verify everything again.

A release of several manifests (draft-ietf-suit-trust-domains): a root whose suit-dependencies
name dependency manifests is accepted when each dependency is integrated in its envelope (it
must verify against the author trust anchors and have the manifest digest and envelope size
the root gives it) or is already a release here (its id is that manifest digest: upload each
author's manifest with its images first, then the root). The root's release record lists its
dependencies as components (``dependency: true``) whose blob is the dependency's envelope,
served at ``/envelopes/{sha256}`` for devices that fetch it (at most ``MAX_DEPENDENCIES``).

Not here: per-slot images chosen by
try-each (only the first alternative is checked), a version condition in the shared sequence,
the status tracker (mounted from outside through ``ServerConfig.routers``), CoAP.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from suitkit.core import codec, cose, crypto, packing, processor
from suitkit.core.anchors import ANCHORS_COMPONENT, CHAIN_PREFIX
from suitkit.core.model import (
    CommandSequence,
    ComponentIdentifier,
    Digest,
    Parameters,
    TryEach,
    VendorIdentifier,
)
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import ComponentTextKey, CoseAlg, ManifestKey, TextKey, name_of
from suitkit.core.processor import ComponentIdentity, Device, ProcessorOptions
from suitkit.core.verify import (
    TrustAnchors,
    VerifiedManifest,
    addressed_components,
    verify_envelope,
)
from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    PolicyError,
    ProcessingError,
    StorageError,
    StorageFullError,
    SuitError,
)
from suitkit.limits import Limits
from suitkit.problems import Problem, problem_response, problem_responses
from suitkit.server.contract import ContractCheck
from suitkit.server.observe import Metrics, Observed, ReadinessCheck
from suitkit.server.schemas import Release, ReleaseList
from suitkit.server.store import (
    MAX_NOTES,
    MAX_VERSION_TEXT,
    BlobStore,
    ClassText,
    ComponentRecord,
    ReleaseConflict,
    ReleaseRecord,
    ReleaseRecords,
    is_digest,
    is_release_id,
    store_release,
)

__all__ = ["ENVELOPE_MEDIA_TYPE", "IMMUTABLE", "LEAVE_REQUEST_LIMIT", "Authorizer",
           "ServerConfig", "UploadRefused", "accel_prefix_problem", "create_app",
           "expected_images", "nginx_accel_config"]

Authorizer = Callable[[str, str], Literal["allowed", "forbidden", "invalid"]]
"""``(bearer token, action)`` -> verdict, for action ``"upload"`` or ``"read"``. Runs in a worker
thread (it may read a database)."""

ENVELOPE_MEDIA_TYPE = "application/suit-envelope+cose"
IMMUTABLE = "public, max-age=31536000, immutable"
_CHUNK = 64 * 1024
_IMAGE_PART = re.compile(r"image(?:-(\d{1,4}))?")
_log = logging.getLogger("suitkit.server")

LEAVE_REQUEST_LIMIT = "suitkit.leave_request_limit"
"""Key of the ASGI scope under which ``max_requests`` puts a function that takes the request
out of the count: a route that holds its request for long on purpose under caps of its own
(the status tracker's push streams, tracker/edges/push_http.py, which names this key itself:
the roles do not import each other) calls it once it has its own slot."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Configuration of one firmware server, built once by the CLI.

    ``upload_token``: the bearer token uploads need; ``None`` disables uploads (403).
    ``max_upload_bytes``: bound on a whole upload request body (413 beyond it).
    ``limits``: decoding limits for envelopes (``max_envelope_bytes`` bounds the envelope part).
    ``routers``: more routes to serve, such as the status tracker's (the CLI wires them in, so
    the firmware server does not import other roles; design.md §2). They share this app's
    errors (problem details, ``suitkit.problems``): raise Starlette's ``HTTPException``.
    ``authorizer``: who may upload and read release metadata (``Authorizer``), built by the CLI
    from the status tracker's API tokens; ``None``: only ``upload_token``, public metadata.
    ``max_requests``: requests in progress at once, not counting the ones that left the count
    (``LEAVE_REQUEST_LIMIT``); beyond it 503 with ``Retry-After``. ``None``: no bound.
    ``max_uploads``: uploads whose bodies are read at once (each may spool up to
    ``max_upload_bytes`` to a temporary file); beyond it 503 with ``Retry-After``.
    ``max_downloads``: blob downloads in progress at once, counted apart from
    ``max_requests`` (a public download may last long on a slow link, and clients that read
    slowly on purpose must not starve check-ins and the operator); 503 with ``Retry-After``.
    ``metrics``: the app's Prometheus series and where ``/metrics`` is served
    (``observe.Metrics``; ``None``: series of its own, ``/metrics`` served nowhere).
    ``readiness``: checks ``/readyz`` runs besides the data directory's (the tracker's
    database, wired by the CLI).
    """

    data_dir: Path
    anchors: TrustAnchors
    upload_token: str | None = None
    max_upload_bytes: int = 256 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    routers: tuple[APIRouter, ...] = ()
    authorizer: Authorizer | None = None
    max_requests: int | None = 1000
    max_uploads: int = 8
    releases: ReleaseRecords | None = None
    """Where release records live (``server.store.ReleaseRecords``); ``None``: beside the
    blobs, in the data directory (``BlobStore``). ``suitkit serve`` with the status tracker
    gives its database: replicas sharing the blob directory agree on the releases."""
    max_downloads: int = 1000
    accel_redirect: str | None = None
    metrics: Metrics | None = None
    readiness: tuple[ReadinessCheck, ...] = ()
    contract_log: Path | None = None
    """Test runs only: check every answer against ``/openapi.json`` and append what
    contradicts it to this file (``server.contract.ContractCheck``); ``None``: no check."""

    def __post_init__(self) -> None:
        if self.accel_redirect is not None:
            problem = accel_prefix_problem(self.accel_redirect)
            if problem is not None:
                raise ValueError(problem)


_ACCEL_PREFIX = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*")


def accel_prefix_problem(prefix: str) -> str | None:
    """What is wrong with ``prefix`` as an ``X-Accel-Redirect`` prefix, or ``None``: it must be
    an absolute URL path that ends with ``/`` (letters, digits, ``.``, ``_``, ``~``, ``-``
    between the slashes), at most 200 characters, without ``.`` or ``..`` segments."""
    shown = prefix[:80].encode("ascii", "backslashreplace").decode()
    if (len(prefix) > 200 or _ACCEL_PREFIX.fullmatch(prefix) is None
            or any(part in (".", "..") for part in prefix.split("/"))):
        return (f"expected a URL path such as /_suitkit_blobs/ (starting and ending with '/', "
                f"letters, digits, '.', '_', '~', '-' between, at most 200 characters), got "
                f"{shown!r}")
    return None


class UploadRefused(Exception):
    """An upload or request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def nginx_accel_config(*, listen: str, upstreams: tuple[str, ...], blobs: Path, state: Path,
                       prefix: str = "/_suitkit_blobs/", max_upload_mib: int = 256) -> str:
    """nginx's ``upstream`` and ``server`` blocks (for its ``http {}``) in front of suitkit
    replicas run with ``--accel-redirect prefix``: the template ``nginx-accel.conf`` filled in.

    ``listen``: nginx's ``listen`` argument (``127.0.0.1:8080``); ``upstreams``: the replicas'
    ``host:port``; ``blobs``: the absolute path of the shared ``DATA/blobs`` directory;
    ``state``: a directory of nginx's own (its cache of suitkit's answers, a unix socket).

    Raises:
        ValueError: a bad prefix, no upstream, or a relative ``blobs`` path.
    """
    problem = accel_prefix_problem(prefix)
    if problem is not None:
        raise ValueError(problem)
    if not upstreams:
        raise ValueError("at least one suitkit replica (host:port) is needed")
    for name, folder in (("blobs", blobs), ("state", state)):
        if not folder.is_absolute() or any(c.isspace() or c in ";{}'\"$" for c in str(folder)):
            raise ValueError(f"the {name} directory must be an absolute path without spaces, "
                             f"quotes, '$', ';' or braces, got {str(folder)[:200]!r}")
    template = resources.files("suitkit.server").joinpath("nginx-accel.conf").read_text()
    filled = {"@LISTEN@": listen, "@PREFIX@": prefix, "@BLOBS@": str(blobs).rstrip("/"),
              "@STATE@": str(state).rstrip("/"),
              "@MAX_BODY@": f"{max_upload_mib}m",
              "@UPSTREAMS@": "\n".join(f"    server {u};" for u in upstreams)}
    for key, value in filled.items():
        template = template.replace(key, value)
    return template


# ============================================================================ expected images


def _named_identities(sequence: CommandSequence | None) -> ComponentIdentity:
    """Every vendor, class and device identifier the sequence's parameters name (recursively
    through try-each, run-sequence and override-multiple)."""
    vendors: set[VendorIdentifier] = set()
    classes: set[UUID] = set()
    devices: set[UUID] = set()

    def walk(argument: object) -> None:
        if isinstance(argument, Parameters):
            if argument.vendor_identifier is not None:
                vendors.add(argument.vendor_identifier)
            if argument.class_identifier is not None:
                classes.add(argument.class_identifier)
            if argument.device_identifier is not None:
                devices.add(argument.device_identifier)
        elif isinstance(argument, CommandSequence):
            for command in argument:
                walk(command.argument)
        elif isinstance(argument, TryEach):
            for branch in argument.sequences:
                walk(branch)
        elif isinstance(argument, Mapping):
            for value in argument.values():
                walk(value)

    walk(sequence)
    return ComponentIdentity(frozenset(vendors), frozenset(classes), frozenset(devices))


class _Placeholder:
    """A component that matches the identifiers the manifest names and holds nothing."""

    def __init__(self, identity: ComponentIdentity) -> None:
        self.identity = identity

    def size(self) -> int | None:
        return None

    def digest(self, algorithm: int) -> bytes | None:
        return None

    def read(self, chunk_size: int) -> Iterator[bytes]:
        return iter(())

    def open_writer(self, max_size: int, *,
                    metadata: Mapping[int, object] | None) -> processor.ComponentWriter:
        raise StorageError("the firmware server does not write components")

    def invoke(self, arguments: bytes | None) -> None:
        raise StorageError("the firmware server does not invoke components")

    def slot(self) -> int | None:
        return None


class _PlaceholderStore:
    def __init__(self, identity: ComponentIdentity) -> None:
        self.identity = identity

    def component(self, identifier: ComponentIdentifier) -> processor.Component | None:
        return _Placeholder(self.identity)

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        raise StorageError("the firmware server does not swap components")


@dataclass(frozen=True, slots=True)
class _Packing:
    """The packing a fetch of the manifest asks for: compression, a delta, or both."""

    compression: packing.CompressionInfo | None
    delta: packing.DeltaInfo | None


PLAIN = _Packing(None, None)
_PACKING = processor.Extensions(parameters=packing.packing_parameters())
"""The packing parameters are known here (their values are checked; no one else's)."""


def _declared_packings(verified: VerifiedManifest) -> dict[int, set[_Packing]]:
    """Per component index, each packing its fetches use (install and payload-fetch, walked
    with the component index and parameters as they are set before each fetch; ``PLAIN`` for
    a fetch of the image itself).

    Raises:
        DecodeError: a packing parameter does not decode.
    """
    manifest = verified.manifest
    count = len(manifest.common.components)
    found: dict[int, set[_Packing]] = {}
    keys = (packing.COMPRESSION_INFO, packing.DELTA_INFO)

    def walk(sequence: CommandSequence, index: tuple[int, ...],
             values: dict[int, dict[int, object]]) -> tuple[int, ...]:
        for command in sequence.commands:
            code, arg = command.code, command.argument
            if code == Cmd.SET_COMPONENT_INDEX:
                if arg is True:
                    index = tuple(range(count))
                elif isinstance(arg, int) and not isinstance(arg, bool):
                    index = (arg,)
                elif isinstance(arg, tuple):
                    index = tuple(i for i in arg if isinstance(i, int))
            elif code in (Cmd.OVERRIDE_PARAMETERS, Cmd.SET_PARAMETERS) \
                    and isinstance(arg, Parameters):
                for i in index:
                    for key in keys:
                        if key in arg.extra:
                            values.setdefault(i, {})[key] = arg.extra[key]
            elif code == Cmd.FETCH:
                for i in index:
                    current = values.get(i, {})
                    compression = current.get(packing.COMPRESSION_INFO)
                    delta = current.get(packing.DELTA_INFO)
                    found.setdefault(i, set()).add(_Packing(
                            None if compression is None else packing.CompressionInfo.decode(
                                compression, path=f"component {i} compression-info"),
                            None if delta is None else packing.DeltaInfo.decode(
                                delta, path=f"component {i} delta-info")))
            elif code == Cmd.TRY_EACH and isinstance(arg, TryEach):
                for branch in arg.sequences:
                    if isinstance(branch, CommandSequence):
                        walk(branch, index, {k: dict(v) for k, v in values.items()})
            elif code == Cmd.RUN_SEQUENCE and isinstance(arg, CommandSequence):
                walk(arg, index, {k: dict(v) for k, v in values.items()})
        return index

    for sequence in (manifest.install, manifest.payload_fetch):
        if isinstance(sequence, CommandSequence):
            walk(sequence, (0,) if count == 1 else (), {})
    return found


@dataclass(frozen=True, slots=True)
class _Expected:
    index: int
    identifier: ComponentIdentifier
    digest: Digest | None
    size: int | None
    encryption: int | None = None
    """The content algorithm when the shared sequence sets encryption-info: the image stored
    is then its detached ciphertext (draft-ietf-suit-firmware-encryption)."""
    dependency: bool = False
    """A dependency manifest's component: ``digest`` is that manifest's digest."""
    uri: str | None = None
    packings: tuple[_Packing, ...] = ()
    """How the manifest's fetches of this component pack its image (compressed, a delta):
    an uploaded image may be any of them (core.packing)."""
    vendor_id: UUID | None = None
    class_id: UUID | None = None
    """The vendor and class IDs the shared sequence sets for it (UUIDs only), if any."""

    def label(self) -> str:
        return f"component {self.index} [{', '.join(p.hex() for p in self.identifier)}]"

    def stored_size(self) -> int | None:
        """Bytes of the image as uploaded: the plaintext's, or its ciphertext's."""
        if self.size is None or self.encryption is None:
            return self.size
        return crypto.ciphertext_size(self.encryption, self.size)


def expected_images(verified: VerifiedManifest, *,
                    limits: Limits = codec.DEFAULT_LIMITS) -> list[_Expected]:
    """Image digest and size each component of the manifest has after the shared sequence.

    Raises:
        ProcessingError: the shared sequence cannot run (an unsupported manifest).
    """
    identity = _named_identities(verified.manifest.common.shared_sequence)
    # No dependency is loaded by the shared sequence; anchors only say dependencies are known.
    device = Device(_PlaceholderStore(identity),
                    processor.InstalledEnvironment(TrustAnchors(())))
    params = processor.shared_parameters(verified, device, limits=limits,
                                         options=ProcessorOptions(), extensions=_PACKING)
    dependencies: Mapping[int, object] = verified.manifest.common.dependencies or {}
    packings = _declared_packings(verified)
    result = []
    for index, cid in enumerate(addressed_components(verified.manifest)):
        p = params.get(cid)
        if index in dependencies:
            result.append(_Expected(index, cid, p.image_digest if p else None,
                                    p.image_size if p else None, dependency=True,
                                    uri=p.uri if p else None))
            continue
        vendor = p.vendor_identifier if p is not None else None
        vendor_id = vendor if isinstance(vendor, UUID) else None
        class_id = p.class_identifier if p is not None else None
        encryption = None
        if p is not None and p.encryption_info is not None:
            # The ciphertext cannot be hashed against the plaintext's image-digest without the
            # content key, which the server never holds: its size is checked (the content
            # algorithm's tag included) and the device authenticates what it decrypts.
            info = cose.decode_encryption_info(p.encryption_info,
                                               path=f"component {index} encryption-info")
            encryption = info.algorithm
            crypto.content_key_size(encryption)  # PolicyError: not a supported algorithm
        result.append(_Expected(index, cid, p.image_digest if p else None,
                                p.image_size if p else None, encryption,
                                packings=tuple(sorted(packings.get(index, ()), key=repr))
                                if packings.get(index, {PLAIN}) != {PLAIN} else (),
                                vendor_id=vendor_id, class_id=class_id))
    return result


# ============================================================================ upload checks


@dataclass(frozen=True, slots=True)
class _Image:
    """A detached image part: the component index it is for (``None``: match by digest)."""

    name: str
    component: int | None
    file: BinaryIO
    size: int


def _digest_of(file: BinaryIO, algorithm: int) -> bytes:
    file.seek(0)
    return processor.stream_digest(iter(lambda: file.read(_CHUNK), b""), algorithm)


Chunks = Callable[[], Iterator[bytes]]
"""The bytes of an uploaded image, from the start, each time it is called."""


def _file_chunks(file: BinaryIO) -> Chunks:
    def chunks() -> Iterator[bytes]:
        file.seek(0)
        return iter(lambda: file.read(_CHUNK), b"")
    return chunks


def _unpacks_to(expected: _Expected, chunks: Chunks, store: BlobStore | None) -> bool:
    """Whether the upload, decoded as one of the component's packings, is its image (the
    image-digest and image-size of the manifest). Decoding stops at image-size."""
    if expected.digest is None or expected.size is None:
        return False
    for declared in expected.packings:
        if declared == PLAIN:
            continue
        try:
            stream: Iterator[bytes] = chunks()
            if declared.compression is not None:
                stream = packing.decompress(stream, declared.compression.algorithm,
                                            max_output=packing.packed_bound(expected.size)
                                            if declared.delta is not None else expected.size)
            inplace = declared.delta.inplace if declared.delta is not None else None
            if inplace is not None:
                # docs/delta.md §9: the patch as it travels is signed (digest, size) and names
                # its own codec; devices stage it as it is.
                if not _is_patch(inplace, chunks):
                    continue
                stream = chunks()  # from the start again
                if inplace.codec:
                    stream = packing.decompress(stream, inplace.codec,
                                                max_output=packing.packed_bound(expected.size))
            if declared.delta is not None:
                precursor = _precursor(store, declared.delta)
                if precursor is None:
                    continue
                with precursor:
                    stream = packing.apply_delta(
                        stream, _reader_at(precursor),
                        source_size=declared.delta.precursor_size, max_output=expected.size,
                        inplace=None if inplace is None else (inplace.unit, inplace.order))
                    if _is(expected, stream):
                        return True
                continue
            if _is(expected, stream):
                return True
        except DecodeError:
            continue
    return False


def _is_patch(inplace: packing.InplaceInfo, chunks: Chunks) -> bool:
    """Whether the upload is the in-place patch its delta-info signs (size and digest)."""
    hasher = crypto.new_hasher(inplace.patch_digest.algorithm)
    size = 0
    for piece in chunks():
        size += len(piece)
        if size > inplace.patch_size:
            return False
        hasher.update(piece)
    return size == inplace.patch_size and hmac.compare_digest(hasher.digest(),
                                                              inplace.patch_digest.value)


def _is(expected: _Expected, stream: Iterator[bytes]) -> bool:
    assert expected.digest is not None
    hasher = crypto.new_hasher(expected.digest.algorithm)
    size = 0
    for piece in stream:
        size += len(piece)
        hasher.update(piece)
    return size == expected.size and hmac.compare_digest(hasher.digest(),
                                                         expected.digest.value)


def _precursor(store: BlobStore | None, delta: packing.DeltaInfo) -> BinaryIO | None:
    """The stored image a delta applies to (a blob of an earlier release), if the server has
    it: blobs are named by SHA-256, so a precursor named by another digest is not found."""
    name = delta.precursor_digest.value.hex()
    if store is None or delta.precursor_digest.algorithm != CoseAlg.SHA256 \
            or not store.has_blob(name):
        return None
    file = store.open_blob(name)
    if _file_size(file) != delta.precursor_size:
        file.close()
        return None
    return file


def _reader_at(file: BinaryIO) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        file.seek(offset)
        return file.read(length)
    return read


def _packed_refusal(expected: _Expected, name: str, store: BlobStore | None) -> str:
    missing = [p.delta for p in expected.packings if p.delta is not None
               and _precursor(store, p.delta) is None]
    hint = ""
    if missing:
        hint = (f"; the server does not store the precursor image "
                f"{missing[0].precursor_digest.value.hex()} the delta applies to: upload the "
                "release that carries it (uncompressed) first")
    plain = "its image or " if PLAIN in expected.packings else ""
    return (f"{name}: not {plain}a packed form of {expected.label()}'s image "
            f"({', '.join(_packing_label(p) for p in expected.packings if p != PLAIN)}) "
            f"that decodes to its image-digest and image-size{hint}")


def _packing_label(declared: _Packing) -> str:
    parts = []
    if declared.delta is not None:
        parts.append("SKD1 delta" if declared.delta.inplace is None else "SKD1 in-place delta")
    if declared.compression is not None:
        parts.append(packing.Codec(declared.compression.algorithm).name.lower())
    return " + ".join(parts)


def _check_image(expected: _Expected, name: str, size: int, digest: Callable[[int], bytes],
                 *, chunks: Chunks | None = None, store: BlobStore | None = None) -> None:
    if expected.digest is None or expected.size is None:
        raise UploadRefused(422, f"{name}: {expected.label()} has no image-digest and "
                                 "image-size in the shared sequence; cannot check an image")
    if expected.packings and expected.encryption is None and chunks is not None and not (
            PLAIN in expected.packings and size == expected.size
            and hmac.compare_digest(digest(expected.digest.algorithm), expected.digest.value)):
        if not _unpacks_to(expected, chunks, store):
            raise UploadRefused(422, _packed_refusal(expected, name, store))
        return
    if expected.encryption is not None:
        if size != expected.stored_size():
            raise UploadRefused(
                422, f"{name}: encrypted image size mismatch for {expected.label()}: {size} "
                     f"bytes uploaded, the manifest's {expected.size} bytes of plaintext are "
                     f"{expected.stored_size()} bytes of "
                     f"{crypto.algorithm_name(expected.encryption)} ciphertext")
        _refuse_plaintext(expected, name, digest)
        return
    if size != expected.size:
        raise UploadRefused(422, f"{name}: image size mismatch for {expected.label()}: "
                                 f"{size} bytes uploaded, the manifest says {expected.size}")
    actual = digest(expected.digest.algorithm)
    if not hmac.compare_digest(actual, expected.digest.value):
        raise UploadRefused(422, f"{name}: image digest mismatch for {expected.label()}: "
                                 f"uploaded image hashes to {actual.hex()}, the manifest says "
                                 f"{expected.digest.value.hex()}")


def _refuse_plaintext(expected: _Expected, name: str, digest: Callable[[int], bytes]) -> None:
    """An encrypted component's image that hashes to the plaintext's image-digest is the
    plaintext itself: published, it would undo the encryption (the same size as an AES-CTR
    ciphertext, so the size check alone does not catch it)."""
    assert expected.digest is not None
    if hmac.compare_digest(digest(expected.digest.algorithm), expected.digest.value):
        raise UploadRefused(422, f"{name}: this is the plaintext image of {expected.label()}, "
                                 "which the manifest encrypts; upload its ciphertext (the "
                                 ".enc file suitkit create or suitkit encrypt wrote)")


def _match(expected: list[_Expected], name: str, size: int,
           digest: Callable[[int], bytes], *, chunks: Chunks | None = None,
           store: BlobStore | None = None) -> _Expected:
    """The component whose image-digest and image-size this image has, or whose image one of
    its packings decodes it to; else the one encrypted component whose ciphertext has this
    size."""
    for candidate in expected:
        if (candidate.digest is not None and candidate.size == size
                and candidate.encryption is None
                and (not candidate.packings or PLAIN in candidate.packings)
                and hmac.compare_digest(digest(candidate.digest.algorithm),
                                        candidate.digest.value)):
            return candidate
    for candidate in expected:
        if candidate.encryption is None and chunks is not None \
                and _unpacks_to(candidate, chunks, store):
            return candidate
    encrypted = [c for c in expected if c.encryption is not None and c.digest is not None
                 and c.stored_size() == size]
    if len(encrypted) == 1:
        _refuse_plaintext(encrypted[0], name, digest)
        return encrypted[0]
    if encrypted:
        raise UploadRefused(422, f"{name} ({size} bytes) could be the ciphertext of "
                                 f"{len(encrypted)} encrypted components; upload it as "
                                 "image-N for component N")
    raise UploadRefused(422, f"{name} ({size} bytes) matches no component of the manifest "
                             "(no image-digest and image-size equal its own, nor the size of "
                             "an encrypted component's ciphertext)")


def _check_chain_link(config: ServerConfig, key: str, payload: bytes) -> None:
    """An earlier trust-anchor rotation a rotation envelope carries (docs/keys.md): itself a
    rotation envelope signed by a key this server trusts (the devices check it again)."""
    try:
        link = verify_envelope(payload, config.anchors, limits=config.limits)
    except SuitError as e:
        raise UploadRefused(422, f"integrated payload {key!r}: an earlier rotation that does "
                                 f"not verify: {e}") from e
    if link.manifest.common.components != (ANCHORS_COMPONENT,):
        raise UploadRefused(422, f"integrated payload {key!r}: not a trust-anchor rotation")


@dataclass(frozen=True, slots=True)
class ReleaseText:
    """What an uploader says of a release beside its envelope and images (issue #17): its
    ``version`` (when the manifest's text gives none) and ``notes``; checked by ``_parts``."""

    version: str | None = None
    notes: str | None = None


def _text_of(verified: VerifiedManifest) -> Mapping[ComponentIdentifier, Mapping[int, str]]:
    """The component texts of the manifest's text section (manifest §8.4.4), in the first
    English language it has (else its first): ``{}`` without one (severed, or none)."""
    if verified.text is None or not verified.text.languages:
        return {}
    languages = verified.text.languages
    chosen = next((t for lang, t in languages.items() if str(lang).lower().startswith("en")),
                  next(iter(languages.values())))
    return chosen.components


def _bounded(text: str | None, limit: int) -> str | None:
    """``text`` if it is short, printable, single-line text (a name), else ``None``."""
    if text is None or not 0 < len(text) <= limit or not text.isprintable() \
            or text != text.strip():
        return None
    return text


def _release_text(verified: VerifiedManifest, expected: list[_Expected], given: ReleaseText
                  ) -> tuple[str | None, tuple[ClassText, ...]]:
    """The release's version (the first component-version of the manifest's text, else the
    uploader's; both must agree when both are given) and the class names its text gives."""
    texts = _text_of(verified)
    version = None
    classes: dict[str, ClassText] = {}
    for e in expected:
        text = texts.get(e.identifier, {})
        mine = text.get(ComponentTextKey.COMPONENT_VERSION)
        if version is None and mine is not None:
            if _bounded(mine, MAX_VERSION_TEXT) is None:
                raise UploadRefused(422, f"{e.label()}: the manifest text's component-version "
                                         f"must be 1 to {MAX_VERSION_TEXT} printable "
                                         f"characters, got {mine[:40]!r}")
            version = mine
        names = [_bounded(text.get(key), limit) for key, limit in (
            (ComponentTextKey.VENDOR_NAME, 128), (ComponentTextKey.MODEL_NAME, 128),
            (ComponentTextKey.VENDOR_DOMAIN, 253))]
        if e.vendor_id is not None and e.class_id is not None and any(names) \
                and str(e.class_id) not in classes:
            classes[str(e.class_id)] = ClassText(str(e.vendor_id), str(e.class_id), *names)
    if version is not None and given.version is not None and given.version != version:
        raise UploadRefused(422, f"version {given.version!r} was given, but the manifest's "
                                 f"text says component-version {version!r}: leave it out or "
                                 "give the same")
    return version or given.version, tuple(classes.values())


def _accept(store: BlobStore, config: ServerConfig, envelope: bytes,
            images: list[_Image], given: ReleaseText = ReleaseText()
            ) -> tuple[int, ReleaseRecord]:
    """Verify, check and store one upload; (HTTP status, release record)."""
    try:
        verified = verify_envelope(envelope, config.anchors, limits=config.limits)
    except DecodeError as e:
        raise UploadRefused(400, f"envelope is malformed: {e}") from e
    except (AuthenticationError, PolicyError) as e:
        raise UploadRefused(422, f"envelope does not verify against the author trust "
                                 f"anchors: {e}") from e
    try:
        every = expected_images(verified, limits=config.limits)
    except (ProcessingError, PolicyError, DecodeError) as e:
        raise UploadRefused(422, f"cannot read the component images from the shared "
                                 f"sequence: {e}") from e
    records = config.releases if config.releases is not None else store
    dependencies = _dependencies(store, records, config, verified,
                                 [e for e in every if e.dependency])
    expected = [e for e in every if not e.dependency]
    version, classes = _release_text(verified, expected, given)

    blobs: dict[int, str] = {}
    checked: list[tuple[_Expected, _Image]] = []
    for image in images:
        def digest(algorithm: int, file: BinaryIO = image.file) -> bytes:
            return _digest_of(file, algorithm)

        if image.component is None:
            target = _match(expected, image.name, image.size, digest,
                            chunks=_file_chunks(image.file), store=store)
        else:
            if image.component >= len(every):
                raise UploadRefused(422, f"{image.name}: unknown component {image.component}; "
                                         f"the manifest has {len(every)} component(s)")
            target = every[image.component]
            if target.dependency:
                raise UploadRefused(422, f"{image.name}: {target.label()} is a dependency "
                                         "manifest, not an image: integrate it in the root's "
                                         "envelope or upload it as its own release first")
            _check_image(target, image.name, image.size, digest,
                         chunks=_file_chunks(image.file), store=store)
        checked.append((target, image))
    integrated: list[tuple[_Expected, str, bytes]] = []
    rotation = verified.manifest.common.components == (ANCHORS_COMPONENT,)
    for key, payload in verified.envelope.integrated.items():
        if rotation and key.startswith(CHAIN_PREFIX):
            _check_chain_link(config, key, payload)  # an earlier rotation, carried whole
            continue
        if key in dependencies.integrated.values():
            continue  # a dependency's envelope, checked as one

        def digest_payload(algorithm: int, data: bytes = payload) -> bytes:
            return crypto.digest(algorithm, data)

        def payload_chunks(data: bytes = payload) -> Iterator[bytes]:
            return iter([data])

        target = _match(expected, f"integrated payload {key!r}", len(payload), digest_payload,
                        chunks=payload_chunks, store=store)
        integrated.append((target, key, payload))

    release_id = verified.digest.value.hex()
    envelope_sha = hashlib.sha256(envelope).hexdigest()
    previous = records.get_release(release_id)  # early refusal; add_release decides for good
    if previous is not None and previous.envelope != envelope_sha:
        raise UploadRefused(409, str(ReleaseConflict(previous)))
    if previous is not None:
        try:  # a version or notes that conflict are refused before any blob is stored
            store_release(previous, replace(previous, version=version, notes=given.notes))
        except ReleaseConflict as e:
            raise UploadRefused(409, str(e)) from None
    stored = {c.index: c.blob for c in previous.components} if previous is not None else {}
    for target, image in checked:
        # refused before it is stored: other bytes for a stored (encrypted, so only
        # size-checked) image would be kept as a blob nothing refers to, upload after upload
        have = stored.get(target.index)
        if have is not None and _digest_of(image.file, CoseAlg.SHA256).hex() != have:
            raise UploadRefused(409, f"{image.name}: release {release_id} component "
                                     f"{target.index} already has image {have}; another image "
                                     "is refused (a stored image is never replaced)")
    envelope_blob = store.put_blob(envelope)
    for target, image in checked:
        image.file.seek(0)
        blobs[target.index] = store.put_blob(image.file)
    integrated_blobs = {}
    for target, key, payload in integrated:
        integrated_blobs[key] = blobs[target.index] = store.put_blob(payload)
    for index, key in dependencies.integrated.items():
        integrated_blobs[key] = blobs[index] = store.put_blob(
            verified.envelope.integrated[key])
    blobs.update(dependencies.stored)
    components = tuple(
        ComponentRecord(e.index, tuple(p.hex() for p in e.identifier),
                        e.digest.algorithm if e.digest else None,
                        e.digest.value.hex() if e.digest else None, e.size,
                        blobs.get(e.index), e.dependency)
        for e in every)
    try:
        record, created = records.add_release(ReleaseRecord(
            release_id, verified.manifest.sequence_number, envelope_blob, components,
            integrated_blobs, version, given.notes, classes))
    except ReleaseConflict as e:  # another upload of this release won meanwhile
        raise UploadRefused(409, str(e)) from None
    return (201 if created else 200), record


MAX_DEPENDENCIES = 16
"""Dependency manifests one release may name (each is verified at upload)."""


@dataclass(frozen=True, slots=True)
class _Dependencies:
    integrated: dict[int, str]
    """Component index -> the integrated payload key holding its envelope."""
    stored: dict[int, str]
    """Component index -> the envelope blob of the release it already is."""


def _dependencies(store: BlobStore, records: ReleaseRecords, config: ServerConfig,
                  verified: VerifiedManifest, expected: list[_Expected]) -> _Dependencies:
    """Check each dependency manifest of a root (trust-domains §5.2.2, §5.6.4): integrated in
    its envelope, it verifies against the author trust anchors and has the manifest digest and
    envelope size the root gives it; otherwise it is a release here already."""
    if len(expected) > MAX_DEPENDENCIES:
        raise UploadRefused(422, f"{len(expected)} dependencies is over the limit of "
                                 f"{MAX_DEPENDENCIES}")
    out = _Dependencies({}, {})
    for e in expected:
        if e.digest is None:
            raise UploadRefused(422, f"{e.label()} is a dependency without an image-digest in "
                                     "the shared sequence (its manifest digest)")
        label = f"dependency {e.label()}"
        payload = verified.envelope.integrated.get(e.uri) if e.uri else None
        if payload is not None:
            try:
                dependency = verify_envelope(payload, config.anchors, limits=config.limits)
            except SuitError as e2:
                raise UploadRefused(422, f"{label}: the integrated envelope {e.uri!r} does not "
                                         f"verify against the author trust anchors: {e2}") from e2
            size = len(payload)
            actual = dependency.digest
            out.integrated[e.index] = str(e.uri)
        else:
            found = records.get_release(e.digest.value.hex())
            if found is None:
                raise UploadRefused(422, f"{label}: its manifest {e.digest.value.hex()} is not "
                                         "a release on this server and is not integrated; "
                                         "upload it (with its images) first")
            try:
                size = store.blob_path(found.envelope).stat().st_size
            except OSError as e2:
                raise UploadRefused(422, f"{label}: its release's envelope is not in the "
                                         f"store: {e2.strerror}") from None
            actual = Digest(e.digest.algorithm, bytes.fromhex(found.release_id))
            out.stored[e.index] = found.envelope
        if actual.algorithm != e.digest.algorithm or \
                not hmac.compare_digest(actual.value, e.digest.value):
            raise UploadRefused(422, f"{label}: manifest digest {actual.value.hex()} does not "
                                     f"match the root's {e.digest.value.hex()}")
        if e.size is not None and size != e.size:
            raise UploadRefused(422, f"{label}: envelope of {size} bytes, the root says "
                                     f"{e.size}")
    return out


def _manifest_summary(verified: VerifiedManifest) -> dict[str, Any]:
    """What an operator reads of a verified manifest (the dashboard's firmware list): the
    vendor and class IDs its shared sequence names, its text, who signed it, what is severed."""
    named = _named_identities(verified.manifest.common.shared_sequence)
    text: dict[str, dict[str, Any]] = {}
    for language, localized in (verified.text.languages.items() if verified.text else ()):
        entry: dict[str, Any] = {name_of(TextKey, k): v for k, v in localized.fields.items()}
        for cid, fields in localized.components.items():
            entry["/".join(p.hex() for p in cid)] = {
                name_of(ComponentTextKey, k): v for k, v in fields.items()}
        text[language] = entry
    return {
        "vendor_ids": sorted(str(v) if isinstance(v, UUID) else f"pen:{v.oid.hex()}"
                             for v in named.vendor_ids),
        "class_ids": sorted(str(c) for c in named.class_ids),
        "reference_uri": verified.manifest.reference_uri,
        "text": text,
        "signers": [{"role": a.role, "key_id": a.key.key_id.hex() if a.key.key_id else None,
                     "algorithms": sorted(crypto.algorithm_name(x) for x in a.key.algorithms)}
                    for a in verified.signers],
        "severed": sorted(name_of(ManifestKey, k) for k in verified.severed),
    }


def _release_json(record: ReleaseRecord, manifest: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The release's metadata; ``manifest``: its ``_manifest_summary`` (``None``: the stored
    envelope no longer verifies against the configured trust anchors)."""
    return {
        "id": record.release_id,
        "sequence_number": record.sequence_number,
        "version": record.version,
        "notes": record.notes,
        "envelope": {"sha256": record.envelope, "url": f"/envelopes/{record.envelope}"},
        "components": [
            {**c.to_json(), "url": f"/firmware/{c.blob}" if c.blob else None}
            for c in record.components],
        "integrated": {k: {"sha256": v, "url": f"/firmware/{v}"}
                       for k, v in record.integrated.items()},
        "manifest": manifest,
    }


# ============================================================================ HTTP edge


_DOWNLOAD_CHUNK = 512 * 1024
"""Bytes per read of a blob being sent (Starlette's default 64 KiB costs a thread hop each)."""


class _BodyTooLarge(Exception):
    pass


class _CountedFile(FileResponse):
    """A file response that gives its download slot back however it ends (even unsent)."""

    def __init__(self, *args: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.pathsend" or (
                    message["type"] == "http.response.body" and not message.get("more_body")):
                # the response is complete: the client may send its next download on this
                # connection before Starlette closes the file (a thread hop)
                self._release()

        try:
            await super().__call__(scope, receive, counted_send)
        finally:
            self._release()


def _error(status: int, message: str, headers: Mapping[str, str] | None = None
           ) -> JSONResponse:
    """Every error of the app, as RFC 9457 problem details (``suitkit.problems``)."""
    return problem_response(status, message, headers)


_ACTIONS = {"upload": "upload releases (admin or author)",
            "read": "read release metadata (admin, author or operator)"}


def _check_token(request: Request, config: ServerConfig, action: str = "upload") -> None:
    """Whether the request's bearer token may do ``action`` (``"upload"`` or ``"read"``).

    Runs in a worker thread when ``config.authorizer`` is set (it may read a database).
    """
    if action == "read" and config.authorizer is None:
        return  # a server deployed alone: metadata is as public as the blobs
    if config.upload_token is None and config.authorizer is None:
        raise UploadRefused(403, "uploads are disabled on this server (no upload token "
                                 "configured)")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UploadRefused(401, f"to {_ACTIONS[action]} this server requires "
                                 "'Authorization: Bearer <token>'")
    if config.upload_token is not None and hmac.compare_digest(
            token.encode(), config.upload_token.encode()):
        return
    if config.authorizer is None:
        raise UploadRefused(403, "the upload token is not valid")
    verdict = config.authorizer(token, action)
    if verdict == "invalid":
        raise UploadRefused(401, "the token is not valid (unknown, wrong, expired or revoked)")
    if verdict != "allowed":
        raise UploadRefused(403, f"this token's role may not {_ACTIONS[action]}")


async def _authorize(request: Request, config: ServerConfig, action: str) -> None:
    if config.authorizer is None:
        _check_token(request, config, action)
    else:
        await run_in_threadpool(_check_token, request, config, action)


def _limited(request: Request, limit: int) -> Request:
    """The request with a receive channel that refuses more than ``limit`` body bytes."""
    received = 0
    receive = request.receive

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
        return message

    return Request(request.scope, limited_receive)


class _RequestLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in progress (event loop only), 503 with
    ``Retry-After`` beyond; ``scope[LEAVE_REQUEST_LIMIT]()`` takes a request out early."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0
        self.quiet_until = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            now = time.monotonic()
            if now >= self.quiet_until:  # at most one line per minute, whatever the load
                self.quiet_until = now + 60
                _log.warning("%d requests in progress, the most allowed: 503 for more",
                             self.active)
            busy = _error(503, f"the server is busy ({self.limit} requests in progress); "
                               "try again shortly", {"Retry-After": "1"})
            await busy(scope, receive, send)
            return
        self.active += 1
        counted = True

        def leave() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.active -= 1

        scope[LEAVE_REQUEST_LIMIT] = leave
        try:
            await self.app(scope, receive, send)
        finally:
            leave()


_DOWNLOAD_PATH = re.compile(r"/(firmware|envelopes)/([^/]+)")
_MEDIA_TYPES = {"firmware": "application/octet-stream", "envelopes": ENVELOPE_MEDIA_TYPE}


@dataclass(frozen=True, slots=True)
class _Template:
    """What routing would have put in ``scope["route"]``: the route's template (its ``path``),
    for the request's metrics and logs."""

    path: str


class _Downloads:
    """ASGI middleware: ``GET``/``HEAD /firmware/{sha256}`` and ``/envelopes/{sha256}`` answered
    at once by ``download`` (the routes' own function), before the routing of every other
    route, the dependencies and the request count: a download is the server's most frequent
    request, and its checks need none of them (public, a digest checked, a stat; whole-file
    bodies go by sendfile, server/guard.py; with ``accel_redirect`` no body at all). Errors
    are the routes' (``UploadRefused``: problem details); a download is counted by
    ``max_downloads``, an accel answer by nothing (it holds nothing once answered)."""

    def __init__(self, app: ASGIApp, download: Callable[[Scope, str, str], Response]) -> None:
        self.app = app
        self.download = download

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (_DOWNLOAD_PATH.fullmatch(scope["path"])
                 if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") else None)
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = _Template(f"/{match.group(1)}/{{digest}}")
        try:
            response = self.download(scope, match.group(2), _MEDIA_TYPES[match.group(1)])
        except UploadRefused as e:
            response = _error(e.status, e.message)
        await response(scope, receive, send)


def _where(request: Request) -> str:
    """``METHOD /path`` of a request for the log (never its query or headers: no secrets)."""
    return f"{request.method} {request.url.path[:200]}"


def _file_size(file: BinaryIO) -> int:
    file.seek(0, 2)
    size = file.tell()
    file.seek(0)
    return size


_RELEASE_PAGE = (500, 1000)  # default and most releases a page holds (the tracker's lists')
_RELEASE_LIST_PARAMETERS: dict[str, Any] = {"parameters": [
    {"name": "limit", "in": "query", "required": False,
     "description": f"items per page, 1 to {_RELEASE_PAGE[1]}",
     "schema": {"type": "integer", "minimum": 1, "maximum": _RELEASE_PAGE[1],
                "default": _RELEASE_PAGE[0]}},
    {"name": "after", "in": "query", "required": False,
     "description": "the cursor 'next' of the page before (opaque)", "schema": {"type": "string"}},
    {"name": "total", "in": "query", "required": False,
     "description": "true: the answer's 'total' counts every release",
     "schema": {"type": "boolean", "default": False}}]}


def _release_cursor(record: ReleaseRecord) -> str:
    text = json.dumps(["releases", record.sequence_number, record.release_id],
                      separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _release_page(request: Request) -> tuple[int, tuple[int, str] | None, bool]:
    """``GET /api/v1/releases``'s ``limit``, the key in its ``after`` cursor and ``total``;
    an unknown parameter or a bad value is 400 naming it (as the tracker's lists)."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in ("limit", "after", "total"):
            raise UploadRefused(400, f"{name[:40]!r}: not a query parameter of this list; "
                                     "expected after, limit, total")
        if name in seen:
            raise UploadRefused(400, f"{name}: given more than once; expected one value")
        seen.add(name)
    limit, text = _RELEASE_PAGE[0], request.query_params.get("limit")
    if text is not None:
        digits = text.strip()
        limit = int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 8 else 0
        if not 1 <= limit <= _RELEASE_PAGE[1]:
            raise UploadRefused(400, f"limit: expected a whole number from 1 to "
                                     f"{_RELEASE_PAGE[1]}, got {text[:20]!r}")
    total_text = request.query_params.get("total", "false").strip().lower()
    if total_text not in ("true", "1", "yes", "false", "0", "no"):
        raise UploadRefused(400, f"total: expected true or false, got {total_text[:20]!r}")
    cursor = request.query_params.get("after")
    if cursor is None:
        return limit, None, total_text in ("true", "1", "yes")
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor[:200] + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        doc = None
    if (len(cursor) > 200 or not isinstance(doc, list) or len(doc) != 3
            or doc[0] != "releases" or type(doc[1]) is not int or type(doc[2]) is not str
            or not is_release_id(doc[2])):
        raise UploadRefused(400, f"after: expected the cursor 'next' of a previous page of "
                                 f"this list, got {cursor[:40]!r}")
    return limit, (doc[1], doc[2]), total_text in ("true", "1", "yes")


def create_app(config: ServerConfig) -> FastAPI:
    """The firmware server application for ``config`` (see the module docstring)."""
    store = BlobStore(config.data_dir)
    release_records: ReleaseRecords = config.releases if config.releases is not None else store
    summaries: dict[str, dict[str, Any] | None] = {}
    uploading = [0]  # uploads whose bodies are being read (event loop only)

    def described(record: ReleaseRecord) -> dict[str, Any]:
        """``_release_json`` with the manifest summary, verified again once per process (the
        envelope blob is immutable, so the cached summary never goes stale)."""
        if record.envelope not in summaries:
            try:
                with store.open_blob(record.envelope) as blob:
                    data = blob.read(config.limits.max_envelope_bytes + 1)
                summaries[record.envelope] = _manifest_summary(
                    verify_envelope(data, config.anchors, limits=config.limits))
            except SuitError:
                summaries[record.envelope] = None
        return _release_json(record, summaries[record.envelope])

    app = FastAPI(title="suitkit firmware server", version="1",
                  description="Content-addressed SUIT envelopes and firmware images. Every "
                              "error is RFC 9457 problem details (application/problem+json; "
                              "docs/server.md, Errors).",
                  docs_url=None, redoc_url=None)  # _documented: served from the package
    # documents the bearer scheme in OpenAPI; the checks are _authorize's and the routers' own
    bearer = [Depends(HTTPBearer(auto_error=False, description=(
        "An API token tok_<id>.<secret>, the status tracker's bootstrap admin token, a device "
        "credential <device-id>.<secret>, or (a server alone) the upload token")))]

    def logged(request: Request, status: int, message: str, exc: BaseException) -> None:
        """A 5xx that a route chose to answer: logged once with what caused it (not a 503:
        a cap reached is not a fault, and a client could flood the log with them)."""
        if status >= 500 and status != 503:
            cause = exc.__cause__ or exc.__context__
            _log.error("%s -> %d %s", _where(request), status, message,
                       exc_info=(type(cause), cause, cause.__traceback__) if cause else None)

    @app.exception_handler(UploadRefused)
    async def refused(request: Request, exc: UploadRefused) -> Response:
        logged(request, exc.status, exc.message, exc)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        logged(request, exc.status_code, str(exc.detail), exc)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        # the client closed its connection before its request was read: nothing to answer
        _log.info("%s: the client went away before sending its whole request",
                  _where(request))
        return _error(400, "the client went away before sending its whole request")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first: Mapping[str, Any] = next(iter(exc.errors()), {})  # loc ("query", "limit"), msg
        where = " ".join(str(part) for part in first.get("loc", ()))[:80]
        what = str(first.get("msg", "")).splitlines()[0][:120] if first.get("msg") else ""
        return _error(400, f"malformed request: {where}: {what}" if where and what
                      else "malformed request")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        # uvicorn closes the connection after an unhandled exception, even once this answer is
        # sent: "Connection: close" tells the client not to send its next request on it (it
        # would meet a reset).
        response = _error(500, "internal server error")
        response.headers["Connection"] = "close"
        return response

    @app.post("/api/v1/releases", status_code=201, dependencies=bearer,
              summary="Upload a release (admin, author)", response_model=Release,
              responses={200: {"model": Release, "description": "this release was uploaded "
                               "before with the same envelope: nothing changed"},
                         **problem_responses(400, 401, 403, 409, 413, 415, 422, 507,
                                             s409="another envelope of this manifest is "
                                                  "stored already")},
              openapi_extra=_UPLOAD_BODY)
    async def upload(request: Request) -> Response:
        """Upload a release: multipart parts ``envelope`` and ``image`` / ``image-<N>``;
        text fields ``version`` and ``notes`` optional."""
        await _authorize(request, config, "upload")
        length = request.headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit())
                                   or int(length) > config.max_upload_bytes):
            raise UploadRefused(413, f"request body of {length} bytes is larger than the "
                                     f"{config.max_upload_bytes} bytes allowed")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UploadRefused(415, "upload must be multipart/form-data with parts 'envelope' "
                                     "and 'image' or 'image-<N>'")
        if uploading[0] >= config.max_uploads:
            return _error(503, f"too many uploads at once (at most {config.max_uploads}); try "
                               "again shortly", {"Retry-After": "5"})
        uploading[0] += 1  # until its temporary files are gone
        try:
            try:
                form = await _limited(request, config.max_upload_bytes).form(
                    max_files=1 + config.limits.max_components, max_fields=16,
                    max_part_size=64 * 1024)
            except _BodyTooLarge:
                raise UploadRefused(413, f"request body is larger than the "
                                         f"{config.max_upload_bytes} bytes allowed") from None
            try:
                envelope, images, given = _parts(form.multi_items(), config)
                status, record = await run_in_threadpool(_accept, store, config, envelope,
                                                         images, given)
            except StorageFullError:
                raise UploadRefused(507, "the server's storage is full: nothing of the upload "
                                         "was kept; try again once space is freed") from None
            except StorageError:
                raise UploadRefused(500, "the server could not store the upload") from None
            finally:
                await form.close()
        finally:
            uploading[0] -= 1
        return JSONResponse(await run_in_threadpool(described, record), status_code=status)

    @app.get("/api/v1/releases", dependencies=bearer, response_model=ReleaseList,
             summary="List releases (admin, author, operator)",
             responses=problem_responses(400, 401, 403),
             openapi_extra=_RELEASE_LIST_PARAMETERS)
    async def list_releases(request: Request) -> Response:
        """A page of releases, by sequence number then id: ``{releases, next}`` (``next``:
        the cursor for ``?after=``, ``null`` at the end), ``total`` with ``?total=true`` (the
        tracker's lists' one style)."""
        await _authorize(request, config, "read")
        limit, after, total = _release_page(request)
        every = await run_in_threadpool(release_records.releases)
        found = every if after is None else [
            r for r in every if (r.sequence_number, r.release_id) > after]
        page = found[:limit]
        docs = await run_in_threadpool(lambda: [described(r) for r in page])
        doc: dict[str, Any] = {"releases": docs, "next": _release_cursor(page[-1])
                               if len(found) > limit else None}
        if total:
            doc["total"] = len(every)
        return JSONResponse(doc)

    @app.get("/api/v1/releases/{release_id}", dependencies=bearer, response_model=Release,
             summary="One release (admin, author, operator)",
             responses=problem_responses(400, 401, 403, 404))
    async def get_release(request: Request, release_id: str) -> Response:
        """One release by id (the manifest digest in hex)."""
        await _authorize(request, config, "read")
        try:
            record = await run_in_threadpool(release_records.get_release, release_id)
        except StorageError as e:
            raise UploadRefused(400, str(e)) from None
        if record is None:
            raise UploadRefused(404, f"no release {release_id}")
        return JSONResponse(await run_in_threadpool(described, record))

    downloading = [0]  # downloads in progress (event loop only)

    def download(scope: Scope, digest: str, media_type: str) -> Response:
        if not is_digest(digest):
            raise UploadRefused(400, f"not a SHA-256 digest (64 lower-case hex characters): "
                                     f"{digest[:80]!r}")
        path = store.blob_path(digest)
        try:
            stat = path.stat()  # once: FileResponse would stat it again in a worker thread
        except OSError:
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):
            raise UploadRefused(404, f"no such blob {digest}")
        headers = {"ETag": f'"{digest}"', "Cache-Control": IMMUTABLE}
        if config.accel_redirect is not None:  # the server in front sends the bytes
            return Response(status_code=200, media_type=media_type, headers={
                **headers, "X-Accel-Redirect": f"{config.accel_redirect}{digest[:2]}/{digest}"})
        if downloading[0] >= config.max_downloads:
            return _error(503, f"too many downloads at once (at most {config.max_downloads}); "
                               "try again shortly", {"Retry-After": "5"})
        downloading[0] += 1
        given = False

        def release() -> None:
            nonlocal given
            if not given:
                given = True
                downloading[0] -= 1

        leave = scope.get(LEAVE_REQUEST_LIMIT)
        if callable(leave):  # counted as a download from now on, not as a request
            leave()
        response = _CountedFile(path, media_type=media_type, release=release, headers=headers,
                                stat_result=stat)
        response.chunk_size = _DOWNLOAD_CHUNK
        return response

    @app.get("/firmware/{digest}", summary="Download a firmware image by SHA-256 (public)",
             response_class=Response, responses=_download_responses("application/octet-stream"))
    @app.head("/firmware/{digest}", include_in_schema=False)
    async def firmware(request: Request, digest: str) -> Response:
        """A firmware image (or any blob) by SHA-256; Range, If-Range, ETag."""
        return download(request.scope, digest, "application/octet-stream")

    @app.get("/envelopes/{digest}", summary="Download a SUIT envelope by SHA-256 (public)",
             response_class=Response, responses=_download_responses(ENVELOPE_MEDIA_TYPE))
    @app.head("/envelopes/{digest}", include_in_schema=False)
    async def envelopes(request: Request, digest: str) -> Response:
        """A SUIT envelope by the SHA-256 of its bytes; Range, If-Range, ETag."""
        return download(request.scope, digest, ENVELOPE_MEDIA_TYPE)

    for router in config.routers:  # every mounted route is authenticated: say so in OpenAPI
        app.include_router(router, dependencies=bearer)
    _documented(app)
    if config.max_requests is not None:
        app.add_middleware(_RequestLimit, limit=config.max_requests)
    app.add_middleware(_Downloads, download=download)  # outside the count: see _Downloads

    def data_writable() -> str | None:
        try:
            store.check_writable()
        except StorageError as e:
            return str(e)
        return None

    # outermost: request ids, metrics and health cover every route, the limit's 503s too
    metrics = config.metrics or Metrics()
    app.add_middleware(Observed, metrics=metrics, checks=(data_writable, *config.readiness))
    if config.contract_log is not None:  # outermost: it sees every answer as sent
        app.add_middleware(ContractCheck, openapi=app.openapi, log=config.contract_log,
                           other_ports=metrics.ports)
    return app


_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["envelope"],
        "properties": {
            "envelope": {"type": "string", "format": "binary",
                         "description": f"the signed SUIT envelope ({ENVELOPE_MEDIA_TYPE})"},
            "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "detached images, each matched to the component whose "
                                     "image-digest it has"},
            "version": {"type": "string", "minLength": 1, "maxLength": MAX_VERSION_TEXT,
                        "description": "the release's version: printable text on one line"},
            "notes": {"type": "string", "minLength": 1, "maxLength": MAX_NOTES,
                      "description": "release notes: printable text, line breaks allowed"}},
        "patternProperties": {"^image-[0-9]{1,4}$": {
            "type": "string", "format": "binary",
            "description": "the detached image of component index N"}},
        "additionalProperties": False}}}}}


def _download_responses(media_type: str) -> dict[int | str, dict[str, Any]]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {"description": "the whole blob (ETag: its SHA-256, immutable)",
              "content": {media_type: binary}},
        206: {"description": "the byte range asked for (Range, If-Range)",
              "content": {media_type: binary}},
        416: {"description": "a Range beyond the blob (no body; Content-Range says its size)"},
        **problem_responses(400, 404, s400="not a SHA-256 digest")}


_DOCS_ASSETS = "/docs/assets"


def _documented(app: FastAPI) -> None:
    """``/openapi.json`` typed (``_typed_openapi``), and Swagger UI at ``/docs`` and ReDoc at
    ``/redoc`` with their scripts served from the package (``fastapi_offline``'s copy of
    swagger-ui-dist and redoc, MIT), never from a CDN: the pages work on a closed network and
    load nothing from elsewhere."""
    app.mount(_DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]),
              name="docs-assets")

    async def swagger(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", ""))
        return _own_assets(get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{app.title}: Swagger UI",
            swagger_js_url=f"{root}{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=None))

    async def redoc(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", ""))
        return _own_assets(get_redoc_html(
            openapi_url=f"{root}/openapi.json", title=f"{app.title}: ReDoc",
            redoc_js_url=f"{root}{_DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{_DOCS_ASSETS}/favicon.png", with_google_fonts=False))

    # plain routes, as FastAPI's own docs routes are (GET and HEAD)
    app.add_route("/docs", swagger, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _typed_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
                "'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
                "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'")
"""What the docs pages may load: from this server only (ReDoc's footer shows its maker's
logo from the maker's CDN; the browser does not fetch it, and ReDoc hides the image)."""


def _own_assets(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _DOCS_POLICY
    return page


_VALIDATION_REF = "#/components/schemas/HTTPValidationError"
_EVERY_ROUTE = problem_responses(500, 503, s503="over the cap of requests in progress; "
                                                "retry after Retry-After seconds")


def _typed_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the errors the app really sends: the 422 FastAPI declares
    for its parameter validation becomes a 400 (``invalid``, the handler, answers 400 problem
    details), every operation may answer 500 and 503 (``_RequestLimit``), and ``Problem`` is
    the schema of every error."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            declared = responses.get("422", {})
            media = declared.get("content", {}).get("application/json", {})
            if media.get("schema", {}).get("$ref") == _VALIDATION_REF:
                del responses["422"]
                responses.setdefault("400", problem_responses(400)[400])
            for status, response in _EVERY_ROUTE.items():
                responses.setdefault(str(status), response)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema


def _text_field(name: str, value: str, limit: int, *, lines: bool) -> str:
    """A form's ``version`` or ``notes``: 1 to ``limit`` characters of printable text (notes
    may have line breaks and tabs); 400 naming the field otherwise."""
    if not 0 < len(value) <= limit:
        raise UploadRefused(400, f"form field {name!r}: expected 1 to {limit} characters, got "
                                 f"{len(value)}")
    allowed = value.replace("\r\n", "\n").replace("\n", "").replace("\t", "") if lines \
        else value
    if not allowed.isprintable() or (not lines and value != value.strip()):
        shape = "" if lines else " on one line, without leading or trailing spaces"
        raise UploadRefused(400, f"form field {name!r}: expected printable text{shape}, got "
                                 f"{value[:40]!r}")
    return value


def _parts(items: list[tuple[str, UploadFile | str]], config: ServerConfig
           ) -> tuple[bytes, list[_Image], ReleaseText]:
    envelope: bytes | None = None
    images: list[_Image] = []
    texts: dict[str, str] = {}
    for name, value in items:
        if not isinstance(value, UploadFile):
            if name not in ("version", "notes"):
                raise UploadRefused(400, f"form field {name[:40]!r} must be a file part "
                                         "(the text fields are 'version' and 'notes')")
            if name in texts:
                raise UploadRefused(400, f"more than one {name!r} field")
            texts[name] = _text_field(name, value, MAX_VERSION_TEXT if name == "version"
                                      else MAX_NOTES, lines=name == "notes")
            continue
        if name == "envelope":
            if envelope is not None:
                raise UploadRefused(400, "more than one 'envelope' part")
            size = _file_size(value.file)
            if size > config.limits.max_envelope_bytes:
                raise UploadRefused(413, f"envelope of {size} bytes is larger than the "
                                         f"{config.limits.max_envelope_bytes} bytes allowed")
            envelope = value.file.read()
            continue
        match = _IMAGE_PART.fullmatch(name)
        if match is None:
            raise UploadRefused(400, f"unexpected part {name[:40]!r}; expected 'envelope', "
                                     "'image' or 'image-<N>'")
        index = int(match.group(1)) if match.group(1) is not None else None
        label = f"image {value.filename or name!r}"[:120]
        images.append(_Image(label, index, value.file, _file_size(value.file)))
    if envelope is None:
        raise UploadRefused(400, "missing the 'envelope' part")
    return envelope, images, ReleaseText(texts.get("version"), texts.get("notes"))

