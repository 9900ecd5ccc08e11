"""What the status tracker's fleet can do, protocol-neutral (RFC 9019 §3): register, check in
(inventory, pending update), report (state events, SUIT reports), deploy, API tokens, audit.

``TrackerDB`` is the service object every edge calls (``open_db(url)`` opens it on a
``store.Store``); each method is one transaction of the store. The rules live here:

- The update state machine (``model.TRANSITIONS``) is enforced under a lock on the device's
  row (``Tx.lock_device``), so two concurrent events cannot both move the device from the same
  state; the same counter orders a device's history (events and reports share one sequence).
- A device reports only for its current assignment (``NotAssigned``), one SUIT report per
  update while it works on it; an inventory keeps the registered identity
  (``IdentityRefused``).
- Deployments (RFC 9019 client-initiated mode): ``deploy`` records, per device, the release it
  should install (``Assignment``; the latest deployment wins) and moves the device to
  ``notified``; refused (``DeploymentRefused``) mid-update or over a campaign's assignment.
  Campaign assignments (``deliverable``, ``member_event``): a paused campaign's devices, or
  those outside its schedule, are held back; an event moves the campaign member in the same
  transaction.
- Protocols with coarser steps than the state machine (hawkBit DDI): ``advance`` adds the
  states a device skipped on the way of a successful update, in one transaction;
  ``update_view`` is a device's update as such an edge shows it; ``close_withdrawn`` ends an
  update withdrawn before the device started, when the device acknowledges it.
- Quotas and retention (``tracker.quotas.Quotas``): the oldest events and reports beyond a
  device's quota are deleted with the new one; ``prune`` is one retention pass.
- Device credentials and API tokens (RFC 9019 §3: every exchange with the tracker is
  authenticated): a 256-bit random secret is given once; only its SHA-256 (``sha256$<hex>``)
  is stored, and checks compare hashes in constant time. Such a secret needs no slow KDF
  (PBKDF2-100k would cost ~50 ms per request); hashes of earlier versions
  (``pbkdf2-sha256$...``) are still accepted. An unknown id costs the same hash computation.
  API tokens (admin, author, operator) expire and can be revoked (``check_token``); the audit
  log records who did what (``record_audit``/``audit_log``).

Results are plain data (dicts of JSON values, ``Page``, ``TokenCheck``); refusals are the
exceptions below. Deliberately not here: SQL (``tracker.store``), HTTP or any other protocol
(``tracker.edges``), the campaign engine (``tracker.campaigns``), deleting devices, rotating a
credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal

from suitkit.core.report import capability_json, decode_capability_report
from suitkit.errors import DecodeError, StorageError
from suitkit.tracker.classes import (
    ClassNames,
    ClassRefused,
    check_names,
    class_json,
    learn,
    name_devices,
    store_names,
)
from suitkit.tracker.model import (
    DEVICE_STATES,
    FINAL_STATES,
    MAX_AUDIT_TEXT,
    MAX_CAPABILITY_BYTES,
    MAX_HEALTH_ROWS,
    MAX_TOKEN_ID,
    REPORT_STATES,
    STATES,
    TOKEN_ROLES,
    TRANSITIONS,
    UNHEALTHY,
    ApiToken,
    Assignment,
    AuditEntry,
    Campaign,
    Device,
    DeviceEvent,
    DeviceHealth,
    DeviceReport,
    InstalledComponent,
    Release,
)
from suitkit.tracker.quotas import Quotas
from suitkit.tracker.store import (
    DEVICE_SORTS,
    CheckinRow,
    DeviceQuery,
    PoolOptions,
    Store,
    Tx,
    naive,
    open_store,
)

__all__ = [
    "DEVICE_SORTS",
    "MAX_FACTS",
    "MAX_HEALTH_RECORDS",
    "MAX_HEALTH_WINDOW",
    "NOT_STARTED",
    "SEEN_RESOLUTION",
    "AssignmentListener",
    "AssignmentView",
    "CampaignRefused",
    "CheckIn",
    "ClassNames",
    "ClassRefused",
    "ComponentEntry",
    "DeploymentRefused",
    "DeviceQuery",
    "FleetCounts",
    "HealthRecord",
    "HealthReport",
    "IdentityRefused",
    "Inventory",
    "NonceRefused",
    "NotAssigned",
    "Page",
    "TokenCheck",
    "TrackerDB",
    "TransitionRefused",
    "UpdateView",
    "deliverable",
    "hash_secret",
    "in_window",
    "iso",
    "member_event",
    "open_db",
    "open_health_window",
    "page_of",
    "parse_window",
    "pbkdf2_hash",
    "schedule_open",
    "utc_naive",
    "verify_secret",
]

AssignmentListener = Callable[[Mapping[str, int]], None]
"""Called with ``{device id: notice serial}`` of devices whose assignment changed (see
``TrackerDB.add_listener``)."""

_log = logging.getLogger(__name__)
SEEN_RESOLUTION = timedelta(seconds=30)
MAX_FACTS = 64
"""Hardware facts one device may have (``merge_facts``)."""
"""``last_seen`` and ``last_used`` are kept to this resolution: a check-in that authenticates
writes them at most once per interval (a write per request halves check-in throughput)."""
_KDF_ITERATIONS = 100_000
_KDF_NAME = "pbkdf2-sha256"
_SHA256 = "sha256"
_DUMMY_HASH = f"{_SHA256}${'00' * 32}"
NOT_STARTED = frozenset({"notified", "downloaded"})
"""The states of a campaign member (and its device) that has not started its assignment."""
_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")
_SUMMARY_TAGS = 500
"""At most this many tags in ``TrackerDB.fleet_summary`` (the most used)."""
_SUMMARY_ROWS = 1000
"""At most this many classes and component versions in ``TrackerDB.fleet_summary`` (those of
the most devices): devices name their own components, so the list is theirs to grow."""


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


# --------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list in a stable order (keyset pagination): ``items``, and ``next``, the
    sort key of the last item when more may follow (``None`` on the last page)."""

    items: list[dict[str, Any]]
    next: tuple[Any, ...] | None
    total: int | None = None
    """How many items the whole list holds (its filters applied), when it was asked for."""


def page_of(rows: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], limit: int,
            total: int | None = None) -> Page:
    """The first ``limit`` of ``rows`` (sort key, item), fetched ``limit + 1`` at most: one
    more row than the page tells whether a next page exists."""
    shown = list(rows[:limit])
    more = len(rows) > limit and bool(shown)
    return Page([doc for _, doc in shown], shown[-1][0] if more else None, total)


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


class NonceRefused(NotAssigned):
    """A report whose nonce is not the one issued with the device's current update: unknown,
    already used (a replayed report), expired, or missing where it is required."""


class IdentityRefused(Exception):
    """An inventory whose vendor or class ID contradicts the device's registration."""


class CampaignRefused(Exception):
    """A campaign operation that cannot be done; ``kind`` says why: ``invalid`` (bad input),
    ``unknown`` (no such campaign or device), ``conflict`` (wrong status), ``forbidden``
    (four-eyes)."""

    def __init__(self, kind: Literal["invalid", "unknown", "conflict", "forbidden"],
                 message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The outcome of ``TrackerDB.check_token``: ``status`` is ``"valid"``, ``"invalid"``
    (unknown id or wrong secret), ``"expired"`` or ``"revoked"``; name and role are set only
    when the secret was right."""

    status: str
    name: str | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class CheckIn:
    """What ``TrackerDB.check_in`` answers a device: its pending update (the document of
    ``pending_update``, ``None``: nothing to do), the update state the tracker has for it, and
    whether the tracker wants the whole inventory (the digest named is not the one stored and
    no inventory came with it)."""

    pending: dict[str, Any] | None
    state: str | None
    send_inventory: bool
    rollback: str | None = None
    """The release the device is told to roll back (it confirmed it and was found unhealthy
    inside its campaign's health window: ``TrackerDB.report_health``), ``None`` otherwise."""


MAX_HEALTH_RECORDS = 16
MAX_HEALTH_CHECK = 32
MAX_HEALTH_TEXT = 256
MAX_HEALTH_WINDOW = 7 * 24 * 3600.0
"""A device's health window is at most a week (seconds)."""


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """One check of a health report: what was checked (``process``, ``command``, ``url``,
    ``crashes``, ``suit-report``, ...), whether it passed, and a line about it."""

    check: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What a device says of the release it confirmed (``POST .../health``), bounded by the
    edge: ``status`` one of ``model.HEALTH_STATUSES``, its health ``window`` (seconds), the
    checks run and failed so far, the application's crashes, the latest records."""

    release: str
    status: str
    window: float
    checks: int = 0
    failures: int = 0
    crashes: int = 0
    records: tuple[HealthRecord, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ComponentEntry:
    """One inventory component, validated by the API."""

    component_id: tuple[str, ...]
    sequence_number: int | None
    digest: str | None
    version: tuple[int, ...] | None = None
    """The running image's version (update-management §4.4), ``None``: not known."""


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a device says it is and holds, validated by the API."""

    vendor_id: str | None
    class_id: str | None
    components: tuple[ComponentEntry, ...]
    hardware: Mapping[str, object]
    capabilities: bytes | None = None
    """The device's SUIT_Capability_Report (CBOR, checked by the edge): ``b""`` the device
    sends none, ``None`` the protocol has no place for it (the stored one is kept)."""
    recipient_keys: tuple[str, ...] | None = None
    """The device's ECDH-ES public keys (base64 COSE_Keys, checked by the edge): ``()`` none,
    ``None`` the protocol has no place for them (the stored ones are kept)."""


@dataclass(frozen=True, slots=True)
class AssignmentView:
    """A device's assignment as a protocol edge needs it (``TrackerDB.update_view``):
    ``pending`` is not done and deliverable now (its campaign does not hold it back);
    ``reported``: the device sent the SUIT report of this update; ``campaign_mode`` and
    ``window``: its campaign's (``None`` for a direct deployment)."""

    release: str
    envelope_url: str
    action: str
    created: datetime
    pending: bool
    done: bool
    reported: bool
    campaign_id: str | None
    campaign_mode: str | None
    window: str | None
    nonce: str | None = None
    """The nonce issued with the update (report §4), for the device's report."""


@dataclass(frozen=True, slots=True)
class UpdateView:
    """A device's update state (``device_state``, since ``state_changed``) and its latest
    assignment (``None``: none, or withdrawn before it started)."""

    device_state: str | None
    state_changed: datetime | None
    assignment: AssignmentView | None


_MAX_EVENT_DETAIL = 1024


def _steps(current: str | None, target: str) -> list[str] | None:
    """The states from ``current`` to ``target`` on the way of a successful update
    (``TrackerDB.advance``): ``[]`` when ``target`` is reached or passed already, ``None``
    when it cannot be reached."""
    if target == "failed":
        return ["failed"] if "failed" in TRANSITIONS.get(current, frozenset()) else None
    if current not in STATES or current in FINAL_STATES or target not in STATES:
        return None
    here, there = STATES.index(current), STATES.index(target)
    if there <= here:
        return []
    # waiting is a detour (update-management §5.6), never a step on the way
    way = [s for s in STATES[here + 1:there + 1] if s != "waiting" or s == target]
    return None if "failed" in way or "rolled-back" in way else way


def iso(moment: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with its ``+00:00``; ``None`` stays ``None``."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC).isoformat()


# --------------------------------------------------------------------------------- schedules


def parse_window(window: str) -> tuple[dtime, dtime]:
    """``"HH:MM-HH:MM"`` (UTC, may wrap midnight) as (start, end).

    Raises: CampaignRefused (``invalid``).
    """
    match = _WINDOW.fullmatch(window)
    if match is None:
        raise CampaignRefused("invalid", f"window: expected 'HH:MM-HH:MM' (UTC), got "
                                         f"{window[:40]!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = dtime(h1, m1), dtime(h2, m2)
    if start == end:
        raise CampaignRefused("invalid", "window: start and end are equal; leave the window "
                                         "out for 'always'")
    return start, end


def in_window(window: str | None, now: datetime) -> bool:
    """Whether ``now`` (UTC) falls inside the daily window (``None``: always)."""
    if window is None:
        return True
    start, end = parse_window(window)
    moment = utc_naive(now).time()
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def utc_naive(moment: datetime) -> datetime:
    """``moment`` in UTC without tzinfo (a naive one is taken as UTC already)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def schedule_open(campaign: Campaign, now: datetime) -> bool:
    """Whether the campaign's start time has come and ``now`` is inside its window."""
    if campaign.start_after is not None and now < campaign.start_after:
        return False
    return in_window(campaign.window, now)


def deliverable(tx: Tx, assignment: Assignment, device_state: str | None,
                now: datetime) -> bool:
    """Whether a device may be given its campaign assignment now (``TrackerDB.pending_update``):
    not while the campaign is paused or outside its schedule, unless the device has already
    started (then it finishes)."""
    if assignment.campaign_id is None or device_state not in NOT_STARTED:
        return True
    campaign = tx.campaign(assignment.campaign_id)
    if campaign is None:
        return True
    return _campaign_delivers(campaign.status, campaign.start_after, campaign.window,
                              utc_naive(now))


def _campaign_delivers(status: str, start_after: datetime | None, window: str | None,
                       now: datetime) -> bool:
    """The campaign part of ``deliverable`` (``now`` naive UTC): not while it is paused, nor
    while it runs outside its schedule."""
    if status == "paused":
        return False
    if status != "running":
        return True
    if start_after is not None and now < start_after:
        return False
    return in_window(window, now)


def _pending_of(row: CheckinRow, now: Callable[[], datetime]) -> dict[str, Any] | None:
    """The pending-update document of a device's check-in row, or ``None``: no assignment, a
    done one, or one its campaign holds back (``deliverable``'s rule, without a session).
    ``now()``: the tracker's time (naive UTC; a query on PostgreSQL), read only when a
    campaign may hold the device back."""
    if row.release is None or row.done is not None:
        return None
    if (row.campaign_id is not None and row.state in NOT_STARTED
            and row.campaign_status is not None
            and not _campaign_delivers(row.campaign_status, row.campaign_start_after,
                                       row.campaign_window, now())):
        return None
    return {"release": row.release, "envelope_url": row.envelope_url, "action": row.action,
            "campaign": row.campaign_id, "nonce": row.nonce}


def _rollback_of(row: CheckinRow) -> str | None:
    """The release a check-in tells the device to roll back: its confirmed update was ordered
    back (``Assignment.rollback``, an order of this assignment, not an older one)."""
    if row.rollback is None or row.release is None or row.state != "succeeded" \
            or row.assigned is None or row.rollback < row.assigned:
        return None
    return row.release


def open_health_window(tx: Tx, device: Device, assignment: Assignment | None,
                       now: datetime) -> DeviceHealth | None:
    """The health window the device is in, if any: it confirmed its current release and
    said it watches it (or found it unhealthy) less than its window ago. Its agent takes no
    new update before the window ends, so none is given to it (a deployment is refused, a
    campaign retries the member later)."""
    if assignment is None or assignment.done is None or device.state != "succeeded":
        return None
    row = tx.health(device.id, assignment.release)
    if row is None or row.status not in ("watching", "unhealthy"):
        return None
    if (now - row.confirmed).total_seconds() >= row.window:
        return None
    return row


def _pending(tx: Tx, device_id: str) -> dict[str, Any] | None:
    assignment = tx.assignment(device_id)
    if assignment is None or assignment.done is not None:
        return None
    state = tx.device_state(device_id)
    # the time (a query on PostgreSQL) only when a campaign may hold the device back
    if assignment.campaign_id is not None and state in NOT_STARTED \
            and not deliverable(tx, assignment, state, tx.now()):
        return None
    return {"release": assignment.release, "envelope_url": assignment.envelope_url,
            "action": assignment.action, "campaign": assignment.campaign_id,
            "nonce": assignment.nonce}


def member_event(tx: Tx, assignment: Assignment, state: str, detail: str,
                 now: datetime) -> None:
    """A device event on a campaign assignment: move the member (same transaction)."""
    if assignment.campaign_id is None:
        return
    member = tx.member(assignment.campaign_id, assignment.device_id)
    if member is None or member.state in FINAL_STATES or member.state == "cancelled":
        return
    member.state = state
    member.times = {**member.times, state: iso(now) or ""}
    member.detail = detail[:1024]
    member.updated = now
    if state == "succeeded":
        member.confirmed = now  # its health window starts (campaigns: health_window)


# --------------------------------------------------------------------------------- the service


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """The fleet at one moment (``TrackerDB.fleet_counts``): devices per state (``registered``:
    no update yet), campaigns per status, campaign members per ``(campaign id, state)``."""

    devices: Mapping[str, int]
    campaigns: Mapping[str, int]
    members: Mapping[tuple[str, str], int]


class TrackerDB:
    """The tracker's operations over one ``Store``; every method is one transaction.

    Raises (every method): ``StorageError`` when the database fails.
    """

    def __init__(self, store: Store, *, quotas: Quotas | None = None) -> None:
        self.store = store
        self.engine = store.engine
        """The store's engine (to dispose of its pooled connections)."""
        self.quotas = quotas if quotas is not None else Quotas()
        """What one device may keep (``tracker.quotas``): applied by ``add_event``,
        ``add_report`` and ``prune``."""
        self._listeners: list[AssignmentListener] = []

    def add_listener(self, listener: AssignmentListener) -> None:
        """Call ``listener(serials)`` after every committed change of devices' assignments
        (new, replaced, withdrawn, held back or released by a campaign): ``serials`` maps
        each device id to its new notice serial (iterated, the ids). What push notifications
        hang on (``store.Store.add_listener``).

        Listeners run in the thread that made the change, after the commit; they must not
        block and must not raise (an exception is logged and ignored: the change is stored).
        """
        self.store.add_listener(listener)

    def fleet_counts(self, *, campaigns: int = 50) -> FleetCounts:
        """Devices per state, campaigns per status, and the members per state of the
        ``campaigns`` campaigns updated last (what ``/metrics`` shows; one transaction)."""
        with self.store.transaction() as tx:
            return FleetCounts(
                {state or "registered": n for state, n in tx.device_state_counts().items()},
                tx.campaign_status_counts(), tx.recent_member_counts(campaigns))

    def fleet_summary(self) -> dict[str, Any]:
        """The fleet in counts, for an operator's overview and for picking a campaign's target
        (one transaction, grouped in SQL but for tags): ``devices``; ``states`` (devices per
        update state, ``no state yet`` for none); ``classes`` (devices per vendor and class ID,
        most first); ``tags`` (devices per tag, the ``_SUMMARY_TAGS`` most used);
        ``versions`` (devices per installed component, sequence number and version, from the
        inventories); classes and versions at most ``_SUMMARY_ROWS`` each (of the most
        devices)."""
        with self.store.transaction() as tx:
            states = tx.device_state_counts()
            classes = tx.class_counts()
            tag_lists = tx.tag_lists()
            versions = tx.component_counts()
        tags: dict[str, int] = {}
        for listed in tag_lists:
            for tag in set(listed or ()):
                tags[tag] = tags.get(tag, 0) + 1
        return {
            "devices": sum(states.values()),
            "states": {state or "no state yet": n for state, n in sorted(
                states.items(), key=lambda x: (-x[1], x[0] or ""))},
            "classes": [{"vendor_id": vendor, "class_id": klass, "devices": n}
                        for (vendor, klass), n in sorted(
                            classes.items(), key=lambda x: (-x[1], x[0][0] or "",
                                                            x[0][1] or ""))[:_SUMMARY_ROWS]],
            "tags": dict(sorted(tags.items(), key=lambda x: (-x[1], x[0]))[:_SUMMARY_TAGS]),
            "versions": [{"component": ident, "sequence": int(seq) if seq is not None else None,
                          "version": version, "devices": n}
                         for ident, seq, version, n in sorted(
                             sorted(versions, key=lambda x: -x[3])[:_SUMMARY_ROWS],
                             key=lambda x: (x[0], int(x[1] or -1), x[2] or []))],
        }

    def now(self) -> datetime:
        """The current time as stored (naive UTC)."""
        return self.store.now()

    # ---- devices and credentials

    def register(self, name: str, *, vendor_id: str | None = None,
                 class_id: str | None = None, report_key: str | None = None
                 ) -> tuple[str, str]:
        """A new device called ``name``: (device id, secret). The secret is not stored.

        ``vendor_id``/``class_id``: the identity the device is registered with (else its first
        inventory gives it); later inventories must keep it (``set_inventory``).
        ``report_key``: the public key (PEM, checked by the edge) its signed reports are
        checked with (report §8)."""
        device_id = str(uuid.uuid4())
        secret = secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            tx.add(Device(id=device_id, name=name, credential_hash=hash_secret(secret),
                          created=tx.now(), hardware={}, history_count=0,
                          vendor_id=vendor_id, class_id=class_id, report_key=report_key))
        return device_id, secret

    def set_report_key(self, device_id: str, report_key: str | None) -> bool:
        """Register (or, with ``None``, remove) the key the device's signed reports are checked
        with (an admin's act: a device never sets its own); ``False``: no such device."""
        with self.store.transaction() as tx:
            device = tx.device(device_id) if len(device_id) <= 36 else None
            if device is None:
                return False
            device.report_key = report_key
            return True

    def report_key(self, device_id: str) -> tuple[str | None, str | None]:
        """The device's registered report key (PEM, ``None``: none) and its class ID, which a
        signed-report policy may name."""
        with self.store.transaction() as tx:
            device = tx.device(device_id)
            if device is None:
                raise StorageError(f"no device {device_id[:40]!r}")
            return device.report_key, device.class_id

    def authenticate(self, device_id: str, secret: str) -> bool:
        """Whether ``secret`` is ``device_id``'s credential; marks the device as seen (in a
        transaction of its own that may fail: on a full disk reads keep working)."""
        found = self.store.credential(device_id) if len(device_id) <= 36 else None
        stored, last_seen = found if found is not None else (_DUMMY_HASH, None)
        ok = verify_secret(secret, stored) and found is not None
        # a mark to 30 s: this process's clock, not a query of the database's per check-in
        now = self.store.local_now()
        if ok and (last_seen is None or now - last_seen >= SEEN_RESOLUTION):
            # a write at most once per resolution, not per call
            self.store.mark_seen(device_id, now)
        return ok

    def check_in(self, device_id: str, secret: str, inventory_digest: str,
                 inventory: Inventory | None = None) -> CheckIn | None:
        """A device's poll (``POST .../checkin``): ``None`` when ``secret`` is not
        ``device_id``'s credential, else its pending update and state (``CheckIn``).

        One statement reads the credential, the state, the stored inventory digest and the
        pending assignment with its campaign (``Store.checkin_read``); nothing is written
        unless ``last_seen`` is older than ``SEEN_RESOLUTION`` (its own small transaction,
        allowed to fail as in ``authenticate``) or an inventory comes (``set_inventory``).
        ``inventory_digest`` is the device's own digest of its inventory, opaque here: when it
        is not the one stored and no ``inventory`` came, the answer asks for the inventory
        (``send_inventory``); with ``inventory`` both are stored (the inventory only if it
        changed).

        Raises:
            IdentityRefused: ``inventory`` contradicts the device's vendor or class ID.
        """
        row = self.store.checkin_read(device_id) if len(device_id) <= 36 else None
        stored = row.credential_hash if row is not None else _DUMMY_HASH
        if not verify_secret(secret, stored) or row is None:
            return None
        seen = self.store.local_now()  # a coarse mark: this process's clock, no query
        if row.last_seen is None or seen - row.last_seen >= SEEN_RESOLUTION:
            self.store.mark_seen(device_id, seen)  # may fail: Store._touch
        send = False
        if inventory is not None:
            self.set_inventory(device_id, inventory, digest=inventory_digest)
        elif inventory_digest != row.inventory_digest:
            send = True
        return CheckIn(_pending_of(row, self.now), row.state, send, _rollback_of(row))

    def exists(self, device_id: str) -> bool:
        with self.store.transaction() as tx:
            return tx.device(device_id) is not None

    def devices(self, *, components: bool = False) -> list[dict[str, Any]]:
        """Every device, oldest first; with ``components``, each with its installed components
        (read in one more query, for the dashboard's fleet overview)."""
        return self.devices_page(components=components, limit=None).items

    def devices_page(self, *, components: bool = False, limit: int | None = 500,
                     after: tuple[Any, str] | None = None,
                     query: DeviceQuery | None = None, total: bool = False) -> Page:
        """At most ``limit`` devices (``None``: all) of ``query`` (default: every device,
        oldest first: by ``created``, then ``id``: unique, indexed), after the key ``after``
        (``Page.next`` of the page before: the sort key's value and the id). A device
        registered meanwhile sorts after every older one: no device is shown twice or
        skipped. ``total``: ``Page.total`` counts every device of ``query``, in the same
        transaction."""
        query = query if query is not None else DeviceQuery()
        with self.store.transaction() as tx:
            rows = tx.devices(limit=None if limit is None else limit + 1, after=after,
                              query=query)
            installed = tx.components_of([d.id for d in rows]) if components else None
            items = [((getattr(d, query.sort), d.id),
                      _device_json(d, None if installed is None else installed.get(d.id, [])))
                     for d in rows]
            count = tx.count_devices(query) if total else None
            name_devices(tx, [doc for _, doc in items], installed)
            return page_of(items, limit if limit is not None else len(items), count)

    def device(self, device_id: str) -> dict[str, Any] | None:
        """One device with its components, or ``None``."""
        with self.store.transaction() as tx:
            device = tx.device(device_id)
            if device is None:
                return None
            installed = tx.components(device_id)
            doc = _device_json(device, installed)
            name_devices(tx, [doc], {device_id: installed})
            doc["capabilities"] = _capabilities_json(device.capabilities)
            doc["health"] = [_health_json(h) for h in tx.health_rows(device_id,
                                                                     MAX_HEALTH_ROWS)]
            return doc

    def capabilities(self, device_id: str) -> tuple[bool, bytes | None]:
        """(whether the device exists, its stored SUIT_Capability_Report as it sent it)."""
        with self.store.transaction() as tx:
            device = tx.device(device_id)
            return (False, None) if device is None else (True, device.capabilities)

    def health(self, device_id: str) -> list[dict[str, Any]]:
        """What the device said of the health of its latest releases, the newest first."""
        with self.store.transaction() as tx:
            return [_health_json(h) for h in tx.health_rows(device_id, MAX_HEALTH_ROWS)]

    def report_health(self, device_id: str, report: HealthReport) -> dict[str, Any]:
        """Keep what the device says of the health of the release it confirmed; an unhealthy
        device inside its campaign's health window is told to roll back (``rollback`` in the
        answer and in its check-ins); ``rolled-back`` moves the device (and its campaign
        member) from ``succeeded`` to ``rolled-back``. One transaction, under the device's
        lock. Returns ``{"release", "status", "rollback": bool, "health": {...}}``.

        Raises:
            NotAssigned: ``report.release`` is not the device's current, confirmed update
                (or it said ``rolled-back`` already and now says otherwise).
        """
        with self.store.transaction() as tx:
            seq = tx.lock_device(device_id)
            device = tx.device(device_id)
            assert device is not None
            tx.refresh(device)
            assignment = tx.assignment(device_id)
            now = tx.now()
            if assignment is None or assignment.release.lower() != report.release.lower() \
                    or assignment.action != "install" or assignment.done is None \
                    or device.state not in ("succeeded", "rolled-back"):
                shown = device.state if device.state is not None else "no state yet"
                current = assignment.release if assignment is not None else "none"
                raise NotAssigned(
                    f"a health report is about the release the device confirmed last: device "
                    f"{device.id} is {shown} with release {current}, the report names "
                    f"{report.release[:128]}")
            row = tx.health(device_id, assignment.release)
            if device.state == "rolled-back" and (row is None or row.status != "rolled-back"
                                                  or report.status != "rolled-back"):
                raise NotAssigned(f"device {device.id} did not confirm release "
                                  f"{assignment.release} (state rolled-back); there is no "
                                  "health to report")
            if row is None:
                confirmed = device.state_changed or now
                row = DeviceHealth(device_id=device_id, release=assignment.release,
                                   status=report.status, confirmed=confirmed, window=0.0,
                                   checks=0, failures=0, crashes=0, records=[], detail="",
                                   updated=now)
                tx.add(row)
            elif row.status == "rolled-back" and report.status != "rolled-back":
                raise NotAssigned(f"device {device.id} rolled release {assignment.release} "
                                  "back already")
            row.status = report.status
            row.window = min(max(report.window, 0.0), MAX_HEALTH_WINDOW)
            row.checks, row.failures = report.checks, report.failures
            row.crashes = report.crashes
            row.records = [{"check": r.check[:MAX_HEALTH_CHECK], "ok": r.ok,
                            "detail": r.detail[:MAX_HEALTH_TEXT]}
                           for r in report.records[:MAX_HEALTH_RECORDS]]
            row.detail = report.detail[:MAX_HEALTH_TEXT]
            row.updated = now
            unhealthy = report.status in UNHEALTHY
            if unhealthy and row.unhealthy is None:
                row.unhealthy = now
            campaign = (tx.campaign(assignment.campaign_id)
                        if assignment.campaign_id is not None else None)
            member = (tx.member(campaign.id, device_id) if campaign is not None else None)
            inside = (campaign is not None and campaign.health_window is not None
                      and (now - row.confirmed).total_seconds() <= campaign.health_window)
            if member is not None and member.state in ("succeeded", "rolled-back"):
                member.health, member.updated = report.status, now
                if unhealthy and inside and member.unhealthy is None:
                    member.unhealthy = now
                    member.times = {**member.times, "unhealthy": iso(now) or ""}
            if report.status == "unhealthy" and inside and assignment.rollback is None \
                    and device.state == "succeeded":
                assignment.rollback = now
            added = False
            if report.status == "rolled-back" and device.state == "succeeded":
                detail = ("rolled back after the health check"
                          + (f": {row.detail}" if row.detail else ""))[:_MAX_EVENT_DETAIL]
                tx.add(DeviceEvent(device_id=device_id, seq=seq, state="rolled-back",
                                   previous="succeeded", detail=detail, timestamp=now))
                device.state, device.state_changed = "rolled-back", now
                self._trim_events(tx, device_id, seq)
                added = True
                if member is not None and member.state == "succeeded":
                    member.state, member.detail = "rolled-back", detail
                    member.times = {**member.times, "rolled-back": iso(now) or ""}
            if not added:
                device.history_count -= 1
            for old in tx.health_rows(device_id)[MAX_HEALTH_ROWS:]:
                if old is not row:
                    tx.delete(old)
            ordered = (assignment.rollback is not None
                       and assignment.rollback >= assignment.created
                       and device.state == "succeeded")
            tx.flush()
            return {"release": assignment.release, "status": row.status,
                    "rollback": ordered, "health": _health_json(row)}

    # ---- what devices send

    def set_inventory(self, device_id: str, inventory: Inventory, *,
                      digest: str | None = None) -> None:
        """Replace the device's inventory (identity, components, hardware facts).

        An inventory equal to the stored one writes nothing (a device sends it at every
        check-in; ``inventory_updated`` is when it last changed). ``digest``: the device's own
        digest of it (``check_in``), stored with it; an inventory that changes without one
        (``PUT .../inventory``) clears the stored digest, so that the next check-in asks for
        the inventory again.

        The vendor and class IDs are the device's identity: once the registration or the first
        inventory gave them, an inventory that names others (or none) is refused, so that a
        credential used by another kind of device cannot overwrite this one's records.

        Raises:
            IdentityRefused: the inventory's vendor or class ID contradicts the registration.
        """
        with self.store.transaction() as tx:
            device = tx.device(device_id)
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
            old = tx.components(device_id)
            wanted = [(list(e.component_id),
                       str(e.sequence_number) if e.sequence_number is not None else None,
                       e.digest, list(e.version) if e.version is not None else None)
                      for e in inventory.components]
            capabilities = (device.capabilities if inventory.capabilities is None
                            else inventory.capabilities or None)
            keys = (device.recipient_keys if inventory.recipient_keys is None
                    else list(inventory.recipient_keys) or None)
            if (device.inventory_updated is not None
                    and device.vendor_id == inventory.vendor_id
                    and device.class_id == inventory.class_id
                    and device.hardware == dict(inventory.hardware)
                    and device.capabilities == capabilities
                    and device.recipient_keys == keys
                    and [(c.component_id, c.sequence_number, c.digest, c.version)
                         for c in old] == wanted):
                if digest is not None and device.inventory_digest != digest:
                    device.inventory_digest = digest
                return
            device.inventory_digest = digest
            device.vendor_id = inventory.vendor_id
            device.class_id = inventory.class_id
            device.hardware = dict(inventory.hardware)
            if device.capabilities != capabilities:
                device.capabilities = capabilities
            if device.recipient_keys != keys:
                device.recipient_keys = keys
            device.inventory_updated = tx.now()
            for row in old:
                tx.delete(row)
            for position, (component_id, sequence, image, version) in enumerate(wanted):
                tx.add(InstalledComponent(
                    device_id=device_id, position=position, component_id=component_id,
                    sequence_number=sequence, digest=image, version=version))

    def merge_facts(self, device_id: str, facts: Mapping[str, str]) -> None:
        """Merge ``facts`` into the device's hardware facts (a protocol edge's view of the
        device: how it connects, whether it authenticated, what its device object says),
        keeping the other facts. Bounded: at most ``MAX_FACTS`` facts in all, names of at most
        64 characters, values of at most 256 (longer values are cut).

        Raises:
            StorageError: no such device, or the facts would exceed ``MAX_FACTS``.
        """
        cleaned = {str(k)[:64]: str(v)[:256] for k, v in facts.items()}
        with self.store.transaction() as tx:
            device = tx.device(device_id) if len(device_id) <= 36 else None
            if device is None:
                raise StorageError(f"no device {device_id[:40]!r}")
            merged = {**(device.hardware or {}), **cleaned}
            if len(merged) > MAX_FACTS:
                raise StorageError(f"device {device_id}: at most {MAX_FACTS} hardware facts, "
                                   f"these would make {len(merged)}")
            if merged != device.hardware:
                device.hardware = merged

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
        with self.store.transaction() as tx:
            seq = tx.lock_device(device_id)
            # read after the lock, by this transaction's own session: current (no refresh)
            device = tx.device(device_id)
            assert device is not None
            assignment = tx.assignment(device_id)
            if by_device:
                _check_device_event(tx, device, assignment, state, tx.now())
            result, finished = self._move(tx, device, assignment, seq, (state, detail))
            if finished:  # the assignment is no longer pending: retained notices must say so
                tx.announce([device_id])
        return result

    def _move(self, tx: Tx, device: Device, assignment: Assignment | None, seq: int,
              step: tuple[str, str]) -> tuple[dict[str, Any], bool]:
        """One event (history ``seq``) moving ``device`` to the state of ``step`` (state,
        detail) in ``tx``; whether it finished the assignment."""
        state, detail = step
        if state not in TRANSITIONS.get(device.state, frozenset()):
            raise TransitionRefused(device.state, state)
        now = tx.now()
        row = DeviceEvent(device_id=device.id, seq=seq, state=state,
                          previous=device.state, detail=detail, timestamp=now)
        tx.add(row)
        device.state = state
        device.state_changed = now
        self._trim_events(tx, device.id, seq)
        finished = False
        if assignment is not None and assignment.done is None:
            if state in FINAL_STATES or (state == "downloaded"
                                         and assignment.action == "download"):
                assignment.done = now
                finished = True
            member_event(tx, assignment, state, detail, now)
        tx.flush()
        return _event_json(row), finished

    def advance(self, device_id: str, target: str, detail: str, *, release: str | None = None,
                unreported: str | None = None) -> list[dict[str, Any]]:
        """The device itself says its current update reached ``target`` (a state of
        ``DEVICE_STATES``), for a protocol whose steps are coarser than the state machine's:
        the states between the current one and ``target`` on the way of a successful update
        (``STATES``) are added too, each an event with ``detail``, in one transaction.
        ``failed`` is one step from anywhere. A ``target`` the device has already reached or
        passed adds nothing (a repeated or late message): the events added, maybe none.

        ``release``: the assignment the message is about; refused when it is not the current
        one. ``unreported``: a prefix for the detail of a final state reached without a SUIT
        report of this update (the device did not say what it verified).

        Raises:
            NotAssigned: no pending assignment, or not ``release``; ``target`` is ``notified``.
            TransitionRefused: ``target`` cannot be reached from the current state.
        """
        finished = False
        added: list[dict[str, Any]] = []
        with self.store.transaction() as tx:
            tx.hold_device(device_id)
            device = tx.device(device_id)
            if device is None:
                raise StorageError(f"no device {device_id}")
            tx.refresh(device)
            assignment = tx.assignment(device_id)
            _check_device_event(tx, device, assignment, target, tx.now())
            assert assignment is not None
            if release is not None and release.lower() != assignment.release.lower():
                raise NotAssigned(f"the message is about release {release[:128]}; the "
                                  f"device's current assignment is release "
                                  f"{assignment.release}")
            steps = _steps(device.state, target)
            if steps is None:
                raise TransitionRefused(device.state, target)
            for state in steps:
                text = detail
                if unreported is not None and state in FINAL_STATES \
                        and assignment.reported is None:
                    text = f"{unreported}: {detail}" if detail else unreported
                event, done = self._move(tx, device, assignment, tx.lock_device(device_id),
                                         (state, text[:_MAX_EVENT_DETAIL]))
                added.append(event)
                finished = finished or done
            if finished:  # no longer pending: retained notices must say so
                tx.announce([device_id])
        return added

    def close_withdrawn(self, device_id: str, notified: datetime, detail: str
                        ) -> dict[str, Any] | None:
        """The device acknowledges that the update it was notified of at ``notified`` is over:
        its assignment was withdrawn before it started (a cancelled campaign). It moves from
        ``notified`` to ``failed`` with ``detail``, in one transaction, only if it is still
        notified since then without a pending assignment; ``None`` (nothing changed)
        otherwise, such as when a new assignment came meanwhile."""
        with self.store.transaction() as tx:
            tx.hold_device(device_id)
            device = tx.device(device_id)
            if device is None:
                return None
            tx.refresh(device)
            assignment = tx.assignment(device_id)
            if device.state != "notified" or device.state_changed != notified or (
                    assignment is not None and assignment.done is None):
                return None
            event, _ = self._move(tx, device, assignment, tx.lock_device(device_id),
                                  ("failed", detail[:_MAX_EVENT_DETAIL]))
            return event

    def update_view(self, device_id: str) -> UpdateView | None:
        """The device's update as a protocol edge shows it (``UpdateView``), ``None`` for no
        such device."""
        with self.store.transaction() as tx:
            device = tx.device(device_id)
            if device is None:
                return None
            assignment = tx.assignment(device_id)
            if assignment is None:
                return UpdateView(device.state, device.state_changed, None)
            campaign = (tx.campaign(assignment.campaign_id)
                        if assignment.campaign_id is not None else None)
            pending = assignment.done is None and deliverable(tx, assignment, device.state,
                                                              tx.now())
            return UpdateView(
                device.state, device.state_changed, AssignmentView(
                    release=assignment.release, envelope_url=assignment.envelope_url,
                    action=assignment.action, created=assignment.created,
                    pending=pending, done=assignment.done is not None,
                    reported=assignment.reported is not None,
                    campaign_id=assignment.campaign_id,
                    campaign_mode=campaign.mode if campaign is not None else None,
                    window=campaign.window if campaign is not None else None,
                    nonce=assignment.nonce))

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
        with self.store.transaction() as tx:
            now = tx.now()
            # device rows are locked in ascending id order in every transaction (PostgreSQL:
            # two deployments, or a deployment and a campaign tick, cannot deadlock)
            for device_id in sorted(requested):
                device = tx.device(device_id) if len(device_id) <= 36 else None
                if device is None:
                    raise DeploymentRefused(f"no device {device_id[:40]!r}", unknown=True)
                seq = tx.lock_device(device_id)
                tx.refresh(device)
                assignment = tx.assignment(device_id)
                if assignment is not None and assignment.done is None \
                        and assignment.campaign_id is not None:
                    raise DeploymentRefused(f"device {device_id} has a pending assignment of "
                                            f"campaign {assignment.campaign_id}; cancel the "
                                            "campaign or wait until the device finishes")
                window = open_health_window(tx, device, assignment, now)
                if window is not None:
                    ends = window.confirmed + timedelta(seconds=window.window)
                    raise DeploymentRefused(
                        f"device {device_id} is inside the health window of release "
                        f"{window.release} until {iso(ends)} ({window.status}); its agent "
                        "takes no new update before it ends: deploy again then")
                event: dict[str, Any] | None = None
                if "notified" in TRANSITIONS.get(device.state, frozenset()):
                    row = DeviceEvent(device_id=device_id, seq=seq, state="notified",
                                      previous=device.state, detail=f"release {release}",
                                      timestamp=now)
                    tx.add(row)
                    device.state = "notified"
                    device.state_changed = now
                    tx.flush()
                    event = _event_json(row)
                elif device.state == "notified":
                    device.history_count -= 1  # no event: give the sequence number back
                else:
                    raise DeploymentRefused(f"device {device_id} is in the middle of an update "
                                            f"(state {device.state}); deploy again once it "
                                            "reports succeeded, failed or rolled-back")
                if assignment is None:
                    tx.add(Assignment(device_id=device_id, release=release,
                                      envelope_url=envelope_url, created=now))
                else:
                    assignment.release, assignment.envelope_url = release, envelope_url
                    assignment.created, assignment.done = now, None
                    assignment.campaign_id, assignment.action = None, "install"
                    assignment.reported = assignment.rollback = None
                results.append({"id": device_id, "event": event})
            tx.announce(r["id"] for r in results)
        order = {device_id: i for i, device_id in enumerate(requested)}
        results.sort(key=lambda r: order[r["id"]])
        return results

    def pending_update(self, device_id: str) -> dict[str, Any] | None:
        """The device's assignment not yet done, ``{"release", "envelope_url", "action",
        "campaign"}``, or ``None`` (also while its campaign holds it back: paused, or outside
        its schedule, and the device has not started)."""
        row = self.store.checkin_read(device_id)  # the check-in's one read: the same rule
        return _pending_of(row, self.now) if row is not None else None

    def notice(self, device_id: str) -> tuple[dict[str, Any] | None, int]:
        """The device's notice as one read: (``pending_update``, the serial of its latest
        notice), the same on every replica (``store.Tx.announce``)."""
        with self.store.transaction() as tx:
            serial = tx.notice_serial(device_id)
            return _pending(tx, device_id), serial

    def add_report(self, device_id: str, raw: bytes, summary: Mapping[str, Any], *,
                   release: str | None = None, nonce: bytes | None = None,
                   require_nonce: bool = False, nonce_lifetime: timedelta | None = None,
                   capabilities: bytes | None = None) -> dict[str, Any]:
        """Store a SUIT report (bytes as received) and its summary.

        ``release``: the manifest digest (hex) the report is about, given for a device's own
        report (``POST .../reports``): it is stored only for the device's current assignment,
        while it works on it (``REPORT_STATES``), if it names the assigned release, and once
        per update (a replayed or late report is refused). ``nonce``: the report's
        suit-report-nonce, which must be the one issued with that update (``Assignment.nonce``)
        and not older than ``nonce_lifetime`` (``None``: no expiry); ``require_nonce``: a
        report without one is refused (signed reports: a signature over a report without the
        nonce could be replayed at a later update of the same release). ``capabilities``: the
        capability report it carried (encoded), stored as the device's (at most
        ``MAX_CAPABILITY_BYTES``). Nothing is stored when a check fails.

        Raises:
            NotAssigned: ``release`` is given and the report is not the one the device's
                current assignment expects.
            NonceRefused: the nonce is unknown, used already, expired, or missing while
                required.
        """
        with self.store.transaction() as tx:
            seq = tx.lock_device(device_id)
            if release is not None:
                assignment = _check_report(tx, device_id, release, nonce=nonce,
                                           require_nonce=require_nonce,
                                           lifetime=nonce_lifetime)
                assignment.reported = seq
            if capabilities is not None and len(capabilities) <= MAX_CAPABILITY_BYTES:
                device = tx.device(device_id)
                if device is not None and device.capabilities != capabilities:
                    device.capabilities = capabilities
            row = DeviceReport(device_id=device_id, seq=seq, received=tx.now(), raw=raw,
                               size=len(raw), summary=dict(summary))
            tx.add(row)
            tx.flush()
            self._trim_reports(tx, device_id)
            return _report_json(row)

    def _trim_events(self, tx: Tx, device_id: str, seq: int) -> None:
        """Delete the device's oldest events beyond ``quotas.max_events`` (same transaction
        as the new one, history item ``seq``; tracker.quotas says why the oldest go rather
        than the new one). Each event takes a history number of its own (``lock_device``): a
        device whose numbers reach no further than the quota has no more events than it,
        and is not asked (the query was a quarter of an event's statements)."""
        keep = self.quotas.max_events
        if keep > 0 and seq > keep:
            tx.keep_newest_events(device_id, keep)

    def _trim_reports(self, tx: Tx, device_id: str) -> None:
        """Delete the device's oldest reports beyond ``quotas.max_reports`` or beyond
        ``quotas.max_report_bytes`` in all; the newest report is always kept."""
        count, most = self.quotas.max_reports, self.quotas.max_report_bytes
        if count <= 0 and most <= 0:
            return
        total = 0
        for position, (seq, size) in enumerate(
                tx.report_sizes(device_id, count + 1 if count > 0 else None)):
            total += size
            if position > 0 and ((count > 0 and position >= count)
                                 or (most > 0 and total > most)):
                tx.delete_reports_up_to(device_id, seq)
                return

    def prune(self, *, limit: int | None = None, chunk: int = 500) -> dict[str, int]:
        """One retention pass: delete events older than ``quotas.history_days`` and reports
        older than ``quotas.report_days`` (0: kept), at most ``limit`` rows of each table
        (default ``quotas.retention_batch``), oldest first, in transactions of ``chunk`` rows
        so that no device's writes wait long. The rows deleted, per table."""
        most = self.quotas.retention_batch if limit is None else limit
        now = self.now()
        deleted = {"events": 0, "reports": 0}
        for name, days in (("events", self.quotas.history_days),
                           ("reports", self.quotas.report_days)):
            try:
                before = now - timedelta(days=days)
            except OverflowError:  # longer than the calendar: nothing is that old
                continue
            if days <= 0:
                continue
            while deleted[name] < most:
                with self.store.transaction() as tx:
                    count = tx.delete_older(name, before, min(chunk, most - deleted[name]))
                deleted[name] += count
                if count < chunk:
                    break
        return deleted

    def history(self, device_id: str) -> list[dict[str, Any]]:
        """The device's events and report summaries, in the order they arrived."""
        return self.history_page(device_id, limit=None).items

    def history_page(self, device_id: str, *, limit: int | None = 500, after: int = 0,
                     newest: bool = False, kinds: Collection[str] = (),
                     total: bool = False) -> Page:
        """At most ``limit`` items of the device's history (``None``: all) with ``seq`` above
        ``after``, in order; each table is read only for one page (ORDER BY seq, LIMIT, on
        the ``(device_id, seq)`` index). ``Page.next`` is ``(seq,)`` of the last item.
        ``newest``: newest first, with ``seq`` below ``after`` (0: from the newest).
        ``kinds``: only ``event`` or ``report`` items (empty: both); ``total``: count them."""
        events = not kinds or "event" in kinds
        reports = not kinds or "report" in kinds
        with self.store.transaction() as tx:
            fetch = None if limit is None else limit + 1
            items: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
            if events:
                items += [((e.seq,), _event_json(e)) for e in tx.events(
                    device_id, after=after, limit=fetch, newest=newest)]
            if reports:
                items += [((r.seq,), _report_json(r)) for r in tx.reports(
                    device_id, after=after, limit=fetch, newest=newest)]
            items.sort(key=lambda item: item[0], reverse=newest)
            count = (tx.count_history(device_id, events=events, reports=reports)
                     if total else None)
            return page_of(items, limit if limit is not None else len(items), count)

    def report_bytes(self, device_id: str) -> list[bytes]:
        """The raw reports of a device, oldest first."""
        with self.store.transaction() as tx:
            return tx.report_bytes(device_id)

    # ---- releases (the firmware server's, recorded here: every replica sees the same)

    def put_release(self, release_id: str, sequence_number: int, envelope: str,
                    decide: Callable[[dict[str, Any] | None], dict[str, Any]], *,
                    names: Sequence[ClassNames] = ()) -> tuple[dict[str, Any], bool]:
        """Record a release in one transaction, under the lock of its id: ``decide(stored)``
        gets the stored record (``None``: none yet) and returns the record to keep, or raises
        (the firmware server's rule: the same envelope again merges its images, another
        envelope is a conflict); (the record kept, whether it is new). ``names``: the class
        names its manifest text gives, registered in the same transaction
        (``classes.learn``)."""
        with self.store.transaction() as tx:
            row = tx.lock_release(release_id)
            record = decide(dict(row.record) if row is not None else None)
            learn(tx, names, release_id)
            if row is None:
                tx.add(Release(id=release_id, sequence_number=sequence_number,
                               envelope=envelope, record=record, created=tx.now()))
                return record, True
            if record != row.record:
                row.record = record
            return record, False

    def release(self, release_id: str) -> dict[str, Any] | None:
        """The stored record of a release, or ``None``."""
        with self.store.transaction() as tx:
            row = tx.release(release_id)
            return dict(row.record) if row is not None else None

    def releases(self) -> list[dict[str, Any]]:
        """Every stored release record, by sequence number then id."""
        with self.store.transaction() as tx:
            return [dict(row.record) for row in tx.releases()]

    # ---- the class registry (issue #17; tracker.classes)

    def classes_page(self, *, limit: int = 500, after: str | None = None) -> Page:
        """At most ``limit`` classes by class id after ``after``: every class the registry
        names or a device has, with its names (``None``: not known) and how many devices
        have it."""
        with self.store.transaction() as tx:
            ids = tx.class_ids_page(after=after, limit=limit + 1)
            rows = tx.device_classes_of([c for c, _ in ids])
            counts = tx.class_device_counts([c for c, _ in ids])
            items = [((c,), class_json(rows.get(c), c, v, counts.get(c, 0))) for c, v in ids]
            return page_of(items, limit)

    def set_class(self, class_id: str, *, vendor_id: str | None, vendor_name: str | None,
                  class_name: str | None, vendor_domain: str | None, by: str
                  ) -> dict[str, Any]:
        """An operator names a class (``source`` ``operator``: later releases' texts no longer
        rename it). The vendor id, when not given, is the registry's or a device's of that
        class; the names must agree with the IDs when the vendor domain is known
        (``classes.check_names``). Raises ``ClassRefused``."""
        with self.store.transaction() as tx:
            row = tx.lock_device_class(class_id)
            known = None
            if vendor_id is None:
                known = row.vendor_id if row is not None else tx.vendor_of_class(class_id)
            if vendor_id is not None and row is not None and row.vendor_id != vendor_id:
                raise ClassRefused("mismatch", f"class {class_id} belongs to vendor "
                                               f"{row.vendor_id}, not {vendor_id}")
            vendor = vendor_id or known
            if vendor is None:
                raise ClassRefused("invalid", f"vendor_id: class {class_id} is not known "
                                              "to the tracker yet; give its vendor id")
            if vendor_domain is None and row is not None and row.vendor_id == vendor:
                vendor_domain = row.vendor_domain  # known: later names are checked too
            names = check_names(ClassNames(vendor, class_id, vendor_name, class_name,
                                           vendor_domain))
            stored = store_names(tx, names, source="operator", by=by)
            return class_json(stored, class_id, vendor,
                              tx.class_device_counts([class_id]).get(class_id, 0))

    # ---- API tokens

    def create_token(self, name: str, role: str, expires: datetime, created_by: str
                     ) -> tuple[str, str]:
        """A new API token: (id, secret). Only the secret's hash is stored."""
        if role not in TOKEN_ROLES:
            raise ValueError(f"token role must be one of {', '.join(TOKEN_ROLES)}, got {role!r}")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            tx.add(ApiToken(id=token_id, name=name, role=role,
                            secret_hash=hash_secret(secret), created=tx.now(),
                            expires=naive(expires), created_by=created_by[:128]))
        return token_id, secret

    def check_token(self, token_id: str, secret: str) -> TokenCheck:
        """Whether ``secret`` opens token ``token_id``, and if so whether it has expired or
        been revoked; marks a valid token as used. An unknown id costs one hash too."""
        with self.store.transaction() as tx:
            row = tx.token(token_id) if len(token_id) <= MAX_TOKEN_ID else None
            stored = row.secret_hash if row is not None else _DUMMY_HASH
            if not verify_secret(secret, stored) or row is None:
                return TokenCheck("invalid")
            if row.revoked is not None:
                return TokenCheck("revoked", row.name, row.role)
            now = tx.now()
            if row.expires <= now:
                return TokenCheck("expired", row.name, row.role)
            check, last_used = TokenCheck("valid", row.name, row.role), row.last_used
        if last_used is None or now - last_used >= SEEN_RESOLUTION:  # may fail: Store._touch
            self.store.mark_used(token_id, now)
        return check

    def tokens(self) -> list[dict[str, Any]]:
        """Every API token (never a secret or its hash), oldest first."""
        return self.tokens_page(limit=None).items

    def tokens_page(self, *, limit: int | None = 500,
                    after: tuple[datetime, str] | None = None, total: bool = False) -> Page:
        """At most ``limit`` API tokens, oldest first (``created``, ``id``), after ``after``."""
        with self.store.transaction() as tx:
            rows = tx.tokens(limit=None if limit is None else limit + 1, after=after)
            items = [((t.created, t.id), _token_json(t)) for t in rows]
            count = tx.count_tokens() if total else None
            return page_of(items, limit if limit is not None else len(items), count)

    def token(self, token_id: str) -> dict[str, Any] | None:
        with self.store.transaction() as tx:
            row = tx.token(token_id) if len(token_id) <= MAX_TOKEN_ID else None
            return _token_json(row) if row is not None else None

    def revoke_token(self, token_id: str) -> bool:
        """Revoke the token (a no-op if it already is); ``False`` if there is no such token."""
        with self.store.transaction() as tx:
            row = tx.token(token_id) if len(token_id) <= MAX_TOKEN_ID else None
            if row is None:
                return False
            if row.revoked is None:
                row.revoked = tx.now()
            return True

    # ---- audit log

    def record_audit(self, actor: str, role: str, action: str, target: str,
                     detail: str = "") -> None:
        """Append one entry to the audit log (who, in which role, did what to what)."""
        with self.store.transaction() as tx:
            tx.add(AuditEntry(timestamp=tx.now(), actor=actor[:128], role=role[:16],
                              action=action[:64], target=target[:MAX_AUDIT_TEXT],
                              detail=detail))

    def audit_log(self, limit: int = 200) -> list[dict[str, Any]]:
        """The latest ``limit`` audit entries, newest first."""
        return self.audit_page(limit=limit).items

    def audit_page(self, *, limit: int = 500, before: int | None = None,
                   total: bool = False) -> Page:
        """At most ``limit`` audit entries, newest first, with ``id`` below ``before`` (the
        ``Page.next`` of the page before, ``(id,)``)."""
        with self.store.transaction() as tx:
            items = [((e.id,), {"id": e.id, "timestamp": iso(e.timestamp), "actor": e.actor,
                                "role": e.role, "action": e.action, "target": e.target,
                                "detail": e.detail})
                     for e in tx.audit_entries(limit + 1, before=before)]
            count = tx.count_audit() if total else None
            return page_of(items, limit, count)


def _check_device_event(tx: Tx, device: Device, assignment: Assignment | None,
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
    if not deliverable(tx, assignment, device.state, now):
        raise NotAssigned(f"campaign {assignment.campaign_id} holds device {device.id}'s "
                          "assignment back (paused or outside its schedule); the device starts "
                          "it once GET .../update gives it")


def _check_report(tx: Tx, device_id: str, release: str, *, nonce: bytes | None = None,
                  require_nonce: bool = False, lifetime: timedelta | None = None
                  ) -> Assignment:
    """The device's current assignment, if the report ``add_report`` got is the one it
    expects (see there); called after ``lock_device``, so the rows read are current."""
    device = tx.device(device_id)
    assert device is not None
    assignment = tx.assignment(device_id)
    if nonce is not None or require_nonce:
        _check_nonce(tx, device_id, assignment, nonce, lifetime)
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


def _check_nonce(tx: Tx, device_id: str, assignment: Assignment | None, nonce: bytes | None,
                 lifetime: timedelta | None) -> None:
    """report §4 suit-report-nonce: the one issued with the device's current update, used
    once (``Assignment.reported``), within ``lifetime`` of its issue (``Assignment.created``)."""
    if nonce is None:
        raise NonceRefused(f"the report of device {device_id} carries no nonce (report key 2); "
                           "the tracker requires the nonce issued with the update (signed "
                           "reports)")
    shown = nonce[:32].hex() + ("..." if len(nonce) > 32 else "")
    issued = assignment.nonce if assignment is not None else None
    if issued is None or not hmac.compare_digest(nonce.hex(), issued):
        raise NonceRefused(f"the report's nonce {shown} is unknown: it is not the one the "
                           f"tracker issued with device {device_id}'s current update")
    assert assignment is not None
    if assignment.reported is not None:
        raise NonceRefused(f"the report's nonce {shown} was used already by history item "
                           f"{assignment.reported} of device {device_id}: a replayed report")
    if lifetime is not None and tx.now() - assignment.created > lifetime:
        raise NonceRefused(f"the report's nonce {shown} expired: issued "
                           f"{iso(assignment.created)}, valid for "
                           f"{lifetime.total_seconds() / 86400:g} days")


def _device_json(device: Device, components: Sequence[InstalledComponent] | None
                 ) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": device.id,
        "name": device.name,
        "created": iso(device.created),
        "last_seen": iso(device.last_seen),
        "vendor_id": device.vendor_id,
        "class_id": device.class_id,
        "hardware": device.hardware,
        "state": device.state,
        "state_changed": iso(device.state_changed),
        "inventory_updated": iso(device.inventory_updated),
        "tags": list(device.tags or ()),
        "recipient_keys": list(device.recipient_keys or ()),
        "report_key": device.report_key is not None,
    }
    if components is not None:
        doc["components"] = [
            {"id": c.component_id,
             "sequence": int(c.sequence_number) if c.sequence_number is not None else None,
             "digest": c.digest, "version": c.version}
            for c in components]
        # docs/keys.md: the trust anchors are component ['suitkit', 'anchors'], its sequence
        # the anchor version; shown on their own so that a rotation's progress is one field
        doc["anchors"] = next(({"version": c["sequence"], "digest": c["digest"]}
                               for c in doc["components"] if c["id"] == _ANCHORS_ID), None)
    return doc


def _capabilities_json(raw: bytes | None) -> dict[str, Any] | None:
    """The stored capability report as JSON (``report.capability_json``); it was checked when
    it came, so a report that no longer decodes (limits lowered since) is shown as such."""
    if raw is None:
        return None
    try:
        return capability_json(decode_capability_report(raw))
    except DecodeError as e:
        return {"error": f"the stored capability report does not decode: {e}"[:300]}


_ANCHORS_ID = [b"suitkit".hex(), b"anchors".hex()]
"""The inventory id of a device's trust anchors (``suitkit.core.anchors.ANCHORS_COMPONENT``)."""


def _health_json(row: DeviceHealth) -> dict[str, Any]:
    return {"release": row.release, "status": row.status, "confirmed": iso(row.confirmed),
            "window": row.window, "checks": row.checks, "failures": row.failures,
            "crashes": row.crashes, "records": list(row.records or ()), "detail": row.detail,
            "unhealthy": iso(row.unhealthy), "updated": iso(row.updated)}


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "role": token.role,
            "created": iso(token.created), "expires": iso(token.expires),
            "revoked": iso(token.revoked), "last_used": iso(token.last_used),
            "created_by": token.created_by}


def _event_json(event: DeviceEvent) -> dict[str, Any]:
    return {"kind": "event", "seq": event.seq, "state": event.state,
            "previous": event.previous, "detail": event.detail,
            "timestamp": iso(event.timestamp)}


def _report_json(report: DeviceReport) -> dict[str, Any]:
    return {"kind": "report", "seq": report.seq, "id": report.id,
            "received": iso(report.received), "size": report.size,
            "summary": report.summary}



def open_db(url: str, *, clock: Callable[[], datetime] | None = None,
            quotas: Quotas | None = None, pool: PoolOptions | None = None) -> TrackerDB:
    """The tracker at ``url`` (``store.open_store``: the schema is upgraded to the newest
    revision).

    Raises:
        StorageError: the URL is not usable, the database cannot be opened or migrated.
    """
    return TrackerDB(open_store(url, clock=clock, pool=pool), quotas=quotas)
