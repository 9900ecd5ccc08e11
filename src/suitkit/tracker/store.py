"""The status tracker's storage: the engine, migrations, transactions and every query.

The ONLY module of the tracker that talks to the database. ``open_store(url)`` opens a SQLAlchemy
engine (SQLite by default, ``sqlite:///DATA/tracker.db``; PostgreSQL for scale,
``postgresql+psycopg://...``) and brings the schema to the newest revision with Alembic
(``upgrade_schema``; the revisions are in ``tracker/migrations/versions``). ``Store.transaction()``
is one transaction, handed out as a ``Tx`` whose methods are the queries the service and the
campaign engine need (rows of ``tracker.model``, counts, ids); nothing above this module builds a
statement or holds a session.

Locks (PostgreSQL; SQLite serialises writers anyway): ``Tx.lock_device`` takes the device's row
(``UPDATE devices SET history_count = history_count + 1``) and returns the next sequence number
of its history, so two concurrent events cannot both move a device from the same state;
``Tx.lock_campaign`` takes a campaign's row. A full disk is ``StorageFullError``, any other
database failure ``StorageError``, with the driver's one-line message.

Notices (``Tx.announce``): a transaction that changes what devices should do names them; at its
end, last and in id order, each one's serial (``model.DeviceNotice``) is bumped, and on
PostgreSQL a ``pg_notify`` on ``NOTICE_CHANNEL`` carries ``{device id: serial}`` in the same
transaction (delivered to every listening replica when, and only if, it commits). After the
commit the store's own listeners (``Store.add_listener``) hear the same serials in-process.
``Store.open_listener`` gives a replica the dedicated connection it LISTENs on
(``tracker.notices.pg``).

Deliberately not here: what may be stored (the state machine, assignment checks, quotas and
retention rules, credentials: ``tracker.service``), PostgreSQL-specific tuning.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.util.exc import CommandError
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Text,
    and_,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    exists,
    func,
    inspect,
    literal,
    make_url,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, defer, sessionmaker

from suitkit.errors import StorageError, StorageFullError
from suitkit.tracker.model import (
    ApiToken,
    Assignment,
    AuditEntry,
    Base,
    Campaign,
    CampaignLog,
    CampaignMember,
    Device,
    DeviceClass,
    DeviceEvent,
    DeviceHealth,
    DeviceNotice,
    DeviceReport,
    InstalledComponent,
    Release,
)

__all__ = [
    "DEVICE_SORTS",
    "INITIAL_REVISION",
    "NOTICE_CHANNEL",
    "CheckinRow",
    "DeviceQuery",
    "NoticeConnection",
    "NoticeListener",
    "PoolOptions",
    "Store",
    "Tx",
    "alembic_config",
    "downgrade_schema",
    "migrate",
    "naive",
    "open_store",
    "parse_payload",
    "upgrade_schema",
]

_log = logging.getLogger(__name__)
_IN_BATCH = 500  # ids per IN (...): well under any database's bound-parameter limit
NOTICE_CHANNEL = "suitkit_notices"
"""The PostgreSQL channel of notices: payload ``{"o": origin, "s": {device id: serial}}``."""
_NOTIFY_BYTES = 7000  # PostgreSQL refuses a payload of 8000 bytes or more
NoticeListener = Callable[[Mapping[str, int]], None]
"""Called after a commit with ``{device id: serial}`` of the devices it announced."""


DEVICE_SORTS = ("created", "name", "state", "last_seen")
"""The keys the devices' list sorts by (``DeviceQuery.sort``); each is followed by ``id``, so
that the order is total and a page's last key is a cursor (keyset pagination)."""


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Which devices a list shows and in which order (``Tx.devices``, ``Tx.count_devices``):
    each filter given narrows the list (SQL ``WHERE``); within one filter, any of its values.

    ``states``: the update state (``None`` in it: a device that never had one); ``class_ids``;
    ``tags``: devices that carry every one of them; ``versions``: devices with an installed
    component that reports one of these versions (update-management §4.4 ``[+int]``);
    ``seen_before`` / ``seen_after`` (naive UTC): ``last_seen`` before / at or after it (a
    device never seen matches neither); ``sort`` one of ``DEVICE_SORTS``, ``descending``
    reverses it. A missing key (``state``, ``last_seen`` not set) sorts before every value."""

    states: tuple[str | None, ...] = ()
    class_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    versions: tuple[tuple[int, ...], ...] = ()
    seen_before: datetime | None = None
    seen_after: datetime | None = None
    sort: str = "created"
    descending: bool = False


ALL_DEVICES = DeviceQuery()


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """The engine's connection pool, per process (``serve --db-pool-size``,
    ``--db-max-overflow``, ``--db-pool-timeout``): ``size`` connections kept open,
    ``max_overflow`` more opened under load, ``timeout`` seconds a request waits for one before
    it fails (``StorageError``). With N replicas on one PostgreSQL, N x (size + max_overflow)
    plus one listening connection each must stay under its ``max_connections``."""

    size: int = 5
    max_overflow: int = 10
    timeout: float = 30.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def naive(moment: datetime) -> datetime:
    """UTC without tzinfo: what SQLite's DateTime gives back, so stored values compare."""
    return moment.astimezone(UTC).replace(tzinfo=None)


class Store:
    """The tracker's database over one engine. ``clock`` gives the current time (design.md
    §3.1: time is a parameter); ``None``: the database's clock on PostgreSQL (``now()``, one
    per transaction: replicas whose clocks drift still agree on maintenance windows, expiry
    and the order of what they store), the system clock on SQLite (one machine).
    ``now()`` and ``Tx.now()`` are it as stored (naive UTC).

    Raises (every method): ``StorageError`` when the database fails.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None
                 ) -> None:
        self.engine = engine
        self.clock = clock
        self._db_clock = clock is None and engine.dialect.name == "postgresql"
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")
        """For one statement alone (a read, a ``last_seen`` mark): no BEGIN and no ROLLBACK or
        COMMIT around it, two round trips fewer on PostgreSQL (about 0.2 ms of CPU a check-in);
        one statement is atomic and sees one snapshot by itself."""
        self._touch_logged = -60.0
        self._listeners: list[NoticeListener] = []
        self.origin = secrets.token_hex(8)
        """This process's mark on its notifications (its own listener skips them: they were
        heard in-process already)."""

    def now(self) -> datetime:
        """The current time (naive UTC); on the database's clock, one query."""
        if self._db_clock:
            with self.transaction() as tx:
                return tx.now()
        return self.local_now()

    def local_now(self) -> datetime:
        """This process's time (naive UTC; the injected ``clock`` if any), never a query: for
        coarse marks such as ``last_seen``, where a replica's drift does not matter."""
        return naive(self.clock() if self.clock is not None else _utcnow())

    def _tx_clock(self, session: Session) -> Callable[[], datetime]:
        if self._db_clock:
            def database() -> datetime:
                moment = session.scalar(select(func.now()))  # the transaction's start
                assert isinstance(moment, datetime)
                return naive(moment)
            return database
        return self.now

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction. Raises ``StorageFullError`` when the disk or database is full
        (the transaction was rolled back: nothing of it is kept), ``StorageError`` else."""
        serials: dict[str, int] = {}
        try:
            with self._sessions.begin() as session:
                tx = Tx(session, self._tx_clock(session), db_clock=self._db_clock)
                yield tx
                if tx.announced:
                    serials = self._bump(session, tx.announced)
        except SQLAlchemyError as e:
            if _is_full(e):
                raise StorageFullError(f"tracker database: the disk is full: "
                                       f"{_describe(e)}") from e
            raise StorageError(f"tracker database: {_describe(e)}") from e
        if serials:
            self.heard(serials)

    def add_listener(self, listener: NoticeListener) -> None:
        """Call ``listener({device id: serial})`` after every commit that announced devices
        (``Tx.announce``), in the committing thread; it must not block. An exception is
        logged and ignored: the change is stored."""
        self._listeners.append(listener)

    def heard(self, serials: Mapping[str, int]) -> None:
        """Tell the listeners of committed notices (this process's, or another replica's)."""
        for listener in self._listeners:
            try:
                listener(serials)
            except Exception:  # noqa: BLE001 - a listener must not undo a stored change
                _log.exception("notice listener %r failed", listener)

    def _bump(self, session: Session, device_ids: Iterable[str]) -> dict[str, int]:
        """Bump the notice serial of each device (the transaction's last writes, in id order)
        and, on PostgreSQL, notify ``NOTICE_CHANNEL`` in the same transaction."""
        ids = sorted(set(device_ids))
        serials: dict[str, int] = {}
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert  # noqa: PLC0415
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment] # noqa: PLC0415
        for start in range(0, len(ids), _IN_BATCH):
            batch = ids[start:start + _IN_BATCH]
            existing = set(session.scalars(select(Device.id).where(Device.id.in_(batch))))
            rows = [{"device_id": i, "serial": 2} for i in batch if i in existing]
            if not rows:
                continue
            statement = insert(DeviceNotice).values(rows)
            statement = statement.on_conflict_do_update(
                index_elements=[DeviceNotice.device_id],
                set_={"serial": DeviceNotice.serial + 1})
            session.execute(statement)
            serials.update((device_id, int(serial)) for device_id, serial in session.execute(
                select(DeviceNotice.device_id, DeviceNotice.serial)
                .where(DeviceNotice.device_id.in_(batch))))
        if dialect == "postgresql" and serials:
            for payload in _payloads(self.origin, serials):
                session.execute(select(func.pg_notify(NOTICE_CHANNEL, payload)))
        return serials

    def serials(self, device_ids: Collection[str]) -> dict[str, int]:
        """The notice serial of each device of ``device_ids`` that has had a change."""
        found: dict[str, int] = {}
        ids = list(device_ids)
        with self.transaction() as tx:
            for start in range(0, len(ids), _IN_BATCH):
                found.update(tx.notice_serials(ids[start:start + _IN_BATCH]))
        return found

    def open_listener(self) -> NoticeConnection | None:
        """A dedicated connection LISTENing on ``NOTICE_CHANNEL`` (PostgreSQL; ``None`` on
        SQLite, where every change is made in this process).

        Raises:
            StorageError: the database cannot be reached.
        """
        if self.engine.dialect.name != "postgresql":
            return None
        return NoticeConnection(self.engine, self.origin)

    def credential(self, device_id: str) -> tuple[str, datetime | None] | None:
        """The device's credential hash and ``last_seen`` (one Core statement: every request
        of a device is authenticated), or ``None``. Errors as ``transaction``."""
        try:
            with self._single.connect() as connection:
                row = connection.execute(_CREDENTIAL_READ, {"device_id": device_id}).first()
        except SQLAlchemyError as e:
            raise StorageError(f"tracker database: {_describe(e)}") from e
        return None if row is None else (row[0], row[1])

    def checkin_read(self, device_id: str) -> CheckinRow | None:
        """What a device's check-in needs (``CheckinRow``), in one statement on SQLAlchemy Core
        (no ORM session: the check-in is what every device sends at every poll), or ``None``
        when there is no such device. Errors as ``transaction``."""
        try:
            with self._single.connect() as connection:
                row = connection.execute(_CHECKIN_READ, {"device_id": device_id}).first()
        except SQLAlchemyError as e:
            raise StorageError(f"tracker database: {_describe(e)}") from e
        return None if row is None else CheckinRow._make(row)

    def mark_seen(self, device_id: str, now: datetime) -> None:
        """Record when the device last authenticated (``_touch``)."""
        self._touch(update(Device).where(Device.id == device_id).values(last_seen=now))

    def mark_used(self, token_id: str, now: datetime) -> None:
        """Record when the API token was last used (``_touch``)."""
        self._touch(update(ApiToken).where(ApiToken.id == token_id).values(last_used=now))

    def _touch(self, statement: Any) -> None:
        """Run ``statement`` (a ``last_seen``/``last_used`` mark) in its own transaction, and
        carry on if it fails: a read must keep working on a full disk or a busy database,
        and a missed mark costs nothing (the next call makes it). A failure is logged at
        most once a minute."""
        try:
            with self._single.connect() as connection:  # one UPDATE: no session, no BEGIN
                connection.execute(statement)
        except SQLAlchemyError as e:
            now = time.monotonic()
            if now - self._touch_logged >= 60.0:
                self._touch_logged = now
                _log.warning("could not record when a credential was last used (the "
                             "request goes on): %s", _describe(e))


class CheckinRow(NamedTuple):
    """What a check-in needs of one device, read in one statement (``Store.checkin_read``): the
    device's credential hash and state, the inventory digest it last sent, its pending
    assignment (``release`` ``None``: none) and that assignment's campaign, if any."""

    credential_hash: str
    last_seen: datetime | None
    state: str | None
    inventory_digest: str | None
    release: str | None
    envelope_url: str | None
    action: str | None
    done: datetime | None
    campaign_id: str | None
    campaign_status: str | None
    campaign_start_after: datetime | None
    campaign_window: str | None
    rollback: datetime | None = None
    """When the tracker told the device to roll its update back (``Assignment.rollback``)."""
    assigned: datetime | None = None
    """When the assignment was made (``Assignment.created``): an older rollback order is not
    this update's."""
    nonce: str | None = None
    """The nonce issued with the assignment (report §4; ``Assignment.nonce``)."""


_DEVICES = Device.__table__
_ASSIGNMENTS = Assignment.__table__
_CAMPAIGNS = Campaign.__table__
_CHECKIN_READ = (
    select(_DEVICES.c.credential_hash, _DEVICES.c.last_seen, _DEVICES.c.state,
           _DEVICES.c.inventory_digest, _ASSIGNMENTS.c.release, _ASSIGNMENTS.c.envelope_url,
           _ASSIGNMENTS.c.action, _ASSIGNMENTS.c.done, _ASSIGNMENTS.c.campaign_id,
           _CAMPAIGNS.c.status, _CAMPAIGNS.c.start_after, _CAMPAIGNS.c.window,
           _ASSIGNMENTS.c.rollback, _ASSIGNMENTS.c.created, _ASSIGNMENTS.c.nonce)
    .select_from(_DEVICES.outerjoin(_ASSIGNMENTS, _ASSIGNMENTS.c.device_id == _DEVICES.c.id)
                 .outerjoin(_CAMPAIGNS, _CAMPAIGNS.c.id == _ASSIGNMENTS.c.campaign_id))
    .where(_DEVICES.c.id == bindparam("device_id")))
"""The check-in's one read: built once, so SQLAlchemy's compiled cache always hits."""
_CREDENTIAL_READ = (select(_DEVICES.c.credential_hash, _DEVICES.c.last_seen)
                    .where(_DEVICES.c.id == bindparam("device_id")))


class Tx:
    """One open transaction (``Store.transaction``): the queries, on rows of ``tracker.model``.
    Changes to the rows it returns are written at the end of the transaction."""

    def __init__(self, session: Session, clock: Callable[[], datetime], *,
                 db_clock: bool = False) -> None:
        self._session = session
        self._clock = clock
        self._db_clock = db_clock
        """``clock`` is the database's ``now()`` (PostgreSQL): a statement may read it along."""
        self._now: datetime | None = None
        self.announced: dict[str, None] = {}
        """The devices whose notices change with this transaction (``announce``)."""

    def now(self) -> datetime:
        """The transaction's time (naive UTC), read once: the database's on PostgreSQL (see
        ``Store``), so every time written by one transaction is the same."""
        if self._now is None:
            self._now = self._clock()
        return self._now

    def announce(self, device_ids: Iterable[str]) -> None:
        """What these devices should do changes with this transaction: at its end their
        notice serials are bumped and, once it commits, every replica's watchers woken."""
        self.announced.update(dict.fromkeys(device_ids))

    def notice_serial(self, device_id: str) -> int:
        """The serial of the device's latest notice (1: no change yet, so that a first
        ``after=0`` is answered at once)."""
        serial = self._session.scalar(select(DeviceNotice.serial)
                                      .where(DeviceNotice.device_id == device_id))
        return int(serial or 1)

    def notice_serials(self, device_ids: Collection[str]) -> dict[str, int]:
        """The serials of those of ``device_ids`` that have had a notice (at most
        ``_IN_BATCH`` ids)."""
        return {i: int(s) for i, s in self._session.execute(
            select(DeviceNotice.device_id, DeviceNotice.serial)
            .where(DeviceNotice.device_id.in_(list(device_ids))))}

    # ---- rows

    def add(self, row: Base) -> None:
        self._session.add(row)

    def delete(self, row: Base) -> None:
        self._session.delete(row)

    def flush(self) -> None:
        """Write the pending changes now (ids of new rows are known after it)."""
        self._session.flush()

    def refresh(self, row: Base) -> None:
        """Read ``row`` again (after a lock: another transaction may have changed it)."""
        self._session.refresh(row)

    def device(self, device_id: str) -> Device | None:
        return self._session.get(Device, device_id)

    def assignment(self, device_id: str) -> Assignment | None:
        return self._session.get(Assignment, device_id)

    def token(self, token_id: str) -> ApiToken | None:
        return self._session.get(ApiToken, token_id)

    def campaign(self, campaign_id: str) -> Campaign | None:
        return self._session.get(Campaign, campaign_id)

    def member(self, campaign_id: str, device_id: str) -> CampaignMember | None:
        return self._session.get(CampaignMember, (campaign_id, device_id))

    def health(self, device_id: str, release: str) -> DeviceHealth | None:
        return self._session.get(DeviceHealth, (device_id, release))

    def health_rows(self, device_id: str, limit: int | None = None) -> list[DeviceHealth]:
        """The device's health rows, the newest first (``updated``, then ``release``)."""
        return list(self._session.scalars(
            select(DeviceHealth).where(DeviceHealth.device_id == device_id)
            .order_by(DeviceHealth.updated.desc(), DeviceHealth.release).limit(limit)))

    def health_of(self, device_ids: Sequence[str], release: str) -> dict[str, DeviceHealth]:
        """The health rows of ``release`` for these devices, by device id."""
        if not device_ids:
            return {}
        return {h.device_id: h for h in self._session.scalars(
            select(DeviceHealth).where(DeviceHealth.release == release,
                                       DeviceHealth.device_id.in_(list(device_ids))))}

    # ---- devices

    def lock_device(self, device_id: str) -> int:
        """Lock the device's row for this transaction; the next history sequence number
        (give it back with ``device.history_count -= 1`` when no history item is added).

        Raises: StorageError: there is no such device.
        """
        bump = (update(Device).where(Device.id == device_id)
                .values(history_count=Device.history_count + 1))
        if self._db_clock and self._now is None:
            # one statement, not an UPDATE, a SELECT and the clock's SELECT now(): every event
            # and report of every device takes this lock. now() is the transaction's start,
            # what Tx.now() reads.
            row = self._session.execute(bump.returning(Device.history_count, func.now())
                                        ).first()
            count = None if row is None else row[0]
            if row is not None:
                self._now = naive(row[1])
        elif self._session.get_bind().dialect.update_returning:
            # one statement (SQLite >= 3.35), not an UPDATE and a SELECT
            count = self._session.scalar(bump.returning(Device.history_count))
        else:
            result = self._session.execute(bump)
            count = (self._session.scalar(select(Device.history_count)
                                          .where(Device.id == device_id))
                     if getattr(result, "rowcount", 0) == 1 else None)
        if count is None:
            raise StorageError(f"no device {device_id}")
        return int(count)

    def hold_device(self, device_id: str) -> None:
        """Lock the device's row for this transaction, taking no sequence number."""
        self._session.execute(update(Device).where(Device.id == device_id)
                              .values(history_count=Device.history_count))

    def device_state(self, device_id: str) -> str | None:
        return self._session.scalar(select(Device.state).where(Device.id == device_id))

    def devices(self, *, limit: int | None, after: tuple[Any, str] | None,
                query: DeviceQuery = ALL_DEVICES) -> list[Device]:
        """At most ``limit`` devices (``None``: all) of ``query``, in its order (its sort key,
        then ``id``), after the key ``after`` (the sort key's value and the id of the last
        device of the page before)."""
        column = _SORT_COLUMNS[query.sort]
        statement = select(Device).where(*self._device_filters(query))
        if query.descending:
            statement = statement.order_by(column.desc().nulls_last(), Device.id.desc())
        else:
            statement = statement.order_by(column.asc().nulls_first(), Device.id)
        if after is not None:
            statement = statement.where(_after_key(column, after, query.descending,
                                                   nullable=query.sort in _NULLABLE_SORTS))
        if limit is not None:
            statement = statement.limit(limit)
        return list(self._session.scalars(statement))

    def count_devices(self, query: DeviceQuery = ALL_DEVICES) -> int:
        """How many devices ``query`` selects (one ``COUNT``, the same filters)."""
        return int(self._session.scalar(
            select(func.count()).select_from(Device).where(*self._device_filters(query))) or 0)

    def _device_filters(self, query: DeviceQuery) -> list[ColumnElement[bool]]:
        postgres = self._session.get_bind().dialect.name == "postgresql"
        where: list[ColumnElement[bool]] = []
        if query.states:
            named = [state for state in query.states if state is not None]
            either = [Device.state.in_(named)] if named else []
            if None in query.states:
                either.append(Device.state.is_(None))
            where.append(or_(*either))
        if query.class_ids:
            where.append(Device.class_id.in_(query.class_ids))
        for tag in query.tags:
            if postgres:
                where.append(cast(Device.tags, JSONB).contains(
                    cast(literal(json.dumps([tag])), JSONB)))
            else:
                each = func.json_each(Device.tags).table_valued("value")
                where.append(exists(select(literal(1)).select_from(each)
                                    .where(each.c.value == tag)))
        if query.versions:
            texts = [json.dumps(list(v), separators=(",", ":")) for v in query.versions]
            version: ColumnElement[Any]
            if postgres:
                version = cast(InstalledComponent.version, JSONB)
                wanted = [cast(literal(text), JSONB) for text in texts]
                match = or_(*(version == w for w in wanted))
            else:
                match = func.json(InstalledComponent.version).in_(texts)
            where.append(Device.id.in_(select(InstalledComponent.device_id).where(
                InstalledComponent.version.is_not(None), match)))
        if query.seen_before is not None:
            where.append(Device.last_seen < query.seen_before)
        if query.seen_after is not None:
            where.append(Device.last_seen >= query.seen_after)
        return where

    def matching_devices(self, *, ids: Collection[str] | None, vendor_id: str | None,
                         class_id: str | None) -> list[Device]:
        """The devices among ``ids`` (``None``: any) with that vendor and class ID (``None``:
        any)."""
        query = select(Device)
        if ids is not None:
            query = query.where(Device.id.in_(ids))
        if vendor_id is not None:
            query = query.where(Device.vendor_id == vendor_id)
        if class_id is not None:
            query = query.where(Device.class_id == class_id)
        return list(self._session.scalars(query))

    def components(self, device_id: str) -> list[InstalledComponent]:
        """The device's installed components, in order."""
        return list(self._session.scalars(
            select(InstalledComponent).where(InstalledComponent.device_id == device_id)
            .order_by(InstalledComponent.position)))

    def components_of(self, device_ids: Sequence[str]) -> dict[str, list[InstalledComponent]]:
        """The installed components of each device of ``device_ids`` that has any, in order."""
        installed: dict[str, list[InstalledComponent]] = {}
        for start in range(0, len(device_ids), _IN_BATCH):
            for c in self._session.scalars(select(InstalledComponent).where(
                    InstalledComponent.device_id.in_(device_ids[start:start + _IN_BATCH]))
                    .order_by(InstalledComponent.device_id, InstalledComponent.position)):
                installed.setdefault(c.device_id, []).append(c)
        return installed

    # ---- history

    def events(self, device_id: str, *, after: int, limit: int | None,
               newest: bool = False) -> list[DeviceEvent]:
        """The device's events with ``seq`` above ``after``, in order (ORDER BY seq, LIMIT, on
        the ``(device_id, seq)`` index); ``newest``: below ``after`` (0: from the end), newest
        first."""
        seq = DeviceEvent.seq
        query = select(DeviceEvent).where(DeviceEvent.device_id == device_id)
        if newest:
            query = (query.where(seq < after) if after else query).order_by(seq.desc())
        else:
            query = query.where(seq > after).order_by(seq)
        if limit is not None:
            query = query.limit(limit)
        return list(self._session.scalars(query))

    def reports(self, device_id: str, *, after: int, limit: int | None,
                newest: bool = False) -> list[DeviceReport]:
        """The device's reports with ``seq`` above ``after``, in order, without their bytes
        (``size`` is kept); ``newest`` as in ``events``."""
        seq = DeviceReport.seq
        query = (select(DeviceReport).options(defer(DeviceReport.raw))
                 .where(DeviceReport.device_id == device_id))
        if newest:
            query = (query.where(seq < after) if after else query).order_by(seq.desc())
        else:
            query = query.where(seq > after).order_by(seq)
        if limit is not None:
            query = query.limit(limit)
        return list(self._session.scalars(query))

    def report_bytes(self, device_id: str) -> list[bytes]:
        """The raw reports of a device, oldest first."""
        return list(self._session.scalars(select(DeviceReport.raw)
                                          .where(DeviceReport.device_id == device_id)
                                          .order_by(DeviceReport.seq)))

    def keep_newest_events(self, device_id: str, keep: int) -> None:
        """Delete the device's events but the newest ``keep``."""
        cutoff = self._session.scalar(
            select(DeviceEvent.seq).where(DeviceEvent.device_id == device_id)
            .order_by(DeviceEvent.seq.desc()).offset(keep).limit(1))
        if cutoff is not None:
            self._session.execute(delete(DeviceEvent).where(DeviceEvent.device_id == device_id,
                                                            DeviceEvent.seq <= cutoff)
                                  .execution_options(synchronize_session=False))

    def report_sizes(self, device_id: str, limit: int | None) -> list[tuple[int, int]]:
        """(seq, size) of the device's newest ``limit`` reports (``None``: all), newest
        first."""
        query = (select(DeviceReport.seq, DeviceReport.size)
                 .where(DeviceReport.device_id == device_id).order_by(DeviceReport.seq.desc()))
        if limit is not None:
            query = query.limit(limit)
        return [(seq, size) for seq, size in self._session.execute(query)]

    def delete_reports_up_to(self, device_id: str, seq: int) -> None:
        """Delete the device's reports with ``seq`` up to ``seq``."""
        self._session.execute(delete(DeviceReport).where(DeviceReport.device_id == device_id,
                                                         DeviceReport.seq <= seq)
                              .execution_options(synchronize_session=False))

    def delete_older(self, table: str, before: datetime, limit: int) -> int:
        """Delete at most ``limit`` of the oldest rows of ``table`` (``events`` or
        ``reports``) stored before ``before``; how many."""
        model: Any = DeviceEvent if table == "events" else DeviceReport
        column = DeviceEvent.timestamp if table == "events" else DeviceReport.received
        ids = list(self._session.scalars(select(model.id).where(column < before)
                                         .order_by(column).limit(limit)))
        if ids:
            self._session.execute(delete(model).where(model.id.in_(ids))
                                  .execution_options(synchronize_session=False))
        return len(ids)

    # ---- releases

    def lock_release(self, release_id: str) -> Release | None:
        """The release with this id, if any, after taking the lock of that id for this
        transaction (PostgreSQL: an advisory lock, so two uploads of one new release, on two
        replicas, are stored one after the other; SQLite has one writer at a time)."""
        if self._session.get_bind().dialect.name == "postgresql":
            self._session.execute(select(func.pg_advisory_xact_lock(
                func.hashtext(f"suitkit-release:{release_id}"))))
        return self._session.get(Release, release_id, populate_existing=True)

    def release(self, release_id: str) -> Release | None:
        return self._session.get(Release, release_id)

    def releases(self) -> list[Release]:
        """Every release, by sequence number then id."""
        return list(self._session.scalars(select(Release)
                                          .order_by(Release.sequence_number, Release.id)))

    # ---- the class registry (issue #17)

    def device_class(self, class_id: str) -> DeviceClass | None:
        return self._session.get(DeviceClass, class_id)

    def lock_device_class(self, class_id: str) -> DeviceClass | None:
        """The class's registry row, if any, after taking the lock of that class id for this
        transaction (PostgreSQL: an advisory lock, so two writers of one new class, on two
        replicas, write one after the other; SQLite has one writer at a time)."""
        if self._session.get_bind().dialect.name == "postgresql":
            self._session.execute(select(func.pg_advisory_xact_lock(
                func.hashtext(f"suitkit-class:{class_id}"))))
        return self._session.get(DeviceClass, class_id, populate_existing=True)

    def device_classes_of(self, class_ids: Collection[str]) -> dict[str, DeviceClass]:
        """The registry rows of these class ids, by class id."""
        found: dict[str, DeviceClass] = {}
        wanted = sorted({c for c in class_ids if c})
        for start in range(0, len(wanted), _IN_BATCH):
            for row in self._session.scalars(select(DeviceClass).where(
                    DeviceClass.class_id.in_(wanted[start:start + _IN_BATCH]))):
                found[row.class_id] = row
        return found

    def class_ids_page(self, *, after: str | None, limit: int) -> list[tuple[str, str | None]]:
        """At most ``limit`` (class id, vendor id) the registry or a device names, by class
        id, above ``after``: the registry's vendor id, else a device's (the smallest)."""
        registry = select(DeviceClass.class_id, DeviceClass.vendor_id)
        seen = (select(Device.class_id, func.min(Device.vendor_id))
                .where(Device.class_id.is_not(None)).group_by(Device.class_id))
        if after is not None:
            registry = registry.where(DeviceClass.class_id > after)
            seen = seen.where(Device.class_id > after)
        merged: dict[str, str | None] = {}
        for class_id, vendor_id in self._session.execute(
                seen.order_by(Device.class_id).limit(limit)):
            if class_id is not None:
                merged[class_id] = vendor_id
        for class_id, vendor_id in self._session.execute(
                registry.order_by(DeviceClass.class_id).limit(limit)):
            merged[class_id] = vendor_id
        return sorted(merged.items())[:limit]

    def vendor_of_class(self, class_id: str) -> str | None:
        """The vendor id of a device of this class (the smallest), if any."""
        vendor: str | None = self._session.scalar(
            select(func.min(Device.vendor_id)).where(Device.class_id == class_id))
        return vendor

    def class_device_counts(self, class_ids: Collection[str]) -> dict[str, int]:
        """How many devices have each of these class ids (a class without any: absent)."""
        counts: dict[str, int] = {}
        wanted = sorted(set(class_ids))
        for start in range(0, len(wanted), _IN_BATCH):
            for class_id, n in self._session.execute(
                    select(Device.class_id, func.count()).where(
                        Device.class_id.in_(wanted[start:start + _IN_BATCH]))
                    .group_by(Device.class_id)):
                if class_id is not None:
                    counts[class_id] = int(n)
        return counts

    def releases_of(self, release_ids: Collection[str]) -> dict[str, Release]:
        """The release rows of these ids, by id."""
        found: dict[str, Release] = {}
        wanted = sorted(set(release_ids))
        for start in range(0, len(wanted), _IN_BATCH):
            for row in self._session.scalars(select(Release).where(
                    Release.id.in_(wanted[start:start + _IN_BATCH]))):
                found[row.id] = row
        return found

    def assignments_of(self, device_ids: Collection[str]) -> dict[str, Assignment]:
        """The assignments of these devices, by device id."""
        found: dict[str, Assignment] = {}
        wanted = sorted(set(device_ids))
        for start in range(0, len(wanted), _IN_BATCH):
            for row in self._session.scalars(select(Assignment).where(
                    Assignment.device_id.in_(wanted[start:start + _IN_BATCH]))):
                found[row.device_id] = row
        return found

    # ---- tokens and audit

    def tokens(self, *, limit: int | None = None,
               after: tuple[datetime, str] | None = None) -> list[ApiToken]:
        """At most ``limit`` API tokens (``None``: all), oldest first (``created``, ``id``),
        after the key ``after``."""
        query = select(ApiToken).order_by(ApiToken.created, ApiToken.id)
        if after is not None:
            created, last_id = after
            query = query.where(ApiToken.created >= created,
                                or_(ApiToken.created > created, ApiToken.id > last_id))
        if limit is not None:
            query = query.limit(limit)
        return list(self._session.scalars(query))

    def count_tokens(self) -> int:
        return int(self._session.scalar(select(func.count()).select_from(ApiToken)) or 0)

    def audit_entries(self, limit: int, *, before: int | None = None) -> list[AuditEntry]:
        """The latest ``limit`` audit entries, newest first (by ``id``), with ``id`` below
        ``before`` when given (the next page)."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc())
        if before is not None:
            query = query.where(AuditEntry.id < before)
        return list(self._session.scalars(query.limit(max(0, limit))))

    def count_audit(self) -> int:
        return int(self._session.scalar(select(func.count()).select_from(AuditEntry)) or 0)

    def count_history(self, device_id: str, *, events: bool = True, reports: bool = True
                      ) -> int:
        """How many events and reports (each when asked) the device's history holds."""
        total = 0
        if events:
            total += int(self._session.scalar(select(func.count()).select_from(DeviceEvent)
                                              .where(DeviceEvent.device_id == device_id)) or 0)
        if reports:
            total += int(self._session.scalar(select(func.count()).select_from(DeviceReport)
                                              .where(DeviceReport.device_id == device_id))
                         or 0)
        return total

    # ---- campaigns

    def lock_campaign(self, campaign_id: str, *, status: str | None = None,
                      skip_locked: bool = False) -> Campaign | None:
        """The campaign (with ``status`` only, if given), its row locked for this transaction
        (the first write) and read again; ``None`` if there is none. ``skip_locked``: ``None``
        at once when another transaction holds the row (PostgreSQL ``FOR UPDATE SKIP
        LOCKED``: a replica's campaign tick does not queue behind another replica's tick of
        the same campaign; SQLite has one writer at a time anyway)."""
        if skip_locked and self._session.get_bind().dialect.name == "postgresql":
            held = select(Campaign.id).where(Campaign.id == campaign_id)
            if status is not None:
                held = held.where(Campaign.status == status)
            if self._session.scalar(held.with_for_update(skip_locked=True)) is None:
                return None
        query = update(Campaign).where(Campaign.id == campaign_id)
        if status is not None:
            query = query.where(Campaign.status == status)
        result = self._session.execute(query.values(updated=Campaign.updated))
        if getattr(result, "rowcount", 0) != 1:
            return None
        campaign = self._session.get(Campaign, campaign_id)
        assert campaign is not None
        self._session.refresh(campaign)
        return campaign

    def running_campaign_ids(self, only: str | None = None) -> list[str]:
        """The running campaigns (or only ``only``, if running), oldest first."""
        query = select(Campaign.id).where(Campaign.status == "running")
        if only is not None:
            query = query.where(Campaign.id == only)
        return list(self._session.scalars(query.order_by(Campaign.created)))

    def campaigns(self, *, limit: int | None, after: tuple[datetime, str] | None,
                  statuses: Collection[str] = ()) -> list[Campaign]:
        """At most ``limit`` campaigns (``None``: all), newest first (``created`` descending,
        then ``id``), after the key ``after``; only those in ``statuses`` when given."""
        query = select(Campaign).order_by(Campaign.created.desc(), Campaign.id)
        if statuses:
            query = query.where(Campaign.status.in_(statuses))
        if after is not None:
            created, last_id = after
            query = query.where(Campaign.created <= created,
                                or_(Campaign.created < created, Campaign.id > last_id))
        if limit is not None:
            query = query.limit(limit)
        return list(self._session.scalars(query))

    def count_campaigns(self, statuses: Collection[str] = ()) -> int:
        """How many campaigns there are (in ``statuses`` when given): one ``COUNT``."""
        query = select(func.count()).select_from(Campaign)
        if statuses:
            query = query.where(Campaign.status.in_(statuses))
        return int(self._session.scalar(query) or 0)

    def members(self, campaign_id: str, *, offset: int, limit: int) -> list[CampaignMember]:
        """A page of the campaign's members, by position."""
        return list(self._session.scalars(
            select(CampaignMember).where(CampaignMember.campaign_id == campaign_id)
            .order_by(CampaignMember.position).offset(offset).limit(limit)))

    def members_after(self, campaign_id: str, *, after: int, limit: int,
                      states: Collection[str] = ()) -> list[CampaignMember]:
        """At most ``limit`` of the campaign's members with ``position`` above ``after``, by
        position (keyset); only those in ``states`` when given."""
        query = select(CampaignMember).where(CampaignMember.campaign_id == campaign_id,
                                             CampaignMember.position > after)
        if states:
            query = query.where(CampaignMember.state.in_(states))
        return list(self._session.scalars(query.order_by(CampaignMember.position)
                                          .limit(limit)))

    def count_members(self, campaign_id: str, states: Collection[str] = ()) -> int:
        query = select(func.count()).select_from(CampaignMember).where(
            CampaignMember.campaign_id == campaign_id)
        if states:
            query = query.where(CampaignMember.state.in_(states))
        return int(self._session.scalar(query) or 0)

    def members_in(self, campaign_id: str, states: Collection[str]) -> list[CampaignMember]:
        """The campaign's members in one of ``states``, by device id (the lock order)."""
        return list(self._session.scalars(
            select(CampaignMember).where(CampaignMember.campaign_id == campaign_id,
                                         CampaignMember.state.in_(tuple(states)))
            .order_by(CampaignMember.device_id)))

    def member_ids_in(self, campaign_id: str, states: Collection[str]) -> list[str]:
        """The device ids of the campaign's members in one of ``states``."""
        return list(self._session.scalars(select(CampaignMember.device_id).where(
            CampaignMember.campaign_id == campaign_id,
            CampaignMember.state.in_(tuple(states)))))

    def pending_members(self, campaign_id: str, *, up_to_wave: int, limit: int
                        ) -> list[CampaignMember]:
        """At most ``limit`` pending members of waves up to ``up_to_wave``; members tried
        longest ago first (``updated``), then by position."""
        return list(self._session.scalars(select(CampaignMember).where(
            CampaignMember.campaign_id == campaign_id, CampaignMember.state == "pending",
            CampaignMember.wave <= up_to_wave)
            .order_by(CampaignMember.updated, CampaignMember.position).limit(limit)))

    def member_counts(self, campaign_id: str) -> dict[int, dict[str, int]]:
        """How many members per wave and state."""
        rows = self._session.execute(
            select(CampaignMember.wave, CampaignMember.state, func.count())
            .where(CampaignMember.campaign_id == campaign_id)
            .group_by(CampaignMember.wave, CampaignMember.state))
        result: dict[int, dict[str, int]] = {}
        for wave, state, n in rows:
            result.setdefault(wave, {})[state] = n
        return result

    def health_counts(self, campaign_id: str, settled_before: datetime
                      ) -> tuple[dict[int, tuple[int, int]], int, int]:
        """A health-gated campaign's members: per wave, the ``succeeded`` members whose health
        window has passed (confirmed before ``settled_before``) healthy and unhealthy; the
        members that confirmed (``succeeded``, or rolled back after they confirmed); those
        found unhealthy inside their window."""
        m = CampaignMember
        settled: dict[int, tuple[int, int]] = {}
        for wave, bad, n in self._session.execute(
                select(m.wave, m.unhealthy.is_not(None), func.count())
                .where(m.campaign_id == campaign_id, m.state == "succeeded",
                       or_(m.confirmed.is_(None), m.confirmed <= settled_before))
                .group_by(m.wave, m.unhealthy.is_not(None))):
            ok, unhealthy = settled.get(int(wave), (0, 0))
            settled[int(wave)] = (ok, unhealthy + int(n)) if bad else (ok + int(n), unhealthy)
        confirmed = self._session.scalar(
            select(func.count()).select_from(m).where(
                m.campaign_id == campaign_id, m.confirmed.is_not(None))) or 0
        unhealthy = self._session.scalar(
            select(func.count()).select_from(m).where(
                m.campaign_id == campaign_id, m.unhealthy.is_not(None))) or 0
        return settled, int(confirmed), int(unhealthy)

    def state_counts(self, campaign_id: str) -> dict[str, int]:
        """How many members per state."""
        rows = self._session.execute(select(CampaignMember.state, func.count())
                                     .where(CampaignMember.campaign_id == campaign_id)
                                     .group_by(CampaignMember.state))
        return {state: n for state, n in rows}

    def device_state_counts(self) -> dict[str | None, int]:
        """How many devices per current state (``None``: no update yet)."""
        rows = self._session.execute(select(Device.state, func.count()).group_by(Device.state))
        return {state: n for state, n in rows}

    def campaign_status_counts(self) -> dict[str, int]:
        """How many campaigns per status."""
        rows = self._session.execute(select(Campaign.status, func.count())
                                     .group_by(Campaign.status))
        return {status: n for status, n in rows}

    def recent_member_counts(self, limit: int) -> dict[tuple[str, str], int]:
        """How many members per state, of the ``limit`` campaigns updated last:
        ``(campaign id, state) -> count``."""
        recent = (select(Campaign.id).order_by(Campaign.updated.desc(), Campaign.id)
                  .limit(limit).scalar_subquery())
        rows = self._session.execute(
            select(CampaignMember.campaign_id, CampaignMember.state, func.count())
            .where(CampaignMember.campaign_id.in_(recent))
            .group_by(CampaignMember.campaign_id, CampaignMember.state))
        return {(campaign, state): n for campaign, state, n in rows}

    def campaign_log(self, campaign_id: str) -> list[CampaignLog]:
        """The campaign's log, oldest first."""
        return list(self._session.scalars(select(CampaignLog)
                                          .where(CampaignLog.campaign_id == campaign_id)
                                          .order_by(CampaignLog.id)))

    def member_outcomes(self, campaign_id: str, states: Collection[str]
                        ) -> list[tuple[str, dict[str, str]]]:
        """``(state, times)`` of the campaign's members in one of ``states`` (its progress
        over time: ``CampaignEngine.progress``)."""
        rows = self._session.execute(
            select(CampaignMember.state, CampaignMember.times)
            .where(CampaignMember.campaign_id == campaign_id,
                   CampaignMember.state.in_(tuple(states))))
        return [(state, times if isinstance(times, dict) else {}) for state, times in rows]

    def class_counts(self) -> dict[tuple[str | None, str | None], int]:
        """How many devices per (vendor ID, class ID) (``None``: not reported yet)."""
        rows = self._session.execute(select(Device.vendor_id, Device.class_id, func.count())
                                     .group_by(Device.vendor_id, Device.class_id))
        return {(vendor, klass): n for vendor, klass, n in rows}

    def tag_lists(self) -> list[list[str] | None]:
        """Every device's tags (counted by the caller: JSON lists do not group in SQL)."""
        return list(self._session.scalars(select(Device.tags)))

    def component_counts(self) -> list[tuple[list[str], str | None, list[int] | None, int]]:
        """How many devices run each (component id, sequence number, version), from the
        installed components of every device's inventory."""
        c = InstalledComponent
        # JSON columns grouped by their text (PostgreSQL's json has no equality)
        ident, version = cast(c.component_id, Text), cast(c.version, Text)
        rows = self._session.execute(
            select(ident, c.sequence_number, version, func.count(func.distinct(c.device_id)))
            .group_by(ident, c.sequence_number, version))
        found = []
        for ident_text, seq, version_text, n in rows:
            parts = json.loads(ident_text) if ident_text else []
            numbers = json.loads(version_text) if version_text else None
            found.append(([str(p) for p in parts] if isinstance(parts, list) else [],
                          seq, [int(v) for v in numbers] if isinstance(numbers, list) else None,
                          int(n)))
        return found


_SORT_COLUMNS: Mapping[str, Any] = {"created": Device.created, "name": Device.name,
                                    "state": Device.state, "last_seen": Device.last_seen}
_NULLABLE_SORTS = frozenset({"state", "last_seen"})


def _after_key(column: Any, after: tuple[Any, str], descending: bool, *, nullable: bool
               ) -> ColumnElement[bool]:
    """``(column, id)`` after ``after`` in the order ``Tx.devices`` sorts by: a missing value
    (``NULL``) before every value ascending, after every value descending. Written as a range
    first (``column >= value AND ...``) so that an index on ``(column, id)`` gives it."""
    value, last_id = after
    if value is None:
        if descending:  # the NULLs come last: only those with a smaller id are left
            return and_(column.is_(None), Device.id < last_id)
        return or_(and_(column.is_(None), Device.id > last_id), column.is_not(None))
    if descending:
        before = and_(column <= value, or_(column < value, Device.id < last_id))
        return or_(before, column.is_(None)) if nullable else before
    return and_(column >= value, or_(column > value, Device.id > last_id))


def _payloads(origin: str, serials: Mapping[str, int]) -> Iterator[str]:
    """``{"o": origin, "s": {...}}`` documents of at most ``_NOTIFY_BYTES`` covering
    ``serials`` (a notification's payload is bounded by PostgreSQL)."""
    chunk: dict[str, int] = {}
    size = 0
    for device_id, serial in serials.items():
        entry = len(device_id) + len(str(serial)) + 6
        if chunk and size + entry > _NOTIFY_BYTES:
            yield json.dumps({"o": origin, "s": chunk}, separators=(",", ":"))
            chunk, size = {}, 0
        chunk[device_id] = serial
        size += entry
    if chunk:
        yield json.dumps({"o": origin, "s": chunk}, separators=(",", ":"))


def parse_payload(payload: str) -> tuple[str, dict[str, int]] | None:
    """(origin, {device id: serial}) of a notification on ``NOTICE_CHANNEL``, or ``None`` for
    anything else (any client of the database may NOTIFY on the channel: nothing is trusted
    but ids and whole numbers)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("o"), str) \
            or not isinstance(doc.get("s"), dict):
        return None
    serials = {k: v for k, v in doc["s"].items()
               if isinstance(k, str) and 0 < len(k) <= 64 and type(v) is int and v >= 0}
    return doc["o"], serials


class NoticeConnection:
    """A connection of its own (not from the pool) that LISTENs on ``NOTICE_CHANNEL``.

    Raises (every method): ``StorageError`` when the connection fails (the caller opens a new
    one)."""

    def __init__(self, engine: Engine, origin: str) -> None:
        import psycopg  # noqa: PLC0415 - PostgreSQL only

        self.origin = origin
        self._errors: tuple[type[Exception], ...] = (psycopg.Error, OSError)
        try:
            cargs, cparams = engine.dialect.create_connect_args(engine.url)
            self._connection = psycopg.connect(*cargs, **{**cparams, "autocommit": True})
        except self._errors as e:
            raise StorageError(f"cannot listen for notices: {_describe(e)}") from e
        try:
            self._connection.execute(f"LISTEN {NOTICE_CHANNEL}")
        except self._errors as e:
            self.close()
            raise StorageError(f"cannot listen for notices: {_describe(e)}") from e

    def wait(self, timeout: float) -> list[dict[str, int]]:
        """The notices of other replicas that arrive within ``timeout`` seconds (this
        process's own are skipped: its listeners heard them at the commit)."""
        found: list[dict[str, int]] = []
        try:
            # the first within the timeout, then whatever else arrived meanwhile
            for wait, most in ((timeout, 1), (0.0, None)):
                for notify in self._connection.notifies(timeout=wait, stop_after=most):
                    parsed = parse_payload(notify.payload)
                    if parsed is not None and parsed[0] != self.origin:
                        found.append(parsed[1])
        except self._errors as e:
            raise StorageError(f"the notice listener's connection failed: "
                               f"{_describe(e)}") from e
        return found

    def close(self) -> None:
        with suppress(*self._errors):
            self._connection.close()


def open_store(url: str, *, clock: Callable[[], datetime] | None = None,
               pool: PoolOptions | None = None) -> Store:
    """The tracker database at ``url`` (e.g. ``sqlite:////var/lib/suitkit/tracker.db`` or
    ``postgresql+psycopg://user@host/suitkit``), its schema upgraded to the newest revision
    (``upgrade_schema``).

    Raises:
        StorageError: the URL is not usable, the database cannot be opened or migrated.
    """
    engine: Engine | None = None
    options = pool or PoolOptions()
    try:
        parsed = make_url(url)
        memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "",
                                                                              ":memory:")
        engine = create_engine(url) if memory else create_engine(
            url, pool_size=options.size, max_overflow=options.max_overflow,
            pool_timeout=options.timeout)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        upgrade_schema(engine)
    except (SQLAlchemyError, ValueError, ImportError, CommandError) as e:
        if engine is not None:
            engine.dispose()
        raise StorageError(f"cannot open the tracker database {_redact(url)}: "
                           f"{_describe(e)}") from e
    return Store(engine, clock=clock)


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
            missing = [Base.metadata.tables[name] for name in _INITIAL_TABLES
                       if name not in tables]
            Base.metadata.create_all(connection, tables=missing)
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


