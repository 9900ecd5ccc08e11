"""The status tracker's HTTP edge (RFC 9019 §3 status tracker; draft-ietf-suit-report §4).

``create_router(config)`` returns a FastAPI ``APIRouter`` that the CLI mounts on the firmware
server's application (``ServerConfig.routers``), so errors are the server's JSON
``{"error": ...}``. Every call is authenticated with ``Authorization: Bearer <token>``:

- the **admin token** (from the configuration, compared in constant time) registers and lists
  devices and reads any device's records;
- a **device credential** ``<device-id>.<secret>`` (the secret is returned once, at
  registration; the database holds only a salted hash) opens that device's own records and
  nothing else: 403 for another device's id, 401 for a missing or wrong credential.

Routes (docs/tracker.md has the bodies):

- ``POST /api/v1/devices`` (admin): register; returns ``id`` and ``secret`` once.
- ``GET /api/v1/devices`` (admin), ``GET /api/v1/devices/{id}`` (admin or the device).
- ``PUT /api/v1/devices/{id}/inventory`` (the device): vendor/class IDs, components, hardware.
- ``POST /api/v1/devices/{id}/events`` (the device): a state of ``db.TRANSITIONS``.
- ``POST /api/v1/devices/{id}/reports`` (the device): a SUIT_Report in CBOR, decoded strictly
  with ``core.report.decode_report`` (the device is not trusted); bytes and summary are stored.
- ``GET /api/v1/devices/{id}/history`` (admin or the device): events and reports in order.
- ``POST /api/v1/deployments`` (admin): assign a release (manifest digest and envelope URL) to
  devices; each moves to ``notified``. The latest assignment of a device wins.
- ``GET /api/v1/devices/{id}/update`` (the device): 200 with the pending assignment, 204 when
  there is nothing to do (RFC 9019 client-initiated mode: the device polls).

Every request body is bounded before it is parsed. Not here: campaigns, waves, approvals,
notifications (push, SSE, MQTT), report signatures (COSE_Sign1 / COSE_Mac0 around the report),
credential rotation, rate limiting.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from suitkit.core.numbers import ManifestKey, name_of
from suitkit.core.report import MAX_REPORT_BYTES, Report, decode_report, reason_name
from suitkit.errors import DecodeError, StorageError
from suitkit.limits import Limits
from suitkit.tracker.db import (
    STATES,
    ComponentEntry,
    DeploymentRefused,
    Inventory,
    TrackerDB,
    TransitionRefused,
    open_db,
)

__all__ = ["REPORT_MEDIA_TYPE", "TrackerConfig", "create_router", "summarize_report"]

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


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Configuration of the status tracker, built once by the CLI.

    ``db_url``: SQLAlchemy URL (``sqlite:///DATA/tracker.db`` by default in ``suitkit serve``).
    ``admin_token``: bearer token of the operator; ``None`` disables the admin routes (403).
    ``limits``: decoding limits for reports. ``clock``: the current time (UTC).
    """

    db_url: str
    admin_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_report_bytes: int = MAX_REPORT_BYTES
    clock: Callable[[], datetime] = _utcnow


class _Refused(HTTPException):
    """A refused request; the firmware server's handler turns it into ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(status, message, headers)


@dataclass(frozen=True, slots=True)
class _Caller:
    """Who is calling: the admin (``device_id is None``) or one device."""

    device_id: str | None

    @property
    def admin(self) -> bool:
        return self.device_id is None


# ============================================================================ reports


def summarize_report(report: Report) -> dict[str, Any]:
    """A JSON summary of a decoded report: result, reason, and where processing failed."""
    summary: dict[str, Any] = {
        "succeeded": report.succeeded,
        "manifest_uri": report.reference.manifest_uri,
        "manifest_digest": {"algorithm": report.reference.manifest_digest.algorithm,
                            "value": report.reference.manifest_digest.value.hex()},
        "nonce": report.nonce.hex() if report.nonce is not None else None,
        "records": len(report.records),
        "failure": None,
    }
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


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is longer than ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
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


async def _json_object(request: Request) -> Mapping[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise _Refused(415, "the body must be application/json")
    data = await _body(request, _MAX_JSON_BYTES)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise _Refused(400, "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _Refused(400, f"the body must be a JSON object, got {type(doc).__name__}")
    return doc


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
    return value


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


def _deployment(doc: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    _only(doc, {"release", "envelope_url", "devices"}, "deployment")
    release = _hex(doc.get("release"), "release", _MAX_DIGEST_BYTES)
    if not release:
        raise _Refused(400, "release: expected the manifest digest in hex")
    url = _text(doc.get("envelope_url"), "envelope_url", _MAX_URL)
    if not url.lower().startswith(("http://", "https://")) or any(c.isspace() for c in url):
        raise _Refused(400, "envelope_url: expected an http:// or https:// URL")
    devices = doc.get("devices")
    if (not isinstance(devices, list) or not devices
            or len(devices) > _MAX_DEPLOY_DEVICES):
        raise _Refused(400, f"devices: expected a list of 1 to {_MAX_DEPLOY_DEVICES} device ids")
    ids = [_text(d, f"devices[{i}]", _MAX_DEVICE_ID) for i, d in enumerate(devices)]
    return release, url, ids


# ============================================================================ router


def create_router(config: TrackerConfig, db: TrackerDB | None = None) -> APIRouter:
    """The tracker's routes over ``db`` (default: ``open_db(config.db_url)``).

    Raises:
        StorageError: the database cannot be opened.
    """
    tracker = db if db is not None else open_db(config.db_url, clock=config.clock)
    router = APIRouter(tags=["status tracker"])

    async def caller(request: Request) -> _Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Refused(401, "the status tracker requires 'Authorization: Bearer <admin "
                                "token>' or 'Bearer <device-id>.<secret>'")
        if config.admin_token is not None and hmac.compare_digest(
                token.encode(), config.admin_token.encode()):
            return _Caller(None)
        device_id, dot, secret = token.partition(".")
        if dot:
            valid: bool = await run_in_threadpool(tracker.authenticate, device_id, secret)
            if valid:
                return _Caller(device_id)
        raise _Refused(401, "the credential is not valid")

    async def admin(request: Request) -> None:
        if not (await caller(request)).admin:
            raise _Refused(403, "this needs the admin token")

    async def device_or_admin(request: Request, device_id: str) -> None:
        who = await caller(request)
        if who.admin:
            if not await run_in_threadpool(tracker.exists, device_id):
                raise _Refused(404, f"no device {device_id[:40]!r}")
        elif who.device_id != device_id:
            raise _Refused(403, "a device credential opens only that device's own records")

    async def device_itself(request: Request, device_id: str) -> None:
        who = await caller(request)
        if who.admin:
            raise _Refused(403, "only the device itself may send this (device credential)")
        if who.device_id != device_id:
            raise _Refused(403, "a device credential opens only that device's own records")

    async def storage(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(function, *args)
        except StorageError:
            raise _Refused(500, "the tracker could not store or read its database") from None

    @router.post(_DEVICES, status_code=201)
    async def register(request: Request) -> Response:
        """Register a device (admin); the answer holds its secret, shown this once."""
        await admin(request)
        doc = await _json_object(request)
        _only(doc, {"name"}, "device")
        name = _text(doc.get("name", ""), "name", _MAX_NAME)
        device_id, secret = await storage(tracker.register, name)
        return JSONResponse({"id": device_id, "secret": secret,
                             "token": f"{device_id}.{secret}"}, status_code=201,
                            headers={"Cache-Control": "no-store"})

    @router.get(_DEVICES)
    async def list_devices(request: Request) -> Response:
        """Every device (admin)."""
        await admin(request)
        return JSONResponse({"devices": await storage(tracker.devices)})

    @router.get(f"{_DEVICES}/{{device_id}}")
    async def get_device(request: Request, device_id: str) -> Response:
        """One device with its inventory (admin or the device)."""
        await device_or_admin(request, device_id)
        doc = await storage(tracker.device, device_id)
        if doc is None:
            raise _Refused(404, f"no device {device_id[:40]!r}")
        return JSONResponse(doc)

    @router.put(f"{_DEVICES}/{{device_id}}/inventory")
    async def put_inventory(request: Request, device_id: str) -> Response:
        """Replace the device's inventory (the device only)."""
        await device_itself(request, device_id)
        inventory = _inventory(await _json_object(request), config.limits)
        await storage(tracker.set_inventory, device_id, inventory)
        return JSONResponse(await storage(tracker.device, device_id))

    @router.post(f"{_DEVICES}/{{device_id}}/events", status_code=201)
    async def post_event(request: Request, device_id: str) -> Response:
        """Move the device's update to a new state (the device only)."""
        await device_itself(request, device_id)
        doc = await _json_object(request)
        _only(doc, {"state", "detail"}, "event")
        state = doc.get("state")
        if state not in STATES:
            raise _Refused(400, f"state: expected one of {', '.join(STATES)}, got "
                                f"{str(state)[:40]!r}")
        detail = _text(doc.get("detail", ""), "detail", _MAX_DETAIL)
        try:
            event = await run_in_threadpool(tracker.add_event, device_id, state, detail)
        except TransitionRefused as e:
            raise _Refused(409, str(e)) from None
        except StorageError:
            raise _Refused(500, "the tracker could not store the event") from None
        return JSONResponse(event, status_code=201)

    @router.post(f"{_DEVICES}/{{device_id}}/reports", status_code=201)
    async def post_report(request: Request, device_id: str) -> Response:
        """Store a SUIT report (CBOR) after strict decoding (the device only)."""
        await device_itself(request, device_id)
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
        stored = await storage(tracker.add_report, device_id, raw, summarize_report(report))
        return JSONResponse(stored, status_code=201)

    @router.get(f"{_DEVICES}/{{device_id}}/history")
    async def history(request: Request, device_id: str) -> Response:
        """The device's events and report summaries, in order (admin or the device)."""
        await device_or_admin(request, device_id)
        return JSONResponse({"id": device_id,
                             "history": await storage(tracker.history, device_id)})

    @router.get(f"{_DEVICES}/{{device_id}}/update")
    async def get_update(request: Request, device_id: str) -> Response:
        """The release assigned to the device, or 204 (the device only)."""
        await device_itself(request, device_id)
        pending = await storage(tracker.pending_update, device_id)
        if pending is None:
            return Response(status_code=204)
        return JSONResponse(pending, headers={"Cache-Control": "no-store"})

    @router.post("/api/v1/deployments", status_code=201)
    async def deploy(request: Request) -> Response:
        """Assign a release to devices; each is notified (admin)."""
        await admin(request)
        release, url, ids = _deployment(await _json_object(request))
        try:
            devices = await run_in_threadpool(tracker.deploy, release, url, ids)
        except DeploymentRefused as e:
            raise _Refused(404 if e.unknown else 409, str(e)) from None
        except StorageError:
            raise _Refused(500, "the tracker could not store the deployment") from None
        return JSONResponse({"release": release, "envelope_url": url, "devices": devices},
                            status_code=201)

    return router
