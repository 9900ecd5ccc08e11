"""The status tracker's database: devices, inventory, state events and SUIT reports (RFC 9019 §3).

SQLAlchemy 2 models (``DeclarativeBase`` / ``Mapped``) on a synchronous engine; SQLite by default
(``sqlite:///DATA/tracker.db``), PostgreSQL for scale (``postgresql+psycopg://...``).
``open_db(url)`` brings the schema to the newest revision with Alembic (``upgrade_schema``; the
revisions are in ``tracker/migrations/versions``).

Device credentials and API tokens (RFC 9019 §3: every exchange with the tracker is
authenticated): a device or token is given a 256-bit random secret once; only its SHA-256
(``sha256$<hex>``) is stored, and checks compare hashes in constant time. A secret with 256 bits
of entropy needs no slow KDF (PBKDF2-100k would cost ~50 ms per request); hashes written by
earlier versions (``pbkdf2-sha256$...``) are still accepted. A check for an unknown id costs the
same hash computation as one for a known id.

API tokens (``ApiToken``: admin, author or operator) expire and can be revoked; ``check_token``
says which. The audit log (``AuditEntry``) records who did what: ``record_audit``/``audit_log``.

The update state machine (``TRANSITIONS``) is enforced here, under a lock on the device's row
(``UPDATE devices SET history_count = history_count + 1`` first), so two concurrent events
cannot both move the device from the same state. The same counter orders a device's history:
events and reports share one sequence per device.

Deployments (RFC 9019 client-initiated mode): ``deploy`` records, per device, the release it
should install (``Assignment``; one row per device, the latest deployment wins) and moves the
device to ``notified``; the assignment is pending until the device reports a final state.

Campaigns (``campaigns``) share these models' metadata: ``add_event`` moves a campaign member
and ``pending_update`` holds back a paused campaign's devices, inside the same transaction.

Deliberately not here: PostgreSQL-specific tuning, deleting devices, rotating a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.util.exc import CommandError
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, defer, mapped_column, sessionmaker

from suitkit.errors import StorageError, StorageFullError
from suitkit.tracker.quotas import Quotas

__all__ = [
    "DEVICE_STATES",
    "FINAL_STATES",
    "INITIAL_REVISION",
    "REPORT_STATES",
    "STATES",
    "TOKEN_ROLES",
    "TRANSITIONS",
    "ApiToken",
    "Assignment",
    "AssignmentListener",
    "AuditEntry",
    "ComponentEntry",
    "DeploymentRefused",
    "Device",
    "DeviceEvent",
    "DeviceReport",
    "IdentityRefused",
    "InstalledComponent",
    "Inventory",
    "NotAssigned",
    "Page",
    "TokenCheck",
    "TrackerDB",
    "TransitionRefused",
    "alembic_config",
    "downgrade_schema",
    "hash_secret",
    "migrate",
    "open_db",
    "page_of",
    "pbkdf2_hash",
    "upgrade_schema",
    "verify_secret",
]

STATES = ("notified", "downloading", "downloaded", "installing", "rebooting", "succeeded",
          "failed", "rolled-back")
"""The states of one update on one device, in the order a successful update passes them."""
FINAL_STATES = frozenset({"succeeded", "failed", "rolled-back"})
DEVICE_STATES = frozenset(STATES) - {"notified"}
"""The states a device reports itself; ``notified`` is the tracker's own (a deployment or a
campaign assigns a release)."""
REPORT_STATES = frozenset({"downloading", "downloaded", "installing"})
"""The states in which a device may send the SUIT report of its update (the processor runs
between ``downloading`` and ``rebooting``)."""

TRANSITIONS: Mapping[str | None, frozenset[str]] = {
    None: frozenset({"notified"}),  # a newly registered device
    "notified": frozenset({"downloading", "failed"}),
    "downloading": frozenset({"downloaded", "failed"}),
    "downloaded": frozenset({"installing", "failed"}),
    "installing": frozenset({"rebooting", "failed"}),
    "rebooting": frozenset({"succeeded", "failed", "rolled-back"}),
    "succeeded": frozenset({"notified"}),
    "failed": frozenset({"notified"}),
    "rolled-back": frozenset({"notified"}),
}
"""Allowed ``state -> next states``; ``None`` is a device that has reported no state yet."""

AssignmentListener = Callable[[Sequence[str]], None]
"""Called with the ids of devices whose assignment changed (see ``TrackerDB.add_listener``)."""

_log = logging.getLogger(__name__)
SEEN_RESOLUTION = timedelta(seconds=30)
"""``last_seen`` and ``last_used`` are kept to this resolution: a check-in that authenticates
writes them at most once per interval (a write per request halves check-in throughput)."""
_KDF_ITERATIONS = 100_000
_KDF_NAME = "pbkdf2-sha256"
_SHA256 = "sha256"
_DUMMY_HASH = f"{_SHA256}${'00' * 32}"
TOKEN_ROLES = ("admin", "author", "operator")
"""The roles an API token can have (devices authenticate with their own credentials)."""
_MAX_TOKEN_ID = 32
_MAX_AUDIT_TEXT = 512
_IN_BATCH = 500  # ids per IN (...): well under any database's bound-parameter limit


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------- credentials


def hash_secret(secret: str) -> str:
    """``sha256$<hex>`` of ``secret``: for 256-bit random secrets only (never passwords)."""
    return f"{_SHA256}${hashlib.sha256(secret.encode()).hexdigest()}"


def pbkdf2_hash(secret: str, *, iterations: int = _KDF_ITERATIONS) -> str:
    """``pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>``: the earlier format, still accepted
    by ``verify_secret`` (kept for existing databases and tests)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"{_KDF_NAME}${iterations}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` (``sha256$`` or the earlier ``pbkdf2-sha256$``;
    constant-time comparison of the hashes)."""
    try:
        name, *rest = stored.split("$")
        if name == _SHA256 and len(rest) == 1:
            actual = hashlib.sha256(secret.encode()).digest()
            return hmac.compare_digest(actual, bytes.fromhex(rest[0]))
        if name != _KDF_NAME or len(rest) != 3:
            return False
        iterations, salt, expected = rest
        actual = hashlib.pbkdf2_hmac("sha256", secret.encode(), bytes.fromhex(salt),
                                     int(iterations))
        return hmac.compare_digest(actual, bytes.fromhex(expected))
    except ValueError:
        return False


# --------------------------------------------------------------------------------- models


class _Base(DeclarativeBase):
    pass


class Device(_Base):
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
    history_count: Mapped[int] = mapped_column(Integer, default=0)
    tags: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    """Operator-given labels campaigns target (``campaigns.CampaignEngine.set_tags``)."""

    __table_args__ = (Index("ix_devices_created_id", "created", "id"),)  # the list's pages


class InstalledComponent(_Base):
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


class DeviceEvent(_Base):
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


class DeviceReport(_Base):
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


class Assignment(_Base):
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


class ApiToken(_Base):
    """An API token (admin, author or operator): only the hash of its secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(_MAX_TOKEN_ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime] = mapped_column(DateTime)
    expires: Mapped[datetime] = mapped_column(DateTime)
    revoked: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    last_used: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    created_by: Mapped[str] = mapped_column(String(128))


class AuditEntry(_Base):
    """Who did what, when: token changes, device registrations, deployments."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(_MAX_AUDIT_TEXT))
    detail: Mapped[str] = mapped_column(Text, default="")


# --------------------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list in a stable order (keyset pagination): ``items``, and ``next``, the
    sort key of the last item when more may follow (``None`` on the last page)."""

    items: list[dict[str, Any]]
    next: tuple[Any, ...] | None


def page_of(rows: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], limit: int) -> Page:
    """The first ``limit`` of ``rows`` (sort key, item), fetched ``limit + 1`` at most: one
    more row than the page tells whether a next page exists."""
    shown = list(rows[:limit])
    more = len(rows) > limit and bool(shown)
    return Page([doc for _, doc in shown], shown[-1][0] if more else None)


class DeploymentRefused(Exception):
    """A deployment to a device that does not exist or is in the middle of an update."""

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        self.unknown = unknown
        super().__init__(message)


class TransitionRefused(Exception):
    """An event whose state the device cannot reach from its current state."""

    def __init__(self, current: str | None, wanted: str) -> None:
        self.current = current
        self.wanted = wanted
        allowed = ", ".join(sorted(TRANSITIONS.get(current, frozenset()))) or "nothing"
        shown = current if current is not None else "(no state yet)"
        super().__init__(f"transition from {shown} to {wanted} is not allowed; from {shown} "
                         f"a device may go to: {allowed}")


class NotAssigned(Exception):
    """A device's state or report that is not about its current assignment (none pending, a
    report for another release, or a second report of the same update)."""


class IdentityRefused(Exception):
    """An inventory whose vendor or class ID contradicts the device's registration."""


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The outcome of ``TrackerDB.check_token``: ``status`` is ``"valid"``, ``"invalid"``
    (unknown id or wrong secret), ``"expired"`` or ``"revoked"``; name and role are set only
    when the secret was right."""

    status: str
    name: str | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class ComponentEntry:
    """One inventory component, validated by the API."""

    component_id: tuple[str, ...]
    sequence_number: int | None
    digest: str | None


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a device says it is and holds, validated by the API."""

    vendor_id: str | None
    class_id: str | None
    components: tuple[ComponentEntry, ...]
    hardware: Mapping[str, object]


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC).isoformat()


def _naive(moment: datetime) -> datetime:
    """UTC without tzinfo: what SQLite's DateTime gives back, so stored values compare."""
    return moment.astimezone(UTC).replace(tzinfo=None)


class TrackerDB:
    """The tracker's operations over one engine; every method is one transaction.

    ``clock`` gives the current time (design.md §3.1: time is a parameter).

    Raises (every method): ``StorageError`` when the database fails.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utcnow,
                 quotas: Quotas | None = None) -> None:
        self.engine = engine
        self.quotas = quotas if quotas is not None else Quotas()
        """What one device may keep (``tracker.quotas``): applied by ``add_event``,
        ``add_report`` and ``prune``."""
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock
        self._listeners: list[AssignmentListener] = []
        self._touch_logged = -60.0

    def add_listener(self, listener: AssignmentListener) -> None:
        """Call ``listener(device_ids)`` after every committed change of those devices'
        assignments (new, replaced, withdrawn): what push notifications hang on.

        Listeners run in the thread that made the change, after the commit; they must not
        block and must not raise (an exception is logged and ignored: the change is stored).
        """
        self._listeners.append(listener)

    def announce(self, device_ids: Sequence[str]) -> None:
        """Tell the listeners that ``device_ids``' assignments changed (after the commit)."""
        if not device_ids:
            return
        ids = tuple(dict.fromkeys(device_ids))
        for listener in self._listeners:
            try:
                listener(ids)
            except Exception:  # noqa: BLE001 - a listener must not undo a stored change
                _log.exception("assignment listener %r failed", listener)

    def _now(self) -> datetime:
        return _naive(self._clock())

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """One transaction. Raises ``StorageFullError`` when the disk or database is full
        (the transaction was rolled back: nothing of it is kept), ``StorageError`` else."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as e:
            if _is_full(e):
                raise StorageFullError(f"tracker database: the disk is full: "
                                       f"{_describe(e)}") from e
            raise StorageError(f"tracker database: {_describe(e)}") from e

    def _touch(self, statement: Any) -> None:
        """Run ``statement`` (a ``last_seen``/``last_used`` mark) in its own transaction, and
        carry on if it fails: a read must keep working on a full disk or a busy database,
        and a missed mark costs nothing (the next call makes it). A failure is logged at
        most once a minute."""
        try:
            with self._sessions.begin() as session:
                session.execute(statement)
        except SQLAlchemyError as e:
            now = time.monotonic()
            if now - self._touch_logged >= 60.0:
                self._touch_logged = now
                _log.warning("could not record when a credential was last used (the "
                             "request goes on): %s", _describe(e))

    # ---- devices and credentials

    def register(self, name: str, *, vendor_id: str | None = None,
                 class_id: str | None = None) -> tuple[str, str]:
        """A new device called ``name``: (device id, secret). The secret is not stored.

        ``vendor_id``/``class_id``: the identity the device is registered with (else its first
        inventory gives it); later inventories must keep it (``set_inventory``)."""
        device_id = str(uuid.uuid4())
        secret = secrets.token_urlsafe(32)
        with self._session() as session:
            session.add(Device(id=device_id, name=name, credential_hash=hash_secret(secret),
                               created=self._now(), hardware={}, history_count=0,
                               vendor_id=vendor_id, class_id=class_id))
        return device_id, secret

    def authenticate(self, device_id: str, secret: str) -> bool:
        """Whether ``secret`` is ``device_id``'s credential; marks the device as seen (in a
        transaction of its own that may fail: on a full disk reads keep working)."""
        with self._session() as session:
            device = session.get(Device, device_id) if len(device_id) <= 36 else None
            stored = device.credential_hash if device is not None else _DUMMY_HASH
            ok = verify_secret(secret, stored) and device is not None
            last_seen = device.last_seen if device is not None else None
        now = self._now()
        if ok and (last_seen is None or now - last_seen >= SEEN_RESOLUTION):
            # a write at most once per resolution, not per call
            self._touch(update(Device).where(Device.id == device_id).values(last_seen=now))
        return ok

    def exists(self, device_id: str) -> bool:
        with self._session() as session:
            return session.get(Device, device_id) is not None

    def devices(self, *, components: bool = False) -> list[dict[str, Any]]:
        """Every device, oldest first; with ``components``, each with its installed components
        (read in one more query, for the dashboard's fleet overview)."""
        return self.devices_page(components=components, limit=None).items

    def devices_page(self, *, components: bool = False, limit: int | None = 500,
                     after: tuple[datetime, str] | None = None) -> Page:
        """At most ``limit`` devices (``None``: all), oldest first (by ``created``, then
        ``id``: unique, indexed), after the key ``after`` (``Page.next`` of the page before).
        A device registered meanwhile sorts after every older one: no device is shown twice
        or skipped."""
        with self._session() as session:
            query = select(Device).order_by(Device.created, Device.id)
            if after is not None:
                created, last_id = after
                # (created, id) > key, written so that the index gives a range (an OR alone
                # makes SQLite scan the whole index)
                query = query.where(Device.created >= created,
                                    or_(Device.created > created, Device.id > last_id))
            if limit is not None:
                query = query.limit(limit + 1)
            rows = list(session.scalars(query))
            installed: dict[str, list[InstalledComponent]] | None = None
            if components:
                installed = {}
                ids = [d.id for d in rows]
                for start in range(0, len(ids), _IN_BATCH):
                    for c in session.scalars(select(InstalledComponent).where(
                            InstalledComponent.device_id.in_(ids[start:start + _IN_BATCH]))
                            .order_by(InstalledComponent.device_id,
                                      InstalledComponent.position)):
                        installed.setdefault(c.device_id, []).append(c)
            items = [((d.created, d.id),
                      _device_json(d, None if installed is None else installed.get(d.id, [])))
                     for d in rows]
            return page_of(items, limit if limit is not None else len(items))

    def device(self, device_id: str) -> dict[str, Any] | None:
        """One device with its components, or ``None``."""
        with self._session() as session:
            device = session.get(Device, device_id)
            if device is None:
                return None
            components = session.scalars(
                select(InstalledComponent).where(InstalledComponent.device_id == device_id)
                .order_by(InstalledComponent.position))
            return _device_json(device, list(components))

    # ---- what devices send

    def set_inventory(self, device_id: str, inventory: Inventory) -> None:
        """Replace the device's inventory (identity, components, hardware facts).

        An inventory equal to the stored one writes nothing (a device sends it at every
        check-in; ``inventory_updated`` is when it last changed).

        The vendor and class IDs are the device's identity: once the registration or the first
        inventory gave them, an inventory that names others (or none) is refused, so that a
        credential used by another kind of device cannot overwrite this one's records.

        Raises:
            IdentityRefused: the inventory's vendor or class ID contradicts the registration.
        """
        with self._session() as session:
            device = session.get(Device, device_id)
            if device is None:
                raise StorageError(f"no device {device_id}")
            for field, registered, claimed in (("vendor_id", device.vendor_id,
                                                inventory.vendor_id),
                                               ("class_id", device.class_id,
                                                inventory.class_id)):
                if registered is not None and claimed != registered:
                    raise IdentityRefused(
                        f"{field}: device {device_id} is registered as {registered}; the "
                        f"inventory says {claimed or 'none'} (a credential belongs to the "
                        "device it was issued for)")
            old = list(session.scalars(select(InstalledComponent)
                                       .where(InstalledComponent.device_id == device_id)
                                       .order_by(InstalledComponent.position)))
            wanted = [(list(e.component_id),
                       str(e.sequence_number) if e.sequence_number is not None else None,
                       e.digest) for e in inventory.components]
            if (device.inventory_updated is not None
                    and device.vendor_id == inventory.vendor_id
                    and device.class_id == inventory.class_id
                    and device.hardware == dict(inventory.hardware)
                    and [(c.component_id, c.sequence_number, c.digest) for c in old] == wanted):
                return
            device.vendor_id = inventory.vendor_id
            device.class_id = inventory.class_id
            device.hardware = dict(inventory.hardware)
            device.inventory_updated = self._now()
            for row in old:
                session.delete(row)
            for position, (component_id, sequence, digest) in enumerate(wanted):
                session.add(InstalledComponent(
                    device_id=device_id, position=position, component_id=component_id,
                    sequence_number=sequence, digest=digest))

    def _lock(self, session: Session, device_id: str) -> int:
        """Lock the device's row for this transaction; the next history sequence number."""
        result = session.execute(update(Device).where(Device.id == device_id)
                                 .values(history_count=Device.history_count + 1))
        if getattr(result, "rowcount", 0) != 1:
            raise StorageError(f"no device {device_id}")
        count = session.scalar(select(Device.history_count).where(Device.id == device_id))
        assert count is not None
        return count

    def add_event(self, device_id: str, state: str, detail: str, *, by_device: bool = False
                  ) -> dict[str, Any]:
        """Move the device to ``state``.

        ``by_device``: the device itself reports it (``POST .../events``): it may report only
        the states of ``DEVICE_STATES``, and only for its current assignment (one not yet
        done: a device with nothing assigned, or whose update was reset or withdrawn, has
        nothing to report). Without it the tracker moves the device (an operator's reset).

        Raises:
            NotAssigned: ``by_device`` and the device has no pending assignment, or the state
                is ``notified``.
            TransitionRefused: ``TRANSITIONS`` does not allow it from the current state.
        """
        with self._session() as session:
            seq = self._lock(session, device_id)
            device = session.get(Device, device_id)
            assert device is not None
            session.refresh(device)
            assignment = session.get(Assignment, device_id)
            if by_device:
                _check_device_event(session, device, assignment, state, self._now())
            if state not in TRANSITIONS.get(device.state, frozenset()):
                raise TransitionRefused(device.state, state)
            now = self._now()
            row = DeviceEvent(device_id=device_id, seq=seq, state=state,
                              previous=device.state, detail=detail, timestamp=now)
            session.add(row)
            device.state = state
            device.state_changed = now
            self._trim_events(session, device_id)
            finished = False
            if assignment is not None and assignment.done is None:
                if state in FINAL_STATES or (state == "downloaded"
                                             and assignment.action == "download"):
                    assignment.done = now
                    finished = True
                _campaigns.member_event(session, assignment, state, detail, now)
            session.flush()
            result = _event_json(row)
        if finished:  # the assignment is no longer pending: retained notices must say so
            self.announce([device_id])
        return result

    # ---- deployments

    def deploy(self, release: str, envelope_url: str, device_ids: Sequence[str]
               ) -> list[dict[str, Any]]:
        """Assign ``release`` to every device of ``device_ids``, all or none.

        A device with no state or in a final state gets a ``notified`` event; a device still
        ``notified`` (it has not started the previous assignment) keeps its state and only its
        assignment is replaced. Returns one ``{"id", "event"}`` per device (``event`` is
        ``None`` when no event was added).

        Raises:
            DeploymentRefused: a device does not exist or is in the middle of an update.
        """
        results: list[dict[str, Any]] = []
        requested = list(dict.fromkeys(device_ids))
        with self._session() as session:
            now = self._now()
            # device rows are locked in ascending id order in every transaction (PostgreSQL:
            # two deployments, or a deployment and a campaign tick, cannot deadlock)
            for device_id in sorted(requested):
                device = session.get(Device, device_id) if len(device_id) <= 36 else None
                if device is None:
                    raise DeploymentRefused(f"no device {device_id[:40]!r}", unknown=True)
                seq = self._lock(session, device_id)
                session.refresh(device)
                assignment = session.get(Assignment, device_id)
                if assignment is not None and assignment.done is None \
                        and assignment.campaign_id is not None:
                    raise DeploymentRefused(f"device {device_id} has a pending assignment of "
                                            f"campaign {assignment.campaign_id}; cancel the "
                                            "campaign or wait until the device finishes")
                event: dict[str, Any] | None = None
                if "notified" in TRANSITIONS.get(device.state, frozenset()):
                    row = DeviceEvent(device_id=device_id, seq=seq, state="notified",
                                      previous=device.state, detail=f"release {release}",
                                      timestamp=now)
                    session.add(row)
                    device.state = "notified"
                    device.state_changed = now
                    session.flush()
                    event = _event_json(row)
                elif device.state == "notified":
                    device.history_count -= 1  # no event: give the sequence number back
                else:
                    raise DeploymentRefused(f"device {device_id} is in the middle of an update "
                                            f"(state {device.state}); deploy again once it "
                                            "reports succeeded, failed or rolled-back")
                if assignment is None:
                    session.add(Assignment(device_id=device_id, release=release,
                                           envelope_url=envelope_url, created=now))
                else:
                    assignment.release, assignment.envelope_url = release, envelope_url
                    assignment.created, assignment.done = now, None
                    assignment.campaign_id, assignment.action = None, "install"
                    assignment.reported = None
                results.append({"id": device_id, "event": event})
        order = {device_id: i for i, device_id in enumerate(requested)}
        results.sort(key=lambda r: order[r["id"]])
        self.announce([r["id"] for r in results])
        return results

    def pending_update(self, device_id: str) -> dict[str, Any] | None:
        """The device's assignment not yet done, ``{"release", "envelope_url", "action",
        "campaign"}``, or ``None`` (also while its campaign holds it back: paused, or outside
        its schedule, and the device has not started)."""
        with self._session() as session:
            assignment = session.get(Assignment, device_id)
            if assignment is None or assignment.done is not None:
                return None
            state = session.scalar(select(Device.state).where(Device.id == device_id))
            if not _campaigns.deliverable(session, assignment, state, self._now()):
                return None
            return {"release": assignment.release, "envelope_url": assignment.envelope_url,
                    "action": assignment.action, "campaign": assignment.campaign_id}

    def add_report(self, device_id: str, raw: bytes, summary: Mapping[str, Any], *,
                   release: str | None = None) -> dict[str, Any]:
        """Store a SUIT report (bytes as received) and its summary.

        ``release``: the manifest digest (hex) the report is about, given for a device's own
        report (``POST .../reports``): it is stored only for the device's current assignment,
        while it works on it (``REPORT_STATES``), if it names the assigned release, and once
        per update (a replayed or late report is refused).

        Raises:
            NotAssigned: ``release`` is given and the report is not the one the device's
                current assignment expects.
        """
        with self._session() as session:
            seq = self._lock(session, device_id)
            if release is not None:
                self._check_report(session, device_id, release).reported = seq
            row = DeviceReport(device_id=device_id, seq=seq, received=self._now(), raw=raw,
                               size=len(raw), summary=dict(summary))
            session.add(row)
            session.flush()
            self._trim_reports(session, device_id)
            return _report_json(row)

    @staticmethod
    def _check_report(session: Session, device_id: str, release: str) -> Assignment:
        """The device's current assignment, if the report ``add_report`` got is the one it
        expects (see there)."""
        device = session.get(Device, device_id)
        assert device is not None
        session.refresh(device)
        assignment = session.get(Assignment, device_id)
        if assignment is None or assignment.done is not None:
            raise NotAssigned(f"device {device_id} has no update in progress; a device sends "
                              "a report only for its current assignment")
        if release.lower() != assignment.release.lower():
            raise NotAssigned(f"the report is about manifest {release[:128]}; the device's "
                              f"current assignment is release {assignment.release}")
        if device.state not in REPORT_STATES:
            shown = device.state if device.state is not None else "no state yet"
            raise NotAssigned(f"device {device_id} is {shown}; the report of an update is "
                              f"sent while it is {', '.join(sorted(REPORT_STATES))}")
        # the assignment says whether its report came: the history may have been trimmed
        # (its notified event, its report) by the quotas or the retention passes
        if assignment.reported is not None:
            raise NotAssigned(f"the tracker already has the report of this update of device "
                              f"{device_id} (history item {assignment.reported}); one report "
                              "per update")
        return assignment

    def _trim_events(self, session: Session, device_id: str) -> None:
        """Delete the device's oldest events beyond ``quotas.max_events`` (same transaction
        as the new one; tracker.quotas says why the oldest go rather than the new one)."""
        keep = self.quotas.max_events
        if keep <= 0:
            return
        cutoff = session.scalar(select(DeviceEvent.seq).where(DeviceEvent.device_id == device_id)
                                .order_by(DeviceEvent.seq.desc()).offset(keep).limit(1))
        if cutoff is not None:
            session.execute(delete(DeviceEvent).where(DeviceEvent.device_id == device_id,
                                                      DeviceEvent.seq <= cutoff)
                            .execution_options(synchronize_session=False))

    def _trim_reports(self, session: Session, device_id: str) -> None:
        """Delete the device's oldest reports beyond ``quotas.max_reports`` or beyond
        ``quotas.max_report_bytes`` in all; the newest report is always kept."""
        count, most = self.quotas.max_reports, self.quotas.max_report_bytes
        if count <= 0 and most <= 0:
            return
        query = (select(DeviceReport.seq, DeviceReport.size)
                 .where(DeviceReport.device_id == device_id).order_by(DeviceReport.seq.desc()))
        if count > 0:
            query = query.limit(count + 1)
        total = 0
        for position, (seq, size) in enumerate(session.execute(query)):
            total += size
            if position > 0 and ((count > 0 and position >= count)
                                 or (most > 0 and total > most)):
                session.execute(delete(DeviceReport).where(DeviceReport.device_id == device_id,
                                                           DeviceReport.seq <= seq)
                                .execution_options(synchronize_session=False))
                return

    def prune(self, *, limit: int | None = None, chunk: int = 500) -> dict[str, int]:
        """One retention pass: delete events older than ``quotas.history_days`` and reports
        older than ``quotas.report_days`` (0: kept), at most ``limit`` rows of each table
        (default ``quotas.retention_batch``), oldest first, in transactions of ``chunk`` rows
        so that no device's writes wait long. The rows deleted, per table."""
        most = self.quotas.retention_batch if limit is None else limit
        now = self._now()
        deleted = {"events": 0, "reports": 0}
        tables: tuple[tuple[str, Any, Any, float], ...] = (
            ("events", DeviceEvent, DeviceEvent.timestamp, self.quotas.history_days),
            ("reports", DeviceReport, DeviceReport.received, self.quotas.report_days))
        for name, model, column, days in tables:
            try:
                before = now - timedelta(days=days)
            except OverflowError:  # longer than the calendar: nothing is that old
                continue
            if days <= 0:
                continue
            while deleted[name] < most:
                with self._session() as session:
                    ids = list(session.scalars(select(model.id).where(column < before)
                                               .order_by(column)
                                               .limit(min(chunk, most - deleted[name]))))
                    if ids:
                        session.execute(delete(model).where(model.id.in_(ids))
                                        .execution_options(synchronize_session=False))
                deleted[name] += len(ids)
                if len(ids) < chunk:
                    break
        return deleted

    def history(self, device_id: str) -> list[dict[str, Any]]:
        """The device's events and report summaries, in the order they arrived."""
        return self.history_page(device_id, limit=None).items

    def history_page(self, device_id: str, *, limit: int | None = 500, after: int = 0
                     ) -> Page:
        """At most ``limit`` items of the device's history (``None``: all) with ``seq`` above
        ``after``, in order; each table is read only for one page (ORDER BY seq, LIMIT, on
        the ``(device_id, seq)`` index). ``Page.next`` is ``(seq,)`` of the last item."""
        with self._session() as session:
            events = (select(DeviceEvent).where(DeviceEvent.device_id == device_id,
                                                DeviceEvent.seq > after)
                      .order_by(DeviceEvent.seq))
            reports = (select(DeviceReport).options(defer(DeviceReport.raw))  # size is kept
                       .where(DeviceReport.device_id == device_id, DeviceReport.seq > after)
                       .order_by(DeviceReport.seq))
            if limit is not None:
                events, reports = events.limit(limit + 1), reports.limit(limit + 1)
            items = [((e.seq,), _event_json(e)) for e in session.scalars(events)]
            items += [((r.seq,), _report_json(r)) for r in session.scalars(reports)]
            items.sort(key=lambda item: item[0])
            return page_of(items, limit if limit is not None else len(items))

    def report_bytes(self, device_id: str) -> list[bytes]:
        """The raw reports of a device, oldest first."""
        with self._session() as session:
            return list(session.scalars(select(DeviceReport.raw)
                                        .where(DeviceReport.device_id == device_id)
                                        .order_by(DeviceReport.seq)))

    # ---- API tokens

    def create_token(self, name: str, role: str, expires: datetime, created_by: str
                     ) -> tuple[str, str]:
        """A new API token: (id, secret). Only the secret's hash is stored."""
        if role not in TOKEN_ROLES:
            raise ValueError(f"token role must be one of {', '.join(TOKEN_ROLES)}, got {role!r}")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self._session() as session:
            session.add(ApiToken(id=token_id, name=name, role=role,
                                 secret_hash=hash_secret(secret), created=self._now(),
                                 expires=_naive(expires), created_by=created_by[:128]))
        return token_id, secret

    def check_token(self, token_id: str, secret: str) -> TokenCheck:
        """Whether ``secret`` opens token ``token_id``, and if so whether it has expired or
        been revoked; marks a valid token as used. An unknown id costs one hash too."""
        with self._session() as session:
            row = session.get(ApiToken, token_id) if len(token_id) <= _MAX_TOKEN_ID else None
            stored = row.secret_hash if row is not None else _DUMMY_HASH
            if not verify_secret(secret, stored) or row is None:
                return TokenCheck("invalid")
            if row.revoked is not None:
                return TokenCheck("revoked", row.name, row.role)
            now = self._now()
            if row.expires <= now:
                return TokenCheck("expired", row.name, row.role)
            check, last_used = TokenCheck("valid", row.name, row.role), row.last_used
        if last_used is None or now - last_used >= SEEN_RESOLUTION:  # may fail: see _touch
            self._touch(update(ApiToken).where(ApiToken.id == token_id).values(last_used=now))
        return check

    def tokens(self) -> list[dict[str, Any]]:
        """Every API token (never a secret or its hash), oldest first."""
        with self._session() as session:
            rows = session.scalars(select(ApiToken).order_by(ApiToken.created, ApiToken.id))
            return [_token_json(t) for t in rows]

    def token(self, token_id: str) -> dict[str, Any] | None:
        with self._session() as session:
            row = session.get(ApiToken, token_id) if len(token_id) <= _MAX_TOKEN_ID else None
            return _token_json(row) if row is not None else None

    def revoke_token(self, token_id: str) -> bool:
        """Revoke the token (a no-op if it already is); ``False`` if there is no such token."""
        with self._session() as session:
            row = session.get(ApiToken, token_id) if len(token_id) <= _MAX_TOKEN_ID else None
            if row is None:
                return False
            if row.revoked is None:
                row.revoked = self._now()
            return True

    # ---- audit log

    def record_audit(self, actor: str, role: str, action: str, target: str,
                     detail: str = "") -> None:
        """Append one entry to the audit log (who, in which role, did what to what)."""
        with self._session() as session:
            session.add(AuditEntry(timestamp=self._now(), actor=actor[:128], role=role[:16],
                                   action=action[:64], target=target[:_MAX_AUDIT_TEXT],
                                   detail=detail))

    def audit_log(self, limit: int = 200) -> list[dict[str, Any]]:
        """The latest ``limit`` audit entries, newest first."""
        with self._session() as session:
            rows = session.scalars(select(AuditEntry)
                                   .order_by(AuditEntry.id.desc()).limit(max(0, limit)))
            return [{"id": e.id, "timestamp": _iso(e.timestamp), "actor": e.actor,
                     "role": e.role, "action": e.action, "target": e.target,
                     "detail": e.detail} for e in rows]


def _check_device_event(session: Session, device: Device, assignment: Assignment | None,
                        state: str, now: datetime) -> None:
    """A state a device reports must be about its current assignment (``add_event``): one
    ``GET .../update`` gives it, so not one its campaign holds back (paused, or outside its
    schedule) before the device started."""
    if state not in DEVICE_STATES:
        raise NotAssigned(f"a device does not report {state}: the tracker sets it when it "
                          f"assigns a release; a device reports "
                          f"{', '.join(s for s in STATES if s in DEVICE_STATES)}")
    if assignment is None or assignment.done is not None:
        shown = device.state if device.state is not None else "no state yet"
        raise NotAssigned(f"device {device.id} has no update assigned (state {shown}); a "
                          f"device reports {state} only for its current assignment")
    if not _campaigns.deliverable(session, assignment, device.state, now):
        raise NotAssigned(f"campaign {assignment.campaign_id} holds device {device.id}'s "
                          "assignment back (paused or outside its schedule); the device starts "
                          "it once GET .../update gives it")


def _device_json(device: Device, components: Sequence[InstalledComponent] | None
                 ) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": device.id,
        "name": device.name,
        "created": _iso(device.created),
        "last_seen": _iso(device.last_seen),
        "vendor_id": device.vendor_id,
        "class_id": device.class_id,
        "hardware": device.hardware,
        "state": device.state,
        "state_changed": _iso(device.state_changed),
        "inventory_updated": _iso(device.inventory_updated),
        "tags": list(device.tags or ()),
    }
    if components is not None:
        doc["components"] = [
            {"id": c.component_id,
             "sequence": int(c.sequence_number) if c.sequence_number is not None else None,
             "digest": c.digest}
            for c in components]
    return doc


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "role": token.role,
            "created": _iso(token.created), "expires": _iso(token.expires),
            "revoked": _iso(token.revoked), "last_used": _iso(token.last_used),
            "created_by": token.created_by}


def _event_json(event: DeviceEvent) -> dict[str, Any]:
    return {"kind": "event", "seq": event.seq, "state": event.state,
            "previous": event.previous, "detail": event.detail,
            "timestamp": _iso(event.timestamp)}


def _report_json(report: DeviceReport) -> dict[str, Any]:
    return {"kind": "report", "seq": report.seq, "id": report.id,
            "received": _iso(report.received), "size": report.size,
            "summary": report.summary}


def open_db(url: str, *, clock: Callable[[], datetime] = _utcnow,
            quotas: Quotas | None = None) -> TrackerDB:
    """The tracker database at ``url`` (e.g. ``sqlite:////var/lib/suitkit/tracker.db`` or
    ``postgresql+psycopg://user@host/suitkit``), its schema upgraded to the newest revision
    (``upgrade_schema``).

    Raises:
        StorageError: the URL is not usable, the database cannot be opened or migrated.
    """
    engine: Engine | None = None
    try:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        upgrade_schema(engine)
    except (SQLAlchemyError, ValueError, ImportError, CommandError) as e:
        if engine is not None:
            engine.dispose()
        raise StorageError(f"cannot open the tracker database {_redact(url)}: "
                           f"{_describe(e)}") from e
    return TrackerDB(engine, clock=clock, quotas=quotas)


INITIAL_REVISION = "0001_initial"
"""The revision equal to the tables ``create_all`` made before migrations existed."""
_MIGRATION_LOCK = 0x5317_C0DE  # pg_advisory_xact_lock key held while migrating
_ALEMBIC = threading.Lock()  # alembic.context and alembic.op are module globals: one at a time
_INITIAL_TABLES = ("devices", "installed_components", "device_events", "device_reports",
                   "assignments")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the tracker's migrations (no alembic.ini: the scripts are
    found inside the installed package); ``connection`` is the one they run on."""
    from suitkit.tracker.migrations import SCRIPT_LOCATION  # noqa: PLC0415 - no import cycle

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (``alembic upgrade``), all or nothing: in one
    transaction on PostgreSQL and on SQLite alike (``_migrating``).

    A database made before migrations existed (the tracker's tables, no ``alembic_version``)
    holds the ``0001_initial`` schema: it is stamped with that revision first (a table it lacks,
    such as ``assignments`` in the very first slice, is created), then upgraded. On SQLite,
    foreign keys are off while migrations run (batch ALTERs copy tables; a cascade must not fire).
    On PostgreSQL an advisory lock serialises servers that start at the same time.

    Raises:
        SQLAlchemyError: the database fails.
        CommandError: the database is at a revision this suitkit does not know (a newer one).
    """
    with _migrating(engine) as connection:
        if connection.dialect.name == "postgresql":
            # several servers starting at once: one migrates, the others wait and find
            # nothing to do (the lock ends with the transaction)
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        config = alembic_config(connection)
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and "devices" in tables:
            missing = [_Base.metadata.tables[name] for name in _INITIAL_TABLES
                       if name not in tables]
            _Base.metadata.create_all(connection, tables=missing)
            command.stamp(config, INITIAL_REVISION)
            _log.info("tracker database made before migrations: stamped %s",
                      INITIAL_REVISION)
        command.upgrade(config, revision)


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection whose work, DDL included, is one transaction, committed at the end (rolled
    back on an exception); one migration at a time in this process.

    PostgreSQL has transactional DDL. SQLite has it too, but Python's sqlite3 driver (legacy
    transaction control) commits before each CREATE, DROP or ALTER and opens a transaction
    only before INSERT/UPDATE/DELETE: a kill between the statements of a migration left
    tables at the old revision number, and every later start failed with "table ... already
    exists". Here the driver's own transaction control is off (``isolation_level = None``)
    and the transaction is ours: ``BEGIN IMMEDIATE`` (which also takes the write lock, so two
    processes migrating one file run one after the other), one ``COMMIT`` at the end.
    ``PRAGMA foreign_keys`` is set before the transaction (it is a no-op inside one).
    """
    with _ALEMBIC, engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            yield connection
            connection.commit()
            return
        driver: Any = connection.connection.driver_connection
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
        legacy = driver.isolation_level
        driver.isolation_level = None  # no implicit COMMIT before DDL
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield connection
            connection.commit()  # the driver sends COMMIT: a transaction is open
        finally:
            connection.rollback()  # no-op after the commit; undoes all of it after an error
            if driver.in_transaction:  # pragma: no cover - the driver always ends it above
                driver.rollback()
            driver.isolation_level = legacy
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def migrate(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database at ``url`` to ``revision`` (``suitkit db upgrade``); the revisions
    (before, after), ``None`` for a database without migrations yet.

    Raises:
        StorageError: the URL is not usable, the database cannot be opened or migrated.
    """
    engine: Engine | None = None
    try:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        before = _revision(engine)
        upgrade_schema(engine, revision)
        return before, _revision(engine)
    except (SQLAlchemyError, ValueError, ImportError, CommandError) as e:
        raise StorageError(f"cannot migrate the tracker database {_redact(url)}: "
                           f"{_describe(e)}") from e
    finally:
        if engine is not None:
            engine.dispose()


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def downgrade_schema(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"``: no tables left)."""
    with _migrating(engine) as connection:
        command.downgrade(alembic_config(connection), revision)


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    """Foreign keys on; wait up to 10 s for a lock; write-ahead log with ``synchronous=NORMAL``:
    a commit does not wait for fsync (checkpoints do), so after a power loss (not a crash of the
    process) the last commits may be missing, never a corrupt database. About 19x faster per
    write transaction than the rollback journal with fsync per commit (benchmarks/README.md)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"


def _is_full(error: SQLAlchemyError) -> bool:
    """Whether the database failed because its disk is full: SQLite's SQLITE_FULL ("database
    or disk is full"), PostgreSQL's disk_full (53100, "could not extend file"), or a driver
    naming ENOSPC."""
    cause = getattr(error, "orig", None)
    code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
        return True
    if getattr(cause, "sqlstate", None) == _PG_DISK_FULL:
        return True
    text = str(cause or error).lower()
    return "database or disk is full" in text or "no space left on device" in text


def _describe(error: Exception) -> str:
    """One line for ``error``: the driver's own message for a database error, without
    SQLAlchemy's statement dump and "Background on this error" link."""
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {' '.join(lines[:2]) or 'no message'}"


def _redact(url: str) -> str:
    """``url`` without a password (``scheme://user:***@host``)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


# the campaign tables share the models' metadata; their hooks run inside add_event and
# pending_update (imported last: campaigns imports the models above)
from suitkit.tracker import campaigns as _campaigns  # noqa: E402
