"""``suitkit sim fleet``: N light devices against one or several servers, for load.

``run_load`` builds the releases of the four device classes (v1, the factory images the devices
run, and v2, uploaded to the firmware server, detached), registers ``n`` light devices
(``sim.swarm``: classes in turn, kinds of waiting in the proportions of ``mix``, servers in
turn), starts them, waits until every device is connected (its first poll answered, its stream
open, its first long-poll sent), deploys v2 to all of them at once and measures, from the
deployment to the last final state:

- the time until 50, 90, 99 and 100 % of the devices were updated;
- the requests the fleet made, by kind and status, the server's error answers and the
  transport errors;
- the CPU seconds of the server processes (``/proc/<pid>/stat`` of ``server_pids``: the
  server the command started, or those given) next to the simulator's own
  (``time.process_time``), over the update window and over the whole run.

Every device must end updated; the outcomes are counted per kind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suitkit.core import crypto
from suitkit.core.verify import TrustAnchor, TrustAnchors
from suitkit.errors import SuitError
from suitkit.sim.control import Console
from suitkit.sim.firmware import CLASS_NAMES, Keys, class_id, image_for, make_keys, vendor_id
from suitkit.sim.fleet import SHAPES, DevicePlan
from suitkit.sim.local import raise_open_files
from suitkit.sim.scenario import build_releases
from suitkit.sim.swarm import KINDS, DeviceClass, LightDevice, Swarm, interleave

__all__ = ["DEPLOY_TIMEOUT", "MODE_MIXES", "LoadResult", "anchors_of", "cpu_seconds",
           "device_classes", "light_devices", "run_load"]

DEPLOY_TIMEOUT = 600.0
"""Seconds the operator's calls (uploads, deployments of 500 devices) may take on a server
under the fleet's load."""
MODE_MIXES: Mapping[str, Mapping[str, float]] = {
    "poll": {"poll": 1}, "push": {"sse": 1}, "hybrid": {"hybrid": 1},
    "mixed": {"poll": 1, "sse": 1, "hybrid": 1},
}
"""``--mode`` as a mix (``mixed``: the three operating modes of RFC 9019 in turn)."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``None``: no such process)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14, 15)
    except (IndexError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and of every process below it, those that
    ended included (the children it waited for: ``cutime``, ``cstime``), e.g. PostgreSQL's
    postmaster and its backends, or nginx's master and workers (``None``: no such process)."""
    parents: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue  # ended meanwhile
        fields = text.rpartition(")")[2].split()
        try:
            ppid, user, system = int(fields[1]), int(fields[11]), int(fields[12])
            waited = int(fields[13]) + int(fields[14]) if int(entry.name) == pid else 0
        except (IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
        times[int(entry.name)] = (user + system + waited) / tick
    if pid not in times:
        return None
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(parents.get(current, ()))
    return total


def device_classes() -> dict[str, DeviceClass]:
    """Class name -> what a light device of the class is (v1 installed at the factory)."""
    classes = {}
    for shape in SHAPES:
        name = CLASS_NAMES[shape]
        count = 2 if shape in ("secure-split", "dual-cpu") else 1
        classes[name] = DeviceClass(
            name, shape, vendor_id(), class_id(name),
            tuple((bytes([i]),) for i in range(count)), 1,
            tuple(hashlib.sha256(image_for(shape, name, "v1", i)).digest()
                  for i in range(count)))
    return classes


def light_devices(n: int, mix: Mapping[str, float], servers: int = 1) -> list[LightDevice]:
    """``n`` devices: classes in turn, kinds interleaved in the proportions of ``mix``,
    servers in turn, shifted by one every round of classes (so that each server gets every
    class, also when the number of servers divides the number of classes)."""
    classes = device_classes()
    kinds = interleave(n, mix)
    return [LightDevice(f"{i:05d}-{SHAPES[i % 4]}", classes[CLASS_NAMES[SHAPES[i % 4]]],
                        kinds[i], server=(i + i // len(SHAPES)) % servers) for i in range(n)]


@dataclass
class LoadResult:
    devices: int
    mix: dict[str, float]
    servers: list[str]
    setup_seconds: float
    register_seconds: float
    update_seconds: float
    percentiles: dict[str, float | None]
    """Seconds from the deployment until 50/90/99/100 % of the devices were updated."""
    outcomes: dict[str, int]
    window: dict[str, Any]
    """Requests during the update window (deployment to the last final state)."""
    total: dict[str, Any]
    """Requests over the whole run (registration, connections and idle polling included)."""
    cpu: dict[str, Any]
    failures: list[dict[str, str]] = field(default_factory=list)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    """Outcomes per kind of waiting."""
    verify: dict[str, int] = field(default_factory=dict)
    deploy_seconds: float = 0.0
    """Seconds the deployment calls took (the window starts with the first)."""

    @property
    def ok(self) -> bool:
        return self.outcomes.get("updated", 0) == self.devices

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "devices": self.devices, "mix": self.mix,
                "servers": self.servers, "setup_seconds": round(self.setup_seconds, 2),
                "register_seconds": round(self.register_seconds, 2),
                "update_seconds": round(self.update_seconds, 2),
                "deploy_seconds": round(self.deploy_seconds, 2),
                "percentiles": self.percentiles, "outcomes": self.outcomes,
                "by_kind": self.by_kind, "window": self.window, "total": self.total,
                "cpu": self.cpu, "verify": self.verify, "failures": self.failures[:20]}


def _category(device: LightDevice) -> str:
    if device.outcome == "succeeded":
        return "updated"
    if device.outcome is None:
        return "pending"
    return "error" if device.outcome == "error" else device.outcome


def anchors_of(keys: Keys) -> TrustAnchors:
    """The devices' trust anchors: the author and the operator, both required."""
    return TrustAnchors((TrustAnchor(crypto.load_public_key(keys.author_pub.read_bytes()),
                                     role="author"),
                         TrustAnchor(crypto.load_public_key(keys.operator_pub.read_bytes()),
                                     role="operator")), ("author", "operator"))


_Reading = tuple[float, float | None, dict[str, float | None]]


class _Cpu:
    """CPU seconds of the servers, of the process trees of ``side`` (name -> root pid: the
    database, the balancer) and of this process, from a starting point."""

    def __init__(self, pids: Sequence[int], side: Mapping[str, int] | None = None) -> None:
        self.pids = list(pids)
        self.side = dict(side or {})
        self.start = self._read()

    def _read(self) -> _Reading:
        servers = [cpu_seconds(pid) for pid in self.pids]
        known = [s for s in servers if s is not None]
        side = {name: tree_cpu_seconds(pid) for name, pid in self.side.items()}
        return time.process_time(), (sum(known) if known and self.pids else None), side

    def since(self, start: _Reading | None = None) -> dict[str, Any]:
        own0, server0, side0 = start or self.start
        own, server, side = self._read()
        out: dict[str, Any] = {
            "simulator_seconds": round(own - own0, 2),
            "server_seconds": (round(server - server0, 2)
                               if server is not None and server0 is not None else None)}
        if side:
            out["side_seconds"] = {name: _moved(side0.get(name), now)
                                   for name, now in side.items()}
        return out


def _moved(before: float | None, now: float | None) -> float | None:
    return round(now - before, 2) if now is not None and before is not None else None


async def run_load(root: Path, urls: Sequence[str], admin_token: str, upload_token: str,
                   n: int, *, mix: Mapping[str, float] | None = None, keys: Keys | None = None,
                   concurrency: int = 64, poll_interval: float = 10.0,
                   long_poll: float = 30.0, safety_interval: float = 300.0,
                   timeout: float = 600.0,
                   server_pids: Sequence[int] = (),
                   side_pids: Mapping[str, int] | None = None,
                   on_swarm: Callable[[Swarm], None] | None = None,
                   say: Callable[[str], None] = lambda _: None) -> LoadResult:
    """Run ``n`` devices against ``urls`` and update them all (see the module docstring)."""
    started = time.monotonic()
    cpu = _Cpu(server_pids, side_pids)
    raise_open_files()
    mix = dict(mix or MODE_MIXES["poll"])
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds in the mix: {', '.join(sorted(unknown))}")
    keys = keys or make_keys(root / "keys")
    url = urls[0].rstrip("/")
    plans = [DevicePlan(name=shape, shape=shape, mode="poll", class_name=CLASS_NAMES[shape])
             for shape in SHAPES]
    releases = build_releases(root, keys, url, plans)
    # a deployment of 500 devices took over 30 s on PostgreSQL under a 10,000-device load;
    # it is not asked again (a second deployment would restart updates already under way)
    console = Console(url, admin_token, timeout=DEPLOY_TIMEOUT)
    try:
        stored = {}
        for key, release in releases.items():
            if release.detached and key[1] == "v2":
                stored[key] = await asyncio.to_thread(console.upload, release,
                                                      token=upload_token)
        devices = light_devices(n, mix, len(urls))
        swarm = Swarm(devices, urls, anchors_of(keys), concurrency=concurrency,
                      poll_interval=poll_interval, long_poll=long_poll,
                      safety_interval=safety_interval)
        if on_swarm is not None:
            on_swarm(swarm)
        t_register = time.monotonic()
        await swarm.register(devices, admin_token, concurrency=min(concurrency, 32))
        register_seconds = time.monotonic() - t_register
        say(f"registered {n} devices with the tracker in {register_seconds:.1f} s")
        runner = asyncio.create_task(swarm.run())
        try:
            # n/10 s: 10,000 devices did not all connect within n/20 s at load average 20
            if not await _connected(swarm, runner,
                                    timeout=max(60.0, n / 10, 2 * poll_interval + 30)):
                missing = sum(not d.connected for d in devices)
                raise SuitError(f"{missing} of {n} devices did not connect within the time "
                                "allowed; see the server's log")
            setup = time.monotonic() - started
            say(f"{n} devices connected ({_mix_text(mix)}); deploying v2 to all of them")
            before = _snapshot(swarm)
            cpu_before = cpu._read()
            t0 = time.monotonic()
            for shape in SHAPES:
                klass = CLASS_NAMES[shape]
                ids = [d.id for d in devices if d.klass.name == klass]
                if ids:
                    await asyncio.to_thread(console.deploy, stored[klass, "v2"], ids)
            deploy_seconds = time.monotonic() - t0
            await swarm.wait_done(devices, timeout)
            last = max((d.finished_at or time.monotonic()) for d in devices)
            update_seconds = last - t0
            window_cpu = cpu.since(cpu_before)
            after = _snapshot(swarm)
        finally:
            swarm.stop()
            await runner
        updated = sorted(d.finished_at - t0 for d in devices
                         if d.outcome == "succeeded" and d.finished_at is not None)
        outcomes = Counter(_category(d) for d in devices)
        failures = [{"device": d.name, "outcome": d.outcome or "none",
                     "reason": d.reason or d.state} for d in devices
                    if _category(d) != "updated"]
        by_kind: dict[str, dict[str, int]] = {}
        for d in devices:
            per = by_kind.setdefault(d.kind, {})
            per[_category(d)] = per.get(_category(d), 0) + 1
        return LoadResult(
            n, mix, [u.rstrip("/") for u in urls], setup, register_seconds, update_seconds,
            _percentiles(updated, n), dict(outcomes), _window(before, after, update_seconds),
            swarm.stats.as_json(time.monotonic() - swarm.stats.started),
            {"window": window_cpu, "run": cpu.since(), "server_pids": list(server_pids)},
            failures, by_kind,
            {"verified": swarm.cache.verified, "cached": swarm.cache.hits,
             "payload_bytes": swarm.payload_bytes}, deploy_seconds)
    finally:
        console.close()


def _mix_text(mix: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in mix.items() if v > 0)


def _percentiles(updated: Sequence[float], n: int) -> dict[str, float | None]:
    """Seconds until p % of the ``n`` devices were updated (``None``: never reached)."""
    out: dict[str, float | None] = {}
    for p in (50, 90, 99, 100):
        needed = max(1, -(-n * p // 100))
        out[f"p{p}"] = round(updated[needed - 1], 2) if len(updated) >= needed else None
    return out


async def _connected(swarm: Swarm, runner: asyncio.Task[None], *, timeout: float) -> bool:
    """Wait until every device is connected, then a moment for the long-polls to reach the
    server; False if the time ran out (or the swarm stopped)."""
    ends = time.monotonic() + timeout
    while not all(d.connected for d in swarm.devices):
        if time.monotonic() > ends or runner.done():
            return False
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    return True


def _snapshot(swarm: Swarm) -> dict[str, Any]:
    stats = swarm.stats
    return {"requests": Counter(stats.requests), "statuses": Counter(stats.statuses),
            "transport_errors": stats.transport_errors,
            "transport_by_kind": Counter(stats.transport_by_kind)}


def _window(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    requests = after["requests"] - before["requests"]
    statuses = after["statuses"] - before["statuses"]
    total = sum(requests.values())
    return {"requests": total, "seconds": round(seconds, 3),
            "requests_per_second": round(total / seconds, 1) if seconds > 0 else None,
            "by_kind": dict(sorted(requests.items())),
            "by_status": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(v for k, v in statuses.items() if k >= 500),
            "transport_errors": after["transport_errors"] - before["transport_errors"],
            "transport_errors_by_kind": dict(sorted(
                (after["transport_by_kind"] - before["transport_by_kind"]).items()))}
