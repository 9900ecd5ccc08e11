"""``suitkit sim fleet``: N simulated devices against a server, for load.

``run_load`` builds the releases (v1 for the factory, v2 on the server) of the four device
classes, provisions and registers ``n`` devices (shapes in turn; one operating mode, or
``mixed`` for the three in turn), starts the fleet, waits until every device is connected
(its first poll, stream or long-poll answered), deploys v2 to all of them at once and measures:
the time until the last device reported its final state, the requests the fleet made in that
window (per second, by kind and status), the server's error answers and transport errors, and
the outcomes (every device must be updated).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suitkit.sim.control import Console, Registered
from suitkit.sim.firmware import CLASS_NAMES, Keys, make_keys
from suitkit.sim.fleet import MODES, SHAPES, DevicePlan, Fleet, classify, provision
from suitkit.sim.scenario import build_releases

__all__ = ["LoadResult", "load_plans", "run_load"]


def load_plans(n: int, mode: str) -> list[DevicePlan]:
    """``n`` clean devices, shapes in turn; ``mode`` one of ``MODES`` or ``mixed``."""
    return [DevicePlan(name=f"{i:05d}-{SHAPES[i % 4]}", shape=SHAPES[i % 4],
                       mode=MODES[i % 3] if mode == "mixed" else mode,
                       class_name=CLASS_NAMES[SHAPES[i % 4]]) for i in range(n)]


@dataclass
class LoadResult:
    devices: int
    mode: str
    setup_seconds: float
    update_seconds: float
    outcomes: dict[str, int]
    window: dict[str, Any]
    """Requests during the update window (deployment to the last final state)."""
    total: dict[str, Any]
    """Requests over the whole run (connections and idle polling included)."""
    failures: list[dict[str, str]] = field(default_factory=list)
    by_mode: dict[str, dict[str, int]] = field(default_factory=dict)
    """Outcomes per operating mode."""

    @property
    def ok(self) -> bool:
        return self.outcomes.get("updated", 0) == self.devices

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "devices": self.devices, "mode": self.mode,
                "setup_seconds": round(self.setup_seconds, 2),
                "update_seconds": round(self.update_seconds, 2), "outcomes": self.outcomes,
                "by_mode": self.by_mode,
                "window": self.window, "total": self.total, "failures": self.failures[:20]}


async def run_load(root: Path, url: str, admin_token: str, upload_token: str, n: int, *,
                   mode: str = "poll", keys: Keys | None = None, workers: int = 4,
                   poll_interval: float = 2.0, timeout: float = 600.0,
                   on_fleet: Callable[[Fleet], None] | None = None,
                   say: Callable[[str], None] = lambda _: None) -> LoadResult:
    """Run ``n`` devices against ``url`` and update them all (see the module docstring)."""
    started = time.monotonic()
    keys = keys or make_keys(root / "keys")
    plans = load_plans(n, mode)
    releases = build_releases(root, keys, url, plans)
    console = Console(url, admin_token)
    try:
        stored = {}
        for key, release in releases.items():
            if release.detached:
                stored[key] = await asyncio.to_thread(console.upload, release,
                                                      token=upload_token)
        factory = {k: r for (k, label), r in releases.items() if label == "v1"}
        devices = await asyncio.to_thread(provision, root, keys, plans, factory)
        say(f"provisioned {len(devices)} devices (v1) in {root / 'devices'}")

        def register(name: str) -> Registered:
            return console.register(name)

        with ThreadPoolExecutor(8) as pool:
            registered = await asyncio.to_thread(
                lambda: list(pool.map(register, [d.plan.name for d in devices])))
        for device, reg in zip(devices, registered, strict=True):
            device.tracker_id, device.credential = reg.id, reg.credential
        say(f"registered {len(devices)} devices with the tracker")
        fleet = Fleet(devices, url, workers=workers, poll_interval=poll_interval)
        if on_fleet is not None:
            on_fleet(fleet)
        runner = asyncio.create_task(fleet.run())
        try:
            await _connected(fleet, timeout=60.0)
            setup = time.monotonic() - started
            say(f"{n} devices connected ({mode}); deploying v2 to all of them")
            before = _snapshot(fleet)
            t0 = time.monotonic()
            for shape in SHAPES:
                klass = CLASS_NAMES[shape]
                ids = [d.tracker_id for d in devices if d.plan.class_name == klass]
                if ids:
                    await asyncio.to_thread(console.deploy, stored[klass, "v2"], ids)
            await fleet.wait_done(devices, timeout)
            last = max((d.finished_at or time.monotonic()) for d in devices)
            update_seconds = last - t0
            after = _snapshot(fleet)
        finally:
            fleet.stop()
            await runner
            fleet.close()
        outcomes = Counter(classify(d.outcome, d.reason) for d in devices)
        failures = [{"device": d.plan.name, "outcome": d.outcome or "none",
                     "reason": d.reason or d.state} for d in devices
                    if classify(d.outcome, d.reason) != "updated"]
        by_mode: dict[str, dict[str, int]] = {}
        for d in devices:
            per = by_mode.setdefault(d.plan.mode, {})
            category = classify(d.outcome, d.reason)
            per[category] = per.get(category, 0) + 1
        return LoadResult(n, mode, setup, update_seconds, dict(outcomes),
                          _window(before, after, update_seconds),
                          fleet.stats.as_json(time.monotonic() - fleet.stats.started),
                          failures, by_mode)
    finally:
        console.close()


async def _connected(fleet: Fleet, *, timeout: float) -> None:
    """Wait until every device is connected (its first poll answered, its stream open, its
    first long-poll sent), then a moment for the long-polls to reach the server."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends and not all(d.connected for d in fleet.devices):
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)


def _snapshot(fleet: Fleet) -> dict[str, Any]:
    stats = fleet.stats
    with stats._lock:
        return {"requests": Counter(stats.requests), "statuses": Counter(stats.statuses),
                "transport_errors": stats.transport_errors}


def _window(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    requests = after["requests"] - before["requests"]
    statuses = after["statuses"] - before["statuses"]
    total = sum(requests.values())
    return {"requests": total, "seconds": round(seconds, 3),
            "requests_per_second": round(total / seconds, 1) if seconds > 0 else None,
            "by_kind": dict(sorted(requests.items())),
            "by_status": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(v for k, v in statuses.items() if k >= 500),
            "transport_errors": after["transport_errors"] - before["transport_errors"]}
