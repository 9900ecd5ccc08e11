"""Typed models of the status tracker's JSON API (issue #17): one model per request body and
per resource answered, the source of ``/openapi.json`` for the tracker's routes.

Request models (``extra="forbid"``: an unknown member is refused) state what the edges'
checks accept: types, ranges, lengths, enumerations. The edges still read bodies with their
own strict, bounded parser (``web.json_object``: no duplicate members, no NaN, text a database
can store; a 400 naming the member) and the hot routes (check-in, events) stay plain Starlette
routes; they are documented from these models (``json_body``). Answer models describe what
the service returns (``tracker.service``, ``tracker.campaigns``) member by member; an answer
may gain members (``extra="allow"``: a client ignores what it does not know). Lists carry
``next`` (the cursor of the next page, ``null`` at the end) and ``total`` (optional).

Errors are ``suitkit.problems.Problem``. Not here: the hawkBit DDI routes (hawkBit's contract),
any rule of the service.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from suitkit.tracker.campaigns import MAX_DELTAS, MODES
from suitkit.tracker.model import (
    HEALTH_STATUSES,
    MAX_CLASS_NAME,
    MAX_INVENTORY_DIGEST,
    MAX_RECIPIENT_KEY_TEXT,
    MAX_RECIPIENT_KEYS,
    MAX_REPORT_KEY_TEXT,
    MAX_VENDOR_DOMAIN,
    MAX_VERSION_PARTS,
    STATES,
    TOKEN_ROLES,
)
from suitkit.tracker.service import (
    MAX_FACTS,
    MAX_HEALTH_CHECK,
    MAX_HEALTH_RECORDS,
    MAX_HEALTH_TEXT,
    MAX_HEALTH_WINDOW,
)

__all__ = [
    "AuditEntry", "AuditLog", "Campaign", "CampaignBody", "CampaignDetail", "CampaignMembers",
    "CampaignPage", "CampaignPreview", "CampaignPreviewBody", "CampaignProgress",
    "CapabilitiesAnswer", "CheckinAnswer", "CheckinBody", "ClassBody", "ClassPage",
    "ComponentBody", "Deployment", "DeploymentBody", "Device", "DeviceClass", "DeviceCreated",
    "DevicePage", "DeviceRegistration", "EventBody", "Fleet", "HealthAnswer", "HealthBody",
    "HealthList", "HealthState", "History", "HistoryEntry", "InventoryBody", "Notice", "PauseBody",
    "PendingUpdate", "ReportKeyAnswer", "ReportKeyBody", "ResetBody", "StoredReport", "Tags",
    "TagsBody", "Token", "TokenBody", "TokenCreated", "TokenList", "Whoami", "json_body",
]

_HEX = "^(?:[0-9a-fA-F]{2})*$"
_DIGEST = "^(?:[0-9a-fA-F]{2})+$"
_UUID = "^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
_URL = "^(?:https?|coap)://[^\\s]+$"
_MAX_NAME = 128
_MAX_DETAIL = 1024
_MAX_SEQ = (1 << 31) - 1
_UINT64 = (1 << 64) - 1
_INT64 = 1 << 63


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


def _enum(values: tuple[str, ...]) -> dict[str, Any]:
    return {"enum": list(values)}


# ============================================================================ request bodies


class DeviceRegistration(_Body):
    """``POST /api/v1/devices``."""

    name: str = Field(default="", max_length=_MAX_NAME)
    vendor_id: str | None = Field(default=None, pattern=_UUID)
    class_id: str | None = Field(default=None, pattern=_UUID)
    report_key: str | None = Field(default=None, max_length=MAX_REPORT_KEY_TEXT,
                                   description="a public key in PEM (signed reports)")


class ComponentBody(_Body):
    """An installed component of an inventory."""

    id: list[str] = Field(min_length=1, description="the component identifier's parts in hex",
                          json_schema_extra={"items": {"type": "string", "pattern": _HEX,
                                                       "maxLength": 128}})
    sequence: int | None = Field(default=None, ge=0, le=_UINT64)
    digest: str | None = Field(default=None, pattern=_HEX, max_length=128)
    version: list[int] | None = Field(default=None, min_length=1, max_length=MAX_VERSION_PARTS,
                                      json_schema_extra={"items": {
                                          "type": "integer", "minimum": -_INT64,
                                          "maximum": _INT64 - 1}})


class InventoryBody(_Body):
    """``PUT /api/v1/devices/{id}/inventory`` and a check-in's ``inventory``."""

    vendor_id: str | None = Field(default=None, pattern=_UUID)
    class_id: str | None = Field(default=None, pattern=_UUID)
    components: list[ComponentBody] = Field(default_factory=list)
    hardware: dict[str, str | int | float | bool | None] | None = Field(
        default=None, max_length=MAX_FACTS, description="facts: short names, short values")
    capabilities: str | None = Field(default=None, description="base64 of a CBOR "
                                                               "SUIT_Capability_Report")
    recipient_keys: list[str] | None = Field(
        default=None, max_length=MAX_RECIPIENT_KEYS,
        description="base64 COSE_Keys of ECDH-ES public keys (P-256 or X25519)",
        json_schema_extra={"items": {"type": "string", "maxLength": MAX_RECIPIENT_KEY_TEXT}})


class CheckinBody(_Body):
    """``POST /api/v1/devices/{id}/checkin``: the inventory digest; the whole inventory only
    when it changed or the last answer asked for it (``send_inventory``)."""

    inventory_digest: str = Field(pattern=_DIGEST, max_length=MAX_INVENTORY_DIGEST)
    inventory: InventoryBody | None = None


class EventBody(_Body):
    """``POST /api/v1/devices/{id}/events``."""

    state: str = Field(json_schema_extra=_enum(STATES))
    detail: str = Field(default="", max_length=_MAX_DETAIL)


class ResetBody(_Body):
    """``POST /api/v1/devices/{id}/reset``."""

    reason: str = Field(default="", max_length=_MAX_DETAIL)


class ReportKeyBody(_Body):
    """``PUT /api/v1/devices/{id}/report-key``: a public key in PEM, or null to remove it."""

    report_key: str | None = Field(max_length=MAX_REPORT_KEY_TEXT)


class HealthRecordBody(_Body):
    check: str = Field(max_length=MAX_HEALTH_CHECK)
    ok: bool
    detail: str = Field(default="", max_length=MAX_HEALTH_TEXT)


class HealthBody(_Body):
    """``POST /api/v1/devices/{id}/health``."""

    release: str = Field(pattern=_DIGEST, max_length=128)
    status: str = Field(json_schema_extra=_enum(HEALTH_STATUSES))
    window: float = Field(default=0, ge=0, le=MAX_HEALTH_WINDOW)
    checks: int = Field(default=0, ge=0, le=_MAX_SEQ)
    failures: int = Field(default=0, ge=0, le=_MAX_SEQ)
    crashes: int = Field(default=0, ge=0, le=_MAX_SEQ)
    records: list[HealthRecordBody] = Field(default_factory=list,
                                            max_length=MAX_HEALTH_RECORDS)
    detail: str = Field(default="", max_length=MAX_HEALTH_TEXT)


class DeploymentBody(_Body):
    """``POST /api/v1/deployments``."""

    release: str = Field(pattern=_DIGEST, max_length=128,
                         description="the release id (manifest digest in hex)")
    envelope_url: str | None = Field(default=None, pattern=_URL, max_length=2048,
                                     description="left out: derived from the release")
    devices: list[str] = Field(min_length=1, max_length=1000,
                               json_schema_extra={"items": {"type": "string", "maxLength": 36}})


class TokenBody(_Body):
    """``POST /api/v1/tokens``."""

    name: str = Field(min_length=1, max_length=_MAX_NAME)
    role: str = Field(json_schema_extra=_enum(TOKEN_ROLES))
    expires_in_days: int = Field(default=90, ge=1, le=366)


class TargetBody(_Body):
    vendor_id: str | None = Field(default=None, pattern=_UUID)
    class_id: str | None = Field(default=None, pattern=_UUID)
    tags: list[str] = Field(default_factory=list,
                            json_schema_extra={"items": {"type": "string", "maxLength": 64}})
    devices: list[str] | None = Field(default=None, max_length=10_000, json_schema_extra={
        "items": {"type": "string", "maxLength": 36}})


class DeltaBody(_Body):
    precursor: str = Field(pattern=_DIGEST, max_length=64,
                           description="the SHA-256 of the image the delta applies to")
    release: str = Field(pattern=_DIGEST, max_length=128,
                         description="the delta's release id (manifest digest)")
    envelope_url: str | None = Field(default=None, pattern=_URL, max_length=2048)


class CampaignBody(_Body):
    """``POST /api/v1/campaigns``."""

    name: str = Field(default="", max_length=_MAX_NAME)
    release: str = Field(pattern=_DIGEST, max_length=128)
    envelope_url: str | None = Field(default=None, pattern=_URL, max_length=2048)
    target: TargetBody
    waves: list[float] = Field(default_factory=lambda: [100.0], max_length=20,
                               description="percentages of the target, cumulative")
    success_threshold: float = 1.0
    failure_threshold: float = 0.2
    mode: str = Field(default="install-now", json_schema_extra=_enum(MODES))
    start_after: str | None = Field(default=None, max_length=64,
                                    description="ISO 8601 with a time zone")
    window: str | None = Field(default=None, max_length=11,
                               description="a daily maintenance window HH:MM-HH:MM (UTC)")
    unhealthy_threshold: float | None = None
    health_window: float | None = None
    deltas: list[DeltaBody] = Field(default_factory=list, max_length=MAX_DELTAS)


class CampaignPreviewBody(CampaignBody):
    """``POST /api/v1/campaigns/preview``: a campaign's body, ``release`` optional."""

    release: str | None = Field(default=None, pattern=_DIGEST,  # type: ignore[assignment]
                                max_length=128)


class ClassBody(_Body):
    """``PUT /api/v1/classes/{class_id}``: ``vendor_name``, ``class_name`` or both."""

    vendor_id: str | None = Field(default=None, pattern=_UUID,
                                  description="left out: the registry's or a device's")
    vendor_name: str | None = Field(default=None, min_length=1, max_length=MAX_CLASS_NAME)
    class_name: str | None = Field(default=None, min_length=1, max_length=MAX_CLASS_NAME)
    vendor_domain: str | None = Field(
        default=None, min_length=1, max_length=MAX_VENDOR_DOMAIN,
        description="known: the names must derive the IDs (UUID5, §8.4.8.1-2), 422 otherwise")


class PauseBody(_Body):
    """``POST /api/v1/campaigns/{id}/pause`` (optional)."""

    reason: str = Field(default="", max_length=512)


class TagsBody(_Body):
    """``PUT /api/v1/devices/{id}/tags``."""

    tags: list[str] = Field(json_schema_extra={"items": {"type": "string", "maxLength": 64}})


# ============================================================================ answers


class DeviceCreated(_Answer):
    id: str
    secret: str = Field(description="shown this once")
    token: str = Field(description="the device credential <id>.<secret>")


class InstalledComponent(_Answer):
    id: list[str]
    sequence: int | None
    digest: str | None
    version: list[int] | None


class Anchors(_Answer):
    version: int | None
    digest: str | None


class HealthState(_Answer):
    """What a device said last of the health of a release it confirmed."""

    release: str
    status: str
    confirmed: str | None
    window: float
    checks: int
    failures: int
    crashes: int
    records: list[dict[str, Any]]
    detail: str
    unhealthy: str | None
    updated: str | None


class Device(_Answer):
    """A device, as listed (``components`` with ``?components=true``) or read alone (with
    ``components``, ``anchors``, ``capabilities`` and ``health``)."""

    id: str
    name: str
    created: str | None
    last_seen: str | None
    vendor_id: str | None
    class_id: str | None
    hardware: dict[str, Any] | None
    state: str | None
    state_changed: str | None
    inventory_updated: str | None
    tags: list[str]
    recipient_keys: list[str]
    report_key: bool
    vendor_name: str | None = Field(default=None, description="the registry's name of its "
                                                               "vendor (null: not known)")
    class_name: str | None = Field(default=None, description="the registry's name of its "
                                                             "class (null: not known)")
    version: str | None = Field(default=None, description="the version it runs: its release's "
                                                          "or its components' (null: none)")
    components: list[InstalledComponent] | None = None
    anchors: Anchors | None = None
    capabilities: dict[str, Any] | None = None
    health: list[HealthState] | None = None


class DevicePage(_Answer):
    devices: list[Device]
    next: str | None
    total: int | None = None


class Event(_Answer):
    kind: str = Field(json_schema_extra={"enum": ["event"]})
    seq: int
    state: str
    previous: str | None
    detail: str
    timestamp: str | None


class StoredReport(_Answer):
    kind: str = Field(json_schema_extra={"enum": ["report"]})
    seq: int
    id: int
    received: str | None
    size: int
    summary: dict[str, Any]


class HistoryEntry(_Answer):
    """An event or a report's summary (``kind``)."""

    kind: str = Field(json_schema_extra=_enum(("event", "report")))
    seq: int


class History(_Answer):
    id: str
    history: list[HistoryEntry]
    next: str | None
    total: int | None = None


class HealthAnswer(_Answer):
    release: str
    status: str
    rollback: bool = Field(description="the tracker tells the device to roll it back")
    health: HealthState


class HealthList(_Answer):
    health: list[HealthState]


class PendingUpdate(_Answer):
    """The release the device is to fetch and what to do with it."""

    release: str
    envelope_url: str
    action: str
    campaign: str | None
    nonce: str | None


class Rollback(_Answer):
    release: str


class CheckinAnswer(_Answer):
    """The pending release (the members of ``PendingUpdate``) or ``release: null``."""

    release: str | None
    envelope_url: str | None = None
    action: str | None = None
    campaign: str | None = None
    nonce: str | None = None
    state: str | None
    send_inventory: bool
    poll_after: float
    rollback: Rollback | None = None


class Notice(_Answer):
    """A long-poll's answer (and each server-sent event's data): the pending update, or
    ``release: null``, with its ``serial``."""

    serial: int
    release: str | None = None


class ReportKeyAnswer(_Answer):
    id: str
    report_key: bool


class CapabilitiesAnswer(_Answer):
    id: str
    capabilities: dict[str, Any]


class DeployedDevice(_Answer):
    id: str
    event: Event | None


class Deployment(_Answer):
    release: str
    envelope_url: str
    devices: list[DeployedDevice]


class Token(_Answer):
    id: str
    name: str
    role: str
    created: str | None
    expires: str | None
    revoked: str | None
    last_used: str | None
    created_by: str | None


class TokenCreated(Token):
    token: str = Field(description="tok_<id>.<secret>, shown this once")


class TokenList(_Answer):
    tokens: list[Token]
    next: str | None
    total: int | None = None


class Whoami(_Answer):
    role: str
    name: str
    token_id: str | None
    device_id: str | None


class AuditEntry(_Answer):
    id: int
    timestamp: str | None
    actor: str
    role: str
    action: str
    target: str
    detail: str


class AuditLog(_Answer):
    entries: list[AuditEntry]
    next: str | None
    total: int | None = None


class Campaign(_Answer):
    id: str
    name: str
    release: str
    release_version: str | None = Field(default=None, description="the release's version "
                                                                  "(null: it has none)")
    envelope_url: str
    target: dict[str, Any] = Field(description="vendor_id, class_id, tags, devices; with "
                                               "class_name and vendor_name when it names a "
                                               "class")
    waves: list[float]
    success_threshold: float
    failure_threshold: float
    mode: str
    start_after: str | None
    window: str | None
    status: str
    pause_reason: str | None
    created_by: str | None
    created: str | None
    approved_by: str | None
    approved: str | None
    started: str | None
    finished: str | None
    triggered: str | None
    current_wave: int
    devices: int
    unhealthy_threshold: float | None
    health_window: float | None
    deltas: list[dict[str, Any]]


class CampaignMember(_Answer):
    device_id: str
    wave: int
    state: str
    times: dict[str, str]
    detail: str | None
    health: str | None


class CampaignDetail(Campaign):
    """A campaign with counts per state and per wave, a page of members and its log."""

    counts: dict[str, int]
    waves_detail: list[dict[str, Any]]
    members: list[CampaignMember]
    members_offset: int
    log: list[dict[str, Any]]
    health: dict[str, int] | None = None


class CampaignPage(_Answer):
    campaigns: list[Campaign]
    next: str | None
    total: int | None = None


class CampaignMembers(_Answer):
    id: str
    members: list[CampaignMember]
    next: str | None
    total: int | None = None


class CampaignPreview(_Answer):
    devices: int = Field(description="devices the target matches now")
    waves: list[int] = Field(description="devices each wave would get if it started now")


class ProgressPoint(_Answer):
    time: str | None
    done: int
    failed: int


class CampaignProgress(_Answer):
    started: str | None
    until: str | None
    devices: int
    series: list[ProgressPoint] = Field(description="empty before the start")


class FleetClass(_Answer):
    vendor_id: str | None
    class_id: str | None
    devices: int


class FleetVersion(_Answer):
    component: list[str]
    sequence: int | None
    version: list[int] | None
    devices: int


class Fleet(_Answer):
    """The fleet in counts (``GET /api/v1/fleet``)."""

    devices: int
    states: dict[str, int]
    classes: list[FleetClass]
    tags: dict[str, int]
    versions: list[FleetVersion]


class DeviceClass(_Answer):
    vendor_id: str | None
    class_id: str
    vendor_name: str | None
    class_name: str | None
    vendor_domain: str | None
    source: str | None = Field(description="manifest or operator (null: not named)")
    devices: int


class ClassPage(_Answer):
    classes: list[DeviceClass]
    next: str | None
    total: int | None = None


class Tags(_Answer):
    id: str
    tags: list[str]


# ============================================================================ OpenAPI


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written in place (no ``$defs``): an
    ``openapi_extra`` body needs no components of its own."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` of a route whose JSON body ``model`` describes (the route reads the
    body itself: ``web.json_object``)."""
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": inline_schema(model)}}}}
