"""The status tracker's database: devices, inventory, state events and SUIT reports (RFC 9019 §3).

SQLAlchemy 2 models (``DeclarativeBase`` / ``Mapped``) on a synchronous engine; SQLite by default
(``sqlite:///DATA/tracker.db``). ``open_db(url)`` creates the tables that do not exist yet.

Device credentials (RFC 9019 §3: every exchange with the tracker is authenticated): a device is
given a random secret once, at registration; only a salted PBKDF2-HMAC-SHA256 hash of it is
stored, and checks compare hashes in constant time. A credential check for an unknown device
costs the same hash computation as one for a known device.

The update state machine (``TRANSITIONS``) is enforced here, under a lock on the device's row
(``UPDATE devices SET history_count = history_count + 1`` first), so two concurrent events
cannot both move the device from the same state. The same counter orders a device's history:
events and reports share one sequence per device.

Deployments (RFC 9019 client-initiated mode): ``deploy`` records, per device, the release it
should install (``Assignment``; one row per device, the latest deployment wins) and moves the
device to ``notified``; the assignment is pending until the device reports a final state.

Deliberately not here: Alembic migrations (tables are created, never altered, in this slice),
PostgreSQL-specific tuning, campaigns, deleting devices, rotating a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from suitkit.errors import StorageError

__all__ = [
    "FINAL_STATES",
    "STATES",
    "TRANSITIONS",
    "Assignment",
    "AssignmentListener",
    "ComponentEntry",
    "DeploymentRefused",
    "Device",
    "DeviceEvent",
    "DeviceReport",
    "InstalledComponent",
    "Inventory",
    "TrackerDB",
    "TransitionRefused",
    "hash_secret",
    "open_db",
    "verify_secret",
]

STATES = ("notified", "downloading", "downloaded", "installing", "rebooting", "succeeded",
          "failed", "rolled-back")
"""The states of one update on one device, in the order a successful update passes them."""
FINAL_STATES = frozenset({"succeeded", "failed", "rolled-back"})

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
_KDF_ITERATIONS = 100_000
_KDF_NAME = "pbkdf2-sha256"
_DUMMY_HASH = f"{_KDF_NAME}${_KDF_ITERATIONS}${'00' * 16}${'00' * 32}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------- credentials


def hash_secret(secret: str, *, iterations: int = _KDF_ITERATIONS) -> str:
    """``pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`` of ``secret`` with a fresh salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"{_KDF_NAME}${iterations}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` (constant-time comparison of the hashes)."""
    try:
        name, iterations, salt, expected = stored.split("$")
        if name != _KDF_NAME:
            return False
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

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    previous: Mapped[str | None] = mapped_column(String(16), default=None)
    detail: Mapped[str] = mapped_column(Text, default="")
    timestamp: Mapped[datetime] = mapped_column(DateTime)


class DeviceReport(_Base):
    """One SUIT report a device sent: the bytes as received and a decoded summary."""

    __tablename__ = "device_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    seq: Mapped[int] = mapped_column(Integer)
    received: Mapped[datetime] = mapped_column(DateTime)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
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


# --------------------------------------------------------------------------------- operations


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

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock
        self._listeners: list[AssignmentListener] = []

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
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as e:
            raise StorageError(f"tracker database: {type(e).__name__}: {e}") from e

    # ---- devices and credentials

    def register(self, name: str) -> tuple[str, str]:
        """A new device called ``name``: (device id, secret). The secret is not stored."""
        device_id = str(uuid.uuid4())
        secret = secrets.token_urlsafe(32)
        with self._session() as session:
            session.add(Device(id=device_id, name=name, credential_hash=hash_secret(secret),
                               created=self._now(), hardware={}, history_count=0))
        return device_id, secret

    def authenticate(self, device_id: str, secret: str) -> bool:
        """Whether ``secret`` is ``device_id``'s credential; marks the device as seen."""
        with self._session() as session:
            device = session.get(Device, device_id) if len(device_id) <= 36 else None
            stored = device.credential_hash if device is not None else _DUMMY_HASH
            ok = verify_secret(secret, stored)
            if ok and device is not None:
                device.last_seen = self._now()
            return ok and device is not None

    def exists(self, device_id: str) -> bool:
        with self._session() as session:
            return session.get(Device, device_id) is not None

    def devices(self) -> list[dict[str, Any]]:
        """Every device (without components), oldest first."""
        with self._session() as session:
            rows = session.scalars(select(Device).order_by(Device.created, Device.id))
            return [_device_json(d, None) for d in rows]

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
        """Replace the device's inventory (identity, components, hardware facts)."""
        with self._session() as session:
            device = session.get(Device, device_id)
            if device is None:
                raise StorageError(f"no device {device_id}")
            device.vendor_id = inventory.vendor_id
            device.class_id = inventory.class_id
            device.hardware = dict(inventory.hardware)
            device.inventory_updated = self._now()
            old = session.scalars(select(InstalledComponent)
                                  .where(InstalledComponent.device_id == device_id))
            for row in old:
                session.delete(row)
            for position, entry in enumerate(inventory.components):
                session.add(InstalledComponent(
                    device_id=device_id, position=position,
                    component_id=list(entry.component_id),
                    sequence_number=(str(entry.sequence_number)
                                     if entry.sequence_number is not None else None),
                    digest=entry.digest))

    def _lock(self, session: Session, device_id: str) -> int:
        """Lock the device's row for this transaction; the next history sequence number."""
        result = session.execute(update(Device).where(Device.id == device_id)
                                 .values(history_count=Device.history_count + 1))
        if getattr(result, "rowcount", 0) != 1:
            raise StorageError(f"no device {device_id}")
        count = session.scalar(select(Device.history_count).where(Device.id == device_id))
        assert count is not None
        return count

    def add_event(self, device_id: str, state: str, detail: str) -> dict[str, Any]:
        """Move the device to ``state``.

        Raises:
            TransitionRefused: ``TRANSITIONS`` does not allow it from the current state.
        """
        with self._session() as session:
            seq = self._lock(session, device_id)
            device = session.get(Device, device_id)
            assert device is not None
            session.refresh(device)
            if state not in TRANSITIONS.get(device.state, frozenset()):
                raise TransitionRefused(device.state, state)
            now = self._now()
            row = DeviceEvent(device_id=device_id, seq=seq, state=state,
                              previous=device.state, detail=detail, timestamp=now)
            session.add(row)
            device.state = state
            device.state_changed = now
            if state in FINAL_STATES:
                assignment = session.get(Assignment, device_id)
                if assignment is not None and assignment.done is None:
                    assignment.done = now
            session.flush()
            return _event_json(row)

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
        with self._session() as session:
            now = self._now()
            for device_id in dict.fromkeys(device_ids):
                device = session.get(Device, device_id) if len(device_id) <= 36 else None
                if device is None:
                    raise DeploymentRefused(f"no device {device_id[:40]!r}", unknown=True)
                seq = self._lock(session, device_id)
                session.refresh(device)
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
                assignment = session.get(Assignment, device_id)
                if assignment is None:
                    session.add(Assignment(device_id=device_id, release=release,
                                           envelope_url=envelope_url, created=now))
                else:
                    assignment.release, assignment.envelope_url = release, envelope_url
                    assignment.created, assignment.done = now, None
                results.append({"id": device_id, "event": event})
        self.announce([r["id"] for r in results])
        return results

    def pending_update(self, device_id: str) -> dict[str, Any] | None:
        """The device's assignment not yet done, ``{"release", "envelope_url"}``, or ``None``."""
        with self._session() as session:
            assignment = session.get(Assignment, device_id)
            if assignment is None or assignment.done is not None:
                return None
            return {"release": assignment.release, "envelope_url": assignment.envelope_url}

    def add_report(self, device_id: str, raw: bytes, summary: Mapping[str, Any]
                   ) -> dict[str, Any]:
        """Store a SUIT report (bytes as received) and its summary."""
        with self._session() as session:
            seq = self._lock(session, device_id)
            row = DeviceReport(device_id=device_id, seq=seq, received=self._now(), raw=raw,
                               summary=dict(summary))
            session.add(row)
            session.flush()
            return _report_json(row)

    def history(self, device_id: str) -> list[dict[str, Any]]:
        """The device's events and report summaries, in the order they arrived."""
        with self._session() as session:
            events = session.scalars(select(DeviceEvent)
                                     .where(DeviceEvent.device_id == device_id))
            reports = session.scalars(select(DeviceReport)
                                      .where(DeviceReport.device_id == device_id))
            items = [(e.seq, _event_json(e)) for e in events]
            items += [(r.seq, _report_json(r)) for r in reports]
            return [doc for _, doc in sorted(items, key=lambda item: item[0])]

    def report_bytes(self, device_id: str) -> list[bytes]:
        """The raw reports of a device, oldest first."""
        with self._session() as session:
            return list(session.scalars(select(DeviceReport.raw)
                                        .where(DeviceReport.device_id == device_id)
                                        .order_by(DeviceReport.seq)))


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
    }
    if components is not None:
        doc["components"] = [
            {"id": c.component_id,
             "sequence": int(c.sequence_number) if c.sequence_number is not None else None,
             "digest": c.digest}
            for c in components]
    return doc


def _event_json(event: DeviceEvent) -> dict[str, Any]:
    return {"kind": "event", "seq": event.seq, "state": event.state,
            "previous": event.previous, "detail": event.detail,
            "timestamp": _iso(event.timestamp)}


def _report_json(report: DeviceReport) -> dict[str, Any]:
    return {"kind": "report", "seq": report.seq, "id": report.id,
            "received": _iso(report.received), "size": len(report.raw),
            "summary": report.summary}


def open_db(url: str, *, clock: Callable[[], datetime] = _utcnow) -> TrackerDB:
    """The tracker database at ``url`` (e.g. ``sqlite:////var/lib/suitkit/tracker.db``), with
    its tables created if missing (no migrations in this slice).

    Raises:
        StorageError: the URL is not usable or the database cannot be opened.
    """
    try:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(engine)
    except (SQLAlchemyError, ValueError, ImportError) as e:
        raise StorageError(f"cannot open the tracker database {_redact(url)}: "
                           f"{type(e).__name__}: {e}") from e
    return TrackerDB(engine, clock=clock)


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _redact(url: str) -> str:
    """``url`` without a password (``scheme://user:***@host``)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"

