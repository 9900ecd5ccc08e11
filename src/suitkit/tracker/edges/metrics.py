"""The status tracker's Prometheus series (issue #13): a collector read at each scrape of the
server's ``/metrics`` (``server.observe``; the CLI registers it, the roles do not import each
other).

- ``suitkit_devices{state}``: devices per current state (``registered``: no update yet);
- ``suitkit_campaigns{status}``: campaigns per status;
- ``suitkit_campaign_devices{campaign, state}``: members per state of the 50 campaigns updated
  last (a campaign's progress; bounded, however many campaigns an operator makes);
- ``suitkit_notices_total``: update notices made (one per device whose assignment changed);
- ``suitkit_push_clients{transport}``: devices connected for push (``sse``, ``longpoll``).

Requests, check-ins (``/device/v1/{device_id}/checkin``), latency and bytes are the
server's own series. A database that does not answer leaves the fleet's families out of that
scrape (logged at most once a minute); the in-process counts are still there.

Not here: what the counts mean (``service.TrackerDB.fleet_counts``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from suitkit.errors import StorageError
from suitkit.tracker.service import TrackerDB

__all__ = ["CAMPAIGNS_SHOWN", "TrackerCollector"]

_log = logging.getLogger("suitkit.tracker")

CAMPAIGNS_SHOWN = 50


class TrackerCollector:
    """A prometheus-client collector of the tracker's series over ``db``, with ``notices()``
    (the hub's ``notices_made``) and ``push_clients()`` (per transport) read in process."""

    def __init__(self, db: TrackerDB, *, notices: Callable[[], int],
                 push_clients: Callable[[], Mapping[str, int]]) -> None:
        self._db = db
        self._notices = notices
        self._push_clients = push_clients
        self._quiet_until = 0.0

    def describe(self) -> list[Any]:
        return []  # read at scrape time only, never at registration

    def collect(self) -> Iterator[Any]:
        notices = CounterMetricFamily("suitkit_notices", "Update notices made (one per device "
                                      "whose assignment changed)")
        notices.add_metric([], float(self._notices()))
        yield notices
        push = GaugeMetricFamily("suitkit_push_clients", "Devices connected for push notices, "
                                 "per transport", labels=["transport"])
        for transport, count in sorted(self._push_clients().items()):
            push.add_metric([transport], float(count))
        yield push
        try:
            counts = self._db.fleet_counts(campaigns=CAMPAIGNS_SHOWN)
        except StorageError as e:
            now = time.monotonic()
            if now >= self._quiet_until:
                self._quiet_until = now + 60
                _log.warning("metrics: cannot read the fleet's counts: %s", e)
            return
        devices = GaugeMetricFamily("suitkit_devices", "Devices per current update state "
                                    "(registered: no update yet)", labels=["state"])
        for state, count in sorted(counts.devices.items()):
            devices.add_metric([state], float(count))
        yield devices
        campaigns = GaugeMetricFamily("suitkit_campaigns", "Campaigns per status",
                                      labels=["status"])
        for status, count in sorted(counts.campaigns.items()):
            campaigns.add_metric([status], float(count))
        yield campaigns
        members = GaugeMetricFamily("suitkit_campaign_devices", f"Campaign members per state, "
                                    f"of the {CAMPAIGNS_SHOWN} campaigns updated last",
                                    labels=["campaign", "state"])
        for (campaign, state), count in sorted(counts.members.items()):
            members.add_metric([campaign, state], float(count))
        yield members
