"""A light fleet for load: thousands of simulated devices in one asyncio loop (issue #12).

``sim.fleet`` runs real device folders (simulated flash, the real agent in threads), which is
what the demo and the fault scenarios need, and what made the simulator, not the server, set
the pace of a load run (1,000 poll-mode devices: 177 s, the simulator using twice the server's
CPU). Here a device is a small object (``LightDevice``: its tracker id and credential, its
class, its mode, the sequence number and image digests it runs, where its update stands) and
every device is a coroutine of one event loop. What the server sees is what the real agent
(``device.agent.run_once``) sends, over the same endpoints and in the same order:

1. waiting for work, by mode (RFC 9019 §2.3):

   - ``poll``: a check-in every ``poll_interval`` seconds (jittered; ``None``: the
     ``poll_after`` the tracker's last answer suggested). ``Swarm.check_in`` is the one place
     where the per-poll request is made: ``POST /device/v1/{id}/checkin`` with the digest
     of the device's inventory (``device.agent.inventory_digest``), the inventory itself only
     when the answer asks for it (``send_inventory``); the answer is the pending release or
     ``{"release": null}``, with the update state the tracker has for the device. Against a
     tracker without it (404 or 405: older than issue #12, or an old replica behind the same
     balancer) the server's devices fall back to the agent's old calls for the rest of the
     run: ``GET .../update``, and ``PUT .../inventory`` + ``GET .../{id}`` in an update;
   - ``sse`` (push): a server-sent-event stream on ``.../notifications``; the device acts on
     the notice's document, as the agent does in push mode;
   - ``longpoll`` (push): long-polls on ``.../notifications?wait=W&after=SERIAL``, acting on
     the notice's document;
   - ``hybrid``: long-polls as above, but a notice only triggers a check-in (the agent's
     hybrid mode);

   and, as the agent does in its push and hybrid modes, a check-in every ``safety_interval``
   seconds in case a notice was lost (a replica that did not hear of a deployment);

2. an update: where the tracker has it (the ``state`` of the check-in that found the release;
   after a pushed notice, or when an attempt is retried, a check-in of its own: an update cut
   short by a network failure resumes from there, as the agent does), the events
   ``downloading``, ``downloaded``, ``installing``, the envelope from its URL (bounded), the
   device's checks, the images, ``POST .../reports`` (the SUIT report), ``rebooting``,
   ``succeeded`` (or ``failed`` with the reason), and a check-in with the new inventory. A poll
   that finds a release and the update it starts are 8 requests to the tracker (10 with the
   old calls).

The device's checks are the real ones, not a stand-in: ``core.verify`` against the device's
trust anchors (author and operator, both required), the anti-rollback rule of the consumer, then
the SUIT processor's Update Procedure (``core.processor.process``) against an in-memory store of
the class's components: vendor and class conditions, each image fetched in full from its URI
(at most image-size bytes), its size and SHA-256 checked before it is committed, and the SUIT
report the processor writes is the one sent. Two simplifications, both documented in the
figures: verification of the same envelope bytes is cached per process by their SHA-256
(``VerifyCache``: ten thousand devices verifying identical bytes would only measure the
simulator's CPU; the first device of each release verifies for real, and a refusal is cached
as a refusal); and a device keeps digests, not bytes, and has no flash or bootloader: the
reboot after an install succeeds at once (the fault scenarios of ``sim.fleet`` are where boots,
reverts and power cuts are exercised).

HTTP is ``sim.wire``: per server, one pool of at most ``concurrency`` keep-alive connections
for ordinary requests, and one connection of its own per push device (its stream or its
long-polls). Several server URLs (replicas) take the devices in turn.

Not here: MQTT and CoAP notices, download-only actions (``action: download``), faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from suitkit.core.model import ComponentIdentifier
from suitkit.core.numbers import CoseAlg
from suitkit.core.processor import (
    ComponentIdentity,
    ComponentWriter,
    Device,
    ProcessorOptions,
    process,
)
from suitkit.core.report import Record, SystemPropertyClaims, encode_report
from suitkit.core.verify import TrustAnchors, VerifiedManifest, verify_envelope
from suitkit.device.agent import inventory_digest
from suitkit.errors import StorageError, SuitError
from suitkit.limits import Limits
from suitkit.sim.fleet import Stats
from suitkit.sim.wire import Answer, Held, Pool, WireError

__all__ = [
    "KINDS",
    "DeviceClass",
    "LightDevice",
    "Swarm",
    "VerifyCache",
    "interleave",
    "parse_mix",
]

KINDS = ("poll", "sse", "longpoll", "hybrid")
"""How a device waits for work: polling, push over SSE, push over long-poll, hybrid."""
FINAL = frozenset({"succeeded", "failed", "rolled-back"})
MAX_ERRORS = 5
"""A device gives up on an update after this many failed attempts (network errors)."""
_STEPS = ("notified", "downloading", "downloaded", "installing", "rebooting")
_REPORT_MEDIA_TYPE = "application/suit-report+cbor"
_MAX_ANSWER = 256 * 1024
_MAX_DETAIL = 1024
_OPTIONS = ProcessorOptions(allow_unverified_staging=False)
_OLD_SERVER = (404, 405)
"""What a tracker without ``POST .../checkin`` answers it (as ``device.agent``)."""
DEFAULT_POLL_AFTER = 60.0
"""Seconds between check-ins of a device told to follow the tracker's ``poll_after`` before
any answer gave one."""
MAX_POLL_AFTER = 24 * 3600.0
"""The longest ``poll_after`` a device follows (the answer is the server's: bounded)."""


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """What every device of one class is: identity, components and factory images.

    ``shape`` is reported as the inventory's hardware fact; ``factory_sequence`` and
    ``factory_digests`` (SHA-256 per component, in order) are what a new device runs.
    """

    name: str
    shape: str
    vendor_id: uuid.UUID
    class_id: uuid.UUID
    components: tuple[ComponentIdentifier, ...]
    factory_sequence: int
    factory_digests: tuple[bytes, ...]

    @property
    def identity(self) -> ComponentIdentity:
        return ComponentIdentity(vendor_ids=frozenset({self.vendor_id}),
                                 class_ids=frozenset({self.class_id}))


@dataclass(slots=True, eq=False)
class LightDevice:
    """One simulated device: a few hundred bytes of state."""

    name: str
    klass: DeviceClass
    kind: str
    server: int = 0
    """Index of the server URL (replica) it talks to."""
    id: str = ""
    credential: str = ""
    sequence: int = 0
    digests: tuple[bytes, ...] = ()
    state: str = "idle"
    outcome: str | None = None
    reason: str = ""
    release: str | None = None
    errors: int = 0
    connected: bool = False
    updating: bool = False
    finished_at: float | None = None
    poll_after: float | None = None
    """The tracker's last suggestion of seconds until the next check-in."""
    handled: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.digests:
            self.sequence, self.digests = (self.klass.factory_sequence,
                                           self.klass.factory_digests)

    @property
    def done(self) -> bool:
        return self.outcome in FINAL or self.errors >= MAX_ERRORS

    def inventory(self) -> dict[str, Any]:
        """What ``device.agent.inventory_of`` sends for a device running these images."""
        return {"vendor_id": str(self.klass.vendor_id), "class_id": str(self.klass.class_id),
                "components": [{"id": [p.hex() for p in cid], "sequence": self.sequence,
                                "digest": digest.hex()}
                               for cid, digest in zip(self.klass.components, self.digests,
                                                      strict=True)],
                "hardware": {"shape": self.klass.shape}}

    def inventory_digest(self) -> str:
        """The check-in's ``inventory_digest`` of ``inventory()`` (the agent's digest)."""
        return inventory_digest(self.inventory())


def parse_mix(text: str) -> dict[str, float]:
    """``poll=2,sse=1,longpoll=1,hybrid=1`` -> weights by kind (a kind left out: 0).

    Raises:
        ValueError: an unknown kind, a weight that is not a number >= 0, or all zero (one line).
    """
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or name not in KINDS:
            raise ValueError(f"--mix: expected KIND=WEIGHT with KIND one of "
                             f"{', '.join(KINDS)}, got {part.strip()[:40]!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"--mix: the weight of {name} must be a number, got "
                             f"{value[:20]!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"--mix: the weight of {name} must be >= 0, got {value[:20]!r}")
        weights[name] = weights.get(name, 0.0) + weight
    if sum(weights.values()) <= 0:
        raise ValueError("--mix: at least one weight must be above 0")
    return weights


def interleave(n: int, weights: Mapping[str, float]) -> list[str]:
    """``n`` kinds in the proportions of ``weights`` (largest remainder), spread evenly."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items() if w > 0}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:n - sum(counts.values())]:
        counts[k] += 1
    order = sorted(((i + 0.5) / c, k) for k, c in counts.items() for i in range(c))
    return [k for _, k in order]


class VerifyCache:
    """``verify_envelope`` of the same bytes once per process (keyed by their SHA-256): the
    verified manifest, or the refusal, of at most ``size`` envelopes (least recent dropped)."""

    def __init__(self, anchors: TrustAnchors, limits: Limits, size: int = 64) -> None:
        self.anchors, self.limits, self.size = anchors, limits, size
        self._seen: OrderedDict[bytes, VerifiedManifest | SuitError] = OrderedDict()
        self.verified = self.hits = 0

    def verify(self, data: bytes) -> VerifiedManifest:
        """Raises: SuitError: the envelope does not verify."""
        key = hashlib.sha256(data).digest()
        found = self._seen.get(key)
        if found is None:
            self.verified += 1
            try:
                found = verify_envelope(data, self.anchors, limits=self.limits)
            except SuitError as e:
                found = e
            self._seen[key] = found
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
        else:
            self.hits += 1
            self._seen.move_to_end(key)
        if isinstance(found, SuitError):
            raise found
        return found


# ---------------------------------------------------------------------------- processor glue


class _Missing(Exception):
    """The processor asked for a payload not downloaded yet."""

    def __init__(self, uri: str, max_bytes: int) -> None:
        super().__init__(uri)
        self.uri, self.max_bytes = uri, max_bytes


class _Writer:
    def __init__(self, slot: _Slot, max_size: int) -> None:
        self.slot, self.max_size = slot, max_size
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_size:
            raise StorageError(f"more than {self.max_size} bytes written")
        self.hasher.update(data)

    def commit(self) -> None:
        self.slot.staged = (self.size, self.hasher.digest())

    def discard(self) -> None:
        pass


class _Slot:
    """A component of a light device: the SHA-256 and size of its content, no bytes."""

    def __init__(self, identity: ComponentIdentity, digest: bytes) -> None:
        self._identity = identity
        self.running = digest
        self.staged: tuple[int, bytes] | None = None

    @property
    def identity(self) -> ComponentIdentity:
        return self._identity

    def size(self) -> int | None:
        return self.staged[0] if self.staged is not None else None

    def digest(self, algorithm: int) -> bytes | None:
        if algorithm != CoseAlg.SHA256:
            raise StorageError(f"the simulated device keeps SHA-256 digests only, not "
                               f"algorithm {algorithm}")
        return self.staged[1] if self.staged is not None else self.running

    def read(self, chunk_size: int) -> Iterator[bytes]:
        raise StorageError("the simulated device keeps digests, not image bytes")

    def open_writer(self, max_size: int, *, metadata: Mapping[int, object] | None
                    ) -> ComponentWriter:
        return _Writer(self, max_size)

    def invoke(self, arguments: bytes | None) -> None:
        pass

    def slot(self) -> int | None:
        return None


class _Store:
    def __init__(self, device: LightDevice) -> None:
        identity = device.klass.identity
        self.slots = {cid: _Slot(identity, digest)
                      for cid, digest in zip(device.klass.components, device.digests,
                                             strict=True)}

    def component(self, identifier: ComponentIdentifier) -> _Slot | None:
        return self.slots.get(identifier)

    def swap(self, first: ComponentIdentifier, second: ComponentIdentifier) -> None:
        raise StorageError("the simulated device cannot swap components")


class _Fetched:
    """Payloads downloaded before the processor runs; any other is a ``_Missing``."""

    def __init__(self, payloads: Mapping[str, bytes]) -> None:
        self.payloads = payloads

    def fetch(self, uri: str, *, max_bytes: int, arguments: bytes | None) -> Iterator[bytes]:
        data = self.payloads.get(uri)
        if data is None:
            raise _Missing(uri, max_bytes)
        return iter((data,))


class _Environment:
    def now(self) -> int | None:
        return int(time.time())

    def battery_level(self) -> int | None:
        return None

    def authorize(self, priority: int) -> bool:
        return True

    def version(self, component: ComponentIdentifier) -> tuple[int, ...] | None:
        return None

    def wait(self, events: Mapping[int, object]) -> bool | None:
        return None

    def decryption_key(self, key_id: bytes | None, algorithm: int) -> None:
        return None

    @property
    def dependency_anchors(self) -> None:
        return None

    def report(self, item: Record | SystemPropertyClaims) -> None:
        pass


_ENVIRONMENT = _Environment()


class _Failed(Exception):
    """The update is refused or failed on the device (one line), with the encoded SUIT report
    when the processor ran."""

    def __init__(self, reason: str, report: bytes | None = None) -> None:
        super().__init__(reason)
        self.report = report


class _Retry(Exception):
    """The tracker could not be reached or answered oddly: try the update again later."""


# ---------------------------------------------------------------------------- the swarm


class Swarm:
    """Runs ``devices`` against ``urls`` (replicas; device ``server`` indexes them) until
    ``stop()``.

    ``concurrency``: connections per server for ordinary requests (devices beyond it wait
    for one). ``poll_interval``: seconds between a poll device's check-ins (``None``: the
    ``poll_after`` of the tracker's last answer, ``DEFAULT_POLL_AFTER`` before any);
    ``safety_interval``: between the safety check-ins of the other kinds; ``long_poll``: the
    ``wait`` of a long-poll.
    """

    def __init__(self, devices: Iterable[LightDevice], urls: Sequence[str],
                 anchors: TrustAnchors, *, concurrency: int = 64,
                 poll_interval: float | None = 10.0,
                 safety_interval: float = 300.0, long_poll: float = 30.0,
                 limits: Limits | None = None, seed: int = 0) -> None:
        if not urls:
            raise ValueError("a swarm needs at least one server URL")
        self.devices = list(devices)
        self.urls = [u.rstrip("/") for u in urls]
        self.limits = limits or Limits()
        self.cache = VerifyCache(anchors, self.limits)
        self.stats = Stats()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.safety_interval = safety_interval
        self.long_poll = long_poll
        self._rng = random.Random(seed)  # noqa: S311 - jitter, not secrets
        self._pools: list[Pool] = []
        self._stop: asyncio.Event | None = None
        self.payload_bytes = 0
        self.old_servers: set[int] = set()
        """Indexes of the servers that answered the check-in 404 or 405 (the old calls)."""

    # ---- HTTP, counted

    def _auth(self, device: LightDevice) -> dict[str, str]:
        return {"Authorization": f"Bearer {device.credential}"}

    async def _call(self, device: LightDevice, kind: str, method: str, path: str, *,
                    body: bytes | None = None, content_type: str | None = None,
                    expected: tuple[int, ...] = (200,), max_bytes: int = _MAX_ANSWER,
                    pool: Pool | None = None, auth: bool = True) -> Answer:
        """One request of ``device``, counted under ``kind``.

        Raises:
            _Retry: the request failed or got a status not in ``expected`` (5xx, 429...).
        """
        headers = self._auth(device) if auth else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            answer = await (pool or self._pools[device.server]).request(
                method, path, headers=headers, body=body, max_bytes=max_bytes)
        except WireError as e:
            self.stats.failed(kind)
            raise _Retry(str(e)) from None
        self.stats.count(kind, answer.status)
        if answer.status not in expected:
            raise _Retry(f"{method} {path.rsplit('/', 1)[-1] or '/'}: HTTP {answer.status}: "
                         f"{_error_of(answer)}")
        return answer

    async def _tracker(self, device: LightDevice, kind: str, method: str, suffix: str = "",
                       *, doc: dict[str, Any] | None = None, expected: tuple[int, ...] = (200,)
                       ) -> Answer:
        body = json.dumps(doc, separators=(",", ":")).encode() if doc is not None else None
        # the device API's prefix (its own record, asked of old trackers only, has none)
        base = f"/device/v1/{device.id}" if suffix else f"/api/v1/devices/{device.id}"
        return await self._call(device, kind, method, f"{base}{suffix}",
                                body=body, expected=expected,
                                content_type="application/json" if body is not None else None)

    async def _get_url(self, device: LightDevice, kind: str, url: str, max_bytes: int
                       ) -> bytes:
        """An envelope or an image by URL, without credentials (as the agent's fetchers)."""
        pool = self._pool_for(url)
        path = urlsplit(url).path or "/"
        query = urlsplit(url).query
        answer = await self._call(device, kind, "GET", path + (f"?{query}" if query else ""),
                                  pool=pool, auth=False, max_bytes=max_bytes)
        return answer.body

    def _pool_for(self, url: str) -> Pool:
        base = url.split("/", 3)
        origin = "/".join(base[:3]) if len(base) >= 3 else url
        for pool in self._pools:
            if pool.url.split("/", 3)[:3] == origin.split("/", 3)[:3]:
                return pool
        raise _Retry(f"{url[:80]}: not one of the servers the simulator was given")

    # ---- the one seam of the per-poll request

    async def check_in(self, device: LightDevice, *, inventory: bool = False
                       ) -> dict[str, Any] | None:
        """One poll, as the agent's (``device.agent._Tracker.checkin``): the tracker's answer,
        ``{"release": ..., "envelope_url": ..., "state": ...}`` (``"release": null``: nothing
        to do); ``None`` when an old server has nothing (204) or took the inventory.

        ``POST /device/v1/{id}/checkin`` with the inventory's digest (and the inventory
        with it when ``inventory``, or asked again with it when the answer says
        ``send_inventory``); its ``poll_after`` is kept on the device. On a server that
        answers it 404 or 405 (no check-in), ``GET .../update`` now and from then on; those
        answers carry no ``state``.

        Raises:
            _Retry: the tracker could not be reached or refused.
        """
        if device.server not in self.old_servers:
            body: dict[str, Any] = {"inventory_digest": device.inventory_digest()}
            if inventory:
                body["inventory"] = device.inventory()
            answer = await self._tracker(device, "checkin", "POST", "/checkin", doc=body,
                                         expected=(200, *_OLD_SERVER))
            if answer.status in _OLD_SERVER:
                self.old_servers.add(device.server)
            else:
                doc = _json(answer.body)
                if doc.get("send_inventory") is True and not inventory:
                    body["inventory"] = device.inventory()
                    doc = _json((await self._tracker(device, "checkin", "POST", "/checkin",
                                                     doc=body)).body)
                hint = doc.get("poll_after")
                if isinstance(hint, (int, float)) and not isinstance(hint, bool) and hint > 0:
                    device.poll_after = min(float(hint), MAX_POLL_AFTER)
                device.connected = True
                return doc
        if inventory:
            await self._tracker(device, "inventory", "PUT", "/inventory", doc=device.inventory())
            return None
        answer = await self._tracker(device, "update", "GET", "/update", expected=(200, 204))
        device.connected = True
        return None if answer.status == 204 else _json(answer.body)

    async def _state(self, device: LightDevice) -> str | None:
        """The update state the tracker has for the device: a check-in's; on an old server
        (no ``state`` in its answers) ``GET .../{id}``, with the inventory sent before it, as
        the agent does there."""
        if device.server not in self.old_servers:
            doc = await self.check_in(device)
            if device.server not in self.old_servers:
                state = (doc or {}).get("state")
                return state if isinstance(state, str) else None
        await self._tracker(device, "inventory", "PUT", "/inventory", doc=device.inventory())
        state = _json((await self._tracker(device, "device", "GET")).body).get("state")
        return state if isinstance(state, str) else None

    # ---- an update, as device.agent.run_once

    async def update(self, device: LightDevice, assigned: Mapping[str, Any] | None, *,
                     checked_in: bool = False) -> None:
        """Act on ``assigned`` (a check-in's answer, ``checked_in``: its ``state`` is where the
        tracker has the update; or a pushed notice) until the update has a final outcome or
        failed ``MAX_ERRORS`` times in transit. An attempt retried reads the state again."""
        if device.updating:
            return
        device.updating = True
        try:
            while not device.done:
                try:
                    await self._update_once(device, assigned, checked_in=checked_in)
                    return
                except _Retry as e:
                    checked_in = False
                    device.errors += 1
                    device.state = f"error: {e}"
                    if device.errors >= MAX_ERRORS:
                        device.outcome, device.reason = "error", str(e)
                        device.finished_at = time.monotonic()
                        return
                    if await self._sleep(min(0.5 * 2 ** device.errors, 10.0)
                                         * self._rng.uniform(0.5, 1.5)):
                        return
        finally:
            device.updating = False

    async def _update_once(self, device: LightDevice, assigned: Mapping[str, Any] | None, *,
                           checked_in: bool) -> None:
        release, url = (assigned or {}).get("release"), (assigned or {}).get("envelope_url")
        if not isinstance(release, str) or not isinstance(url, str) or not release:
            return
        if release in device.handled:
            return
        device.release = release
        action = (assigned or {}).get("action") or "install"
        if action != "install":
            self._done(device, release, "error",
                       f"the light devices install; {str(action)[:20]!r} actions are not "
                       "simulated")
            return
        if checked_in and device.server not in self.old_servers:
            state = (assigned or {}).get("state")
            state = state if isinstance(state, str) else None
        else:
            state = await self._state(device)
        if state not in (None, *_STEPS):
            # the update is final on the tracker: this device's own final event got there
            # before the network failed (a stale notice's release is handled already)
            self._done(device, release, str(state)[:20],
                       f"the tracker has the update {str(state)[:20]}")
            return
        done = _STEPS.index(state) if state in _STEPS else 0
        envelope_url = urljoin(self.urls[device.server] + "/", url)

        async def event(step: str, detail: str = "") -> None:
            if _STEPS.index(step) > done:
                device.state = step
                await self._tracker(device, "events", "POST", "/events",
                                    doc={"state": step, "detail": detail[:_MAX_DETAIL]},
                                    expected=(201,))

        await event("downloading", envelope_url)
        try:
            envelope = await self._get_url(device, "envelope", envelope_url,
                                           self.limits.max_envelope_bytes)
        except _Retry as e:
            await self._final(device, release, "failed", f"envelope: {e}")
            return
        await event("downloaded", f"{len(envelope)} bytes")
        await event("installing")
        try:
            staged, report = await self._install(device, envelope)
        except _Failed as e:
            if e.report is not None:
                await self._report(device, e.report, done)
            await self._final(device, release, "failed", str(e))
            return
        await self._report(device, report, done)
        await event("rebooting")
        # no flash and no bootloader: the staged images boot and are confirmed
        device.sequence, device.digests = staged
        await self._final(device, release, "succeeded",
                          f"running sequence number {device.sequence}")

    async def _report(self, device: LightDevice, report: bytes, done: int) -> None:
        """The SUIT report, on a best-effort basis as the agent sends it (``tell``): a report
        whose answer was lost may have been stored, and the tracker refuses a second one
        (409), so asking again would only wedge the update."""
        if done < _STEPS.index("rebooting"):
            try:
                await self._call(device, "reports", "POST",
                                 f"/device/v1/{device.id}/reports", body=report,
                                 content_type=_REPORT_MEDIA_TYPE, expected=(201,))
            except _Retry as e:
                device.state = f"the tracker missed the report: {e}"

    async def _final(self, device: LightDevice, release: str, outcome: str, reason: str
                     ) -> None:
        await self._tracker(device, "events", "POST", "/events",
                            doc={"state": outcome, "detail": reason[:_MAX_DETAIL]}, expected=(201,))
        await self.check_in(device, inventory=True)  # the new inventory
        self._done(device, release, outcome, reason)

    def _done(self, device: LightDevice, release: str, outcome: str, reason: str) -> None:
        device.outcome, device.reason, device.state = outcome, reason, outcome
        device.handled.add(release)
        device.finished_at = time.monotonic()

    async def _install(self, device: LightDevice, envelope: bytes
                       ) -> tuple[tuple[int, tuple[bytes, ...]], bytes]:
        """Verify (cached), refuse a rollback, fetch the payloads and run the Update Procedure:
        the new sequence number and digests, and the encoded SUIT report.

        Raises:
            _Failed: refused or failed on the device (with ``report`` when the processor ran).
            _Retry: a payload could not be downloaded.
        """
        try:
            verified = self.cache.verify(envelope)
        except SuitError as e:
            raise _Failed(f"rejected: {e}") from None
        sequence = verified.manifest.sequence_number
        if sequence < device.sequence:  # RFC 9124 REQ.SEC.SEQUENCE, as device.consumer
            raise _Failed(f"rejected: rollback: sequence number {sequence} is lower than the "
                          f"installed {device.sequence}")
        payloads: dict[str, bytes] = {}
        for _ in range(len(verified.manifest.common.components) * 2 + 1):
            store = _Store(device)
            try:
                result = process(verified, "update", Device(store, _ENVIRONMENT,
                                                             _Fetched(payloads)),
                                 limits=self.limits, options=_OPTIONS)
            except _Missing as missing:
                data = await self._get_url(device, "firmware", missing.uri,
                                           missing.max_bytes)
                self.payload_bytes += len(data)
                payloads[missing.uri] = data
                continue
            report = encode_report(result.report)
            if not result.succeeded:
                raise _Failed(f"failed: {result.reason}", report)
            if not result.written:
                raise _Failed("failed: the manifest installed no image")
            digests = tuple(slot.staged[1] if slot.staged is not None else slot.running
                            for slot in store.slots.values())
            return (sequence, digests), report
        raise _Failed("failed: the manifest asked for more payloads than it has components")

    # ---- waiting for work

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the swarm is stopping."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(seconds, 0.0))
        return self._stop.is_set()

    def _interval(self, device: LightDevice, interval: float | None) -> float:
        if interval is not None:
            return interval
        return device.poll_after or DEFAULT_POLL_AFTER

    async def _poll(self, device: LightDevice, interval: float | None, *, first: bool = True
                    ) -> None:
        """Check in every ``interval`` seconds (``None``: as the tracker suggests)."""
        if first and await self._sleep(self._rng.uniform(0, self._interval(device, interval))):
            return
        while True:
            try:
                assigned = await self.check_in(device)
            except _Retry as e:
                device.state = f"poll: {e}"
            else:
                if assigned is not None and _new_release(assigned, device):
                    await self.update(device, assigned, checked_in=True)
            if await self._sleep(self._interval(device, interval)
                                 * self._rng.uniform(0.8, 1.2)):
                return

    async def _sse(self, device: LightDevice) -> None:
        held = Held(self._pools[device.server])
        path = f"/device/v1/{device.id}/notifications"
        backoff = 0.5
        try:
            while True:
                try:
                    async for status, data in held.events(path, headers=self._auth(device),
                                                          idle_timeout=self.long_poll * 3):
                        if not data:
                            self.stats.count("notifications", status)
                            if status == 200:
                                device.connected, backoff = True, 0.5
                            else:
                                device.state = f"sse: HTTP {status}"
                            continue
                        notice = _loads(data)
                        if _new_release(notice, device):
                            await self.update(device, notice)
                except WireError as e:
                    self.stats.failed("notifications (sse)")
                    device.state = f"sse: {e}"
                if await self._sleep(backoff * self._rng.uniform(0.5, 1.5)):
                    return
                backoff = min(backoff * 2, 10.0)
        finally:
            held.close()

    async def _long_poll(self, device: LightDevice, *, hybrid: bool) -> None:
        held = Held(self._pools[device.server])
        path = f"/device/v1/{device.id}/notifications"
        after: int | None = None
        backoff = 0.5
        try:
            while True:
                query = f"?wait={self.long_poll:g}" + (f"&after={after}" if after else "")
                device.connected = True
                try:
                    answer = await held.request("GET", path + query,
                                                headers=self._auth(device),
                                                timeout=self.long_poll + 15.0)
                except WireError as e:
                    self.stats.failed("notifications (long-poll)")
                    device.state = f"long-poll: {e}"
                    if await self._sleep(backoff * self._rng.uniform(0.5, 1.5)):
                        return
                    backoff = min(backoff * 2, 10.0)
                    continue
                self.stats.count("notifications", answer.status)
                backoff = 0.5
                if answer.status == 200:
                    notice = _json(answer.body)
                    serial = notice.get("serial")
                    if isinstance(serial, int) and not isinstance(serial, bool):
                        after = serial
                    if _new_release(notice, device):
                        checked_in = False
                        if hybrid:  # the notice only says "check in"
                            with contextlib.suppress(_Retry):
                                notice = await self.check_in(device) or {}
                                checked_in = True
                        await self.update(device, notice, checked_in=checked_in)
                elif answer.status != 204:
                    device.state = f"long-poll: HTTP {answer.status}"
                    if await self._sleep(1.0 * self._rng.uniform(0.5, 1.5)):
                        return
                if await self._sleep(0):
                    return
        finally:
            held.close()

    async def _device(self, device: LightDevice) -> None:
        try:
            await self._wait_for_work(device)
        except Exception as e:  # noqa: BLE001 - a bug here ends one device, visibly
            device.outcome, device.state = "error", "crashed"
            device.reason = f"the simulated device crashed: {type(e).__name__}: {e}"[:300]
            device.finished_at = time.monotonic()

    async def _wait_for_work(self, device: LightDevice) -> None:
        if device.kind == "poll":
            await self._poll(device, self.poll_interval)
            return
        # the agent's check-in in case a notice was lost, beside the notices
        safety = asyncio.create_task(self._poll(device, self.safety_interval))
        try:
            if device.kind == "sse":
                await self._sse(device)
            else:
                await self._long_poll(device, hybrid=device.kind == "hybrid")
        finally:
            safety.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await safety

    # ---- the whole swarm

    def open(self) -> None:
        """The connection pools (inside the event loop; ``run`` calls it)."""
        if not self._pools:
            self._pools = [Pool(url, self.concurrency) for url in self.urls]

    async def run(self) -> None:
        """Run every device until ``stop()`` (call from the event loop's thread)."""
        self._stop = self._stop or asyncio.Event()
        self.open()
        tasks = [asyncio.create_task(self._device(d)) for d in self.devices]
        try:
            await self._stop.wait()
        finally:
            pending = set(tasks)
            while pending:
                # cancelled again until done: asyncio.wait_for of CPython < 3.12 loses a
                # cancellation that arrives as its inner task completes, and a device reading
                # its event stream then never stops (a 10,000-device run hung here, 1,342 SSE
                # streams still held)
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=1.0)
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved: a device's crash is its outcome already
            for pool in self._pools:
                pool.close()

    def close(self) -> None:
        """Close the connection pools opened outside ``run`` (``open``, ``register``)."""
        for pool in self._pools:
            pool.close()

    def stop(self) -> None:
        if self._stop is None:
            self._stop = asyncio.Event()
        self._stop.set()

    async def wait_done(self, devices: Iterable[LightDevice], timeout: float) -> bool:
        """Wait until each of ``devices`` has a final outcome (True) or ``timeout`` passes."""
        wanted = list(devices)
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if all(d.done for d in wanted):
                return True
            await asyncio.sleep(0.2)
        return all(d.done for d in wanted)

    async def register(self, devices: Sequence[LightDevice], admin_token: str, *,
                       concurrency: int = 16,
                       on_progress: Callable[[int], None] | None = None) -> None:
        """Register ``devices`` with the tracker (``POST /api/v1/devices``, one by one: the
        API has no bulk call), ``concurrency`` at a time, with their vendor and class IDs.

        Raises:
            SuitError: a registration failed after three tries (one line).
        """
        self.open()
        pool = self._pools[0]
        headers = {"Authorization": f"Bearer {admin_token}",
                   "Content-Type": "application/json"}
        done = 0
        gate = asyncio.Semaphore(concurrency)

        async def one(device: LightDevice) -> None:
            nonlocal done
            body = json.dumps({"name": device.name, "vendor_id": str(device.klass.vendor_id),
                               "class_id": str(device.klass.class_id)}).encode()
            last = ""
            async with gate:
                for attempt in range(3):
                    try:
                        answer = await pool.request("POST", "/api/v1/devices",
                                                    headers=headers, body=body)
                    except WireError as e:
                        last = str(e)
                    else:
                        self.stats.count("register", answer.status)
                        doc = _json(answer.body)
                        device_id, token = doc.get("id"), doc.get("token")
                        if answer.status == 201 and not (isinstance(device_id, str)
                                                         and isinstance(token, str)):
                            raise SuitError(f"registering device {device.name}: the answer "
                                            "is not {id, token} strings")
                        if answer.status == 201:
                            device.id, device.credential = str(device_id), str(token)
                            done += 1
                            if on_progress is not None:
                                on_progress(done)
                            return
                        last = f"HTTP {answer.status}: {_error_of(answer)}"
                        if answer.status not in (429, 503):
                            break
                    await asyncio.sleep(0.5 * (attempt + 1))
            raise SuitError(f"registering device {device.name} failed: {last}")

        await asyncio.gather(*(one(d) for d in devices))


def _new_release(doc: Mapping[str, Any], device: LightDevice) -> bool:
    """Whether ``doc`` (a check-in's answer or a notice: untrusted) names a release the device
    has not finished with."""
    release = doc.get("release")
    return isinstance(release, str) and bool(release) and release not in device.handled


def _json(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # a hostile server's answer: no work, not a crash
        return {}
    return doc if isinstance(doc, dict) else {}


def _loads(text: str) -> dict[str, Any]:
    return _json(text.encode())


def _error_of(answer: Answer) -> str:
    message = _json(answer.body).get("error") or _json(answer.body).get("detail")
    return str(message)[:200] if message else "no reason given"

