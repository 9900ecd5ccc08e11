"""The status tracker's JSON API over HTTP (RFC 9019 §3 status tracker; draft-ietf-suit-report
§4): only translating requests to service calls (``tracker.service.TrackerDB``) and answers back.

``create_api_router(config, tracker, auth)`` returns a FastAPI ``APIRouter``;
``edges.create_router`` mounts it with the campaign routes, and the CLI mounts that on the
firmware server's application (``ServerConfig.routers``), so errors are the server's
problem details (``suitkit.problems``); the bodies and answers are typed in ``/openapi.json``
by ``tracker.schemas``. Every call is authenticated with ``Authorization: Bearer <token>`` and
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
- ``POST /api/v1/devices/{id}/events`` (the device): a state of ``model.TRANSITIONS``, only for
  the device's current assignment (409 otherwise; ``notified`` is set by the tracker alone).
- ``POST /api/v1/devices/{id}/reports`` (the device): a SUIT_Report in CBOR, decoded strictly
  with ``core.report.decode_report`` (the device is not trusted), or signed (COSE_Sign1 /
  COSE_Mac0 around it, ``application/suit-report+cose``, report §8) and checked against the
  device's registered report key (403 otherwise); bytes and summary are stored only while the
  device works on its current assignment, if the report names the assigned release and, when
  signed or required to be (``TrackerConfig.signed_reports``), the nonce issued with it, once
  per update (409 otherwise: a late, replayed or foreign report, an unknown or expired nonce).
- ``GET /api/v1/devices/{id}/capabilities`` (admin, operator, author, the device): its
  SUIT_Capability_Report (report §6) as JSON or, ``?format=cbor``, as sent.
- ``PUT /api/v1/devices/{id}/report-key`` (admin): register or remove its report key.
- ``GET /api/v1/devices/{id}/history?limit=&after=`` (admin, operator, or the device): events
  and reports.
- ``POST /api/v1/devices/{id}/health`` (the device): what it says of the health of the release
  it confirmed last (``{release, status, window, checks, failures, crashes, records,
  detail}``, each bounded: ``_health``); 409 for another release. The answer's ``rollback``
  is true when the tracker tells the device to roll the release back (found unhealthy inside
  its campaign's health window; the check-in answer says it too: ``rollback``).
  ``GET /api/v1/devices/{id}/health`` (admin, operator, or the device): the latest ones.

Lists come in pages (keyset pagination, ``page_params``): ``limit`` 1 to 1000 (default 500),
``after`` the opaque cursor ``next`` of the page before; ``next`` is ``null`` on the last page.
- ``POST /api/v1/deployments`` (admin, operator; not author): assign a release (manifest
  digest) to devices; each moves to ``notified``. The latest assignment of a device wins. The
  release must be on the firmware server and the envelope URL is derived from it
  (``release_envelope_url``; an ``envelope_url`` given must be that release's: 422).
- ``GET /api/v1/devices/{id}/update`` (the device): 200 with the pending assignment, 204 when
  there is nothing to do (RFC 9019 client-initiated mode: the device polls).
- ``POST /api/v1/devices/{id}/checkin`` (the device): the poll in one request (the device's
  inventory digest, the whole inventory only when it changed or the answer asked for it) →
  the pending release or ``{"release": null}``, the state, ``send_inventory``, ``poll_after``
  (``TrackerDB.check_in``: one read; no write when nothing changed). A plain Starlette route
  with its body checked by hand (``checkin``): the request every device sends at every poll
  does without FastAPI's dependency resolution.
- ``GET /api/v1/classes?limit=&after=`` (admin, operator, author): device classes by name;
  ``PUT /api/v1/classes/{class_id}`` (admin, operator; audited): name one (``tracker.classes``:
  422 when the names contradict the IDs' derivation from the vendor domain).
- ``POST/GET /api/v1/tokens``, ``DELETE /api/v1/tokens/{id}`` (admin): API tokens;
  ``GET /api/v1/whoami`` (anyone authenticated); ``GET /api/v1/audit`` (admin, operator).

Token creation and revocation, device registration and deployments are written to the audit
log (``TrackerDB.record_audit``) with the principal's name and role.

Every request body is bounded before it is parsed. Not here: encrypted reports
(COSE_Encrypt0), device credential rotation.

A device's reports, events and inventories are rate-limited (``tracker.quotas.RateLimiter``:
429 with ``Retry-After``); what it may keep is bounded by ``TrackerDB.quotas``; a retention
pass runs in the router's lifespan (``retention``). Ids in paths are checked before anything
else (``web.check_path_ids``), and a body's text must be storable (``web.json_object``); a full
disk is 507 (``web.storage_refused``). Deliberately not here: the rules (``tracker.service``),
SQL (``tracker.store``), the helpers other HTTP edges share (``tracker.web``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from suitkit.core import crypto
from suitkit.core.numbers import ManifestKey, name_of
from suitkit.core.report import (
    SIGNED_REPORT_MEDIA_TYPE,
    Report,
    SignedReport,
    capability_json,
    decode_capability_report,
    decode_report,
    encode_capability_report,
    open_signed_report,
    reason_name,
)
from suitkit.errors import (
    AuthenticationError,
    DecodeError,
    KeyMaterialError,
    PolicyError,
    StorageError,
    SuitError,
)
from suitkit.limits import Limits
from suitkit.problems import problem_responses
from suitkit.tracker.auth import (
    BOOTSTRAP_ADMIN,
    TOKEN_PREFIX,
    WANT_BEARER,
    Authenticator,
    Principal,
    Refused,
)
from suitkit.tracker.campaigns import check_tags
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.model import (
    HEALTH_STATUSES,
    MAX_CAPABILITY_BYTES,
    MAX_INVENTORY_DIGEST,
    MAX_RECIPIENT_KEY_TEXT,
    MAX_RECIPIENT_KEYS,
    MAX_REPORT_KEY_TEXT,
    MAX_TOKEN_ID,
    MAX_VENDOR_DOMAIN,
    MAX_VERSION_PARTS,
    STATES,
    TOKEN_ROLES,
)
from suitkit.tracker.quotas import Quotas, RateLimiter, retry_after
from suitkit.tracker.schemas import (
    AuditLog,
    CapabilitiesAnswer,
    CheckinAnswer,
    CheckinBody,
    ClassBody,
    ClassPage,
    Deployment,
    DeploymentBody,
    Device,
    DeviceClass,
    DeviceCreated,
    DevicePage,
    DeviceRegistration,
    Event,
    EventBody,
    HealthAnswer,
    HealthBody,
    HealthList,
    History,
    InventoryBody,
    PendingUpdate,
    ReportKeyAnswer,
    ReportKeyBody,
    ResetBody,
    StoredReport,
    TokenBody,
    TokenCreated,
    TokenList,
    Whoami,
    json_body,
)
from suitkit.tracker.service import (
    DEVICE_SORTS,
    MAX_HEALTH_RECORDS,
    MAX_HEALTH_WINDOW,
    CampaignRefused,
    ClassRefused,
    ComponentEntry,
    DeploymentRefused,
    DeviceQuery,
    HealthRecord,
    HealthReport,
    IdentityRefused,
    Inventory,
    NotAssigned,
    TrackerDB,
    TransitionRefused,
)
from suitkit.tracker.web import (
    DEVICE_API,
    MAX_DEVICE_ID,
    MAX_DIGEST_BYTES,
    PAGE_PARAMETERS,
    PAGE_QUERY,
    check_path_ids,
    check_query,
    created_id_key,
    encode_cursor,
    envelope_url_of,
    flag_param,
    hex_member,
    in_background,
    json_object,
    list_param,
    list_parameters,
    moment_param,
    only_members,
    page_params,
    paged,
    query_parameter,
    read_body,
    release_envelope_url,
    serve_device_api,
    storage_refused,
    text_member,
    uuid_member,
    want_total,
)

__all__ = ["DEVICE_ROUTES", "REPORT_MEDIA_TYPE", "create_api_router", "retention",
           "summarize_report"]

REPORT_MEDIA_TYPE = "application/suit-report+cbor"
_REPORT_TYPES = frozenset({REPORT_MEDIA_TYPE, "application/octet-stream"})
_MAX_NAME = 128
_MAX_DETAIL = 1024
_MAX_ID_PART_BYTES = 64
_MAX_HARDWARE_ENTRIES = 64
_MAX_HARDWARE_KEY = 64
_MAX_HARDWARE_TEXT = 256
_UINT64 = (1 << 64) - 1
_INT64 = (-(1 << 63), (1 << 63) - 1)
_MAX_DEPLOY_DEVICES = 1000
DEVICE_ROUTES = frozenset({("POST", "/checkin"), ("GET", "/update"), ("PUT", "/inventory"),
                           ("POST", "/events"), ("POST", "/reports"), ("POST", "/health")})
"""The routes a device calls, served under ``web.DEVICE_API`` too (``serve_device_api``);
the push edge adds ``GET /notifications``."""
_DEVICES = "/api/v1/devices"
_MAX_SEQ = (1 << 31) - 1  # the seq columns are 32-bit integers
_CHECKIN_THREADS = 4
"""Check-ins whose database work runs at once in one process (the rest wait their turn):
fewer than the connection pool holds (SQLAlchemy's default 5), so that no check-in opens and
closes an overflow connection (16 threads did: a PostgreSQL connection made per request)."""

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


# ============================================================================ body checks


def _component(value: object, where: str, limits: Limits) -> ComponentEntry:
    if not isinstance(value, dict):
        raise Refused(400, f"{where}: expected an object {{id, sequence, digest, version}}")
    only_members(value, {"id", "sequence", "digest", "version"}, where)
    parts = value.get("id")
    if (not isinstance(parts, list) or not parts
            or len(parts) > limits.max_component_id_parts):
        raise Refused(400, f"{where}.id: expected a list of 1 to "
                           f"{limits.max_component_id_parts} hex strings")
    cid = tuple(hex_member(p, f"{where}.id[{i}]", _MAX_ID_PART_BYTES) for i, p in enumerate(parts))
    sequence = value.get("sequence")
    if sequence is not None and (type(sequence) is not int or not 0 <= sequence <= _UINT64):
        raise Refused(400, f"{where}.sequence: expected an unsigned 64-bit integer")
    digest = value.get("digest")
    version = value.get("version")
    if version is not None and (
            not isinstance(version, list) or not 1 <= len(version) <= MAX_VERSION_PARTS
            or any(type(v) is not int or not _INT64[0] <= v <= _INT64[1] for v in version)):
        # update-management §4.4: SUIT_Parameter_Version's [+int]
        raise Refused(400, f"{where}.version: expected a list of 1 to {MAX_VERSION_PARTS} "
                           "64-bit integers such as [1, 2, 0]")
    return ComponentEntry(cid, sequence,
                          hex_member(digest, f"{where}.digest", MAX_DIGEST_BYTES)
                          if digest is not None else None,
                          tuple(version) if version is not None else None)


def _hardware(value: object) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _MAX_HARDWARE_ENTRIES:
        raise Refused(400, f"hardware: expected an object of at most {_MAX_HARDWARE_ENTRIES} "
                           "facts")
    for key, fact in value.items():
        text_member(key, "hardware key", _MAX_HARDWARE_KEY)
        if isinstance(fact, str):
            text_member(fact, f"hardware.{key}", _MAX_HARDWARE_TEXT)
        elif fact is not None and not isinstance(fact, bool | int | float):
            raise Refused(400, f"hardware.{key}: expected a string, number, boolean or null")
    return dict(value)


def _capabilities(value: object, limits: Limits) -> bytes:
    """The inventory's ``capabilities``: base64 of a SUIT_Capability_Report (report §6),
    decoded strictly and bounded (``MAX_CAPABILITY_BYTES``); ``b""`` when left out."""
    if value is None:
        return b""
    text = text_member(value, "capabilities", 2 * MAX_CAPABILITY_BYTES)
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise Refused(400, "capabilities: expected base64 of a CBOR SUIT_Capability_Report"
                      ) from None
    try:
        decode_capability_report(raw, limits=limits, max_bytes=MAX_CAPABILITY_BYTES)
    except DecodeError as e:
        raise Refused(400, f"capabilities: {e}") from None
    return raw


def _recipient_keys(value: object) -> tuple[str, ...]:
    """The inventory's ``recipient_keys``: base64 COSE_Keys of ECDH-ES public keys (what an
    author encrypts for; draft-ietf-suit-firmware-encryption), each one checked."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_RECIPIENT_KEYS:
        raise Refused(400, f"recipient_keys: expected a list of at most {MAX_RECIPIENT_KEYS} "
                           "base64 COSE_Keys")
    keys = []
    for i, item in enumerate(value):
        where = f"recipient_keys[{i}]"
        text = text_member(item, where, MAX_RECIPIENT_KEY_TEXT)
        try:
            crypto.load_recipient_public(base64.b64decode(text, validate=True))
        except (ValueError, SuitError) as e:
            raise Refused(400, f"{where}: expected base64 of an ECDH-ES public COSE_Key "
                               f"(P-256 or X25519): {str(e)[:200]}") from None
        keys.append(text)
    return tuple(keys)


def _inventory(doc: Mapping[str, Any], limits: Limits) -> Inventory:
    only_members(doc, {"vendor_id", "class_id", "components", "hardware", "capabilities",
                       "recipient_keys"}, "inventory")
    components = doc.get("components", [])
    if not isinstance(components, list) or len(components) > limits.max_components:
        raise Refused(400, f"components: expected a list of at most {limits.max_components} "
                           "components")
    return Inventory(
        vendor_id=uuid_member(doc.get("vendor_id"), "vendor_id"),
        class_id=uuid_member(doc.get("class_id"), "class_id"),
        components=tuple(_component(c, f"components[{i}]", limits)
                         for i, c in enumerate(components)),
        hardware=_hardware(doc.get("hardware")),
        capabilities=_capabilities(doc.get("capabilities"), limits),
        recipient_keys=_recipient_keys(doc.get("recipient_keys")))


def report_key_of(value: object) -> str | None:
    """A device's report key as registered (``report_key``): a public key the tracker can
    check signed reports with (PEM: EC P-256/P-384 or Ed25519 public key, or a COSE KEY block
    of an HMAC key for COSE_Mac0), kept in its canonical PEM form. A private key is refused:
    the tracker holds the public half only."""
    if value is None:
        return None
    text = text_member(value, "report_key", MAX_REPORT_KEY_TEXT)
    try:
        key = crypto.load_public_key(text.encode())
        return crypto.public_key_to_pem(key).decode()
    except SuitError as e:
        raise Refused(400, f"report_key: expected a public key in PEM: {e}") from None


def _checkin(doc: Mapping[str, Any], limits: Limits) -> tuple[str, Inventory | None]:
    """The body of ``POST .../checkin``: ``{"inventory_digest": hex, "inventory": {...}}``
    (``inventory`` optional, the body of ``PUT .../inventory``)."""
    only_members(doc, {"inventory_digest", "inventory"}, "checkin")
    digest = hex_member(doc.get("inventory_digest"), "inventory_digest",
                        MAX_INVENTORY_DIGEST // 2)
    if not digest:
        raise Refused(400, "inventory_digest: expected the device's digest of its inventory "
                           "in hex (suitkit's agent: SHA-256 of its canonical JSON)")
    given = doc.get("inventory")
    if given is None:
        return digest, None
    if not isinstance(given, dict):
        raise Refused(400, "inventory: expected an object {vendor_id, class_id, components, "
                           f"hardware}}, got {type(given).__name__}")
    return digest, _inventory(given, limits)


_HEALTH_MEMBERS = {"release", "status", "window", "checks", "failures", "crashes", "records",
                   "detail"}
_MAX_HEALTH_TEXT = 256
_MAX_HEALTH_CHECK = 32


def _health(doc: Mapping[str, Any]) -> HealthReport:
    """The body of ``POST .../health``, every member bounded (400 naming the member)."""
    only_members(doc, _HEALTH_MEMBERS, "health")
    release = hex_member(doc.get("release"), "release", MAX_DIGEST_BYTES)
    if not release:
        raise Refused(400, "release: expected the manifest digest in hex")
    status = doc.get("status")
    if status not in HEALTH_STATUSES:
        raise Refused(400, f"status: expected one of {', '.join(HEALTH_STATUSES)}, got "
                           f"{str(status)[:40]!r}")
    window = doc.get("window", 0)
    if isinstance(window, bool) or not isinstance(window, int | float) \
            or not 0 <= window <= MAX_HEALTH_WINDOW:
        raise Refused(400, f"window: expected seconds from 0 to {MAX_HEALTH_WINDOW:g}, got "
                           f"{str(window)[:40]}")
    counts = {}
    for name in ("checks", "failures", "crashes"):
        value = doc.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEQ:
            raise Refused(400, f"{name}: expected an integer from 0 to {_MAX_SEQ}, got "
                               f"{str(value)[:40]}")
        counts[name] = value
    records = doc.get("records", [])
    if not isinstance(records, list) or len(records) > MAX_HEALTH_RECORDS:
        raise Refused(400, f"records: expected a list of at most {MAX_HEALTH_RECORDS} records")
    parsed = []
    for i, record in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(record, dict):
            raise Refused(400, f"{where}: expected an object {{check, ok, detail}}")
        only_members(record, {"check", "ok", "detail"}, where)
        if not isinstance(record.get("ok"), bool):
            raise Refused(400, f"{where}.ok: expected true or false")
        parsed.append(HealthRecord(
            text_member(record.get("check"), f"{where}.check", _MAX_HEALTH_CHECK),
            record["ok"], text_member(record.get("detail", ""), f"{where}.detail",
                                      _MAX_HEALTH_TEXT)))
    return HealthReport(release=release, status=str(status), window=float(window),
                        records=tuple(parsed), detail=text_member(
                            doc.get("detail", ""), "detail", _MAX_HEALTH_TEXT), **counts)


def _deployment(doc: Mapping[str, Any]) -> tuple[str, str | None, list[str]]:
    only_members(doc, {"release", "envelope_url", "devices"}, "deployment")
    release = hex_member(doc.get("release"), "release", MAX_DIGEST_BYTES)
    if not release:
        raise Refused(400, "release: expected the manifest digest in hex")
    url = envelope_url_of(doc.get("envelope_url"), ("http", "https", "coap"))
    devices = doc.get("devices")
    if (not isinstance(devices, list) or not devices
            or len(devices) > _MAX_DEPLOY_DEVICES):
        raise Refused(400, f"devices: expected a list of 1 to {_MAX_DEPLOY_DEVICES} device ids")
    ids = [text_member(d, f"devices[{i}]", MAX_DEVICE_ID) for i, d in enumerate(devices)]
    return release, url, ids


# ============================================================================ list queries


_DEVICE_LIST_QUERY = PAGE_QUERY | {"components", "state", "class", "tag", "version",
                                   "last_seen_before", "last_seen_after", "sort"}
_DEVICE_LIST_REPEATABLE = {"state", "class", "tag", "version"}
_NO_STATE = "none"
_HISTORY_KINDS = ("event", "report")
_SORTS = tuple(f"{sign}{key}" for key in DEVICE_SORTS for sign in ("", "-"))
_DEVICE_LIST_PARAMETERS = list_parameters(
    query_parameter("components", "true: each device with its installed components",
                    {"type": "boolean", "default": False}),
    query_parameter("state", f"devices in any of these update states ('{_NO_STATE}': never "
                             "updated); repeat it or separate values by commas",
                    {"type": "string", "enum": [*STATES, _NO_STATE]}, repeatable=True),
    query_parameter("class", "devices of any of these class ids (UUID)",
                    {"type": "string", "format": "uuid"}, repeatable=True),
    query_parameter("tag", "devices that carry every one of these tags",
                    {"type": "string"}, repeatable=True),
    query_parameter("version", "devices with an installed component that reports any of "
                               "these versions, dotted integers such as 1.2.0 (the "
                               "inventory's version, update-management §4.4)",
                    {"type": "string", "pattern": r"^-?[0-9]+(\.-?[0-9]+)*$"},
                    repeatable=True),
    query_parameter("last_seen_before", "devices last seen before this RFC 3339 date-time "
                                        "(a device never seen is left out)",
                    {"type": "string", "format": "date-time"}),
    query_parameter("last_seen_after", "devices last seen at or after this RFC 3339 "
                                       "date-time", {"type": "string", "format": "date-time"}),
    query_parameter("sort", "the order: a key, '-' before it for descending; ties by id; a "
                            "device without the key (never seen, never updated) comes first "
                            "ascending, last descending",
                    {"type": "string", "enum": list(_SORTS), "default": "created"}))


def _class_id(value: str) -> str:
    """A ``class`` filter's value: a class id (UUID). Hook: a class name (the class-names
    table) would be resolved here to its id."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Refused(400, f"class: expected a class id (a UUID such as "
                           f"'fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe'), got {value[:40]!r}"
                      ) from None


def _version(value: str) -> tuple[int, ...]:
    parts = value.split(".")
    if len(parts) > MAX_VERSION_PARTS or not all(
            p.removeprefix("-").isascii() and p.removeprefix("-").isdigit()
            and len(p) <= 20 for p in parts):
        raise Refused(400, f"version: expected 1 to {MAX_VERSION_PARTS} dotted integers such "
                           f"as 1.2.0, got {value[:40]!r}")
    numbers = tuple(int(p) for p in parts)
    if any(not _INT64[0] <= n <= _INT64[1] for n in numbers):
        raise Refused(400, f"version: {value[:40]!r} holds a number beyond 64 bits")
    return numbers


def _device_query(request: Request) -> tuple[DeviceQuery, bool]:
    """The devices list's filters and sort (400 naming a bad one) and ``components``."""
    states = list_param(request, "state", (*STATES, _NO_STATE))
    tags = list_param(request, "tag")
    try:
        check_tags(tags, "tag")
    except CampaignRefused as e:
        raise Refused(400, str(e)) from None
    sort = request.query_params.get("sort", "created").strip()
    if sort not in _SORTS:
        raise Refused(400, f"sort: expected one of {', '.join(_SORTS)}, got {sort[:40]!r}")
    before = moment_param(request, "last_seen_before")
    after = moment_param(request, "last_seen_after")
    query = DeviceQuery(
        states=tuple(None if s == _NO_STATE else s for s in states),
        class_ids=tuple(_class_id(c) for c in list_param(request, "class")),
        tags=tuple(tags),
        versions=tuple(_version(v) for v in list_param(request, "version")),
        seen_before=before, seen_after=after,
        sort=sort.removeprefix("-"), descending=sort.startswith("-"))
    return query, flag_param(request, "components")


def _sort_key(sort: str, key: list[Any] | None, cursor: str) -> tuple[Any, str] | None:
    """The key in a cursor of a devices list sorted by ``sort`` (not ``created``)."""
    if key is None:
        return None
    value, last_id = key
    if len(last_id) > MAX_DEVICE_ID or (isinstance(value, str) and len(value) > _MAX_NAME):
        value = _BAD
    elif sort == "last_seen" and value is not None:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = _BAD
        if value is not _BAD and value.tzinfo is not None:
            value = _BAD
    if value is _BAD:
        raise Refused(400, f"after: expected the cursor 'next' of a previous page of this "
                           f"list, got {cursor[:40]!r}")
    return value, last_id


_BAD: Any = object()


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


_AUTH_RESPONSES = problem_responses(401, 403)
_MAX_EXPIRY_DAYS = 366
_DEFAULT_EXPIRY_DAYS = 90
_BODY_ERRORS = (400, 413, 415)
"""What every route that reads a JSON body may answer (``web.json_object``)."""


def create_api_router(config: TrackerConfig, tracker: TrackerDB, auth: Authenticator
                      ) -> APIRouter:
    """The suitkit JSON API's routes over ``tracker``, checked by ``auth``
    (``edges.create_router`` mounts them with the campaign routes)."""
    limiter = RateLimiter(config.quotas)
    device_routes: dict[str, Any] = {}  # the device API's routes (serve_device_api)
    checkins: list[ThreadPoolExecutor] = []  # the check-ins' threads, while the app runs
    retaining = retention(tracker, config.quotas)

    def checkin_threads() -> ThreadPoolExecutor:
        if not checkins:
            checkins.append(ThreadPoolExecutor(_CHECKIN_THREADS,
                                               thread_name_prefix="suitkit-checkin"))
        return checkins[0]

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            async with retaining(app):
                yield
        finally:
            while checkins:
                checkins.pop().shutdown(wait=False)

    router = APIRouter(tags=["status tracker"], responses=_AUTH_RESPONSES,
                       dependencies=[Depends(check_path_ids)], lifespan=lifespan)

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
                 response_model=DeviceCreated, responses=problem_responses(*_BODY_ERRORS, 507),
                 openapi_extra=json_body(DeviceRegistration))
    async def register(request: Request) -> Response:
        """Register a device (admin); the answer holds its secret, shown this once."""
        who = await admin(request)
        doc = await json_object(request)
        only_members(doc, {"name", "vendor_id", "class_id", "report_key"}, "device")
        name = text_member(doc.get("name", ""), "name", _MAX_NAME)
        vendor_id = uuid_member(doc.get("vendor_id"), "vendor_id")
        class_id = uuid_member(doc.get("class_id"), "class_id")
        report_key = report_key_of(doc.get("report_key"))
        device_id, secret = await storage(functools.partial(
            tracker.register, name, vendor_id=vendor_id, class_id=class_id,
            report_key=report_key))
        await audit(who, "device.register", device_id, f"name {name!r}"
                    + (f", vendor {vendor_id}" if vendor_id else "")
                    + (f", class {class_id}" if class_id else "")
                    + (", report key" if report_key else ""))
        return JSONResponse({"id": device_id, "secret": secret,
                             "token": f"{device_id}.{secret}"}, status_code=201,
                            headers={"Cache-Control": "no-store"})

    @router.get(_DEVICES, summary="List devices (admin, operator)",
                response_model=DevicePage, responses=problem_responses(400),
                openapi_extra=_DEVICE_LIST_PARAMETERS)
    async def list_devices(request: Request) -> Response:
        """A page of devices (admin, operator), oldest first unless ``sort`` says otherwise,
        filtered by ``state``, ``class``, ``tag``, ``version``, ``last_seen_before`` and
        ``last_seen_after`` (in SQL: ``TrackerDB.devices_page``); ``?components=true``: with
        installed components; ``?total=true``: with ``total``. ``next`` is the cursor for
        ``?after=`` (``null``: the end); it holds the sort key, and a cursor of one sort is
        refused by another."""
        await auth.require(request, "admin", "operator")
        check_query(request, _DEVICE_LIST_QUERY, _DEVICE_LIST_REPEATABLE)
        query, components = _device_query(request)
        kind = "devices" if query.sort == "created" and not query.descending else (
            f"devices:{'-' if query.descending else ''}{query.sort}")
        if query.sort == "created":  # the cursor of the first version: ["devices", iso, id]
            limit, key, after = page_params(request, kind, (str, str))
            start: tuple[Any, str] | None = created_id_key(key, after)
        else:
            value_type = (str, type(None)) if query.sort in ("state", "last_seen") else str
            limit, key, after = page_params(request, kind, (value_type, str))
            start = _sort_key(query.sort, key, after)
        page = await storage(functools.partial(
            tracker.devices_page, components=components, limit=limit, after=start,
            query=query, total=want_total(request)))

        def cursor(k: tuple[Any, ...]) -> str:
            value = k[0].isoformat() if isinstance(k[0], datetime) else k[0]
            return encode_cursor(kind, value, k[1])

        return paged("devices", page, cursor)

    @router.get(f"{_DEVICES}/{{device_id}}",
                summary="One device with its inventory (admin, operator, the device)",
                response_model=Device, responses=problem_responses(400, 404))
    async def get_device(request: Request, device_id: str) -> Response:
        """One device with its inventory (admin, operator, or the device itself)."""
        await device_or_staff(request, device_id)
        doc = await storage(tracker.device, device_id)
        if doc is None:
            raise Refused(404, f"no device {device_id[:40]!r}")
        return JSONResponse(doc)

    @router.put(f"{_DEVICES}/{{device_id}}/inventory",
                summary="Replace the device's inventory (the device itself)",
                response_model=Device,
                responses=problem_responses(
                    *_BODY_ERRORS, 409, 429, 507,
                    s409="the vendor or class ID contradicts the registration"),
                openapi_extra=json_body(InventoryBody))
    async def put_inventory(request: Request, device_id: str) -> Response:
        """Replace the device's inventory (the device only)."""
        await device_itself(request, device_id)
        throttle(device_id, "inventory")
        inventory = _inventory(await json_object(request), config.limits)
        try:
            await run_in_threadpool(tracker.set_inventory, device_id, inventory)
        except IdentityRefused as e:
            raise Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the inventory") from None
        return JSONResponse(await storage(tracker.device, device_id))

    async def post_event(request: Request) -> Response:
        """Move the device's update to a new state (the device only). Five of these make
        every update: a plain Starlette route as the check-in (no FastAPI dependency
        resolution), the credential check and the event each one call in the check-in's
        worker threads (not anyio's thread hop)."""
        # the route template, for metrics and logs
        request.scope["route"] = device_routes.get("POST /events", event_route) \
            if request.url.path.startswith(DEVICE_API) else event_route
        check_path_ids(request)
        device_id: str = request.path_params["device_id"]
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, WANT_BEARER)
        loop = asyncio.get_running_loop()
        who: Principal = await loop.run_in_executor(checkin_threads(), auth.check, token)
        if who.role != "device" or who.device_id != device_id:
            request.state.suitkit_principal = who
            await device_itself(request, device_id)  # its 403, as every device route's
        throttle(device_id, "events")
        doc = await json_object(request)
        only_members(doc, {"state", "detail"}, "event")
        state = doc.get("state")
        if state not in STATES:
            raise Refused(400, f"state: expected one of {', '.join(STATES)}, got "
                               f"{str(state)[:40]!r}")
        detail = text_member(doc.get("detail", ""), "detail", _MAX_DETAIL)
        try:
            event = await loop.run_in_executor(checkin_threads(), functools.partial(
                tracker.add_event, device_id, state, detail, by_device=True))
        except (TransitionRefused, NotAssigned) as e:
            raise Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the event") from None
        return JSONResponse(event, status_code=201)

    event_path = f"{_DEVICES}/{{device_id}}/events"
    router.add_route(event_path, post_event, methods=["POST"], name="post_event",
                     include_in_schema=False)
    event_route = router.routes[-1]
    # once more as a FastAPI route, for the OpenAPI document only (the plain one answers)
    router.post(event_path, status_code=201, include_in_schema=True,
                summary="Report a new update state (the device itself)", response_model=Event,
                responses=problem_responses(
                    *_BODY_ERRORS, 409, 429, 507,
                    s409="not a transition of the device's current update"),
                openapi_extra=json_body(EventBody))(post_event)

    @router.post(f"{_DEVICES}/{{device_id}}/reset", status_code=201,
                 summary="End a device's stuck update as failed (admin, operator)",
                 response_model=Event,
                 responses=problem_responses(
                     *_BODY_ERRORS, 404, 409, 507,
                     s409="the device is not in the middle of an update"),
                 openapi_extra=json_body(ResetBody))
    async def reset(request: Request, device_id: str) -> Response:
        """A device that stopped reporting in the middle of an update (lost, broken, wiped)
        holds its assignment and its campaign's wave. An operator ends that update as
        ``failed`` with the reason; the device's next state report is then refused (409) and
        it starts over at its next assignment (admin, operator)."""
        who = await device_or_staff(request, device_id)
        if who.role not in ("admin", "operator"):
            raise Refused(403, "only an admin or operator may reset a device's update")
        doc = await json_object(request)
        only_members(doc, {"reason"}, "reset")
        reason = text_member(doc.get("reason", ""), "reason", _MAX_DETAIL)
        detail = f"reset by {who.name}" + (f": {reason}" if reason else "")
        try:
            event = await run_in_threadpool(tracker.add_event, device_id, "failed", detail)
        except TransitionRefused as e:
            shown = e.current if e.current is not None else "no state yet"
            raise Refused(409, f"device {device_id} is not in the middle of an update (state "
                               f"{shown}); there is nothing to reset") from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the event") from None
        await audit(who, "device.reset", device_id, detail)
        return JSONResponse(event, status_code=201)

    @router.post(f"{_DEVICES}/{{device_id}}/reports", status_code=201,
                 summary="Send a SUIT report in CBOR (the device itself)",
                 response_model=StoredReport,
                 responses=problem_responses(
                     400, 403, 409, 413, 415, 429, 507,
                     s403="the credential's role may not do this, or the report's signature "
                          "does not verify (or the device must sign and did not)",
                     s409="not the report of the device's current update (late, replayed, a "
                          "wrong nonce)"),
                 openapi_extra={"requestBody": {"required": True, "content": {
                     media: {"schema": {"type": "string", "format": "binary"}}
                     for media in (REPORT_MEDIA_TYPE, SIGNED_REPORT_MEDIA_TYPE)}}})
    async def post_report(request: Request, device_id: str) -> Response:
        """Store a SUIT report (CBOR, or signed: COSE_Sign1 / COSE_Mac0 around it, report §8)
        after strict decoding and, when signed, the check of its signature with the device's
        registered key (the device only). The nonce of a signed report, and of any report of
        a device that must sign (``config.signed_reports``), must be the one issued with its
        update."""
        await device_itself(request, device_id)
        throttle(device_id, "reports")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in _REPORT_TYPES and media != SIGNED_REPORT_MEDIA_TYPE:
            raise Refused(415, f"a report must be {REPORT_MEDIA_TYPE}, "
                               f"{SIGNED_REPORT_MEDIA_TYPE} or application/octet-stream")
        raw = await read_body(request, config.max_report_bytes)
        key, class_id = await storage(tracker.report_key, device_id)
        required = "all" in config.signed_reports or (
            class_id is not None and class_id in config.signed_reports)
        signed: SignedReport | None = None
        try:
            if media == SIGNED_REPORT_MEDIA_TYPE:
                if key is None:
                    raise Refused(403, f"device {device_id} has no registered report key: its "
                                       "signed report cannot be checked (an admin registers "
                                       "one: PUT .../report-key)")
                signed = open_signed_report(raw, crypto.load_public_key(key.encode()),
                                            limits=config.limits,
                                            max_bytes=config.max_report_bytes)
                report = signed.report
            else:
                if required:
                    raise Refused(403, f"device {device_id} must sign its reports (the "
                                       "tracker's --signed-reports policy): send a COSE_Sign1 "
                                       f"or COSE_Mac0 as {SIGNED_REPORT_MEDIA_TYPE}")
                report = decode_report(raw, limits=config.limits,
                                       max_bytes=config.max_report_bytes)
        except DecodeError as e:
            raise Refused(400, f"the report is malformed: {e}") from None
        except (AuthenticationError, PolicyError) as e:
            raise Refused(403, f"the report's signature does not verify with device "
                               f"{device_id}'s registered key: {e}") from None
        except KeyMaterialError as e:  # pragma: no cover - keys are checked when registered
            raise Refused(500, f"device {device_id}'s registered report key: {e}") from None
        release = report.reference.manifest_digest.value.hex()
        # report §8: the nonce makes a signed report fresh; an unsigned report of a device
        # that need not sign keeps its nonce as sent, unchecked (existing agents and
        # third-party devices choose their own)
        checked = signed is not None or required
        summary = summarize_report(report)
        summary["signed"] = signed.kind if signed is not None else None
        summary["nonce_checked"] = checked
        capabilities = (encode_capability_report(report.capability_report)
                        if report.capability_report is not None else None)
        lifetime = (timedelta(days=config.nonce_days) if config.nonce_days > 0 else None)
        try:
            stored = await run_in_threadpool(functools.partial(
                tracker.add_report, device_id, raw, summary, release=release,
                nonce=report.nonce if checked else None, require_nonce=checked,
                nonce_lifetime=lifetime, capabilities=capabilities))
        except NotAssigned as e:
            raise Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the report") from None
        return JSONResponse(stored, status_code=201)

    @router.get(f"{_DEVICES}/{{device_id}}/capabilities",
                summary="A device's capability report (admin, operator, author, the device)",
                response_model=CapabilitiesAnswer,
                responses={200: {"content": {"application/cbor": {"schema": {
                    "type": "string", "format": "binary"}}}, "description": (
                        "the capability report as JSON, or with ?format=cbor as sent")},
                    **problem_responses(400, 404)})
    async def get_capabilities(request: Request, device_id: str,
                               format: str = "json") -> Response:
        """The SUIT_Capability_Report the device sent last (report §6): as JSON, or with
        ``?format=cbor`` the bytes as the device sent them (``application/cbor``). 404 when
        the device has sent none. Authors may read it: it says what a manifest may use."""
        who = await auth.require_device_or(request, device_id, "admin", "operator", "author")
        del who
        if format not in ("json", "cbor"):
            raise Refused(400, f"format: expected json or cbor, got {format[:20]!r}")
        exists, raw = await storage(tracker.capabilities, device_id)
        if not exists:
            raise Refused(404, f"no device {device_id[:40]!r}")
        if raw is None:
            raise Refused(404, f"device {device_id} has sent no capability report yet")
        if format == "cbor":
            return Response(raw, media_type="application/cbor")
        try:
            doc = capability_json(decode_capability_report(raw, limits=config.limits))
        except DecodeError as e:
            raise Refused(500, f"the stored capability report does not decode: {e}") from None
        return JSONResponse({"id": device_id, "capabilities": doc})

    @router.put(f"{_DEVICES}/{{device_id}}/report-key",
                summary="Register the key a device signs its reports with (admin)",
                response_model=ReportKeyAnswer,
                responses=problem_responses(*_BODY_ERRORS, 404, 507),
                openapi_extra=json_body(ReportKeyBody))
    async def put_report_key(request: Request, device_id: str) -> Response:
        """Register (``report_key``: a public key in PEM) or remove (``null``) the key the
        device's signed reports are checked with (admin; report §8)."""
        who = await admin(request)
        doc = await json_object(request)
        only_members(doc, {"report_key"}, "report key")
        if "report_key" not in doc:
            raise Refused(400, "report_key: expected a public key in PEM, or null")
        report_key = report_key_of(doc.get("report_key"))
        if not await storage(tracker.set_report_key, device_id, report_key):
            raise Refused(404, f"no device {device_id[:40]!r}")
        await audit(who, "device.report-key", device_id,
                    "registered" if report_key else "removed")
        return JSONResponse({"id": device_id, "report_key": report_key is not None})

    @router.get(f"{_DEVICES}/{{device_id}}/history",
                summary="A device's events and reports (admin, operator, the device)",
                response_model=History, responses=problem_responses(400, 404),
                openapi_extra=list_parameters(
                    query_parameter("order", "oldest first (default) or newest first",
                                    {"type": "string", "enum": ["oldest", "newest"],
                                     "default": "oldest"}),
                    query_parameter("kind", "only events or only reports",
                                    {"type": "string", "enum": list(_HISTORY_KINDS)},
                                    repeatable=True)))
    async def history(request: Request, device_id: str) -> Response:
        """A page of the device's events and report summaries, in order (by ``seq``; admin,
        operator, or the device itself); ``?order=newest``: newest first; ``?kind=event`` or
        ``report``: only those. ``next`` is the cursor for ``?after=`` (a cursor of one order
        is refused by the other)."""
        await device_or_staff(request, device_id)
        check_query(request, PAGE_QUERY | {"order", "kind"}, {"kind"})
        kinds = list_param(request, "kind", _HISTORY_KINDS)
        order = request.query_params.get("order", "oldest")
        if order not in ("oldest", "newest"):
            raise Refused(400, f"order: expected oldest or newest, got {order[:20]!r}")
        kind = "history" if order == "oldest" else "history-newest"
        limit, key, after = page_params(request, kind, (int,))
        if key is not None and not 0 <= key[0] <= _MAX_SEQ:
            raise Refused(400, f"after: expected the cursor 'next' of a previous page of "
                               f"this list, got {after[:40]!r}")
        page = await storage(functools.partial(tracker.history_page, device_id, limit=limit,
                                               after=key[0] if key is not None else 0,
                                               newest=order == "newest", kinds=kinds,
                                               total=want_total(request)))
        return paged("history", page, lambda k: encode_cursor(kind, k[0]), id=device_id)

    @router.post(f"{_DEVICES}/{{device_id}}/health",
                 summary="Report the health of the release it confirmed (the device itself)",
                 response_model=HealthAnswer,
                 responses=problem_responses(
                     *_BODY_ERRORS, 409, 429, 507,
                     s409="not the release the device confirmed last"),
                 openapi_extra=json_body(HealthBody))
    async def post_health(request: Request, device_id: str) -> Response:
        """Keep what the device says of the health of the release it confirmed (the device
        only); ``rollback``: the tracker tells it to roll that release back."""
        await device_itself(request, device_id)
        throttle(device_id, "events")
        report = _health(await json_object(request))
        try:
            answer = await run_in_threadpool(tracker.report_health, device_id, report)
        except NotAssigned as e:
            raise Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the health report") from None
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    @router.get(f"{_DEVICES}/{{device_id}}/health",
                summary="What a device said of its releases' health (admin, operator, the "
                        "device)",
                response_model=HealthList, responses=problem_responses(400, 404))
    async def get_health(request: Request, device_id: str) -> Response:
        """The device's latest health reports, the newest first."""
        await device_or_staff(request, device_id)
        return JSONResponse({"health": await storage(tracker.health, device_id)})

    @router.get(f"{_DEVICES}/{{device_id}}/update",
                summary="The release assigned to the device, or 204 (the device itself)",
                response_model=PendingUpdate,
                responses={204: {"description": "nothing to do"}, **problem_responses(400)})
    async def get_update(request: Request, device_id: str) -> Response:
        """The release assigned to the device, or 204 (the device only)."""
        await device_itself(request, device_id)
        pending = await storage(tracker.pending_update, device_id)
        if pending is None:
            return Response(status_code=204)
        return JSONResponse(pending, headers={"Cache-Control": "no-store"})

    async def checkin(request: Request) -> Response:
        """The poll in one request (the device only; docs/tracker.md "Check-in"). A plain
        Starlette route: path id, credential shape and body are checked here by hand, then
        one call of the service in a worker thread (``TrackerDB.check_in``)."""
        # a plain route does not name itself in the scope as FastAPI's do: the metrics and
        # the access log's route template come from there (they said "unmatched")
        request.scope["route"] = device_routes.get("POST /checkin", checkin_route) \
            if request.url.path.startswith(DEVICE_API) else checkin_route
        check_path_ids(request)
        device_id: str = request.path_params["device_id"]
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, WANT_BEARER)
        owner, dot, secret = token.partition(".")
        if not dot or owner != device_id:
            # not this device's credential: the authenticator says 401 or 403, as elsewhere
            await device_itself(request, device_id)
            raise Refused(401, "the credential is not valid")  # pragma: no cover
        digest, inventory = _checkin(await json_object(request), config.limits)
        if inventory is not None:
            throttle(device_id, "inventory")
        try:
            # a plain executor: anyio's thread hop (capacity limiter, cancel scope) cost
            # about as much CPU as the check-in's database read
            done = await asyncio.get_running_loop().run_in_executor(
                checkin_threads(), tracker.check_in, device_id, secret, digest, inventory)
        except IdentityRefused as e:
            raise Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not read or store the check-in"
                                  ) from None
        if done is None:
            raise Refused(401, "the credential is not valid")
        doc: dict[str, Any] = (dict(done.pending) if done.pending is not None
                               else {"release": None})
        doc.update(state=done.state, send_inventory=done.send_inventory,
                   poll_after=config.poll_after)
        if done.rollback is not None:
            doc["rollback"] = {"release": done.rollback}
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    checkin_path = f"{_DEVICES}/{{device_id}}/checkin"
    router.add_route(checkin_path, checkin, methods=["POST"], name="checkin",
                     include_in_schema=False)
    checkin_route = router.routes[-1]
    # once more as a FastAPI route, for the OpenAPI document only (it lists FastAPI's own
    # routes); the plain route above comes first, so it is the one that answers
    router.post(checkin_path, include_in_schema=True,
                summary="Check in: the pending release, or nothing to do (the device itself)",
                response_model=CheckinAnswer,
                responses=problem_responses(
                    *_BODY_ERRORS, 409, 429, 507,
                    s409="the inventory's vendor or class ID contradicts the registration"),
                openapi_extra=json_body(CheckinBody))(checkin)

    @router.post("/api/v1/deployments", status_code=201,
                 summary="Deploy a release to devices (admin, operator)",
                 response_model=Deployment,
                 responses=problem_responses(
                     *_BODY_ERRORS, 404, 409, 422, 507, s404="no such device",
                     s409="a device is in the middle of an update or in its health window",
                     s422="the release is not on the firmware server, or envelope_url is not "
                          "its envelope"),
                 openapi_extra=json_body(DeploymentBody))
    async def deploy(request: Request) -> Response:
        """Assign a release to devices; each is notified (admin, operator; not author)."""
        who = await auth.require(request, "admin", "operator")
        release, given, ids = _deployment(await json_object(request))
        url = await release_envelope_url(config, request, release, given)
        try:
            devices = await run_in_threadpool(tracker.deploy, release, url, ids)
        except DeploymentRefused as e:
            raise Refused(404 if e.unknown else 409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the deployment") from None
        await audit(who, "deployment.create", f"release {release}",
                    f"{len(devices)} device(s): {', '.join(d['id'] for d in devices)[:400]}")
        return JSONResponse({"release": release, "envelope_url": url, "devices": devices},
                            status_code=201)

    _token_routes(router, config, tracker, auth)
    device_routes.update(serve_device_api(router, DEVICE_ROUTES))
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
                 response_model=TokenCreated,
                 responses=problem_responses(*_BODY_ERRORS, 507),
                 openapi_extra=json_body(TokenBody))
    async def create_token(request: Request) -> Response:
        """Create an API token with a role (admin, author or operator) and an expiry (default
        90 days, at most a year). The answer holds ``token`` once; only its hash is kept."""
        who = await auth.require(request, "admin")
        doc = await json_object(request)
        only_members(doc, {"name", "role", "expires_in_days"}, "token")
        name = text_member(doc.get("name"), "name", _MAX_NAME).strip()
        if not name:
            raise Refused(400, "name: expected a non-empty name for the token")
        if name == BOOTSTRAP_ADMIN:  # audit entries and four-eyes tell principals by name
            raise Refused(400, f"name: {BOOTSTRAP_ADMIN!r} is reserved for the bootstrap "
                               "admin token; choose another name")
        role = doc.get("role")
        if role not in TOKEN_ROLES:
            raise Refused(400, f"role: expected one of {', '.join(TOKEN_ROLES)}, got "
                               f"{str(role)[:40]!r}")
        days = doc.get("expires_in_days", _DEFAULT_EXPIRY_DAYS)
        if type(days) is not int or not 1 <= days <= _MAX_EXPIRY_DAYS:
            raise Refused(400, f"expires_in_days: expected a whole number from 1 to "
                               f"{_MAX_EXPIRY_DAYS}, got {str(days)[:20]}")
        # the tracker's clock (the database's on PostgreSQL), as aware UTC
        now = (await storage(tracker.now)).replace(tzinfo=UTC)
        expires = now + timedelta(days=days)
        token_id, secret = await storage(tracker.create_token, name, role, expires, who.name)
        await audit_entry(who, "token.create", token_id, f"name {name!r}, role {role}, "
                                                         f"expires in {days} days")
        doc_out = await storage(tracker.token, token_id)
        return JSONResponse({**doc_out, "token": f"{TOKEN_PREFIX}{token_id}.{secret}"},
                            status_code=201, headers={"Cache-Control": "no-store"})

    @router.get("/api/v1/tokens", tags=["tokens"], summary="List API tokens (admin)",
                response_model=TokenList, responses=problem_responses(400),
                openapi_extra=list_parameters())
    async def list_tokens(request: Request) -> Response:
        """A page of API tokens, oldest first: id, name, role, dates; never a secret or its
        hash."""
        await auth.require(request, "admin")
        check_query(request, PAGE_QUERY)
        limit, key, after = page_params(request, "tokens", (str, str))
        start = created_id_key(key, after, max_id=MAX_TOKEN_ID)
        page = await storage(functools.partial(tracker.tokens_page, limit=limit, after=start,
                                               total=want_total(request)))
        return paged("tokens", page,
                     lambda k: encode_cursor("tokens", k[0].isoformat(), k[1]))

    @router.delete("/api/v1/tokens/{token_id}", status_code=204, tags=["tokens"],
                   summary="Revoke an API token (admin)", response_class=Response,
                   responses=problem_responses(400, 404))
    async def revoke_token(request: Request, token_id: str) -> Response:
        """Revoke the token: from now on it gets 401 "has been revoked"."""
        who = await auth.require(request, "admin")
        token_id = token_id.removeprefix(TOKEN_PREFIX)
        if not await storage(tracker.revoke_token, token_id):
            raise Refused(404, f"no token {token_id[:40]!r}")
        await audit_entry(who, "token.revoke", token_id)
        return Response(status_code=204)

    @router.get("/api/v1/whoami", tags=["tokens"],
                summary="Who the credential belongs to (any credential)",
                response_model=Whoami)
    async def whoami(request: Request) -> Response:
        """The caller's role and name (and token or device id)."""
        who = await auth.principal(request)
        return JSONResponse({"role": who.role, "name": who.name, "token_id": who.token_id,
                             "device_id": who.device_id})

    @router.get("/api/v1/classes", tags=["classes"], openapi_extra=PAGE_PARAMETERS,
                summary="Device classes by name (admin, operator, author)",
                response_model=ClassPage, responses=problem_responses(400))
    async def list_classes(request: Request) -> Response:
        """A page of device classes by class id: every class a device has or the registry
        names, with its vendor and class names (``null``: not known) and its device count."""
        await auth.require(request, "admin", "operator", "author")
        check_query(request, {"limit", "after"})
        limit, key, _ = page_params(request, "classes", (str,))
        start = uuid_member(key[0], "after") if key is not None else None
        page = await storage(functools.partial(tracker.classes_page, limit=limit,
                                               after=start))
        return paged("classes", page, lambda k: encode_cursor("classes", k[0]))

    @router.put("/api/v1/classes/{class_id}", tags=["classes"],
                summary="Name a device class (admin, operator)", response_model=DeviceClass,
                responses=problem_responses(
                    *_BODY_ERRORS, 422, 507,
                    s422="the names do not derive the class's IDs (UUID5, §8.4.8.1-2), or "
                         "the class belongs to another vendor"),
                openapi_extra=json_body(ClassBody))
    async def put_class(request: Request, class_id: str) -> Response:
        """Set a class's vendor and class names (admin, operator; audited). With the vendor
        domain known (``vendor_domain``, or a vendor name that is the domain) the names must
        derive the IDs as the manifest recommends (§8.4.8.1-2): 422 otherwise."""
        who = await auth.require(request, "admin", "operator")
        cid = uuid_member(class_id, "class_id in the path") or ""
        doc = await json_object(request)
        only_members(doc, {"vendor_id", "vendor_name", "class_name", "vendor_domain"},
                     "class")
        texts = {name: text_member(doc[name], name, MAX_VENDOR_DOMAIN)
                 if doc.get(name) is not None else None
                 for name in ("vendor_name", "class_name", "vendor_domain")}
        if texts["vendor_name"] is None and texts["class_name"] is None:
            raise Refused(400, "class: give vendor_name, class_name or both")
        try:
            named = await storage(functools.partial(
                tracker.set_class, cid, vendor_id=uuid_member(doc.get("vendor_id"),
                                                               "vendor_id"),
                by=who.name, **texts))
        except ClassRefused as e:
            raise Refused(422 if e.kind == "mismatch" else 400, str(e)) from None
        await audit_entry(who, "class.name", cid, f"vendor {named['vendor_name']!r}, class "
                                            f"{named['class_name']!r}")
        return JSONResponse(named)

    @router.get("/api/v1/audit", tags=["audit"], summary="The audit log (admin, operator)",
                response_model=AuditLog, responses=problem_responses(400),
                openapi_extra=list_parameters())
    async def audit_log(request: Request) -> Response:
        """A page of the audit log, newest first (``entries``, ``next``)."""
        await auth.require(request, "admin", "operator")
        check_query(request, PAGE_QUERY)
        limit, key, after = page_params(request, "audit", (int,))
        if key is not None and not 0 < key[0] <= _INT64[1]:
            raise Refused(400, f"after: expected the cursor 'next' of a previous page of "
                               f"this list, got {after[:40]!r}")
        page = await storage(functools.partial(
            tracker.audit_page, limit=limit, before=key[0] if key is not None else None,
            total=want_total(request)))
        return paged("entries", page, lambda k: encode_cursor("audit", k[0]))

    async def audit_entry(who: Principal, action: str, target: str, detail: str = "") -> None:
        await storage(tracker.record_audit, who.name, who.role, action, target, detail)
