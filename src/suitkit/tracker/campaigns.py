"""Update campaigns (RFC 9019 §3, the status tracker's operator side): who gets a release, when,
in which waves, and when to stop.

A campaign targets devices by vendor/class ID, tags or an explicit list, rolls a release out in
staged waves (e.g. 1 % → 10 % → 50 % → 100 %), pauses itself when too many devices fail, opens
the next wave only when the open waves succeeded, and respects a start time and a daily
maintenance window. It has a life cycle ``draft → approved → running ⇄ paused → completed |
cancelled`` and needs an approver who is not its author (four-eyes).

Every bit of state lives in the database (tables ``model.Campaign``, ``CampaignMember``,
``CampaignLog``, read and written through ``store.Tx``); progress is driven by
``CampaignEngine.tick(now)``, idempotent and safe to run concurrently or after a crash (each
campaign is advanced in one transaction that first locks its row), and by device events:
``service.TrackerDB.add_event`` calls ``service.member_event`` in the event's own transaction,
so a member's state never disagrees with its device's history (the service also holds back a
paused campaign's devices: ``service.deliverable``).

Members are resolved from the target when the campaign starts (a snapshot) and ordered by
``sha256(campaign id + device id)``: stable across restarts, random-looking, so wave *k* is the
first ``ceil(pct_k × N)`` members. Lock order (PostgreSQL): campaign row, then device rows (in
ascending id order, as ``TrackerDB.deploy``), then member rows; device events lock the device
row, then the member row; nothing locks a campaign after a device, so none of them can
deadlock.

Deliberately not here: SQL (``tracker.store``), the rules of one device's update
(``tracker.service``), HTTP (``edges.campaigns_http``).

Docs: docs/tracker.md, "Campaigns".
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from suitkit.tracker.model import (
    FINAL_STATES,
    TRANSITIONS,
    Assignment,
    Campaign,
    CampaignLog,
    CampaignMember,
    DeviceEvent,
)
from suitkit.tracker.service import (
    MAX_HEALTH_WINDOW,
    NOT_STARTED,
    CampaignRefused,
    Page,
    TrackerDB,
    iso,
    open_health_window,
    page_of,
    parse_window,
    schedule_open,
    utc_naive,
)
from suitkit.tracker.store import Tx

__all__ = [
    "CAMPAIGN_STATUSES",
    "MEMBER_STATES",
    "MODES",
    "CampaignEngine",
    "CampaignSpec",
    "DeltaOffer",
    "check_tags",
    "wave_sizes",
]

Mode = Literal["download-only", "install-now", "install-on-trigger"]
MODES: tuple[Mode, ...] = ("download-only", "install-now", "install-on-trigger")
CAMPAIGN_STATUSES = ("draft", "approved", "running", "paused", "completed", "cancelled")
MEMBER_STATES = ("pending", "notified", "downloading", "downloaded", "installing", "waiting",
                 "rebooting", "succeeded", "failed", "rolled-back", "cancelled")
"""A member's state: ``pending`` (not assigned yet), the device's update states while it works
on this campaign's release, or ``cancelled`` (withdrawn before it started)."""

_FAILED = frozenset({"failed", "rolled-back"})
_MAX_TAGS = 32
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64,128}")
MAX_DELTAS = 16
"""Delta releases one campaign may offer."""
_ASSIGN_BATCH = 500
"""At most this many devices are assigned per campaign per tick (bounded transactions)."""
_EPSILON = 1e-9


# ================================================================================= values


@dataclass(frozen=True, slots=True)
class DeltaOffer:
    """A delta release of the campaign's release: for devices whose inventory names a component
    running the image of SHA-256 ``precursor`` (lower-case hex), the image the delta applies to
    (docs/delta.md). The device checks the precursor again before it writes anything."""

    precursor: str
    release: str
    envelope_url: str

    def to_json(self) -> dict[str, str]:
        return {"precursor": self.precursor, "release": self.release,
                "envelope_url": self.envelope_url}


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What an operator asks for; ``check()`` says what is wrong with it (one line)."""

    name: str
    release: str
    envelope_url: str
    vendor_id: str | None = None
    class_id: str | None = None
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] | None = None
    waves: tuple[float, ...] = (100.0,)
    success_threshold: float = 1.0
    failure_threshold: float = 0.2
    mode: Mode = "install-now"
    start_after: datetime | None = None
    window: str | None = None
    unhealthy_threshold: float | None = None
    """Pause when more than this fraction of the members that confirmed turned unhealthy
    within ``health_window`` seconds of confirming (needs ``health_window``)."""
    health_window: float | None = None
    """Seconds after confirming during which a member's health counts: an unhealthy member is
    told to roll back, and a member counts as a success for the waves and the completion
    only once its window has passed without it being found unhealthy."""
    deltas: tuple[DeltaOffer, ...] = ()
    """Deltas of ``release`` by precursor: a member running a precursor gets its delta."""

    def check(self) -> None:
        """Raises: CampaignRefused (``invalid``)."""
        if self.vendor_id is None and self.class_id is None and not self.tags \
                and self.devices is None:
            _invalid("target: give at least one of vendor_id, class_id, tags, devices")
        if self.devices is not None and not self.devices:
            _invalid("target.devices: expected at least one device id")
        check_tags(self.tags, "target.tags")
        waves = self.waves
        if not waves or any(not 0 < w <= 100 for w in waves) or waves[-1] != 100 \
                or any(a >= b for a, b in itertools.pairwise(waves)):
            _invalid(f"waves: expected increasing percentages in (0, 100] ending at 100, got "
                     f"{list(waves)}")
        for name, value in (("success_threshold", self.success_threshold),
                            ("failure_threshold", self.failure_threshold)):
            if not 0 <= value <= 1:
                _invalid(f"{name}: expected a fraction between 0 and 1, got {value}")
        if self.mode not in MODES:
            _invalid(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.unhealthy_threshold is not None and not 0 <= self.unhealthy_threshold <= 1:
            _invalid(f"unhealthy_threshold: expected a fraction between 0 and 1, got "
                     f"{self.unhealthy_threshold}")
        if self.health_window is not None and not 0 < self.health_window <= MAX_HEALTH_WINDOW:
            _invalid(f"health_window: expected seconds in (0, {MAX_HEALTH_WINDOW:g}], got "
                     f"{self.health_window}")
        if self.unhealthy_threshold is not None and self.health_window is None:
            _invalid("unhealthy_threshold: needs health_window (the seconds after confirming "
                     "during which a device's health counts)")
        if len(self.deltas) > MAX_DELTAS:
            _invalid(f"deltas: at most {MAX_DELTAS}, got {len(self.deltas)}")
        seen: set[str] = set()
        for i, offer in enumerate(self.deltas):
            if not _HEX_DIGEST.fullmatch(offer.precursor) or len(offer.precursor) != 64:
                _invalid(f"deltas[{i}].precursor: expected the SHA-256 of an image in lower-case "
                         f"hex, got {offer.precursor[:80]!r}")
            if offer.precursor in seen:
                _invalid(f"deltas[{i}].precursor: {offer.precursor} is offered twice")
            if offer.release == self.release:
                _invalid(f"deltas[{i}].release: the delta must be another release than the "
                         "campaign's full one")
            seen.add(offer.precursor)
        if self.window is not None:
            parse_window(self.window)


def _invalid(message: str) -> None:
    raise CampaignRefused("invalid", message)


def check_tags(tags: Sequence[str], where: str) -> None:
    """Tags are 1 to 64 characters of ``A-Z a-z 0-9 . _ : -`` (starting alphanumeric), at most
    32 of them. Raises: CampaignRefused (``invalid``)."""
    if len(tags) > _MAX_TAGS:
        _invalid(f"{where}: at most {_MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            _invalid(f"{where}: {str(tag)[:70]!r} is not a tag (1 to 64 characters of "
                     "A-Z a-z 0-9 . _ : -, starting with a letter or digit)")


def _wave_cuts(count: int, waves: Sequence[float]) -> list[int]:
    """Where each wave of ``count`` members ends (positions ``cut[k-1]`` to ``cut[k]``)."""
    # at least one device by the first boundary: an empty open wave never advances
    return [max(1, math.ceil(pct / 100 * count - _EPSILON)) for pct in waves]


def wave_sizes(count: int, waves: Sequence[float]) -> list[int]:
    """How many of ``count`` devices each wave gets when the campaign starts (what
    ``CampaignEngine.start`` splits; ``[]`` for no device)."""
    if count <= 0:
        return []
    sizes, before = [], 0
    for cut in _wave_cuts(count, waves):
        sizes.append(max(0, min(cut, count) - before))
        before = max(before, min(cut, count))
    return sizes


def _percent(value: float) -> str:
    return f"{value * 100:.4g}%"


# ================================================================================= rules


def _health_gated(by_wave: Mapping[int, Mapping[str, int]],
                  settled: Mapping[int, tuple[int, int]]) -> dict[int, dict[str, int]]:
    """Member counts per wave where ``succeeded`` is only the members whose health window
    passed without them being found unhealthy; those found unhealthy count as ``unhealthy``
    (ended, not a success) and those still inside their window as ``watching``."""
    gated: dict[int, dict[str, int]] = {}
    for wave, per_state in by_wave.items():
        counts = dict(per_state)
        succeeded = counts.pop("succeeded", 0)
        ok, bad = settled.get(wave, (0, 0))
        for state, n in (("succeeded", ok), ("unhealthy", bad),
                         ("watching", succeeded - ok - bad)):
            if n:
                counts[state] = n
        gated[wave] = counts
    return gated


def _effective_action(campaign: Campaign) -> str:
    if campaign.mode == "download-only":
        return "download"
    if campaign.mode == "install-on-trigger" and campaign.triggered is None:
        return "download"
    return "install"


def _success_states(campaign: Campaign) -> frozenset[str]:
    """The member states that count as a success in the campaign's current phase."""
    if _effective_action(campaign) == "download":
        return frozenset({"downloaded"})
    return frozenset({"succeeded"})


# ================================================================================= engine


class CampaignEngine:
    """Campaign operations and the ``tick`` that drives them, over a ``TrackerDB``.

    Every method is one transaction per campaign. Operator names (``actor``) are what the
    four-eyes rule compares. Raises (every method): ``StorageError`` when the database fails,
    ``CampaignRefused`` as documented.
    """

    def __init__(self, db: TrackerDB) -> None:
        self.db = db

    # ---- tags

    def set_tags(self, device_id: str, tags: Sequence[str]) -> list[str]:
        """Replace the device's tags (duplicates dropped, order kept)."""
        check_tags(tags, "tags")
        unique = list(dict.fromkeys(tags))
        with self.db.store.transaction() as tx:
            device = tx.device(device_id) if len(device_id) <= 36 else None
            if device is None:
                raise CampaignRefused("unknown", f"no device {device_id[:40]!r}")
            device.tags = unique
        return unique

    # ---- life cycle

    def create(self, spec: CampaignSpec, created_by: str) -> dict[str, Any]:
        """A new campaign in ``draft``."""
        spec.check()
        now = self.db.now()
        target: dict[str, Any] = {}
        if spec.vendor_id is not None:
            target["vendor_id"] = spec.vendor_id
        if spec.class_id is not None:
            target["class_id"] = spec.class_id
        if spec.tags:
            target["tags"] = list(dict.fromkeys(spec.tags))
        if spec.devices is not None:
            target["devices"] = list(dict.fromkeys(spec.devices))
        campaign_id = str(uuid.uuid4())
        with self.db.store.transaction() as tx:
            for device_id in target.get("devices", []):
                if len(device_id) > 36 or tx.device(device_id) is None:
                    raise CampaignRefused("invalid",
                                          f"target.devices: no device {device_id[:40]!r}")
            campaign = Campaign(
                id=campaign_id, name=spec.name, release=spec.release,
                envelope_url=spec.envelope_url, target=target, waves=list(spec.waves),
                success_threshold=spec.success_threshold,
                failure_threshold=spec.failure_threshold, mode=spec.mode,
                start_after=utc_naive(spec.start_after) if spec.start_after else None,
                window=spec.window, status="draft", created_by=created_by[:128], created=now,
                updated=now, current_wave=0, member_count=0, failures_acknowledged=0,
                unhealthy_threshold=spec.unhealthy_threshold, health_window=spec.health_window,
                unhealthy_acknowledged=0, deltas=[o.to_json() for o in spec.deltas] or None)
            tx.add(campaign)
            self._log(tx, campaign_id, created_by, "create", f"release {spec.release}")
        return self.get(campaign_id)

    def approve(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """``draft → approved``; refused (``forbidden``) for the campaign's own author."""
        with self.db.store.transaction() as tx:
            campaign = self._locked(tx, campaign_id)
            self._expect(campaign, ("draft",), "approved")
            if actor == campaign.created_by:
                raise CampaignRefused("forbidden", f"{actor} created this campaign and cannot "
                                      "approve it; another operator must (four-eyes)")
            campaign.status, campaign.approved_by = "approved", actor[:128]
            campaign.approved = campaign.updated = tx.now()
            self._log(tx, campaign_id, actor, "approve")
        return self.get(campaign_id)

    def start(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """``approved → running``: the members are resolved from the target now (a snapshot)
        and the first wave is assigned at once (if the schedule allows)."""
        with self.db.store.transaction() as tx:
            campaign = self._locked(tx, campaign_id)
            if campaign.status == "draft":
                raise CampaignRefused("conflict", "campaign is draft; it must be approved "
                                      "(by an operator other than its author) before it starts")
            self._expect(campaign, ("approved",), "started")
            device_ids = self._resolve(tx, campaign.target)
            if not device_ids:
                raise CampaignRefused("conflict", "the campaign's target matches no device")
            now = tx.now()
            ordered = sorted(device_ids, key=lambda d: hashlib.sha256(
                f"{campaign.id}{d}".encode()).digest())
            cuts = _wave_cuts(len(ordered), campaign.waves)
            for position, device_id in enumerate(ordered):
                wave = next(k for k, cut in enumerate(cuts) if position < cut)
                tx.add(CampaignMember(campaign_id=campaign.id, device_id=device_id,
                                      position=position, wave=wave, state="pending",
                                      times={}, detail="", updated=now))
            campaign.status, campaign.started, campaign.updated = "running", now, now
            campaign.member_count = len(ordered)
            self._log(tx, campaign_id, actor, "start", f"{len(ordered)} devices in "
                      f"{len(campaign.waves)} waves {campaign.waves}")
        self.tick(only=campaign_id)
        return self.get(campaign_id)

    def pause(self, campaign_id: str, actor: str, reason: str = "") -> dict[str, Any]:
        """``running → paused``: members not started get nothing until ``resume``; started
        members finish."""
        with self.db.store.transaction() as tx:
            campaign = self._locked(tx, campaign_id)
            self._expect(campaign, ("running",), "paused")
            campaign.status = "paused"
            campaign.pause_reason = f"paused by {actor}" + (f": {reason}" if reason else "")
            campaign.updated = tx.now()
            self._log(tx, campaign_id, actor, "pause", reason)
            tx.announce(self._not_started(tx, campaign.id))
        return self.get(campaign_id)

    def resume(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """``paused → running``. The failures so far are acknowledged: the failure threshold
        pauses the campaign again only at a new failure."""
        with self.db.store.transaction() as tx:
            campaign = self._locked(tx, campaign_id)
            self._expect(campaign, ("paused",), "resumed")
            counts = self._counts(tx, campaign.id)
            campaign.failures_acknowledged = sum(counts.get(s, 0) for s in _FAILED)
            if campaign.health_window is not None:
                campaign.unhealthy_acknowledged = tx.health_counts(campaign.id, tx.now())[2]
            campaign.status, campaign.pause_reason = "running", None
            campaign.updated = tx.now()
            self._log(tx, campaign_id, actor, "resume")
            self._accept_shortfall(tx, campaign, actor, campaign.updated)
            tx.announce(self._not_started(tx, campaign.id))
        self.tick(only=campaign_id)
        return self.get(campaign_id)

    def _accept_shortfall(self, tx: Tx, campaign: Campaign, actor: str,
                          now: datetime) -> None:
        """Resuming a campaign whose open waves all finished below the success threshold
        accepts that shortfall (else the next tick would pause it again at once): the next wave
        opens, or after the last wave the campaign completes (when it can: not before an
        install-on-trigger campaign's trigger)."""
        open_counts: dict[str, int] = {}
        for wave, per_state in self._counts_by_wave(tx, campaign.id).items():
            if wave <= campaign.current_wave:
                for state, n in per_state.items():
                    open_counts[state] = open_counts.get(state, 0) + n
        size = sum(open_counts.values())
        successes = _success_states(campaign)
        ok = sum(open_counts.get(s, 0) for s in successes)
        done = ok + sum(open_counts.get(s, 0) for s in (*_FAILED, "cancelled"))
        if not size or done != size or ok + _EPSILON >= campaign.success_threshold * size:
            return
        shortfall = f"{ok} of {size} devices succeeded; shortfall accepted by {actor}"
        if campaign.current_wave < len(campaign.waves) - 1:
            campaign.current_wave += 1
            self._log(tx, campaign.id, actor, "wave",
                      f"wave {campaign.current_wave + 1} of {len(campaign.waves)} opened "
                      f"({campaign.waves[campaign.current_wave]:g}%): {shortfall}")
        elif _effective_action(campaign) == (
                "download" if campaign.mode == "download-only" else "install"):
            self._stop(tx, campaign, "completed", shortfall, now)

    def retry(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """Give the members that failed (``failed``, ``rolled-back``) of a running or paused
        campaign another go: they become ``pending`` again and the next tick assigns them
        (a paused campaign: once resumed), each when its device is free. The failures retried
        are no longer acknowledged: one that fails again counts as a new failure for the
        failure threshold. Refused (``conflict``) when no member failed."""
        with self.db.store.transaction() as tx:
            campaign = self._locked(tx, campaign_id)
            self._expect(campaign, ("running", "paused"), "retried")
            now = tx.now()
            failed = tx.members_in(campaign.id, _FAILED)
            if not failed:
                raise CampaignRefused("conflict", "the campaign has no failed devices to retry "
                                      "(none is failed or rolled-back)")
            for member in failed:
                member.detail = f"retry by {actor[:128]} (was {member.state})"
                member.state, member.updated = "pending", now
                member.times = {**member.times, "retried": iso(now) or ""}
                member.health = member.unhealthy = member.confirmed = None
            campaign.failures_acknowledged = max(
                0, campaign.failures_acknowledged - len(failed))
            campaign.updated = now
            self._log(tx, campaign_id, actor, "retry",
                      f"{len(failed)} failed device(s) to be assigned again")
        self.tick(only=campaign_id)
        return self.get(campaign_id)

    def preview(self, spec: CampaignSpec) -> dict[str, Any]:
        """How many devices ``spec``'s target matches now and how many each of its waves would
        get if the campaign started now (the split ``start`` makes): ``{"devices": n,
        "waves": [n1, ...]}``. Raises ``CampaignRefused`` (``invalid``) for a bad spec."""
        spec.check()
        target: dict[str, Any] = {"vendor_id": spec.vendor_id, "class_id": spec.class_id,
                                  "tags": list(spec.tags)}
        if spec.devices is not None:
            target["devices"] = list(dict.fromkeys(spec.devices))
        with self.db.store.transaction() as tx:
            count = len(self._resolve(tx, target))
        return {"devices": count, "waves": wave_sizes(count, spec.waves)}

    def progress(self, campaign_id: str, *, points: int = 60) -> dict[str, Any]:
        """The campaign's outcome over time, from the moment each member reached its current
        state: ``points + 1`` evenly spaced samples from its start to its end (or now) of how
        many members had succeeded (``downloaded`` in a download phase) and failed by then.
        A member retried counts once, by its last outcome. ``series`` is empty before the
        start."""
        points = max(1, min(points, 500))
        with self.db.store.transaction() as tx:
            campaign = tx.campaign(campaign_id) if len(campaign_id) <= 36 else None
            if campaign is None:
                raise CampaignRefused("unknown", f"no campaign {campaign_id[:40]!r}")
            successes = _success_states(campaign)
            rows = tx.member_outcomes(campaign.id, (*successes, *_FAILED))
            start, end = campaign.started, campaign.finished or tx.now()
            total = campaign.member_count
        doc: dict[str, Any] = {"started": iso(start), "until": iso(end), "devices": total,
                               "series": []}
        if start is None:
            return doc
        done_at: list[datetime] = []
        failed_at: list[datetime] = []
        for state, times in rows:
            moment = _moment_of(times.get(state))
            if moment is not None:
                (failed_at if state in _FAILED else done_at).append(moment)
        done_at.sort()
        failed_at.sort()
        end = max(end, start, *done_at[-1:], *failed_at[-1:])
        span = end - start
        for i in range(points + 1):
            at = start + span * i / points
            doc["series"].append({"time": iso(at), "done": bisect.bisect_right(done_at, at),
                                  "failed": bisect.bisect_right(failed_at, at)})
        return doc

    def cancel(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """Final: members not started lose their assignment (state ``cancelled``; a device
        left ``notified`` keeps that state and has nothing to do); started members finish."""
        with self.db.store.transaction() as tx:
            campaign = self._locked(tx, campaign_id)
            self._expect(campaign, ("draft", "approved", "running", "paused"), "cancelled")
            now = tx.now()
            withdrawn: list[str] = []
            # device rows locked in id order
            members = tx.members_in(campaign.id, ("pending", "notified", "downloaded"))
            for member in members:
                if member.state in NOT_STARTED:
                    # PostgreSQL: the device may have moved on since the read; under its lock
                    self._lock_device(tx, member.device_id)
                    tx.refresh(member)
                    if member.state not in NOT_STARTED:
                        continue  # it started meanwhile: it finishes
                if member.state == "downloaded":
                    # staged and not installing yet: keep the image, drop the install order
                    assignment = tx.assignment(member.device_id)
                    if assignment is not None and assignment.campaign_id == campaign.id \
                            and assignment.done is None:
                        assignment.action, assignment.done = "download", now
                        withdrawn.append(member.device_id)
                    continue
                if member.state == "notified":
                    assignment = tx.assignment(member.device_id)
                    if assignment is not None and assignment.campaign_id == campaign.id \
                            and assignment.done is None:
                        tx.delete(assignment)
                        withdrawn.append(member.device_id)
                member.state, member.updated = "cancelled", now
                member.times = {**member.times, "cancelled": iso(now) or ""}
            campaign.status, campaign.finished, campaign.updated = "cancelled", now, now
            self._log(tx, campaign_id, actor, "cancel",
                      f"{len(withdrawn)} assignments withdrawn")
            tx.announce(withdrawn)
        return self.get(campaign_id)

    def trigger(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """Install-on-trigger: from now on members install; members that downloaded get an
        ``install`` assignment (they go on from ``downloaded`` to ``installing``)."""
        with self.db.store.transaction() as tx:
            campaign = self._locked(tx, campaign_id)
            if campaign.mode != "install-on-trigger":
                raise CampaignRefused("conflict", f"campaign mode is {campaign.mode}; only "
                                      "install-on-trigger campaigns can be triggered")
            if campaign.triggered is not None:
                raise CampaignRefused("conflict", "campaign was already triggered at "
                                      f"{iso(campaign.triggered)}")
            self._expect(campaign, ("running", "paused"), "triggered")
            now = tx.now()
            campaign.triggered = campaign.updated = now
            # the download phase's failures were judged against downloads; installs are judged
            # from here on (successes become ``succeeded``), as after a resume
            counts = self._counts(tx, campaign.id)
            campaign.failures_acknowledged = sum(counts.get(s, 0) for s in _FAILED)
            switched = self._switch_to_install(tx, campaign.id, now)
            self._log(tx, campaign_id, actor, "trigger",
                      f"{len(switched)} devices told to install")
            tx.announce(switched)
        self.tick(only=campaign_id)
        return self.get(campaign_id)

    # ---- the engine

    def tick(self, now: datetime | None = None, *, only: str | None = None) -> dict[str, Any]:
        """Advance every running campaign (or only ``only``): pause on the failure threshold,
        pause a wave that finished without enough successes, open the next wave when the open
        ones succeeded, complete, and assign open waves' pending members whose devices are
        free, inside the schedule. Idempotent: a second tick at the same moment does nothing.
        Returns ``{"assigned": n, "paused": [...], "completed": [...], "waves": [...]}``.
        """
        moment = utc_naive(now) if now is not None else self.db.now()
        with self.db.store.transaction() as tx:
            ids = tx.running_campaign_ids(only)
        summary: dict[str, Any] = {"assigned": 0, "paused": [], "completed": [], "waves": []}
        for campaign_id in ids:
            self._tick_one(campaign_id, moment, summary)
        return summary

    def _tick_one(self, campaign_id: str, now: datetime, summary: dict[str, Any]) -> None:
        with self.db.store.transaction() as tx:
            campaign = tx.lock_campaign(campaign_id, status="running", skip_locked=True)
            if campaign is None:
                return  # paused, cancelled or completed meanwhile, or another replica ticks
            previous, campaign.updated = campaign.updated, now  # the last tick or action
            if not self._evaluate(tx, campaign, now, summary):
                # paused: devices not started now get 204; tell the push listeners
                if campaign.status == "paused":
                    tx.announce(self._not_started(tx, campaign.id))
                return
            open_now = schedule_open(campaign, now)
            if open_now != schedule_open(campaign, previous):
                # the window opened or closed: members not started are released or held
                tx.announce(self._not_started(tx, campaign.id))
            if open_now:
                assigned = self._assign(tx, campaign, now)
                tx.announce(assigned)
                summary["assigned"] += len(assigned)

    def _evaluate(self, tx: Tx, campaign: Campaign, now: datetime,
                  summary: dict[str, Any]) -> bool:
        """Thresholds, waves and completion; ``False`` when the campaign stopped running."""
        by_wave = self._counts_by_wave(tx, campaign.id)
        counts: dict[str, int] = {}
        for per_state in by_wave.values():
            for state, n in per_state.items():
                counts[state] = counts.get(state, 0) + n
        successes = _success_states(campaign)
        ended: tuple[str, ...] = (*_FAILED, "cancelled")
        if campaign.health_window is not None and "succeeded" in successes:
            settled, confirmed, unhealthy = tx.health_counts(
                campaign.id, now - timedelta(seconds=campaign.health_window))
            threshold = campaign.unhealthy_threshold
            if threshold is not None and unhealthy > campaign.unhealthy_acknowledged \
                    and confirmed and unhealthy / confirmed > threshold + _EPSILON:
                reason = (f"health threshold crossed: {unhealthy} of {confirmed} devices that "
                          f"confirmed turned unhealthy within {campaign.health_window:g} s "
                          f"({_percent(unhealthy / confirmed)} > {_percent(threshold)})")
                self._stop(tx, campaign, "paused", reason, now)
                summary["paused"].append(campaign.id)
                return False
            by_wave = _health_gated(by_wave, settled)
            ended = (*ended, "unhealthy")
        failed = sum(counts.get(s, 0) for s in _FAILED)
        succeeded = sum(counts.get(s, 0) for s in successes)
        finished = failed + succeeded
        if failed > campaign.failures_acknowledged and finished \
                and failed / finished > campaign.failure_threshold + _EPSILON:
            reason = (f"failure threshold crossed: {failed} of {finished} finished devices "
                      f"failed ({_percent(failed / finished)} > "
                      f"{_percent(campaign.failure_threshold)})")
            self._stop(tx, campaign, "paused", reason, now)
            summary["paused"].append(campaign.id)
            return False
        last = len(campaign.waves) - 1
        while True:
            open_counts: dict[str, int] = {}
            for wave, per_state in by_wave.items():
                if wave <= campaign.current_wave:
                    for state, n in per_state.items():
                        open_counts[state] = open_counts.get(state, 0) + n
            size = sum(open_counts.values())
            ok = sum(open_counts.get(s, 0) for s in successes)
            done = ok + sum(open_counts.get(s, 0) for s in ended)
            if size and ok + _EPSILON >= campaign.success_threshold * size:
                if campaign.current_wave == last:
                    if done == size and _effective_action(campaign) == (
                            "download" if campaign.mode == "download-only" else "install"):
                        self._stop(tx, campaign, "completed",
                                   f"{ok} of {size} devices {'/'.join(sorted(successes))}", now)
                        summary["completed"].append(campaign.id)
                        return False
                    return True
                campaign.current_wave += 1
                self._log(tx, campaign.id, "engine", "wave",
                          f"wave {campaign.current_wave + 1} of {last + 1} opened "
                          f"({campaign.waves[campaign.current_wave]:g}%) after {ok} of {size} "
                          "devices succeeded")
                summary["waves"].append((campaign.id, campaign.current_wave + 1))
                continue
            if size and done == size:
                reason = (f"wave {campaign.current_wave + 1} finished with {ok} of {size} "
                          f"devices succeeded ({_percent(ok / size)} < "
                          f"{_percent(campaign.success_threshold)} needed)")
                self._stop(tx, campaign, "paused", reason, now)
                summary["paused"].append(campaign.id)
                return False
            return True

    def _assign(self, tx: Tx, campaign: Campaign, now: datetime) -> list[str]:
        action = _effective_action(campaign)
        # members found busy go to the back of the line: they cannot starve the others
        members = tx.pending_members(campaign.id, up_to_wave=campaign.current_wave,
                                     limit=_ASSIGN_BATCH)
        assigned: list[str] = []
        for member in sorted(members, key=lambda m: m.device_id):  # the lock order (deploy)
            state = self._assign_device(tx, campaign, member.device_id, action, now)
            if state is None:
                member.updated = now
                continue  # busy with something else: retried at a later tick
            member.state, member.updated = state, now
            member.times = {**member.times, state: iso(now) or ""}
            assigned.append(member.device_id)
        return assigned

    def _assign_device(self, tx: Tx, campaign: Campaign, device_id: str,
                       action: str, now: datetime) -> str | None:
        """Give the device this campaign's assignment if it is free; its member state, or
        ``None`` if it is busy (a pending assignment, or in the middle of another update)."""
        seq = tx.lock_device(device_id)
        device = tx.device(device_id)
        assert device is not None
        tx.refresh(device)
        assignment = tx.assignment(device_id)
        if assignment is not None and assignment.done is None:
            device.history_count -= 1
            return None
        if open_health_window(tx, device, assignment, now) is not None:
            device.history_count -= 1  # watching its last update: retried at a later tick
            return None
        state = device.state
        release, envelope_url = _release_for(tx, campaign, device_id)
        if state == "downloaded" and assignment is not None \
                and assignment.action == "download" and assignment.release == release:
            # the image of this release is already staged (a download-only assignment)
            device.history_count -= 1
            assignment.campaign_id, assignment.action = campaign.id, action
            assignment.envelope_url, assignment.created = envelope_url, now
            assignment.done = now if action == "download" else None
            assignment.rollback = None
            return "downloaded"
        if "notified" in TRANSITIONS.get(state, frozenset()):
            what = "" if release == campaign.release else f", the delta {release}"
            tx.add(DeviceEvent(device_id=device_id, seq=seq, state="notified",
                               previous=state, detail=f"release {campaign.release}{what} "
                               f"(campaign {campaign.id})", timestamp=now))
            device.state, device.state_changed = "notified", now
        elif state == "notified":
            device.history_count -= 1
        else:
            device.history_count -= 1
            return None
        if assignment is None:
            tx.add(Assignment(device_id=device_id, release=release,
                              envelope_url=envelope_url, created=now,
                              campaign_id=campaign.id, action=action))
        else:
            assignment.release, assignment.envelope_url = release, envelope_url
            assignment.created, assignment.done = now, None
            assignment.campaign_id, assignment.action = campaign.id, action
            assignment.reported = None  # a new update: its report is still to come
            assignment.rollback = None  # and no order of the last one holds for it
        return "notified"

    def _switch_to_install(self, tx: Tx, campaign_id: str, now: datetime
                           ) -> list[str]:
        switched: list[str] = []
        # device rows locked in id order
        members = tx.members_in(campaign_id, ("notified", "downloading", "downloaded"))
        for member in members:
            self._lock_device(tx, member.device_id)
            assignment = tx.assignment(member.device_id)
            device_state = tx.device_state(member.device_id)
            if member.state == "downloaded" and (
                    device_state != "downloaded" or assignment is None
                    or assignment.campaign_id != campaign_id):
                # it went on by itself and no longer holds the staged image: an install order
                # could never be carried out, so the member finishes with its device's state
                final = device_state if device_state in FINAL_STATES else "failed"
                member.state, member.updated = final, now
                member.times = {**member.times, final: iso(now) or ""}
                member.detail = ("no longer held this campaign's staged image at the trigger "
                                 f"(device {device_state})")
                continue
            if assignment is None or assignment.campaign_id != campaign_id \
                    or assignment.action != "download":
                continue
            assignment.action, assignment.done, assignment.created = "install", None, now
            switched.append(member.device_id)
        return switched

    # ---- reading

    def get(self, campaign_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """The campaign with counts per state and per wave and a page of members."""
        with self.db.store.transaction() as tx:
            campaign = tx.campaign(campaign_id) if len(campaign_id) <= 36 else None
            if campaign is None:
                raise CampaignRefused("unknown", f"no campaign {campaign_id[:40]!r}")
            doc = _campaign_json(campaign)
            _name_campaigns(tx, [doc])
            by_wave = self._counts_by_wave(tx, campaign.id)
            counts: dict[str, int] = {}
            waves = []
            for wave, pct in enumerate(campaign.waves):
                per_state = by_wave.get(wave, {})
                for state, n in per_state.items():
                    counts[state] = counts.get(state, 0) + n
                waves.append({"wave": wave + 1, "percent": pct,
                              "open": campaign.status != "draft" and campaign.started is not None
                              and wave <= campaign.current_wave,
                              "devices": sum(per_state.values()), "states": per_state})
            doc["counts"] = counts
            doc["waves_detail"] = waves
            members = tx.members(campaign.id, offset=max(0, offset),
                                 limit=max(0, min(limit, 1000)))
            doc["members"] = [_member_json(m) for m in members]
            if campaign.health_window is not None:
                _, confirmed, unhealthy = tx.health_counts(campaign.id, tx.now())
                doc["health"] = {"confirmed": confirmed, "unhealthy": unhealthy}
            doc["members_offset"] = max(0, offset)
            log = tx.campaign_log(campaign.id)
            doc["log"] = [{"timestamp": iso(e.timestamp), "actor": e.actor, "action": e.action,
                           "detail": e.detail} for e in log]
            return doc

    def campaigns(self) -> list[dict[str, Any]]:
        """Every campaign (no members), newest first."""
        return self.campaigns_page(limit=None).items

    def members_page(self, campaign_id: str, *, limit: int = 500, after: int = -1,
                     states: Collection[str] = (), total: bool = False) -> Page:
        """At most ``limit`` of the campaign's members (``MEMBER_STATES``: only those in
        ``states`` when given), by position, after the position ``after`` (``Page.next`` of
        the page before, ``(position,)``); ``total``: count them all."""
        with self.db.store.transaction() as tx:
            campaign = tx.campaign(campaign_id) if len(campaign_id) <= 36 else None
            if campaign is None:
                raise CampaignRefused("unknown", f"no campaign {campaign_id[:40]!r}")
            rows = tx.members_after(campaign.id, after=after, limit=limit + 1, states=states)
            items = [((m.position,), _member_json(m)) for m in rows]
            count = tx.count_members(campaign.id, states) if total else None
            return page_of(items, limit, count)

    def campaigns_page(self, *, limit: int | None = 500,
                       after: tuple[datetime, str] | None = None,
                       statuses: Collection[str] = (), total: bool = False) -> Page:
        """At most ``limit`` campaigns (``None``: all), newest first (``created`` descending,
        then ``id``), after the key ``after`` (``Page.next`` of the page before); only those
        in ``statuses`` (``CAMPAIGN_STATUSES``) when given; ``total``: count them all."""
        with self.db.store.transaction() as tx:
            rows = tx.campaigns(limit=None if limit is None else limit + 1, after=after,
                                statuses=statuses)
            items = [((c.created, c.id), _campaign_json(c)) for c in rows]
            count = tx.count_campaigns(statuses) if total else None
            _name_campaigns(tx, [doc for _, doc in items])
            return page_of(items, limit if limit is not None else len(items), count)

    # ---- helpers

    def _locked(self, tx: Tx, campaign_id: str) -> Campaign:
        """The campaign, its row locked for this transaction (the first write)."""
        if len(campaign_id) > 36:
            raise CampaignRefused("unknown", f"no campaign {campaign_id[:40]!r}")
        campaign = tx.lock_campaign(campaign_id)
        if campaign is None:
            raise CampaignRefused("unknown", f"no campaign {campaign_id[:40]!r}")
        return campaign

    @staticmethod
    def _lock_device(tx: Tx, device_id: str) -> None:
        """Lock the device's row (the lock order: campaign, then devices by id)."""
        tx.hold_device(device_id)

    @staticmethod
    def _expect(campaign: Campaign, statuses: Iterable[str], verb: str) -> None:
        allowed = tuple(statuses)
        if campaign.status not in allowed:
            shown = " or ".join(allowed)
            raise CampaignRefused("conflict", f"campaign is {campaign.status}; only {shown} "
                                  f"campaigns can be {verb}")

    def _stop(self, tx: Tx, campaign: Campaign, status: str, reason: str,
              now: datetime) -> None:
        campaign.status, campaign.updated = status, now
        if status == "paused":
            campaign.pause_reason = reason
        else:
            campaign.finished = now
        self._log(tx, campaign.id, "engine", "pause" if status == "paused" else status,
                  reason)

    def _log(self, tx: Tx, campaign_id: str, actor: str, action: str,
             detail: str = "") -> None:
        tx.add(CampaignLog(campaign_id=campaign_id, timestamp=tx.now(),
                           actor=actor[:128], action=action, detail=detail))

    @staticmethod
    def _resolve(tx: Tx, target: Mapping[str, Any]) -> list[str]:
        devices = tx.matching_devices(ids=target.get("devices"),
                                      vendor_id=target.get("vendor_id"),
                                      class_id=target.get("class_id"))
        wanted = set(target.get("tags", ()))
        return [d.id for d in devices if wanted <= set(d.tags or ())]

    @staticmethod
    def _counts(tx: Tx, campaign_id: str) -> dict[str, int]:
        return tx.state_counts(campaign_id)

    @staticmethod
    def _counts_by_wave(tx: Tx, campaign_id: str) -> dict[int, dict[str, int]]:
        return tx.member_counts(campaign_id)

    @staticmethod
    def _not_started(tx: Tx, campaign_id: str) -> list[str]:
        return tx.member_ids_in(campaign_id, NOT_STARTED)


def _moment_of(text: object) -> datetime | None:
    """A member's state time (``iso`` text) as a naive UTC datetime; ``None`` if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return utc_naive(datetime.fromisoformat(text))
    except ValueError:
        return None


def _release_for(tx: Tx, campaign: Campaign, device_id: str) -> tuple[str, str]:
    """(release, envelope URL) for one member: the delta whose precursor the device's inventory
    says one of its components runs, else the full release (docs/delta.md)."""
    if not campaign.deltas:
        return campaign.release, campaign.envelope_url
    running = {(c.digest or "").lower() for c in tx.components(device_id)}
    for offer in campaign.deltas:
        if offer.get("precursor") in running:
            return str(offer["release"]), str(offer["envelope_url"])
    return campaign.release, campaign.envelope_url


def _member_json(member: CampaignMember) -> dict[str, Any]:
    return {"device_id": member.device_id, "wave": member.wave + 1, "state": member.state,
            "times": member.times, "detail": member.detail, "health": member.health}


def _name_campaigns(tx: Tx, docs: list[dict[str, Any]]) -> None:
    """Speak in names (issue #17): the target's ``class_name`` and ``vendor_name`` (when it
    names a class; ``None``: the registry has no name) and the release's ``release_version``."""
    classes = tx.device_classes_of([d["target"]["class_id"] for d in docs
                                    if d["target"].get("class_id")])
    releases = tx.releases_of([d["release"] for d in docs])
    for doc in docs:
        if doc["target"].get("class_id"):
            row = classes.get(doc["target"]["class_id"])
            doc["target"] = {**doc["target"],
                             "class_name": row.class_name if row is not None else None,
                             "vendor_name": row.vendor_name if row is not None else None}
        release = releases.get(doc["release"])
        doc["release_version"] = (release.record or {}).get("version") \
            if release is not None else None


def _campaign_json(campaign: Campaign) -> dict[str, Any]:
    return {
        "id": campaign.id, "name": campaign.name, "release": campaign.release,
        "envelope_url": campaign.envelope_url, "target": campaign.target,
        "waves": campaign.waves, "success_threshold": campaign.success_threshold,
        "failure_threshold": campaign.failure_threshold, "mode": campaign.mode,
        "start_after": iso(campaign.start_after), "window": campaign.window,
        "status": campaign.status, "pause_reason": campaign.pause_reason,
        "created_by": campaign.created_by, "created": iso(campaign.created),
        "approved_by": campaign.approved_by, "approved": iso(campaign.approved),
        "started": iso(campaign.started), "finished": iso(campaign.finished),
        "triggered": iso(campaign.triggered), "current_wave": campaign.current_wave + 1,
        "devices": campaign.member_count,
        "unhealthy_threshold": campaign.unhealthy_threshold,
        "health_window": campaign.health_window,
        "deltas": list(campaign.deltas or []),
    }
