"""The status tracker's HTTP edge (RFC 9019 §3 status tracker; draft-ietf-suit-report §4).

``create_router(config)`` returns a FastAPI ``APIRouter`` that the CLI mounts on the firmware
server's application (``ServerConfig.routers``), so errors are the server's JSON
``{"error": ...}``. Every call is authenticated with ``Authorization: Bearer <token>`` and
checked by ``auth.Authenticator`` (roles admin, author, operator, device; the bootstrap admin
token, API tokens ``tok_<id>.<secret>``, device credentials ``<device-id>.<secret>``): 401 for
a missing, wrong, expired or revoked credential, 403 for a role that may not call the route.

Routes (docs/tracker.md has the bodies):

- ``POST /api/v1/devices`` (admin): register (a name; optionally the vendor and class IDs);
  returns ``id`` and ``secret`` once.
- ``GET /api/v1/devices?limit=&after=`` (admin, operator), ``GET /api/v1/devices/{id}``
  (admin, operator, or the device).
- ``PUT /api/v1/devices/{id}/inventory`` (the device): vendor/class IDs, components, hardware;
  409 when the vendor or class ID contradicts the registration (or the first inventory).
- ``POST /api/v1/devices/{id}/events`` (the device): a state of ``db.TRANSITIONS``, only for
  the device's current assignment (409 otherwise; ``notified`` is set by the tracker alone).
- ``POST /api/v1/devices/{id}/reports`` (the device): a SUIT_Report in CBOR, decoded strictly
  with ``core.report.decode_report`` (the device is not trusted); bytes and summary are stored
  only while the device works on its current assignment, if the report names the assigned
  release, once per update (409 otherwise: a late, replayed or foreign report).
- ``GET /api/v1/devices/{id}/history?limit=&after=`` (admin, operator, or the device): events
  and reports.

Lists come in pages (keyset pagination, ``page_params``): ``limit`` 1 to 1000 (default 500),
``after`` the opaque cursor ``next`` of the page before; ``next`` is ``null`` on the last page.
- ``POST /api/v1/deployments`` (admin, operator; not author): assign a release (manifest
  digest) to devices; each moves to ``notified``. The latest assignment of a device wins. The
  release must be on the firmware server and the envelope URL is derived from it
  (``release_envelope_url``; an ``envelope_url`` given must be that release's: 422).
- ``GET /api/v1/devices/{id}/update`` (the device): 200 with the pending assignment, 204 when
  there is nothing to do (RFC 9019 client-initiated mode: the device polls).
- ``POST/GET /api/v1/tokens``, ``DELETE /api/v1/tokens/{id}`` (admin): API tokens;
  ``GET /api/v1/whoami`` (anyone authenticated); ``GET /api/v1/audit`` (admin, operator).

Token creation and revocation, device registration and deployments are written to the audit
log (``TrackerDB.record_audit``) with the principal's name and role.

Every request body is bounded before it is parsed. Not here: report signatures (COSE_Sign1 /
COSE_Mac0 around the report), device credential rotation.

A device's reports, events and inventories are rate-limited (``tracker.quotas.RateLimiter``:
429 with ``Retry-After``); what it may keep is bounded by ``TrackerDB.quotas``; a retention
pass runs in the router's lifespan (``retention``). Ids in paths are checked before anything
else (``check_path_ids``), and a body's text must be storable (``_storable_text``); a full disk
is 507 (``storage_refused``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from suitkit.core.numbers import ManifestKey, name_of
from suitkit.core.report import Report, decode_report, reason_name
from suitkit.errors import DecodeError, StorageError, StorageFullError
from suitkit.limits import Limits
from suitkit.tracker.auth import (
    BOOTSTRAP_ADMIN,
    TOKEN_PREFIX,
    Authenticator,
    Principal,
    Refused,
)
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.db import (
    STATES,
    TOKEN_ROLES,
    ComponentEntry,
    DeploymentRefused,
    IdentityRefused,
    Inventory,
    NotAssigned,
    Page,
    TrackerDB,
    TransitionRefused,
    open_db,
)
from suitkit.tracker.notify import MAX_ID, is_record_id
from suitkit.tracker.quotas import Quotas, RateLimiter, retry_after

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "PAGE_PARAMETERS", "REPORT_MEDIA_TYPE", "TrackerConfig",
           "check_path_ids", "create_router", "decode_cursor", "encode_cursor",
           "envelope_url_of", "in_background", "page_params", "release_envelope_url",
           "storage_refused", "summarize_report"]

REPORT_MEDIA_TYPE = "application/suit-report+cbor"
_REPORT_TYPES = frozenset({REPORT_MEDIA_TYPE, "application/octet-stream"})
_MAX_JSON_BYTES = 64 * 1024
_MAX_NAME = 128
_MAX_DETAIL = 1024
_MAX_ID_PART_BYTES = 64
_MAX_DIGEST_BYTES = 64
_MAX_HARDWARE_ENTRIES = 64
_MAX_HARDWARE_KEY = 64
_MAX_HARDWARE_TEXT = 256
_UINT64 = (1 << 64) - 1
_MAX_URL = 2048
_MAX_DEPLOY_DEVICES = 1000
_MAX_DEVICE_ID = 36
_DEVICES = "/api/v1/devices"
DEFAULT_PAGE = 500
MAX_PAGE = 1000
_MAX_CURSOR = 200
_MAX_SEQ = (1 << 31) - 1  # the seq columns are 32-bit integers


_Refused = Refused  # the name this module used before auth.py held it
_log = logging.getLogger(__name__)


# ============================================================================ reports


SUMMARY_URI = 512
"""Characters of ``manifest_uri`` a report's summary keeps (``"truncated": true`` beyond)."""
SUMMARY_NONCE = 64
"""Bytes of the nonce a report's summary keeps."""


def summarize_report(report: Report) -> dict[str, Any]:
    """A JSON summary of a decoded report: result, reason, and where processing failed; of
    bounded size (long text is cut, ``"truncated": true``: the stored bytes hold all)."""
    uri, nonce = report.reference.manifest_uri, report.nonce
    summary: dict[str, Any] = {
        "succeeded": report.succeeded,
        "manifest_uri": uri[:SUMMARY_URI],
        "manifest_digest": {"algorithm": report.reference.manifest_digest.algorithm,
                            "value": report.reference.manifest_digest.value[:64].hex()},
        "nonce": nonce[:SUMMARY_NONCE].hex() if nonce is not None else None,
        "records": len(report.records),
        "failure": None,
    }
    if len(uri) > SUMMARY_URI or (nonce is not None and len(nonce) > SUMMARY_NONCE) \
            or len(report.reference.manifest_digest.value) > 64:
        # the summary is small and of bounded size; the report's bytes, stored once, hold
        # the whole of it (a 64 KiB nonce was stored twice, once as 128 KiB of hex)
        summary["truncated"] = True
    if report.result is not True:
        record = report.result.record
        summary["failure"] = {
            "reason": report.result.reason,
            "reason_name": reason_name(report.result.reason),
            "code": report.result.code,
            "manifest_id": list(record.manifest_id),
            "section": record.manifest_section,
            "section_name": name_of(ManifestKey, record.manifest_section),
            "offset": record.section_offset,
            "component_index": record.component_index,
        }
    return summary


def storage_refused(error: StorageError, message: str) -> _Refused:
    """The answer for a database failure: 507 when the disk is full (the transaction was
    rolled back: nothing of the request was stored), 500 with ``message`` otherwise."""
    if isinstance(error, StorageFullError):
        return _Refused(507, "the tracker's storage is full: nothing of this request was "
                             "stored; try again once an operator has freed space")
    return _Refused(500, message)


# ============================================================================ body checks


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is longer than ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and (not (length.isascii() and length.isdigit())
                               or int(length) > limit):
        raise _Refused(413, f"request body of {length[:20]} bytes is larger than the {limit} "
                            "bytes allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"request body is larger than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


class _BadJson(Exception):
    """Valid for Python's ``json`` but not for RFC 8259 / I-JSON (RFC 7493)."""


def _no_constant(name: str) -> float:
    raise _BadJson(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise _BadJson(f"the number {text[:20]} is out of range")
    return number


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:  # two readers of one body must not see two different documents
            raise _BadJson(f"member {key[:40]!r} appears more than once")
        doc[key] = value
    return doc


async def _json_object(request: Request) -> Mapping[str, Any]:
    """The body as a JSON object: bounded, strict RFC 8259 (no NaN or Infinity, no number
    out of float range: no JSON encoder could write them back) and no duplicate members."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise _Refused(415, "the body must be application/json")
    data = await _body(request, _MAX_JSON_BYTES)
    try:
        doc = json.loads(data, parse_constant=_no_constant, parse_float=_finite,
                         object_pairs_hook=_unique)
    except _BadJson as e:
        raise _Refused(400, f"the body is not valid JSON: {e}") from None
    except (ValueError, RecursionError):
        raise _Refused(400, "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _Refused(400, f"the body must be a JSON object, got {type(doc).__name__}")
    _storable_text(doc)
    return doc


def _storable_text(doc: Mapping[str, Any]) -> None:
    """Refuse (400, naming the member) a string or member name anywhere in ``doc`` that no
    database can store: a NUL (PostgreSQL text) or a lone surrogate (JSON ``"\\ud800"``, which
    has no UTF-8 form and fails when written or answered). Checked once for the whole body,
    so a member that a route stores without a check of its own is covered too. Iterative: a
    deep body must not exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                raise _Refused(400, f"{where or 'the body'}: expected text without NUL "
                                    "characters or lone surrogates")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    raise _Refused(400, f"{where or 'the body'}: a member name holds a NUL "
                                        "character or a lone surrogate")
                stack.append((f"{where}.{key[:40]}" if where else key[:40], item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _is_text(value: str) -> bool:
    return "\x00" not in value and (value.isascii() or _is_utf8(value))


_MAX_PATH_ID = MAX_ID


def check_path_ids(request: Request) -> None:
    """Refuse (400, before authentication and before any query) an id in the path that no
    record can have: device, token and campaign ids are letters, digits and ``-_.~:``, at
    most 64. A NUL (``%00``) made PostgreSQL fail (500); any other control or non-ASCII
    character is refused the same way, on every backend. The tracker's routers depend on it."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and not is_record_id(value, _MAX_PATH_ID):
            raise _Refused(400, f"{name} in the path: expected 1 to {_MAX_PATH_ID} letters, "
                                f"digits or '-_.~:', got {value[:40]!r}")


def _only(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise _Refused(400, f"{where}: unknown member {unknown[0][:40]!r}; expected "
                            f"{', '.join(sorted(allowed))}")


def _text(value: object, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _Refused(400, f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise _Refused(400, f"{where}: {len(value)} characters is over the limit of {limit}")
    # PostgreSQL text cannot hold NUL; a lone surrogate (JSON "\ud800") has no UTF-8 form at all
    if "\x00" in value or not _is_utf8(value):
        raise _Refused(400, f"{where}: expected text without NUL characters or lone surrogates")
    return value


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _uuid(value: object, where: str) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(_text(value, where, 64)))
    except ValueError:
        raise _Refused(400, f"{where}: expected a UUID such as "
                            "'fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe'") from None


def _hex(value: object, where: str, max_bytes: int) -> str:
    text = _text(value, where, 2 * max_bytes)
    try:
        return bytes.fromhex(text).hex()
    except ValueError:
        raise _Refused(400, f"{where}: expected hexadecimal bytes, got {text[:40]!r}") from None


def _component(value: object, where: str, limits: Limits) -> ComponentEntry:
    if not isinstance(value, dict):
        raise _Refused(400, f"{where}: expected an object {{id, sequence, digest}}")
    _only(value, {"id", "sequence", "digest"}, where)
    parts = value.get("id")
    if (not isinstance(parts, list) or not parts
            or len(parts) > limits.max_component_id_parts):
        raise _Refused(400, f"{where}.id: expected a list of 1 to "
                            f"{limits.max_component_id_parts} hex strings")
    cid = tuple(_hex(p, f"{where}.id[{i}]", _MAX_ID_PART_BYTES) for i, p in enumerate(parts))
    sequence = value.get("sequence")
    if sequence is not None and (type(sequence) is not int or not 0 <= sequence <= _UINT64):
        raise _Refused(400, f"{where}.sequence: expected an unsigned 64-bit integer")
    digest = value.get("digest")
    return ComponentEntry(cid, sequence,
                          _hex(digest, f"{where}.digest", _MAX_DIGEST_BYTES)
                          if digest is not None else None)


def _hardware(value: object) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _MAX_HARDWARE_ENTRIES:
        raise _Refused(400, f"hardware: expected an object of at most {_MAX_HARDWARE_ENTRIES} "
                            "facts")
    for key, fact in value.items():
        _text(key, "hardware key", _MAX_HARDWARE_KEY)
        if isinstance(fact, str):
            _text(fact, f"hardware.{key}", _MAX_HARDWARE_TEXT)
        elif fact is not None and not isinstance(fact, bool | int | float):
            raise _Refused(400, f"hardware.{key}: expected a string, number, boolean or null")
    return dict(value)


def _inventory(doc: Mapping[str, Any], limits: Limits) -> Inventory:
    _only(doc, {"vendor_id", "class_id", "components", "hardware"}, "inventory")
    components = doc.get("components", [])
    if not isinstance(components, list) or len(components) > limits.max_components:
        raise _Refused(400, f"components: expected a list of at most {limits.max_components} "
                            "components")
    return Inventory(
        vendor_id=_uuid(doc.get("vendor_id"), "vendor_id"),
        class_id=_uuid(doc.get("class_id"), "class_id"),
        components=tuple(_component(c, f"components[{i}]", limits)
                         for i, c in enumerate(components)),
        hardware=_hardware(doc.get("hardware")))


def envelope_url_of(value: object, schemes: tuple[str, ...]) -> str | None:
    """A request's ``envelope_url``: ``None`` when left out, else a URL of ``schemes``
    (``("http", "https", ...)``) without spaces; ``Refused`` (400) otherwise."""
    if value is None:
        return None
    url = _text(value, "envelope_url", _MAX_URL)
    if not url.lower().startswith(tuple(f"{scheme}://" for scheme in schemes)) or any(
            c.isspace() for c in url):
        shown = ", ".join(f"{scheme}://" for scheme in schemes)
        raise _Refused(400, f"envelope_url: expected a URL starting with {shown}")
    return url


async def release_envelope_url(config: TrackerConfig, request: Request, release: str,
                               url: str | None) -> str:
    """The envelope URL a deployment or campaign of ``release`` hands to devices.

    With the firmware server's releases (``TrackerConfig.releases``), ``release`` must be an
    uploaded release (422 otherwise): its URL is derived (``public_url`` or the URL the request
    came to, then ``/envelopes/<sha256 of its envelope>``), and an ``envelope_url`` given anyway
    must end in that path (a mirror or CDN may serve it; it may not name another release's
    envelope: 422). Without them, ``envelope_url`` is required and taken as given.
    """
    if config.releases is None:
        if url is None:
            raise _Refused(400, "envelope_url: expected the URL of the release's envelope (this "
                                "tracker has no firmware server to derive it from)")
        return url
    try:
        known = await run_in_threadpool(config.releases, release)
    except StorageError:
        raise _Refused(500, "the tracker could not read the firmware server's releases"
                       ) from None
    if known is None:
        raise _Refused(422, f"release: {release} is not on the firmware server; upload it "
                            "first (suitkit upload) and name it by its id, the manifest digest")
    path = f"/envelopes/{known.envelope_sha256}"
    if url is None:
        base = config.public_url or str(request.base_url)
        return base.rstrip("/") + path
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Refused(400, f"envelope_url: {url[:100]!r} is not a URL") from None
    if parts.query or parts.fragment or not parts.path.endswith(path):
        raise _Refused(422, f"envelope_url: {url[:100]} is not the envelope of release "
                            f"{release}; expected a URL ending in {path} (or leave "
                            "envelope_url out: the server derives it)")
    return url


def _deployment(doc: Mapping[str, Any]) -> tuple[str, str | None, list[str]]:
    _only(doc, {"release", "envelope_url", "devices"}, "deployment")
    release = _hex(doc.get("release"), "release", _MAX_DIGEST_BYTES)
    if not release:
        raise _Refused(400, "release: expected the manifest digest in hex")
    url = envelope_url_of(doc.get("envelope_url"), ("http", "https", "coap"))
    devices = doc.get("devices")
    if (not isinstance(devices, list) or not devices
            or len(devices) > _MAX_DEPLOY_DEVICES):
        raise _Refused(400, f"devices: expected a list of 1 to {_MAX_DEPLOY_DEVICES} device ids")
    ids = [_text(d, f"devices[{i}]", _MAX_DEVICE_ID) for i, d in enumerate(devices)]
    return release, url, ids


# ============================================================================ pages


def encode_cursor(kind: str, *key: Any) -> str:
    """An opaque cursor for the sort key ``key`` of a list ``kind`` (base64url of JSON)."""
    text = json.dumps([kind, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> list[Any]:
    """The key in a cursor of ``encode_cursor(kind, ...)`` whose items have ``types``;
    ``Refused`` (400) for anything else."""
    bad = _Refused(400, f"after: expected the cursor 'next' of a previous page of this list, "
                        f"got {cursor[:40]!r}")
    if len(cursor) > _MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw.decode(), parse_constant=_no_constant)
    except (ValueError, binascii.Error, _BadJson, RecursionError):
        raise bad from None
    if (not isinstance(doc, list) or len(doc) != len(types) + 1 or doc[0] != kind
            or not all(type(v) is t for v, t in zip(doc[1:], types, strict=True))):
        raise bad
    if any(isinstance(v, str) and ("\x00" in v or not _is_utf8(v)) for v in doc[1:]):
        raise bad
    return doc[1:]


PAGE_PARAMETERS: dict[str, Any] = {"parameters": [
    {"name": "limit", "in": "query", "required": False,
     "description": f"items per page, 1 to {MAX_PAGE}",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
    {"name": "after", "in": "query", "required": False,
     "description": "the cursor 'next' of the page before (opaque)",
     "schema": {"type": "string"}},
]}
"""``openapi_extra`` of a paged route (``page_params`` reads the two parameters itself, so
that a bad one gets a message with the range and what was seen)."""


def page_params(request: Request, kind: str, types: tuple[type, ...]
                ) -> tuple[int, list[Any] | None, str]:
    """The query's ``limit`` (1 to ``MAX_PAGE``, default ``DEFAULT_PAGE``), the key in its
    ``after`` cursor (``None`` for the first page) and the cursor as given; 400 otherwise."""
    text = request.query_params.get("limit")
    limit = DEFAULT_PAGE
    if text is not None:
        digits = text.strip()
        limit = int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 8 else 0
        if not 1 <= limit <= MAX_PAGE:
            raise _Refused(400, f"limit: expected a whole number from 1 to {MAX_PAGE}, got "
                                f"{text[:20]!r}")
    after = request.query_params.get("after")
    return limit, None if after is None else decode_cursor(after, kind, types), after or ""


def _created_id_key(key: list[Any] | None, cursor: str) -> tuple[datetime, str] | None:
    if key is None:
        return None
    try:
        created = datetime.fromisoformat(key[0])
    except ValueError:
        created = None
    if created is None or created.tzinfo is not None or len(key[1]) > _MAX_DEVICE_ID:
        raise _Refused(400, f"after: expected the cursor 'next' of a previous page of this "
                            f"list, got {cursor[:40]!r}")
    return created, key[1]


def _paged(key: str, page: Page, cursor: Callable[[tuple[Any, ...]], str],
           **extra: Any) -> JSONResponse:
    return JSONResponse({**extra, key: page.items,
                         "next": cursor(page.next) if page.next is not None else None})


# ============================================================================ router


def retention(tracker: TrackerDB, quotas: Quotas
              ) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """The router's lifespan: a retention pass (``TrackerDB.prune``, bounded) in a worker
    thread every ``quotas.retention_interval`` seconds while the application runs, the first
    one soon after the start; no operator needed. A failed pass is logged and retried."""

    @asynccontextmanager
    async def retaining(_: Any) -> AsyncIterator[None]:
        interval = quotas.retention_interval
        if interval <= 0 or (quotas.history_days <= 0 and quotas.report_days <= 0):
            yield
            return

        async def loop() -> None:
            await asyncio.sleep(min(interval, 60.0))
            while True:
                try:
                    deleted = await run_in_threadpool(tracker.prune)
                    if any(deleted.values()):
                        _log.info("retention deleted %s", deleted)
                except StorageError as e:
                    _log.warning("retention pass failed (retried in %g s): %s", interval, e)
                await asyncio.sleep(interval)

        async with in_background(loop()):
            yield

    return retaining


@asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``work`` as a task while the block runs (a router's lifespan); cancel it after."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown, wrong, expired or revoked credential"},
    403: {"description": "the credential's role may not do this"},
}
_MAX_EXPIRY_DAYS = 366
_DEFAULT_EXPIRY_DAYS = 90


def _json_body(properties: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a JSON object body (the routes parse bodies themselves)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "properties": properties,
                   "additionalProperties": False}}}}}


def create_router(config: TrackerConfig, db: TrackerDB | None = None,
                  authenticator: Authenticator | None = None) -> APIRouter:
    """The tracker's routes over ``db`` (default: ``open_db(config.db_url)``), checked by
    ``authenticator`` (default: one over ``config`` and ``db``).

    Raises:
        StorageError: the database cannot be opened.
    """
    tracker = db if db is not None else open_db(config.db_url, clock=config.clock,
                                                 quotas=config.quotas)
    auth = authenticator if authenticator is not None else Authenticator(config, tracker)
    limiter = RateLimiter(config.quotas)
    router = APIRouter(tags=["status tracker"], responses=_AUTH_RESPONSES,
                       dependencies=[Depends(check_path_ids)],
                       lifespan=retention(tracker, config.quotas))

    def throttle(device_id: str, kind: str) -> None:
        """429 with ``Retry-After`` when the device is over its rate for ``kind``."""
        wait = limiter.take(device_id, kind)
        if wait is not None:
            after = retry_after(wait)
            raise HTTPException(429, f"too many {kind} from this device: at most "
                                     f"{config.quotas.rate(kind):g} a minute; retry in {after} s",
                                headers={"Retry-After": after})

    async def admin(request: Request) -> Principal:
        return await auth.require(request, "admin")

    async def device_or_staff(request: Request, device_id: str) -> Principal:
        return await auth.require_device_or(request, device_id, "admin", "operator")

    async def device_itself(request: Request, device_id: str) -> Principal:
        return await auth.require_device(request, device_id)

    async def audit(who: Principal, action: str, target: str, detail: str = "") -> None:
        await storage(tracker.record_audit, who.name, who.role, action, target, detail)

    async def storage(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(function, *args)
        except StorageError as e:
            raise storage_refused(
                e, "the tracker could not store or read its database") from None

    @router.post(_DEVICES, status_code=201, summary="Register a device (admin)",
                 openapi_extra=_json_body({"name": {"type": "string"},
                                           "vendor_id": {"type": "string"},
                                           "class_id": {"type": "string"}}))
    async def register(request: Request) -> Response:
        """Register a device (admin); the answer holds its secret, shown this once."""
        who = await admin(request)
        doc = await _json_object(request)
        _only(doc, {"name", "vendor_id", "class_id"}, "device")
        name = _text(doc.get("name", ""), "name", _MAX_NAME)
        vendor_id = _uuid(doc.get("vendor_id"), "vendor_id")
        class_id = _uuid(doc.get("class_id"), "class_id")
        device_id, secret = await storage(functools.partial(
            tracker.register, name, vendor_id=vendor_id, class_id=class_id))
        await audit(who, "device.register", device_id, f"name {name!r}"
                    + (f", vendor {vendor_id}" if vendor_id else "")
                    + (f", class {class_id}" if class_id else ""))
        return JSONResponse({"id": device_id, "secret": secret,
                             "token": f"{device_id}.{secret}"}, status_code=201,
                            headers={"Cache-Control": "no-store"})

    @router.get(_DEVICES, summary="List devices (admin, operator)",
                openapi_extra=PAGE_PARAMETERS)
    async def list_devices(request: Request, components: bool = False) -> Response:
        """A page of devices, oldest first (admin, operator); ``?components=true``: with
        installed components. ``next`` is the cursor for ``?after=`` (``null``: the end)."""
        await auth.require(request, "admin", "operator")
        limit, key, after = page_params(request, "devices", (str, str))
        start = _created_id_key(key, after)
        page = await storage(functools.partial(tracker.devices_page, components=components,
                                               limit=limit, after=start))
        return _paged("devices", page,
                      lambda k: encode_cursor("devices", k[0].isoformat(), k[1]))

    @router.get(f"{_DEVICES}/{{device_id}}",
                summary="One device with its inventory (admin, operator, the device)")
    async def get_device(request: Request, device_id: str) -> Response:
        """One device with its inventory (admin, operator, or the device itself)."""
        await device_or_staff(request, device_id)
        doc = await storage(tracker.device, device_id)
        if doc is None:
            raise _Refused(404, f"no device {device_id[:40]!r}")
        return JSONResponse(doc)

    @router.put(f"{_DEVICES}/{{device_id}}/inventory",
                summary="Replace the device's inventory (the device itself)",
                openapi_extra=_json_body({"vendor_id": {"type": "string"},
                                          "class_id": {"type": "string"},
                                          "components": {"type": "array"},
                                          "hardware": {"type": "object"}}))
    async def put_inventory(request: Request, device_id: str) -> Response:
        """Replace the device's inventory (the device only)."""
        await device_itself(request, device_id)
        throttle(device_id, "inventory")
        inventory = _inventory(await _json_object(request), config.limits)
        try:
            await run_in_threadpool(tracker.set_inventory, device_id, inventory)
        except IdentityRefused as e:
            raise _Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the inventory") from None
        return JSONResponse(await storage(tracker.device, device_id))

    @router.post(f"{_DEVICES}/{{device_id}}/events", status_code=201,
                 summary="Report a new update state (the device itself)",
                 openapi_extra=_json_body({"state": {"type": "string", "enum": list(STATES)},
                                           "detail": {"type": "string"}}))
    async def post_event(request: Request, device_id: str) -> Response:
        """Move the device's update to a new state (the device only)."""
        await device_itself(request, device_id)
        throttle(device_id, "events")
        doc = await _json_object(request)
        _only(doc, {"state", "detail"}, "event")
        state = doc.get("state")
        if state not in STATES:
            raise _Refused(400, f"state: expected one of {', '.join(STATES)}, got "
                                f"{str(state)[:40]!r}")
        detail = _text(doc.get("detail", ""), "detail", _MAX_DETAIL)
        try:
            event = await run_in_threadpool(functools.partial(
                tracker.add_event, device_id, state, detail, by_device=True))
        except (TransitionRefused, NotAssigned) as e:
            raise _Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the event") from None
        return JSONResponse(event, status_code=201)

    @router.post(f"{_DEVICES}/{{device_id}}/reset", status_code=201,
                 summary="End a device's stuck update as failed (admin, operator)",
                 openapi_extra=_json_body({"reason": {"type": "string"}}))
    async def reset(request: Request, device_id: str) -> Response:
        """A device that stopped reporting in the middle of an update (lost, broken, wiped)
        holds its assignment and its campaign's wave. An operator ends that update as
        ``failed`` with the reason; the device's next state report is then refused (409) and
        it starts over at its next assignment (admin, operator)."""
        who = await device_or_staff(request, device_id)
        if who.role not in ("admin", "operator"):
            raise _Refused(403, "only an admin or operator may reset a device's update")
        doc = await _json_object(request)
        _only(doc, {"reason"}, "reset")
        reason = _text(doc.get("reason", ""), "reason", _MAX_DETAIL)
        detail = f"reset by {who.name}" + (f": {reason}" if reason else "")
        try:
            event = await run_in_threadpool(tracker.add_event, device_id, "failed", detail)
        except TransitionRefused as e:
            shown = e.current if e.current is not None else "no state yet"
            raise _Refused(409, f"device {device_id} is not in the middle of an update (state "
                                f"{shown}); there is nothing to reset") from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the event") from None
        await audit(who, "device.reset", device_id, detail)
        return JSONResponse(event, status_code=201)

    @router.post(f"{_DEVICES}/{{device_id}}/reports", status_code=201,
                 summary="Send a SUIT report in CBOR (the device itself)",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     REPORT_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})
    async def post_report(request: Request, device_id: str) -> Response:
        """Store a SUIT report (CBOR) after strict decoding (the device only)."""
        await device_itself(request, device_id)
        throttle(device_id, "reports")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in _REPORT_TYPES:
            raise _Refused(415, f"a report must be {REPORT_MEDIA_TYPE} or "
                                "application/octet-stream")
        raw = await _body(request, config.max_report_bytes)
        try:
            report = decode_report(raw, limits=config.limits,
                                   max_bytes=config.max_report_bytes)
        except DecodeError as e:
            raise _Refused(400, f"the report is malformed: {e}") from None
        release = report.reference.manifest_digest.value.hex()
        try:
            stored = await run_in_threadpool(functools.partial(
                tracker.add_report, device_id, raw, summarize_report(report), release=release))
        except NotAssigned as e:
            raise _Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the report") from None
        return JSONResponse(stored, status_code=201)

    @router.get(f"{_DEVICES}/{{device_id}}/history",
                summary="A device's events and reports (admin, operator, the device)",
                openapi_extra=PAGE_PARAMETERS)
    async def history(request: Request, device_id: str) -> Response:
        """A page of the device's events and report summaries, in order (by ``seq``; admin,
        operator, or the device itself). ``next`` is the cursor for ``?after=``."""
        await device_or_staff(request, device_id)
        limit, key, after = page_params(request, "history", (int,))
        if key is not None and not 0 <= key[0] <= _MAX_SEQ:
            raise _Refused(400, f"after: expected the cursor 'next' of a previous page of "
                                f"this list, got {after[:40]!r}")
        page = await storage(functools.partial(tracker.history_page, device_id, limit=limit,
                                               after=key[0] if key is not None else 0))
        return _paged("history", page, lambda k: encode_cursor("history", k[0]),
                      id=device_id)

    @router.get(f"{_DEVICES}/{{device_id}}/update",
                summary="The release assigned to the device, or 204 (the device itself)")
    async def get_update(request: Request, device_id: str) -> Response:
        """The release assigned to the device, or 204 (the device only)."""
        await device_itself(request, device_id)
        pending = await storage(tracker.pending_update, device_id)
        if pending is None:
            return Response(status_code=204)
        return JSONResponse(pending, headers={"Cache-Control": "no-store"})

    @router.post("/api/v1/deployments", status_code=201,
                 summary="Deploy a release to devices (admin, operator)",
                 openapi_extra=_json_body({"release": {"type": "string"},
                                           "envelope_url": {"type": "string"},
                                           "devices": {"type": "array",
                                                       "items": {"type": "string"}}}))
    async def deploy(request: Request) -> Response:
        """Assign a release to devices; each is notified (admin, operator; not author)."""
        who = await auth.require(request, "admin", "operator")
        release, given, ids = _deployment(await _json_object(request))
        url = await release_envelope_url(config, request, release, given)
        try:
            devices = await run_in_threadpool(tracker.deploy, release, url, ids)
        except DeploymentRefused as e:
            raise _Refused(404 if e.unknown else 409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the deployment") from None
        await audit(who, "deployment.create", f"release {release}",
                    f"{len(devices)} device(s): {', '.join(d['id'] for d in devices)[:400]}")
        return JSONResponse({"release": release, "envelope_url": url, "devices": devices},
                            status_code=201)

    _token_routes(router, config, tracker, auth)
    from suitkit.tracker.campaign_api import create_campaign_router  # noqa: PLC0415 - a cycle

    router.include_router(create_campaign_router(config, tracker, auth))
    return router


def _token_routes(router: APIRouter, config: TrackerConfig, tracker: TrackerDB,
                  auth: Authenticator) -> None:
    """API tokens (admin), ``whoami`` (anyone authenticated) and the audit log."""

    async def storage(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(function, *args)
        except StorageError as e:
            raise storage_refused(
                e, "the tracker could not store or read its database") from None

    @router.post("/api/v1/tokens", status_code=201, tags=["tokens"],
                 summary="Create an API token (admin); its secret is shown once",
                 openapi_extra=_json_body({
                     "name": {"type": "string"},
                     "role": {"type": "string", "enum": list(TOKEN_ROLES)},
                     "expires_in_days": {"type": "integer", "minimum": 1,
                                         "maximum": _MAX_EXPIRY_DAYS,
                                         "default": _DEFAULT_EXPIRY_DAYS}}))
    async def create_token(request: Request) -> Response:
        """Create an API token with a role (admin, author or operator) and an expiry (default
        90 days, at most a year). The answer holds ``token`` once; only its hash is kept."""
        who = await auth.require(request, "admin")
        doc = await _json_object(request)
        _only(doc, {"name", "role", "expires_in_days"}, "token")
        name = _text(doc.get("name"), "name", _MAX_NAME).strip()
        if not name:
            raise _Refused(400, "name: expected a non-empty name for the token")
        if name == BOOTSTRAP_ADMIN:  # audit entries and four-eyes tell principals by name
            raise _Refused(400, f"name: {BOOTSTRAP_ADMIN!r} is reserved for the bootstrap "
                                "admin token; choose another name")
        role = doc.get("role")
        if role not in TOKEN_ROLES:
            raise _Refused(400, f"role: expected one of {', '.join(TOKEN_ROLES)}, got "
                                f"{str(role)[:40]!r}")
        days = doc.get("expires_in_days", _DEFAULT_EXPIRY_DAYS)
        if type(days) is not int or not 1 <= days <= _MAX_EXPIRY_DAYS:
            raise _Refused(400, f"expires_in_days: expected a whole number from 1 to "
                                f"{_MAX_EXPIRY_DAYS}, got {str(days)[:20]}")
        expires = config.clock() + timedelta(days=days)
        token_id, secret = await storage(tracker.create_token, name, role, expires, who.name)
        await audit_entry(who, "token.create", token_id, f"name {name!r}, role {role}, "
                                                         f"expires in {days} days")
        doc_out = await storage(tracker.token, token_id)
        return JSONResponse({**doc_out, "token": f"{TOKEN_PREFIX}{token_id}.{secret}"},
                            status_code=201, headers={"Cache-Control": "no-store"})

    @router.get("/api/v1/tokens", tags=["tokens"], summary="List API tokens (admin)")
    async def list_tokens(request: Request) -> Response:
        """Every API token: id, name, role, dates; never a secret or its hash."""
        await auth.require(request, "admin")
        return JSONResponse({"tokens": await storage(tracker.tokens)})

    @router.delete("/api/v1/tokens/{token_id}", status_code=204, tags=["tokens"],
                   summary="Revoke an API token (admin)")
    async def revoke_token(request: Request, token_id: str) -> Response:
        """Revoke the token: from now on it gets 401 "has been revoked"."""
        who = await auth.require(request, "admin")
        token_id = token_id.removeprefix(TOKEN_PREFIX)
        if not await storage(tracker.revoke_token, token_id):
            raise _Refused(404, f"no token {token_id[:40]!r}")
        await audit_entry(who, "token.revoke", token_id)
        return Response(status_code=204)

    @router.get("/api/v1/whoami", tags=["tokens"],
                summary="Who the credential belongs to (any credential)")
    async def whoami(request: Request) -> Response:
        """The caller's role and name (and token or device id)."""
        who = await auth.principal(request)
        return JSONResponse({"role": who.role, "name": who.name, "token_id": who.token_id,
                             "device_id": who.device_id})

    @router.get("/api/v1/audit", tags=["audit"], summary="The audit log (admin, operator)")
    async def audit_log(request: Request, limit: int = 200) -> Response:
        """The latest audit entries, newest first (``limit`` 1 to 1000)."""
        await auth.require(request, "admin", "operator")
        if not 1 <= limit <= 1000:
            raise _Refused(400, f"limit: expected 1 to 1000, got {limit}")
        return JSONResponse({"entries": await storage(tracker.audit_log, limit)})

    async def audit_entry(who: Principal, action: str, target: str, detail: str = "") -> None:
        await storage(tracker.record_audit, who.name, who.role, action, target, detail)
