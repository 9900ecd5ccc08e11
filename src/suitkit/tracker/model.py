"""The status tracker's tables and its update state machine (RFC 9019 §3).

SQLAlchemy 2 models (``DeclarativeBase`` / ``Mapped``): devices, their inventory, state events
and SUIT reports, assignments, API tokens, the audit log, and the campaign tables
(``campaigns``, ``campaign_members``, ``campaign_log``), all on one ``Base.metadata`` that the
Alembic migrations (``tracker/migrations``) compare against. ``TRANSITIONS`` says which state of
an update may follow which.

Deliberately not here: queries and transactions (``tracker.store``), the rules that use the
state machine (``tracker.service``), anything about a protocol.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "DEVICE_STATES",
    "FINAL_STATES",
    "HEALTH_STATUSES",
    "MAX_CAPABILITY_BYTES",
    "MAX_CLASS_NAME",
    "MAX_HEALTH_ROWS",
    "MAX_INVENTORY_DIGEST",
    "MAX_RECIPIENT_KEYS",
    "MAX_RECIPIENT_KEY_TEXT",
    "MAX_REPORT_KEY_TEXT",
    "MAX_TOKEN_ID",
    "MAX_VENDOR_DOMAIN",
    "MAX_VERSION_PARTS",
    "NONCE_BYTES",
    "REPORT_STATES",
    "STATES",
    "TOKEN_ROLES",
    "TRANSITIONS",
    "UNHEALTHY",
    "ApiToken",
    "Assignment",
    "AuditEntry",
    "Base",
    "Campaign",
    "CampaignLog",
    "CampaignMember",
    "Device",
    "DeviceClass",
    "DeviceEvent",
    "DeviceHealth",
    "DeviceNotice",
    "DeviceReport",
    "InstalledComponent",
    "Release",
]

STATES = ("notified", "downloading", "downloaded", "installing", "waiting", "rebooting",
          "succeeded", "failed", "rolled-back")
"""The states of one update on one device, in the order a successful update passes them
(``waiting`` only when the manifest waits: update-management §5.6)."""
FINAL_STATES = frozenset({"succeeded", "failed", "rolled-back"})
DEVICE_STATES = frozenset(STATES) - {"notified"}
"""The states a device reports itself; ``notified`` is the tracker's own (a deployment or a
campaign assigns a release)."""
REPORT_STATES = frozenset({"downloading", "downloaded", "installing", "waiting"})
"""The states in which a device may send the SUIT report of its update (the processor runs
between ``downloading`` and ``rebooting``; a waiting install sends it once the wait ends)."""

TRANSITIONS: Mapping[str | None, frozenset[str]] = {
    None: frozenset({"notified"}),  # a newly registered device
    "notified": frozenset({"downloading", "failed"}),
    "downloading": frozenset({"downloaded", "failed"}),
    "downloaded": frozenset({"installing", "failed"}),
    "installing": frozenset({"waiting", "rebooting", "failed"}),
    # update-management §5.6: the manifest's wait directive holds the install until its
    # events hold; the device then goes on (rebooting), gives up (failed), or starts over
    "waiting": frozenset({"installing", "rebooting", "failed"}),
    "rebooting": frozenset({"succeeded", "failed", "rolled-back"}),
    "succeeded": frozenset({"notified"}),
    "failed": frozenset({"notified"}),
    "rolled-back": frozenset({"notified"}),
}
"""Allowed ``state -> next states``; ``None`` is a device that has reported no state yet."""

HEALTH_STATUSES = ("watching", "healthy", "unhealthy", "rolled-back")
"""What a device says of the application it confirmed (``DeviceHealth.status``): ``watching``
(inside its health window, every check passed so far), ``healthy`` (the window ended with every
check passed), ``unhealthy`` (a check failed) or ``rolled-back`` (it reverted to the previous
image after it was found unhealthy)."""
UNHEALTHY = frozenset({"unhealthy", "rolled-back"})

TOKEN_ROLES = ("admin", "author", "operator")
"""The roles an API token can have (devices authenticate with their own credentials)."""
MAX_TOKEN_ID = 32
"""The longest API token id (the column's size)."""
MAX_AUDIT_TEXT = 512
MAX_INVENTORY_DIGEST = 128
"""The longest inventory digest a check-in may name (hex characters: 64 bytes)."""
MAX_CAPABILITY_BYTES = 4096
"""The largest SUIT_Capability_Report a device may have stored (encoded CBOR)."""
MAX_RECIPIENT_KEYS = 8
"""The ECDH-ES public keys one device may publish (``Device.recipient_keys``)."""
MAX_RECIPIENT_KEY_TEXT = 1024
"""The longest published recipient key (base64 of its COSE_Key)."""
MAX_REPORT_KEY_TEXT = 4096
"""The longest registered report key (a PEM public key, or a COSE KEY PEM block)."""
MAX_VERSION_PARTS = 16
"""The most integers a component's version may have (``[+int]``, update-management §4.4)."""
NONCE_BYTES = 16
"""The size of the nonce the tracker issues with each update (``Assignment.nonce``)."""


class Base(DeclarativeBase):
    """The metadata every table of the tracker shares (one schema, one migration history)."""


class Device(Base):
    """A registered device: identity, credential hash, inventory facts, current update state."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    credential_hash: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    vendor_id: Mapped[str | None] = mapped_column(String(36), default=None)
    class_id: Mapped[str | None] = mapped_column(String(36), default=None)
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str | None] = mapped_column(String(16), default=None)
    state_changed: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    inventory_updated: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    inventory_digest: Mapped[str | None] = mapped_column(String(MAX_INVENTORY_DIGEST),
                                                         default=None)
    """The device's own digest of the inventory stored (``POST .../checkin``): a check-in
    naming it again writes nothing; ``None`` until a check-in sent one, and again after an
    inventory came without one (``PUT .../inventory``)."""
    history_count: Mapped[int] = mapped_column(Integer, default=0)
    tags: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    """Operator-given labels campaigns target (``campaigns.CampaignEngine.set_tags``)."""
    capabilities: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    """The device's latest SUIT_Capability_Report (report §6) as it sent it (CBOR, at most
    ``MAX_CAPABILITY_BYTES``), from its inventory or a SUIT report; ``None``: none yet."""
    recipient_keys: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    """The device's ECDH-ES public keys (base64 COSE_Keys, at most ``MAX_RECIPIENT_KEYS``),
    which authors encrypt for (draft-ietf-suit-firmware-encryption)."""
    report_key: Mapped[str | None] = mapped_column(Text, default=None)
    """The public key the device signs its reports with (PEM; report §8), given when it was
    registered; ``None``: its reports cannot be signed."""

    __table_args__ = (Index("ix_devices_created_id", "created", "id"),  # the list's pages
                      # its filters and sorts (migration 0012_lists)
                      Index("ix_devices_state_created_id", "state", "created", "id"),
                      Index("ix_devices_class_id_created_id", "class_id", "created", "id"),
                      Index("ix_devices_last_seen_id", "last_seen", "id"),
                      Index("ix_devices_name_id", "name", "id"))


class InstalledComponent(Base):
    """One component of a device's inventory: its identifier, sequence number and digest."""

    __tablename__ = "installed_components"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    position: Mapped[int] = mapped_column(Integer)
    component_id: Mapped[list[str]] = mapped_column(JSON)
    # a uint64 does not fit a signed BIGINT: kept as its decimal text
    sequence_number: Mapped[str | None] = mapped_column(String(20), default=None)
    digest: Mapped[str | None] = mapped_column(String(128), default=None)
    version: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    """The running image's version (``[+int]``, update-management §4.4), if the device knows
    it."""


class DeviceEvent(Base):
    """One state change of a device's update, as the device reported it."""

    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_device_id_seq", "device_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    previous: Mapped[str | None] = mapped_column(String(16), default=None)
    detail: Mapped[str] = mapped_column(Text, default="")
    timestamp: Mapped[datetime] = mapped_column(DateTime, index=True)  # retention


class DeviceReport(Base):
    """One SUIT report a device sent: the bytes as received and a decoded summary."""

    __tablename__ = "device_reports"
    __table_args__ = (Index("ix_device_reports_device_id_seq", "device_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    seq: Mapped[int] = mapped_column(Integer)
    received: Mapped[datetime] = mapped_column(DateTime, index=True)  # retention
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """``len(raw)``: for the per-device quota in bytes, and so a history page reads no raw."""
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)


class Assignment(Base):
    """The release a device should install (one per device: the latest deployment wins)."""

    __tablename__ = "assignments"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           primary_key=True)
    release: Mapped[str] = mapped_column(String(128))
    envelope_url: Mapped[str] = mapped_column(String(2048))
    created: Mapped[datetime] = mapped_column(DateTime)
    done: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    """When the device reported a final state for it; ``None`` while pending."""
    campaign_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    """The campaign that made it (``campaigns``), ``None`` for a direct deployment."""
    action: Mapped[str] = mapped_column(String(16), default="install", server_default="install")
    """``install``, or ``download`` (stop at ``downloaded``: the assignment is then done)."""
    reported: Mapped[int | None] = mapped_column(Integer, default=None)
    """The history ``seq`` of the report the device sent for this update, ``None`` until then
    (one report per update); cleared when a new update starts (``notified``). Kept here, not
    read from the history: quotas and retention delete history rows."""
    nonce: Mapped[str | None] = mapped_column(String(2 * NONCE_BYTES), default=None)
    """The nonce issued with this update (hex; report §4 suit-report-nonce): a new random one
    each time the assignment starts a new update (``created`` is set); the device puts it in
    its report, and the tracker takes a report that names it once, until it expires."""
    rollback: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    """When the tracker told the device to roll this update back (it was found unhealthy
    inside its campaign's health window); an order older than ``created`` is another
    update's and means nothing."""


@event.listens_for(Assignment.created, "set")
def _new_nonce(target: Assignment, value: object, old: object, initiator: object) -> None:
    """Every new update (a new or reused assignment row gets its ``created``) gets a new
    nonce, wherever it is made (deployments, campaigns)."""
    target.nonce = secrets.token_hex(NONCE_BYTES)


class DeviceHealth(Base):
    """What a device last said of the health of the release it confirmed (one row per device
    and release; the newest ``MAX_HEALTH_ROWS`` of a device are kept): the status, its health
    window, the checks run, failed and the application's crashes, and a few typed records."""

    __tablename__ = "device_health"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           primary_key=True)
    release: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    confirmed: Mapped[datetime] = mapped_column(DateTime)
    """When the device reported the release ``succeeded`` (the start of its health window),
    as the tracker's clock has it."""
    window: Mapped[float] = mapped_column(Float, default=0.0)
    """The device's health window in seconds (its own configuration)."""
    checks: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    crashes: Mapped[int] = mapped_column(Integer, default=0)
    records: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    detail: Mapped[str] = mapped_column(Text, default="")
    unhealthy: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    """When the device first reported the release unhealthy, ``None`` while it has not."""
    updated: Mapped[datetime] = mapped_column(DateTime)


MAX_HEALTH_ROWS = 8
"""Health rows kept per device (the newest by ``updated``)."""


class DeviceNotice(Base):
    """The serial of a device's latest notice (``tracker.notices``): bumped by one in the
    transaction that changes what the device should do (``store.Tx.announce``), so every
    replica hands out the same serial for the same change and ``?after=<serial>`` means the
    same on each. A device without a row has had no change yet (serial 1; the first change
    makes it 2), so a device's first ``after=0`` is answered at once. A table of its own,
    not a column of ``devices``: bumps take their rows last in a transaction, in id order, so
    they never wait in a cycle with the device-row locks taken before them."""

    __tablename__ = "device_notices"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger, default=0)


class Release(Base):
    """A release the firmware server holds (issue #12: the database, not a replica's disk, is
    the record of which releases exist). Written when the upload commits; ``record`` is the
    firmware server's release record (``server.store.ReleaseRecord.to_json``: components and
    their blobs, which live in the shared blob directory)."""

    __tablename__ = "releases"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    """The manifest digest, lower-case hex."""
    sequence_number: Mapped[int] = mapped_column(BigInteger)
    envelope: Mapped[str] = mapped_column(String(64))
    """The SHA-256 of the envelope (its blob), lower-case hex."""
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime)


MAX_CLASS_NAME = 128
"""The longest vendor or class name of the class registry (``DeviceClass``)."""
MAX_VENDOR_DOMAIN = 253
"""The longest vendor domain name (a DNS name: RFC 1035's 253 characters)."""


class DeviceClass(Base):
    """A device class by name (issue #17): the vendor and class names of a class ID, from a
    release's manifest text (vendor-name, model-name, vendor-domain: manifest §8.4.4) or set
    by an operator. When the vendor domain is known the IDs are checked against the
    derivation the manifest recommends (§8.4.8.1-2: vendor ID = UUID5(DNS, domain), class ID
    = UUID5(vendor ID, class name)). An operator's names are kept over a manifest's."""

    __tablename__ = "device_classes"

    class_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vendor_id: Mapped[str] = mapped_column(String(36))
    vendor_name: Mapped[str | None] = mapped_column(String(MAX_CLASS_NAME), default=None)
    class_name: Mapped[str | None] = mapped_column(String(MAX_CLASS_NAME), default=None)
    vendor_domain: Mapped[str | None] = mapped_column(String(MAX_VENDOR_DOMAIN), default=None)
    source: Mapped[str] = mapped_column(String(16))
    """``manifest`` (from a release's text: a later release's text replaces it) or
    ``operator`` (``PUT /api/v1/classes/{id}``: a manifest no longer changes it)."""
    updated: Mapped[datetime] = mapped_column(DateTime)
    updated_by: Mapped[str] = mapped_column(String(128))
    """Who set the names: an operator's name, or ``release <id>``."""


class ApiToken(Base):
    """An API token (admin, author or operator): only the hash of its secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(MAX_TOKEN_ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime] = mapped_column(DateTime)
    expires: Mapped[datetime] = mapped_column(DateTime)
    revoked: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    last_used: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    created_by: Mapped[str] = mapped_column(String(128))


class AuditEntry(Base):
    """Who did what, when: token changes, device registrations, deployments."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(MAX_AUDIT_TEXT))
    detail: Mapped[str] = mapped_column(Text, default="")



class Campaign(Base):
    """One campaign: what, to whom, how, and where it is in its life cycle."""

    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    release: Mapped[str] = mapped_column(String(128))
    envelope_url: Mapped[str] = mapped_column(String(2048))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    waves: Mapped[list[float]] = mapped_column(JSON)
    success_threshold: Mapped[float] = mapped_column(Float)
    failure_threshold: Mapped[float] = mapped_column(Float)
    mode: Mapped[str] = mapped_column(String(24))
    start_after: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    window: Mapped[str | None] = mapped_column(String(11), default=None)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created: Mapped[datetime] = mapped_column(DateTime)
    approved_by: Mapped[str | None] = mapped_column(String(128), default=None)
    approved: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    started: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    finished: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    triggered: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    updated: Mapped[datetime] = mapped_column(DateTime)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    failures_acknowledged: Mapped[int] = mapped_column(Integer, default=0)
    pause_reason: Mapped[str | None] = mapped_column(Text, default=None)
    unhealthy_threshold: Mapped[float | None] = mapped_column(Float, default=None)
    """Pause when more than this fraction of the confirmed members turned unhealthy inside
    ``health_window``; ``None``: health does not gate the campaign."""
    health_window: Mapped[float | None] = mapped_column(Float, default=None)
    """Seconds after a member confirmed during which its health counts (and an unhealthy
    member is told to roll back); with it a member counts as a success for the waves only
    once its window has passed healthy."""
    unhealthy_acknowledged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Unhealthy members an operator's resume accepted (as ``failures_acknowledged``)."""
    deltas: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, default=None)
    """Delta releases of ``release``: ``[{"precursor", "release", "envelope_url"}]``, the
    precursor the SHA-256 (hex) of the image a device must run for that delta (docs/delta.md);
    a device running none of them gets the full release."""


class CampaignMember(Base):
    """One device of a started campaign: its wave, state and a timestamp per state."""

    __tablename__ = "campaign_members"
    __table_args__ = (  # its members' pages (migration 0012_lists)
        Index("ix_campaign_members_campaign_id_position", "campaign_id", "position"),)

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"),
                                             primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    times: Mapped[dict[str, str]] = mapped_column(JSON)
    detail: Mapped[str] = mapped_column(Text, default="")
    updated: Mapped[datetime] = mapped_column(DateTime)
    health: Mapped[str | None] = mapped_column(String(16), default=None)
    """The member's health (``HEALTH_STATUSES``) for this campaign's release once it
    confirmed; ``None`` before, or while its device said nothing of it."""
    unhealthy: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    """When it was first reported unhealthy inside the campaign's health window."""
    confirmed: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    """When its device reported ``succeeded`` (the start of its health window)."""


class CampaignLog(Base):
    """What happened to a campaign: operator actions and the engine's own decisions."""

    __tablename__ = "campaign_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"),
                                             index=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")

