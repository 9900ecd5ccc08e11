"""The device's status-tracker client: one poll of RFC 9019's client-initiated mode.

``run_once(folder, server_url, credential, fetcher=...)`` opens the device folder and:

1. ``PUT /api/v1/devices/{id}/inventory``: vendor and class IDs, and per component the running
   sequence number and image digest (what the bootloader verified, as ``device status`` shows);
2. ``GET /api/v1/devices/{id}/update``: 204 means nothing to do; 200 gives the release (the
   manifest digest) and the URL of its envelope;
3. for an assignment, posts the states ``downloading``, ``downloaded`` (the envelope is fetched
   with a bounded size and time), ``installing`` (``Consumer.install``: everything is verified
   on the device; the tracker and the URL are not trusted), then the SUIT report; a refused
   install ends ``failed`` with the consumer's reason;
4. otherwise ``rebooting``: one boot and the Invocation Procedure; an image that starts is
   confirmed (``succeeded``), one that does not is reverted by a second boot (``rolled-back``);
5. saves the device and puts the inventory again.

The agent speaks HTTP only: it imports neither the tracker nor the firmware server. Every
network or HTTP failure ends the run with a one-line reason (``AgentResult.outcome ==
"error"``), never a traceback. Before the install nothing on the device has changed, so a
failure to reach the tracker stops the run; after it, the device finishes the update (boot,
confirm or revert) whatever the tracker answers, and the tracker misses those events.

Not here: resuming an update interrupted by an agent restart (the tracker then refuses the next
``downloading`` with 409, reported as an error), push notifications, report signing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from suitkit.core.report import encode_report
from suitkit.device.consumer import PayloadFetcher
from suitkit.device.invoke import Launcher, ProcessLauncher, RecordingLauncher, invoke_running
from suitkit.device.wiring import OpenDevice, open_device
from suitkit.errors import SuitError
from suitkit.limits import Limits

__all__ = ["REPORT_MEDIA_TYPE", "AgentResult", "TrackerError", "inventory_of", "run_once"]

REPORT_MEDIA_TYPE = "application/suit-report+cbor"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
"""Every exchange with the tracker and the envelope download: bounded in time."""
_MAX_DETAIL = 1024


@dataclass(frozen=True, slots=True)
class AgentResult:
    """What one poll did.

    ``outcome``: ``up-to-date`` (nothing assigned), ``succeeded``, ``failed`` (the update was
    refused or could not be fetched; the device runs what it ran), ``rolled-back`` (the new image
    did not start and was reverted) or ``error`` (the tracker could not be used; ``reason``).
    ``steps``: one line per step, in order.
    """

    outcome: str
    reason: str
    release: str | None = None
    steps: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome in ("up-to-date", "succeeded")


class TrackerError(Exception):
    """The tracker could not be reached or refused a call (one line)."""


def inventory_of(opened: OpenDevice) -> dict[str, Any]:
    """The inventory the tracker stores: identity and the verified running images."""
    observation = opened.bootloader.observe()  # type: ignore[attr-defined]
    components = []
    for spec, check in zip(opened.config.components, observation.primary, strict=True):
        entry: dict[str, Any] = {"id": [p.hex() for p in spec.suit_id]}
        if check.info is not None and check.verdict.name == "GOOD":
            entry["sequence"] = check.info.sequence_number
            entry["digest"] = check.info.digest.hex()
        components.append(entry)
    return {"vendor_id": str(opened.config.vendor_id), "class_id": str(opened.config.class_id),
            "components": components, "hardware": {"shape": opened.config.shape}}


class _Tracker:
    """The calls a device makes, each turned into ``TrackerError`` when it fails."""

    def __init__(self, client: httpx.Client, device_id: str) -> None:
        self.client = client
        self.base = f"/api/v1/devices/{device_id}"

    def _call(self, method: str, path: str, expected: tuple[int, ...], **kwargs: Any
              ) -> httpx.Response:
        try:
            response = self.client.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as e:
            raise TrackerError(f"{method} {path or '/'}: {type(e).__name__}: {e}") from None
        if response.status_code not in expected:
            raise TrackerError(f"{method} {path or '/'}: HTTP {response.status_code}: "
                               f"{_error_of(response)}")
        return response

    def inventory(self, opened: OpenDevice) -> None:
        self._call("PUT", "/inventory", (200,), json=inventory_of(opened))

    def update(self) -> tuple[str, str] | None:
        response = self._call("GET", "/update", (200, 204))
        if response.status_code == 204:
            return None
        try:
            doc = response.json()
            release, url = doc["release"], doc["envelope_url"]
        except (ValueError, KeyError, TypeError):
            raise TrackerError("GET /update: the answer is not {release, envelope_url}") from None
        if not isinstance(release, str) or not isinstance(url, str):
            raise TrackerError("GET /update: release and envelope_url must be strings")
        return release[:128], url

    def event(self, state: str, detail: str = "") -> None:
        self._call("POST", "/events", (201,), json={"state": state,
                                                    "detail": detail[:_MAX_DETAIL]})

    def report(self, raw: bytes) -> None:
        self._call("POST", "/reports", (201,), content=raw,
                   headers={"Content-Type": REPORT_MEDIA_TYPE})


def _error_of(response: httpx.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.reason_phrase or "no reason given"
    message = doc.get("error") if isinstance(doc, dict) else None
    return str(message)[:300] if message else (response.reason_phrase or "no reason given")


def fetch_envelope(url: str, max_bytes: int, *, timeout: httpx.Timeout = TIMEOUT) -> bytes:
    """The envelope at ``url``, at most ``max_bytes`` (no credential is sent to it).

    Raises:
        TrackerError: network error, HTTP status other than 200, or too large.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
            if response.status_code != 200:
                raise TrackerError(f"envelope {url}: HTTP {response.status_code}")
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > max_bytes:
                    raise TrackerError(f"envelope {url}: larger than the {max_bytes} bytes "
                                       "allowed")
                chunks.append(chunk)
    except httpx.HTTPError as e:
        raise TrackerError(f"envelope {url}: {type(e).__name__}: {e}") from None
    return b"".join(chunks)


def _boot(opened: OpenDevice) -> tuple[bool, str]:
    """One boot and the Invocation Procedure: (the application started, what ran)."""
    result = opened.bootloader.boot()
    config = opened.config
    launcher: Launcher = (ProcessLauncher(config.app_command, config.directory / "app.pid")
                          if config.app_command else RecordingLauncher())
    invoked = invoke_running(config, opened.bootloader, launcher)
    images = ", ".join(f"{i.name} #{i.sequence_number}" for i in result.images)
    failures = [r.reason for r in invoked.results if not r.succeeded]
    return invoked.succeeded, f"booted {images}" + (f" ({failures[0]})" if failures else "")


def run_once(folder: Path, server_url: str, credential: str, *, fetcher: PayloadFetcher,
             limits: Limits | None = None, say: Callable[[str], None] | None = None,
             client: httpx.Client | None = None) -> AgentResult:
    """One poll of the tracker at ``server_url`` with ``credential`` (``<device-id>.<secret>``);
    installs what is assigned. ``say`` receives each step as it happens."""
    limits = limits or Limits()
    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        if say is not None:
            say(line)

    def result(outcome: str, reason: str, release: str | None = None) -> AgentResult:
        step(f"{outcome}: {reason}")
        return AgentResult(outcome, reason, release, tuple(steps))

    device_id, dot, _ = credential.strip().partition(".")
    if not dot or not device_id:
        return result("error", "the credential must be <device-id>.<secret>")
    try:
        opened = open_device(folder)
    except SuitError as e:
        return result("error", f"cannot open the device: {e}")
    own = client is None
    http = client or httpx.Client(base_url=server_url.rstrip("/"), timeout=TIMEOUT,
                                  headers={"Authorization": f"Bearer {credential.strip()}"})
    tracker = _Tracker(http, device_id)
    try:
        try:
            tracker.inventory(opened)
            step("inventory sent")
            assigned = tracker.update()
        except TrackerError as e:
            return result("error", str(e))
        if assigned is None:
            return result("up-to-date", "no update assigned")
        release, url = assigned
        url = urljoin(server_url.rstrip("/") + "/", url)
        step(f"release {release} assigned ({url})")
        try:
            tracker.event("downloading", url)
            step("downloading")
            try:
                envelope = fetch_envelope(url, limits.max_envelope_bytes)
            except TrackerError as e:
                tracker.event("failed", str(e))
                return result("failed", str(e), release)
            tracker.event("downloaded", f"{len(envelope)} bytes")
            step(f"downloaded {len(envelope)} bytes")
            tracker.event("installing")
            step("installing")
        except TrackerError as e:
            return result("error", str(e), release)
        return _install(opened, tracker, envelope, release=release, fetcher=fetcher, step=step,
                        result=result)
    finally:
        if own:
            http.close()


def _install(opened: OpenDevice, tracker: _Tracker, envelope: bytes, *, release: str,
             fetcher: PayloadFetcher, step: Callable[[str], None],
             result: Callable[[str, str, str | None], AgentResult]) -> AgentResult:
    """Install, report, boot, confirm or revert; the tracker is told on a best-effort basis."""
    missed: list[str] = []

    def tell(what: Callable[[], None]) -> None:
        try:
            what()
        except TrackerError as e:
            missed.append(str(e))
            step(f"tracker: {e}")

    try:
        outcome = opened.consumer(fetcher).install(envelope)
    finally:
        opened.save()
    if outcome.report is not None:
        raw = encode_report(outcome.report)
        tell(lambda: tracker.report(raw))
        step(f"report sent ({'ok' if outcome.report.succeeded else 'failure'})")
    if not outcome.installed:
        tell(lambda: tracker.event("failed", outcome.reason))
        tell(lambda: tracker.inventory(opened))
        return result("failed", outcome.reason, release)
    step(f"installed: {outcome.reason}")
    tell(lambda: tracker.event("rebooting"))
    step("rebooting")
    try:
        started, line = _boot(opened)
        step(line)
        if started:
            opened.bootloader.confirm()
            final, reason = "succeeded", f"running sequence number {outcome.sequence_number}"
        else:
            _, line = _boot(opened)
            step(f"the new image did not start; {line}")
            final, reason = "rolled-back", "the new image did not start and was reverted"
    except SuitError as e:  # NoBootableImage among them
        final, reason = "failed", f"boot: {e}"
    finally:
        opened.save()
    step(final if final != "succeeded" else "confirmed")
    tell(lambda: tracker.event(final, reason))
    tell(lambda: tracker.inventory(opened))
    step("inventory sent")
    if missed:
        reason += f" (the tracker missed {len(missed)} message(s): {missed[0]})"
    return result(final, reason, release)
