"""A fleet of simulated devices in one process: asyncio for the network, threads for installs.

This is the fleet of the demo and the fault scenarios (``sim.scenario``): real device folders
and the real agent, so that boots, reverts, power cuts and hostile mirrors happen for real. For
load (``suitkit sim fleet``, thousands of devices) see ``sim.swarm``, whose devices are small
objects and whose simulator costs a tenth of the server's CPU.

Each device is a real device folder (``device.config``/``device.wiring``: simulated NOR flash for
``mcu``, ``secure-split`` and ``dual-cpu``, A/B slot directories for ``linux``) registered with
the status tracker. It waits for work in its operating mode (RFC 9019 §2.3):

- ``poll`` (client-initiated): ``GET /device/v1/{id}/update`` every ``poll_interval``
  seconds (with jitter);
- ``push`` (server-initiated): a server-sent-event stream on ``.../notifications``; the
  agent acts on the pushed notice itself (``run_once(assigned=notice)``);
- ``hybrid``: long-polls on ``.../notifications?wait=N&after=SERIAL``: the server answers when
  something changed, and the notice only triggers the agent, which asks ``GET .../update``.

A device speaks suitkit's JSON API by default (``DevicePlan.protocol``); ``ddi``: the agent
polls the hawkBit DDI API (``run_once(protocol="ddi")``, poll mode); ``lwm2m``: the device is
suitkit's LwM2M client (``device.lwm2m``) registered with the server's LwM2M edge
(``Fleet(lwm2m=...)``), which writes it the Package URI and executes Update (server-initiated).

When work is announced, the device agent (``device.agent.run_once``: inventory, assignment,
envelope download, ``Consumer.install``, SUIT report, boot, invocation, confirm or revert, every
step reported to the tracker) runs in a bounded thread pool, since verification and flash writes
hold the CPU. Faults (``sim.faults``) are wired into a device's fetcher or HTTP transport.

The fleet counts every request it makes (the server's request rate and its error answers, seen
from the clients) and keeps, per device, its state, the agent's outcome and the reason.

Devices are cheap: 16 KiB slots, 12 KiB images, one template folder per device class copied for
every device (its factory release installed, booted and confirmed once), so a thousand devices
take about 70 MB of disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from suitkit.bootloader.flash import PowerCut
from suitkit.device.agent import AgentResult, run_once
from suitkit.device.config import create_device, load_config
from suitkit.device.consumer import PayloadFetcher
from suitkit.device.fetch import HttpFetcher
from suitkit.device.wiring import open_device
from suitkit.errors import SuitError
from suitkit.fileio import atomic_write
from suitkit.sim.faults import CuttingTransport, HostileMirror, PowerCutFetcher
from suitkit.sim.firmware import LINUX_APP_COMMAND, Keys, Release, class_id, vendor_id
from suitkit.sim.local import raise_open_files

__all__ = [
    "MODES",
    "SHAPES",
    "DevicePlan",
    "Fleet",
    "SimDevice",
    "Stats",
    "classify",
    "provision",
]

MODES = ("poll", "push", "hybrid")
SHAPES = ("mcu", "secure-split", "dual-cpu", "linux")
FINAL = frozenset({"succeeded", "failed", "rolled-back"})
SLOT_SECTORS = 4
"""Slots of 16 KiB (4 KiB sectors) on the flash shapes."""
MAX_ERRORS = 3
"""A device gives up on an assignment after this many agent errors (tracker unreachable...)."""
_REFUSALS = ("rejected:", "does not match", "condition-", "rollback", "signature",
             "not authentic", "authentication")


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One simulated device as the scenario declares it, with the outcome it must end with.

    ``fault``: ``None``, ``network-cut``, ``power-cut``, ``hostile-mirror``, ``wrong-class``
    or ``bad-boot``. ``expect``: ``updated``, ``rolled-back``, ``rejected`` or ``failed``;
    ``expect_reason``: a phrase the reason must contain.
    """

    name: str
    shape: str
    mode: str
    class_name: str
    fault: str | None = None
    expect: str = "updated"
    expect_reason: str | None = None
    wave: int = 1
    release: str = "v2"
    """Label of the release the scenario assigns to it."""
    protocol: str = "suitkit"
    """How it talks to the tracker: ``suitkit`` (the JSON API), ``ddi`` or ``lwm2m``."""


@dataclass
class SimDevice:
    """A device of the fleet while it runs."""

    plan: DevicePlan
    folder: Path
    tracker_id: str = ""
    credential: str = ""
    state: str = "idle"
    """The latest step, for live progress."""
    outcome: str | None = None
    """The agent's last final outcome: succeeded, failed or rolled-back (or error)."""
    reason: str = ""
    release: str | None = None
    attempts: int = 0
    errors: int = 0
    notes: list[str] = field(default_factory=list)
    finished_at: float | None = None
    connected: bool = False
    """Its first poll was answered, its stream opened, or its first long-poll sent."""
    handled: set[str] = field(default_factory=set)
    """Releases that reached a final outcome on this device (not run again)."""
    transport: CuttingTransport | None = None
    power: PowerCutFetcher | None = None
    mirror: HostileMirror | None = None

    @property
    def done(self) -> bool:
        return self.outcome in FINAL or self.errors >= MAX_ERRORS

    def note(self, line: str) -> None:
        self.notes.append(line)
        self.state = line


def classify(outcome: str | None, reason: str) -> str:
    """The summary category of an agent outcome: ``updated``, ``rolled-back``, ``rejected``
    (the device refused the update: signature, class, digest, rollback), ``failed``, or
    ``pending`` (no final outcome)."""
    if outcome == "succeeded":
        return "updated"
    if outcome == "rolled-back":
        return "rolled-back"
    if outcome == "failed":
        text = reason.lower()
        if "fetcherror" not in text and any(marker in text for marker in _REFUSALS):
            return "rejected"
        return "failed"
    if outcome == "error":
        return "failed"
    return "pending"


def short_reason(reason: str) -> str:
    """A short phrase for a refusal: ``class identifier mismatch``, ``image digest
    mismatch``, ... (the full reason otherwise)."""
    text = reason.lower()
    if "condition-class-identifier" in text:
        return "class identifier mismatch"
    if "condition-vendor-identifier" in text:
        return "vendor identifier mismatch"
    if "digest" in text and "does not match" in text:
        return "image digest mismatch"
    if "rollback" in text:
        return "rollback refused"
    return reason


# ---------------------------------------------------------------------------- statistics


@dataclass
class Stats:
    """Requests the fleet made, by kind and status; transport errors."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    transport_by_kind: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[_kind(path)] += 1
            self.statuses[status] += 1

    def count(self, kind: str, status: int) -> None:
        """One request of ``kind`` answered with ``status``."""
        with self._lock:
            self.requests[kind] += 1
            self.statuses[status] += 1

    def failed(self, kind: str | None = None) -> None:
        """A request that got no answer (``kind``: what it was, when known)."""
        with self._lock:
            self.transport_errors += 1
            if kind is not None:
                self.transport_by_kind[kind] += 1

    def sync_hook(self, response: httpx.Response) -> None:
        self.record(response.request.url.path, response.status_code)

    async def async_hook(self, response: httpx.Response) -> None:
        self.record(response.request.url.path, response.status_code)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def refused(self) -> int:
        return sum(n for status, n in self.statuses.items() if 400 <= status < 500)

    def as_json(self, elapsed: float) -> dict[str, Any]:
        return {"requests": self.total, "seconds": round(elapsed, 3),
                "requests_per_second": round(self.total / elapsed, 1) if elapsed else None,
                "by_kind": dict(sorted(self.requests.items())),
                "by_status": {str(k): v for k, v in sorted(self.statuses.items())},
                "server_errors": self.server_errors, "refused_4xx": self.refused,
                "transport_errors": self.transport_errors,
                "transport_errors_by_kind": dict(sorted(self.transport_by_kind.items()))}


def _kind(path: str) -> str:
    if "/firmware/" in path:
        return "firmware"
    if "/envelopes/" in path:
        return "envelope"
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return "device" if len(last) >= 32 else last


# ---------------------------------------------------------------------------- provisioning


def _template(root: Path, keys: Keys, shape: str, class_name: str, factory: Release) -> Path:
    """A device of the class with its factory release installed, booted and confirmed."""
    folder = root / "templates" / class_name
    if (folder / "device.json").exists():
        return folder
    create_device(folder, vendor_id=vendor_id(), class_id=class_id(class_name),
                  trust_anchors=keys.anchors(), shape=shape,
                  image_sectors=None if shape == "linux" else SLOT_SECTORS,
                  required_roles=("author", "operator"),
                  app_command=LINUX_APP_COMMAND if shape == "linux" else None)
    device = open_device(folder)
    outcome = device.consumer().install(factory.envelope)
    device.save()
    if not outcome.installed:
        raise SuitError(f"{class_name}: the factory release does not install: {outcome.reason}")
    for step in ("boot", "confirm"):
        device = open_device(folder)
        getattr(device.bootloader, step)()
        device.save()
    return folder


def provision(root: Path, keys: Keys, plans: Sequence[DevicePlan],
              factory: dict[str, Release], *,
              on_progress: Callable[[int], None] | None = None) -> list[SimDevice]:
    """Device folders under ``root/devices`` for ``plans``: copies of one template per class
    (``factory[class_name]`` installed), each with its own device id."""
    devices = []
    for i, plan in enumerate(plans):
        template = _template(root, keys, plan.shape, plan.class_name, factory[plan.class_name])
        folder = root / "devices" / plan.name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(template, folder, symlinks=True)
        config = replace(load_config(folder), directory=folder, device_id=uuid.uuid4())
        atomic_write(folder / "device.json", config.to_json())
        devices.append(SimDevice(plan, folder))
        if on_progress is not None:
            on_progress(i + 1)
    return devices


def running_sequence(folder: Path) -> int | None:
    """The sequence number of the first image the device runs (verified), if any."""
    try:
        observation = open_device(folder).bootloader.observe()  # type: ignore[attr-defined]
    except (SuitError, OSError):
        return None
    check = observation.primary[0]
    if check.info is None or check.verdict.name != "GOOD":
        return None
    return int(check.info.sequence_number)


# ---------------------------------------------------------------------------- the fleet


class Fleet:
    """Runs ``devices`` against the server at ``url`` until ``stop()``.

    ``workers``: threads for installs. ``poll_interval``: seconds between polls (``poll``
    mode). ``long_poll``: the ``wait`` of a hybrid device's long-poll.
    """

    def __init__(self, devices: Iterable[SimDevice], url: str, *, workers: int = 4,
                 poll_interval: float = 1.0, long_poll: float = 20.0,
                 seed: int = 0, lwm2m: str | None = None) -> None:
        self.lwm2m = lwm2m
        """``coap://HOST:PORT`` of the server's LwM2M edge, for the ``lwm2m`` devices."""
        self.devices = list(devices)
        self.url = url.rstrip("/")
        self.stats = Stats()
        self.poll_interval = poll_interval
        self.long_poll = long_poll
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-device")
        self._rng = random.Random(seed)  # noqa: S311 - jitter, not secrets
        self._stop: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None

    # ---- per-device fault wiring

    def fetcher_for(self, device: SimDevice) -> tuple[PayloadFetcher, httpx.Client]:
        """The payload fetcher of one install, with the device's fault wired in, and its
        HTTP client (the caller closes it)."""
        transport: httpx.BaseTransport | None = None
        if device.plan.fault == "network-cut":
            if device.transport is None:
                device.transport = CuttingTransport(4096, times=1)
            transport = device.transport
        client = httpx.Client(timeout=10.0, follow_redirects=False, transport=transport,
                              event_hooks={"response": [self.stats.sync_hook]})
        fetcher: PayloadFetcher = HttpFetcher(client=client, backoff=0.05)
        if device.plan.fault == "hostile-mirror":
            device.mirror = device.mirror or HostileMirror(fetcher)
            device.mirror.inner = fetcher
            fetcher = device.mirror
        elif device.plan.fault == "power-cut":
            if device.power is None:
                device.power = PowerCutFetcher(fetcher, cut_after=6000)
            device.power.inner = fetcher
            fetcher = device.power
        return fetcher, client

    # ---- one install, in a worker thread

    def _apply(self, device: SimDevice, assigned: dict[str, Any] | None = None
               ) -> AgentResult | None:
        fetcher, fetch_client = self.fetcher_for(device)
        client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(10.0, connect=5.0),
                              headers={"Authorization": f"Bearer {device.credential}"},
                              event_hooks={"response": [self.stats.sync_hook]})

        def say(line: str) -> None:
            device.state = line

        try:
            return run_once(device.folder, self.url, device.credential, fetcher=fetcher,
                            say=say, client=client, assigned=assigned,
                            protocol="ddi" if device.plan.protocol == "ddi" else "suitkit")
        except PowerCut as e:
            device.note(f"power cut: {e}")
            self._power_returns(device)
            return None
        except Exception as e:  # noqa: BLE001 - any crash of one device is its outcome, not the fleet's
            return AgentResult("error", f"the agent crashed: {type(e).__name__}: {e}")
        finally:
            client.close()
            fetch_client.close()

    def _power_returns(self, device: SimDevice) -> None:
        """The power comes back: the bootloader boots (recovering whatever the cut left)."""
        try:
            opened = open_device(device.folder)
            result = opened.bootloader.boot()
            opened.save()
            images = ", ".join(f"{i.name} #{i.sequence_number}" for i in result.images)
            device.note(f"power restored; booted {images}")
        except SuitError as e:
            device.note(f"power restored; boot failed: {e}")

    def _outcome(self, device: SimDevice, result: AgentResult) -> None:
        """A run's result on ``device`` (an agent's run, or an LwM2M install)."""
        if result.outcome == "up-to-date":
            return
        device.release = result.release or device.release
        if result.outcome == "error":
            device.errors += 1
            device.note(f"error: {result.reason}")
            if device.errors >= MAX_ERRORS:
                device.outcome, device.reason = "error", result.reason
                device.finished_at = time.monotonic()
            return
        device.outcome, device.reason = result.outcome, result.reason
        device.state = result.outcome
        device.finished_at = time.monotonic()
        if result.release:
            device.handled.add(result.release)

    async def _run_agent(self, device: SimDevice, assigned: dict[str, Any] | None = None
                         ) -> None:
        """One agent run in the pool (``assigned``: a pushed notice, acted on without asking
        the tracker again)."""
        loop = asyncio.get_running_loop()
        for _ in range(MAX_ERRORS):
            device.attempts += 1
            result = await loop.run_in_executor(self._pool, self._apply, device, assigned)
            if result is not None:
                break
            # The power failed and came back: the agent starts again at once and resumes
            # what it was doing (it asks the tracker where the update stands).
            assigned = None
        else:
            return
        self._outcome(device, result)

    def _wants(self, device: SimDevice, release: object) -> bool:
        return (isinstance(release, str) and release not in device.handled
                and device.errors < MAX_ERRORS)

    # ---- waiting for work, per mode

    def _auth(self, device: SimDevice) -> dict[str, str]:
        return {"Authorization": f"Bearer {device.credential}"}

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the fleet is stopping."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _poll(self, device: SimDevice) -> None:
        assert self._client is not None
        await self._sleep(self._rng.uniform(0, self.poll_interval))
        path = f"/device/v1/{device.tracker_id}/update"
        while not await self._sleep(0):
            if device.plan.protocol == "ddi":  # the agent's own DDI base poll is the poll
                if device.errors < MAX_ERRORS and not device.done:
                    device.connected = True
                    await self._run_agent(device)
                if await self._sleep(self.poll_interval * self._rng.uniform(0.8, 1.2)):
                    return
                continue
            try:
                response = await self._client.get(path, headers=self._auth(device))
            except httpx.HTTPError as e:
                self.stats.failed()
                device.state = f"poll failed: {type(e).__name__}"
            else:
                device.connected = True
                if response.status_code == 200:
                    release = _json(response).get("release")
                    if self._wants(device, release):
                        await self._run_agent(device)
                        continue
                elif response.status_code != 204:
                    device.state = f"poll: HTTP {response.status_code}"
            if await self._sleep(self.poll_interval * self._rng.uniform(0.8, 1.2)):
                return

    async def _push(self, device: SimDevice) -> None:
        assert self._client is not None
        path = f"/device/v1/{device.tracker_id}/notifications"
        headers = {**self._auth(device), "Accept": "text/event-stream"}
        backoff = 0.2
        while True:
            try:
                async with self._client.stream("GET", path, headers=headers,
                                               timeout=httpx.Timeout(60.0, connect=10.0)
                                               ) as response:
                    if response.status_code == 404:
                        device.note("no push route on the server; polling instead")
                        await self._poll(device)
                        return
                    if response.status_code != 200:
                        device.state = f"push: HTTP {response.status_code}"
                    else:
                        device.connected = True
                        device.state = device.outcome or "listening (SSE)"
                        backoff = 0.2
                        data: list[str] = []
                        async for line in response.aiter_lines():
                            if line.startswith("data:"):
                                data.append(line[5:].strip())
                            elif not line and data:
                                notice = _loads("\n".join(data))
                                data = []
                                if self._wants(device, notice.get("release")):
                                    await self._run_agent(device, notice)
            except httpx.HTTPError as e:
                self.stats.failed()
                device.state = f"push stream lost: {type(e).__name__}"
            if await self._sleep(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    async def _hybrid(self, device: SimDevice) -> None:
        assert self._client is not None
        path = f"/device/v1/{device.tracker_id}/notifications"
        after: int | None = None
        backoff = 0.2
        while True:
            params: dict[str, Any] = {"wait": self.long_poll}
            if after is not None:
                params["after"] = after
            device.connected = True
            try:
                response = await self._client.get(
                    path, params=params, headers=self._auth(device),
                    timeout=httpx.Timeout(self.long_poll + 10.0, connect=10.0))
            except httpx.HTTPError as e:
                self.stats.failed()
                device.state = f"long-poll failed: {type(e).__name__}"
                if await self._sleep(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            if response.status_code == 404:
                device.note("no notification route on the server; polling instead")
                await self._poll(device)
                return
            if response.status_code == 200:
                notice = _json(response)
                serial = notice.get("serial")
                if isinstance(serial, int):
                    after = serial
                if self._wants(device, notice.get("release")):
                    await self._run_agent(device)
            elif response.status_code != 204:
                device.state = f"long-poll: HTTP {response.status_code}"
                if await self._sleep(1.0):
                    return
            if await self._sleep(0):
                return

    async def _lwm2m(self, device: SimDevice) -> None:
        """suitkit's LwM2M client of the device, registered with the server's LwM2M edge,
        until the fleet stops (the server delivers: server-initiated)."""
        from suitkit.device.lwm2m import Lwm2mOptions, run_lwm2m  # noqa: PLC0415

        if self.lwm2m is None:
            device.outcome, device.reason = "error", "the server has no LwM2M edge"
            device.errors = MAX_ERRORS
            return
        assert self._stop is not None
        stop = threading.Event()
        fetcher, fetch_client = self.fetcher_for(device)
        options = Lwm2mOptions(server=self.lwm2m, lifetime=300, delivery="pull")

        def said(line: str) -> None:
            device.state = line
            if line.startswith("registered"):
                device.connected = True

        runner = asyncio.create_task(asyncio.to_thread(
            run_lwm2m, device.folder, device.credential, options, fetcher=fetcher,
            tracker_url=self.url, say=said, stop=stop,
            on_result=lambda result: self._outcome(device, result)))
        try:
            await self._stop.wait()
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(runner)
            fetch_client.close()

    async def _device(self, device: SimDevice) -> None:
        if device.plan.protocol == "lwm2m":
            device.state = "registering (LwM2M)"
            await self._lwm2m(device)
            return
        device.state = {"poll": "polling", "push": "listening (SSE)",
                        "hybrid": "long-polling"}[device.plan.mode]
        runner = {"poll": self._poll, "push": self._push, "hybrid": self._hybrid}
        await runner[device.plan.mode](device)

    # ---- the whole fleet

    async def run(self) -> None:
        """Run every device until ``stop()`` (call from the event loop's thread)."""
        self._stop = asyncio.Event()
        raise_open_files()
        limits = httpx.Limits(max_connections=len(self.devices) + 64,
                              max_keepalive_connections=len(self.devices) + 64)
        async with httpx.AsyncClient(base_url=self.url, limits=limits,
                                     timeout=httpx.Timeout(10.0, connect=5.0),
                                     event_hooks={"response": [self.stats.async_hook]}
                                     ) as client:
            self._client = client
            tasks = [asyncio.create_task(self._device(d), name=d.plan.name)
                     for d in self.devices]
            try:
                await self._stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._client = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def wait_done(self, devices: Iterable[SimDevice], timeout: float) -> bool:
        """Wait until each of ``devices`` has a final outcome (True) or ``timeout`` passes."""
        wanted = list(devices)
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if all(d.done for d in wanted):
                return True
            await asyncio.sleep(0.1)
        return all(d.done for d in wanted)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _loads(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
