"""What one device may make the status tracker hold: rates, quotas and retention (issue #11).

One device credential could fill the disk: 3,699 reports of 64 KiB in 30 s. Three bounds:

- **Rates** (``RateLimiter``): each device has a token bucket per kind of write (reports,
  events, inventory): ``per_minute`` calls, refilled continuously, at most a minute's worth in
  a burst. Beyond it the call is 429 with ``Retry-After``. The buckets live in the process:
  with several ``suitkit serve`` replicas each enforces its own (the fleet-wide rate is at most
  replicas x the rate); what is *kept* is bounded by the quotas, in the database, whatever the
  number of replicas. The table of buckets is bounded (``max_devices``; the least recently
  used is dropped, which only ever lets that device start with a full bucket again).
- **Quotas** (``Quotas.max_reports``, ``max_report_bytes``, ``max_events``): rows and bytes
  kept per device. When a write goes over, the device's *oldest* reports or events are deleted
  in the same transaction: the newest say where the device is now, and a device must never be
  blocked from reporting an update's progress (a refused event would wedge its state machine
  and its campaign). The rate limit is what stops a flood from washing out history quickly.
- **Retention** (``Quotas.history_days``, ``report_days``): events and reports older than that
  are deleted by a background pass every ``retention_interval`` seconds, at most
  ``retention_batch`` rows per table per pass (in transactions of ``_PRUNE_CHUNK`` rows), so a
  pass never holds the database for long; no operator is needed.

Inventory needs no quota: it is replaced, never appended, and its size is bounded by the API
(64 components, 64 hardware facts).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["KINDS", "Quotas", "RateLimiter", "retry_after"]

KINDS = ("reports", "events", "inventory")
"""The kinds of device writes that are rate-limited."""


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-device bounds (``suitkit serve`` options; 0 turns a bound off).

    Defaults: 30 reports, 120 events and 120 inventories a minute; 100 reports and 1 MiB of
    reports, 1000 events kept per device; events kept 365 days, reports 90 days; a retention
    pass every 10 minutes deleting at most 10 000 rows per table.
    """

    reports_per_minute: float = 30.0
    events_per_minute: float = 120.0
    inventory_per_minute: float = 120.0
    max_reports: int = 100
    max_report_bytes: int = 1024 * 1024
    max_events: int = 1000
    history_days: float = 365.0
    report_days: float = 90.0
    retention_interval: float = 600.0
    retention_batch: int = 10_000

    def rate(self, kind: str) -> float:
        """Calls a minute allowed for ``kind`` (one of ``KINDS``); 0 is no limit."""
        return {"reports": self.reports_per_minute, "events": self.events_per_minute,
                "inventory": self.inventory_per_minute}[kind]


class RateLimiter:
    """Token buckets per (device, kind), thread-safe, at most ``max_devices`` devices held.

    ``clock`` is a monotonic clock in seconds (a parameter, for tests)."""

    def __init__(self, quotas: Quotas, *, max_devices: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._quotas = quotas
        self._max = max_devices
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def take(self, device_id: str, kind: str) -> float | None:
        """Take one call of ``kind`` for ``device_id``: ``None`` if allowed, else the seconds
        to wait before the next one is (for ``Retry-After``)."""
        per_minute = self._quotas.rate(kind)
        if per_minute <= 0:
            return None
        capacity, per_second = max(1.0, per_minute), per_minute / 60.0
        now = self._clock()
        key = (device_id, kind)
        with self._lock:
            tokens, since = self._buckets.pop(key, (capacity, now))
            tokens = min(capacity, tokens + (now - since) * per_second)
            wait: float | None = None
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / per_second
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._max * len(KINDS):
                self._buckets.popitem(last=False)
            return wait


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
