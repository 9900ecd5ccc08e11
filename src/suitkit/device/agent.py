"""The device's status-tracker client (RFC 9019 §2.3): one update run, and the agent loop in the
client-initiated (poll), server-initiated (push) and hybrid modes.

``run_once(folder, server_url, credential, fetcher=...)`` opens the device folder (whose
``tracker-id``, written by ``register`` or at the first run the tracker accepted, must be the
credential's device: a folder never reports in another device's name) and:

1. ``POST /device/v1/{id}/checkin`` (one request per poll; the device API's prefix, and
   ``/api/v1/devices/{id}/...`` for a tracker that predates it): the digest of its inventory
   (vendor and class IDs, per component the running sequence number, image digest and version:
   what the bootloader verified, as ``device status`` shows; the device's capability report,
   draft-ietf-suit-report §6, and its ECDH-ES public keys; ``inventory_digest``, SHA-256 of
   its canonical JSON), the inventory itself only when the tracker answers
   ``send_inventory``. The answer is ``{"release": null}`` (nothing to do) or the release (the
   manifest digest), the URL of its envelope (http(s) or coap), the ``action``
   (``install``, the default, or ``download``: fetch and stop at ``downloaded`` until a later
   assignment says ``install``) and the ``nonce`` issued with the update (it goes into the
   report), with the update ``state`` the tracker has for the device. In
   push mode the notice's document is used instead of the answer's release (``assigned=``).
   A tracker without the check-in (404: older than issue #12) gets the old calls instead:
   ``PUT .../inventory``, ``GET .../update`` (204: nothing to do) and ``GET .../{id}``;
2. with the state the tracker has for the device: an update interrupted by an
   agent restart is **resumed** (``downloading``, ``downloaded``, ``installing``: the steps
   already reported are not reported again; the consumer resumes payload downloads from its
   journal; ``rebooting``: the device boots or confirms what it installed); a device in a final
   state for a pushed release has nothing to do (a stale notice);
3. posts the states ``downloading``, ``downloaded`` (the envelope is fetched with a bounded size
   and time; a ``download`` action keeps it in ``DIR/agent/`` and stops), ``installing``
   (``Consumer.install``: everything is verified on the device; the tracker, the notice and the
   URL are not trusted), then the SUIT report (with the nonce and the capability report,
   signed with the device's report key ``DIR/report.key`` when it has one: report §8); a
   refused install ends ``failed`` with the consumer's reason. An install that *waits* (a wait
   directive's events do not hold yet, update-management §5.6) ends the run ``waiting``: the
   state ``waiting`` is posted once, with what it waits for; no report and no final state are
   sent; the envelope is kept in ``DIR/agent/`` and the next run resumes the install (without
   posting anything while it still waits);
4. otherwise ``rebooting``: one boot and the Invocation Procedure; an image that starts is
   confirmed (``succeeded``), one that does not is reverted by a second boot (``rolled-back``);
5. saves the device and sends the inventory again (a check-in with it).

``run_agent`` repeats it: every ``interval`` seconds (poll), or when a notice arrives (push: the
notice's document is acted on; hybrid: the notice only triggers ``run_once``, which asks
``GET .../update``). Notices come from ``device.listen`` (SSE, long-poll, MQTT, CoAP observe),
whose connections come back after server restarts and network cuts; a run that cannot reach the
tracker is retried after a bounded, jittered backoff. ``max_runs``, ``duration`` and ``until``
bound the loop.

The agent speaks HTTP (and CoAP, MQTT for notices) only: it imports neither the tracker nor the
firmware server. Every network or HTTP failure ends the run with a one-line reason
(``AgentResult.outcome == "error"``), never a traceback; a transition the tracker refuses (409)
is reported with the tracker's reason. Before the install nothing on the device has changed, so
a failure to reach the tracker stops the run; after it, the device finishes the update (boot,
confirm or revert) whatever the tracker answers, and the tracker misses those events.

``register`` makes the device's report key when it has none and registers its public half.

Self-update (``device.selfupdate``; a Linux-class device made with an agent component): every
install (of the ``agent`` image or not) ends the run ``restarting`` once ``rebooting`` is
reported (``run_agent`` stops, ``suitkit device run`` exits ``HANDOVER_EXIT``): the launcher
boots the new agent on trial. An agent that finds itself on trial confirms itself right after
its first successful check-in, the confirm step (and reports the release ``succeeded``); the
previous agent, started again after the launcher reverted a new one that did not check in
within its deadline, reports the release ``rolled-back`` with the launcher's reason.

Not here: report encryption (COSE_Encrypt0), a download stage for detached payloads
(``download`` fetches the envelope only; payloads are fetched, resumably, by the install).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import httpx

from suitkit import __version__
from suitkit.core import cbor, crypto
from suitkit.core.anchors import ANCHORS_COMPONENT
from suitkit.core.report import (
    SIGNED_REPORT_MEDIA_TYPE,
    Report,
    encode_capability_report,
    encode_report,
    sign_report,
)
from suitkit.core.verify import verify_envelope
from suitkit.device.capabilities import capability_report
from suitkit.device.config import (
    BOOTLOADER_ID,
    HealthConfig,
    bind_tracker_id,
    check_tracker_id,
    load_config,
)
from suitkit.device.consumer import PayloadFetcher, running_version, split_slot_record
from suitkit.device.fetch import CoapFetcher, HttpFetcher
from suitkit.device.health import Watch, close_watch, load_watch, open_watch
from suitkit.device.health import check as check_health
from suitkit.device.invoke import Launcher, ProcessLauncher, RecordingLauncher, invoke_running
from suitkit.device.listen import (
    DEVICE_API,
    CoapSource,
    LongPollSource,
    MqttSource,
    NoticeSource,
    SseSource,
    backoff_delay,
)
from suitkit.device.selfupdate import (
    AGENT_IMAGE,
    agent_on_trial,
    clear_note,
    has_agent,
    read_note,
    slot_phase,
)
from suitkit.device.tls import network_reason
from suitkit.device.wiring import OpenDevice, Stage1Bootloader, open_device, stage1_status
from suitkit.errors import DecodeError, FetchError, PolicyError, StorageError, SuitError
from suitkit.fileio import atomic_write
from suitkit.limits import Limits

__all__ = ["MODES", "PROTOCOLS", "REPORT_MEDIA_TYPE", "TRANSPORTS", "AgentOptions",
           "AgentResult", "Assigned", "TrackerError", "check_credential", "error_of",
           "inventory_digest", "inventory_of", "register", "run_agent", "run_once"]

MODES = ("poll", "push", "hybrid")
TRANSPORTS = ("sse", "longpoll", "mqtt", "coap")
PROTOCOLS = ("suitkit", "ddi")
"""How the agent learns of its assignment and reports its states: suitkit's JSON API, or the
hawkBit DDI API (``_DdiTracker``)."""

REPORT_MEDIA_TYPE = "application/suit-report+cbor"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ENVELOPE_DEADLINE = 60.0
"""Seconds the whole envelope download may take (slow-retrieval attack)."""
"""Every exchange with the tracker and the envelope download: bounded in time."""
_MAX_DETAIL = 1024


@dataclass(frozen=True, slots=True)
class AgentResult:
    """What one poll did.

    ``outcome``: ``up-to-date`` (nothing assigned), ``downloaded`` (a ``download`` action: the
    envelope is kept until an ``install``), ``restarting`` (a new agent is installed: the
    launcher boots it; ``device.selfupdate``), ``waiting`` (the manifest waits for events that do
    not hold yet: the next run tries again), ``succeeded``, ``failed`` (the update was
    refused or could not be fetched; the device runs what it ran), ``rolled-back`` (the new image
    did not start, or was found unhealthy and the tracker ordered it back, and was reverted),
    ``watching`` (a health window is open: ``device.health``), ``healthy`` (the window ended
    and the image was confirmed; ``unhealthy``: confirmed although a check failed, the tracker
    did not order it back) or ``error`` (the tracker could not be used; ``reason``).
    ``steps``: one line per step, in order.
    """

    outcome: str
    reason: str
    release: str | None = None
    steps: tuple[str, ...] = ()
    next_check: float | None = None
    """Seconds until the open health window wants the next check (``None``: none open)."""

    @property
    def ok(self) -> bool:
        return self.outcome in ("up-to-date", "downloaded", "waiting", "succeeded",
                                "watching", "healthy", "restarting")


@dataclass(frozen=True, slots=True)
class Assigned:
    """A release to act on: from ``GET .../update`` or a pushed notice (both untrusted)."""

    release: str
    envelope_url: str
    action: str = "install"
    nonce: bytes | None = None
    """The nonce the tracker issued with this update (report §4): it goes into the report."""

    @classmethod
    def of(cls, doc: Mapping[str, Any], where: str) -> Assigned:
        """Raises: TrackerError: ``doc`` is not ``{release, envelope_url[, action, nonce]}``."""
        release, url = doc.get("release"), doc.get("envelope_url")
        action = doc.get("action") or "install"
        nonce = doc.get("nonce")
        if nonce is not None:
            try:
                if not isinstance(nonce, str) or len(nonce) > 2 * _MAX_NONCE:
                    raise ValueError(nonce)
                nonce = bytes.fromhex(nonce)
            except ValueError:
                raise TrackerError(f"{where}: nonce must be at most {_MAX_NONCE} bytes in "
                                   "hex") from None
        if not isinstance(release, str) or not isinstance(url, str) or not release:
            raise TrackerError(f"{where}: the answer is not {{release, envelope_url}} strings")
        if action not in ("install", "download"):
            raise TrackerError(f"{where}: action must be install or download, got "
                               f"{str(action)[:20]!r}")
        if len(url) > 2048 or urlparse(url).scheme not in ("http", "https", "coap"):
            raise TrackerError(f"{where}: envelope_url must be an http(s) or coap URL")
        return cls(release[:128], url, str(action), nonce or None)


class TrackerError(Exception):
    """The tracker could not be reached or refused a call (one line)."""


class TrackerUnreachable(TrackerError):
    """The tracker could not be reached at all (refused, unknown name, timeout, TLS)."""


_MAX_NONCE = 64


def inventory_of(opened: OpenDevice, *, versions: bool = True) -> dict[str, Any]:
    """The inventory the tracker stores: identity and the verified running images, each with
    its ``version`` when known (``versions``); the device's capability report
    (``capabilities``: base64 of its CBOR, report §6) and its ECDH-ES public keys
    (``recipient_keys``: base64 COSE_Keys, for authors who encrypt for it)."""
    observation = opened.bootloader.observe()  # type: ignore[attr-defined]
    anchors = opened.config.trust_anchors()
    components = []
    for spec, check in zip(opened.config.components, observation.primary, strict=True):
        entry: dict[str, Any] = {"id": [p.hex() for p in spec.suit_id]}
        if check.info is not None and check.verdict.name == "GOOD":
            entry["sequence"] = check.info.sequence_number
            entry["digest"] = check.info.digest.hex()
            version = (running_version(opened.bootloader, spec.image, anchors, Limits(),
                                       opened.config.dependency_anchors())
                       if versions else None)
            if version is not None:
                entry["version"] = list(version)
        components.append(entry)
    components.append(anchors_entry(opened))
    stage1 = stage1_status(opened.bootloader)  # mcu with a stage 0: the stage-1 bootloader
    if stage1 is not None:
        loader: dict[str, Any] = {"id": [p.hex() for p in BOOTLOADER_ID]}
        running = stage1["running"]
        if isinstance(running, dict):
            loader.update(sequence=running["sequence-number"], digest=running["digest"])
        components.append(loader)
    hardware: dict[str, Any] = {"shape": opened.config.shape}
    if has_agent(opened):  # the code that runs now: which agent came up (docs/selfupdate.md)
        hardware[AGENT_VERSION_FACT] = f"suitkit {__version__}"[:_MAX_FACT]
    # The device's ECDH-ES public keys, for authors who encrypt for it (docs/device.md).
    try:
        recipients = opened.config.recipient_public_keys()
    except SuitError:
        recipients = []  # an unreadable key is the install's error to report, not this one's
    keys = []
    for cose_key in recipients[:_MAX_RECIPIENT_KEYS]:
        text = base64.b64encode(cose_key).decode()
        if len(text) > _MAX_RECIPIENT_KEY:  # a long kid: the tracker would refuse it all
            text = base64.b64encode(cbor.encode({k: v for k, v in cbor.decode(
                cose_key, path="recipient key").items() if k != 2})).decode()
        keys.append(text)
    inventory: dict[str, Any] = {
        "vendor_id": str(opened.config.vendor_id), "class_id": str(opened.config.class_id),
        "components": components, "hardware": hardware,
        "capabilities": base64.b64encode(encode_capability_report(
            capability_report(opened))).decode()}
    if keys:
        inventory["recipient_keys"] = keys
    return inventory


_MAX_RECIPIENT_KEYS = 8  # the tracker's bounds (tracker.model.MAX_RECIPIENT_KEYS)
_MAX_RECIPIENT_KEY = 1024


def anchors_entry(opened: OpenDevice) -> dict[str, Any]:
    """The inventory entry of the trust anchors (docs/keys.md): component ['suitkit',
    'anchors'], its ``sequence`` the anchor version, its ``digest`` the SHA-256 of the
    document (none for the anchors device init wrote, version 0)."""
    entry: dict[str, Any] = {"id": [p.hex() for p in ANCHORS_COMPONENT]}
    try:
        stored = opened.config.stored_anchors()
    except SuitError:
        return entry  # damaged: the install's error to report (no version claimed)
    entry["sequence"] = 0
    if stored is not None:
        entry["sequence"] = stored.document.version
        entry["digest"] = stored.document.digest().hex()
    return entry


_MAX_FACT = 256  # the tracker's limit on a hardware fact's text (docs/tracker.md)
AGENT_VERSION_FACT = "agent-version"
"""The inventory's hardware fact naming the agent code that runs (devices with an agent
component: ``device.selfupdate``)."""


def inventory_digest(inventory: Mapping[str, Any]) -> str:
    """The check-in's ``inventory_digest``: SHA-256 (hex) of the inventory as canonical JSON
    (sorted keys, no spaces, ASCII)."""
    text = json.dumps(inventory, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


_OLD_SERVER = (404, 405)
"""What a tracker without ``POST .../checkin`` answers it."""


class _Tracker:
    """The calls a device makes, each turned into ``TrackerError`` when it fails.

    ``checkin`` is the poll; against a tracker that predates it (404) it falls back to the
    pair ``PUT .../inventory`` + ``GET .../update`` (and ``GET .../{id}`` for the state), and
    keeps to those for the rest of the run."""

    def __init__(self, client: httpx.Client, device_id: str) -> None:
        self.client = client
        self.base = f"{DEVICE_API}/{device_id}"
        """The device API (``/device/v1/{id}``); the deprecated ``/api/v1/devices/{id}`` of
        a tracker that predates it (a 404 there, ``_call``) for the rest of the run."""
        self.legacy = f"/api/v1/devices/{device_id}"
        self.prefix_known = False
        self.versions = True
        """Send each component's ``version`` (update-management §4.4; the tracker keeps it
        since migration 0011_reports)."""
        self.old_server = False
        self.rollback: str | None = None
        """The release the last check-in told the device to roll back (health-gated
        rollouts), ``None`` when it said nothing of it."""

    def checkin(self, opened: OpenDevice, *, pending: bool = True
                ) -> tuple[Assigned | None, str | None]:
        """The pending release (``None``: nothing to do) and the device's update state as
        the tracker has them; the inventory goes along when the tracker asks for it.
        ``pending=False`` (a pushed notice says what to do): an old tracker is not asked
        ``GET .../update``."""
        if not self.old_server:
            inventory = inventory_of(opened, versions=self.versions)
            body: dict[str, Any] = {"inventory_digest": inventory_digest(inventory)}
            response = self._call("POST", "/checkin", (200, *_OLD_SERVER), json=body)
            if response.status_code in _OLD_SERVER:
                self.old_server = True
            else:
                doc = _object(response, "POST /checkin")
                if doc.get("send_inventory") is True:
                    body["inventory"] = inventory
                    doc = _object(self._call("POST", "/checkin", (200,), json=body),
                                  "POST /checkin")
                state = doc.get("state")
                order = doc.get("rollback")
                release = order.get("release") if isinstance(order, dict) else None
                self.rollback = release[:128] if isinstance(release, str) else None
                job = (None if doc.get("release") is None
                       else Assigned.of(doc, "POST /checkin"))
                return job, state if isinstance(state, str) else None
        self._call("PUT", "/inventory", (200,), json=inventory_of(opened, versions=self.versions))
        job = self.update() if pending else None
        return job, self.state() if job is not None else None

    def _call(self, method: str, path: str, expected: tuple[int, ...], *,
              base: str | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, (base or self.base) + path, **kwargs)
            if not self.prefix_known and response.status_code in _OLD_SERVER \
                    and self.base != self.legacy and base is None:
                # no device API under its own prefix (a tracker has every route of it or
                # none): a tracker older than it, whose routes under /api/v1/devices answer
                # the same calls, for the rest of the run
                self.base = self.legacy
                response = self.client.request(method, self.base + path, **kwargs)
            self.prefix_known = self.prefix_known or response.status_code < 300
        except httpx.HTTPError as e:
            raise TrackerUnreachable(f"{method} {path or '/'}: {network_reason(e)}") from None
        if response.status_code not in expected:
            raise TrackerError(f"{method} {path or '/'}: HTTP {response.status_code}: "
                               f"{error_of(response)}")
        return response

    def inventory(self, opened: OpenDevice) -> None:
        """Send the inventory (a check-in with it; ``PUT .../inventory`` on an old tracker).
        Components' versions are sent only where the tracker is known to take them
        (``versions``)."""
        inventory = inventory_of(opened, versions=self.versions)
        if not self.old_server:
            response = self._call("POST", "/checkin", (200, *_OLD_SERVER), json={
                "inventory_digest": inventory_digest(inventory), "inventory": inventory})
            if response.status_code not in _OLD_SERVER:
                return
            self.old_server = True
        self._call("PUT", "/inventory", (200,), json=inventory)

    def update(self) -> Assigned | None:
        response = self._call("GET", "/update", (200, 204))
        if response.status_code == 204:
            return None
        try:
            doc = response.json()
        except ValueError:
            raise TrackerError("GET /update: the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise TrackerError("GET /update: the answer is not a JSON object")
        return Assigned.of(doc, "GET /update")

    def state(self) -> str | None:
        """The update state the tracker has for the device (its record: in the operator API,
        ``GET /api/v1/devices/{id}``, which the device may read; the device API has none)."""
        response = self._call("GET", "", (200,), base=self.legacy)
        try:
            state = response.json().get("state")
        except (ValueError, AttributeError):
            raise TrackerError("GET /: the answer is not a device") from None
        return state if isinstance(state, str) else None

    def event(self, state: str, detail: str = "") -> None:
        self._call("POST", "/events", (201,), json={"state": state,
                                                    "detail": detail[:_MAX_DETAIL]})

    def report(self, raw: bytes, media_type: str = REPORT_MEDIA_TYPE) -> None:
        self._call("POST", "/reports", (201,), content=raw,
                   headers={"Content-Type": media_type})

    def health(self, body: Mapping[str, Any]) -> bool:
        """Send a health report; whether the tracker says to roll the release back."""
        doc = _object(self._call("POST", "/health", (200,), json=body), "POST /health")
        return doc.get("rollback") is True


_DDI_FEEDBACK = {
    "downloading": ("proceeding", "none"), "downloaded": ("downloaded", "none"),
    "installing": ("proceeding", "none"), "rebooting": ("proceeding", "none"),
    "succeeded": ("closed", "success"), "failed": ("closed", "failure"),
    "rolled-back": ("closed", "failure")}
"""A tracker state as DDI feedback (execution, finished): DDI has no installing or rebooting
step (the tracker adds them at ``closed``) and no rolled-back result (a failure whose detail
says so)."""


class _DdiTracker(_Tracker):
    """The same calls over hawkBit DDI (``--protocol ddi``, ``tracker.edges.ddi`` on the
    server; any hawkBit server's DDI API): the assignment from the base poll and its
    ``deploymentBase`` (the artifact named ``*.suit`` is the envelope: it is verified on the
    device like any other), the states as the action's feedback. The inventory, the state the
    tracker has and the SUIT report go to suitkit's JSON API with the same credential (DDI has
    no place for them): the tracker then knows the device checked the SUIT signatures."""

    def __init__(self, client: httpx.Client, device_id: str, credential: str,
                 tenant: str) -> None:
        super().__init__(client, device_id)
        self.ddi = f"/{tenant}/controller/v1/{device_id}"
        self.old_server = True  # the poll is DDI's; the inventory and state: PUT/GET of the API
        self.headers = {"Authorization": f"TargetToken {credential}"}
        self.action: str | None = None

    def _ddi(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, self.ddi + path, headers=self.headers,
                                           **kwargs)
        except httpx.HTTPError as e:
            raise TrackerUnreachable(f"DDI {method} {path or '/'}: {type(e).__name__}: {e}"
                                     ) from None
        if response.status_code != 200:
            raise TrackerError(f"DDI {method} {path or '/'}: HTTP {response.status_code}: "
                               f"{error_of(response)}")
        return response

    def _object(self, response: httpx.Response, where: str) -> Mapping[str, Any]:
        try:
            doc = response.json()
        except ValueError:
            raise TrackerError(f"{where}: the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise TrackerError(f"{where}: the answer is not a JSON object")
        return doc

    def update(self) -> Assigned | None:
        base = self._object(self._ddi("GET", ""), "DDI base poll")
        link = _member(base, "_links", "deploymentBase", "href")
        if link is None:
            self.action = None
            return None
        parts = urlparse(link)
        prefix = self.ddi + "/deploymentBase/"
        if not parts.path.startswith(prefix) or not parts.path[len(prefix):].isdigit():
            raise TrackerError(f"DDI base poll: deploymentBase {link[:100]!r} is not this "
                               "controller's deployment")
        where = "DDI deploymentBase"
        query = f"?{parts.query}" if parts.query else ""
        doc = self._object(self._ddi("GET", parts.path[len(self.ddi):] + query), where)
        deployment = doc.get("deployment")
        if not isinstance(deployment, dict) or not isinstance(deployment.get("chunks"), list):
            raise TrackerError(f"{where}: no deployment.chunks")
        self.action = parts.path[len(prefix):]
        for chunk in deployment["chunks"]:
            artifacts = chunk.get("artifacts") if isinstance(chunk, dict) else None
            for item in artifacts if isinstance(artifacts, list) else ():
                name = item.get("filename") if isinstance(item, dict) else None
                if not isinstance(name, str) or not name.endswith(".suit"):
                    continue
                url = (_member(item, "_links", "download", "href")
                       or _member(item, "_links", "download-http", "href"))
                metadata = {m.get("key"): m.get("value") for m in chunk.get("metadata") or ()
                            if isinstance(m, dict)}
                release = metadata.get("suit-release") or name.removesuffix(".suit")
                action = "download" if deployment.get("update") == "skip" else "install"
                return Assigned.of({"release": release, "envelope_url": url,
                                    "action": action, "nonce": metadata.get("suit-nonce")},
                                   where)
        raise TrackerError(f"{where}: no SUIT envelope among the artifacts (a file named "
                           "*.suit): this device installs SUIT releases only")

    def event(self, state: str, detail: str = "") -> None:
        if self.action is None:
            raise TrackerError(f"DDI: no action to report {state} for")
        execution, finished = _DDI_FEEDBACK[state]
        text = f"{state}: {detail}" if detail else state
        self._ddi("POST", f"/deploymentBase/{self.action}/feedback", json={
            "id": self.action, "status": {"execution": execution,
                                          "result": {"finished": finished},
                                          "details": [text[:_MAX_DETAIL]]}})


def _member(doc: Mapping[str, Any], *path: str) -> str | None:
    """The string at ``path`` in nested objects, or ``None``."""
    value: Any = doc
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def _object(response: httpx.Response, where: str) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        raise TrackerError(f"{where}: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise TrackerError(f"{where}: the answer is not a JSON object")
    return doc


def check_credential(folder: Path, credential: str) -> str:
    """The device id of ``credential`` (``<device-id>.<secret>``), if it may run the device in
    ``folder`` (its ``tracker-id`` is that id, or not set yet).

    Raises:
        PolicyError: the folder is registered as another device.
        DecodeError: the folder is not a device, or the credential is not ``<id>.<secret>``.
    """
    device_id, dot, secret = credential.strip().partition(".")
    if not dot or not device_id or not secret:
        raise DecodeError("credential", "expected <device-id>.<secret>")
    check_tracker_id(load_config(folder), device_id)
    return device_id


def register(folder: Path, server_url: str, admin_token: str, *, name: str | None = None,
             client: httpx.Client | None = None, tls: ssl.SSLContext | None = None,
             report_key: bool = True) -> str:
    """Enrol the device in ``folder`` with the tracker (provisioning, with an admin's token):
    ``POST /api/v1/devices`` with its vendor and class IDs (the identity the tracker then
    holds its inventories to) and, with ``report_key``, the public half of the key it signs
    its reports with (``DIR/report.key``, made now if the folder has none: report §8), the
    tracker's id written to the folder (``tracker-id``), then the first inventory with the
    new credential. Returns the credential ``<device-id>.<secret>``, which the tracker shows
    only this once.

    Raises:
        TrackerError: the tracker refused or could not be reached, or its answer is malformed.
        SuitError: the device folder cannot be opened or written, or it is registered already.
    """
    opened = open_device(folder)
    if opened.config.tracker_id is not None:
        raise PolicyError(f"{folder}: this device is already registered as tracker device "
                          f"{opened.config.tracker_id}; a device is registered once")
    label = name if name is not None else opened.config.directory.name
    body: dict[str, Any] = {"name": label[:128], "vendor_id": str(opened.config.vendor_id),
                            "class_id": str(opened.config.class_id)}
    if report_key:
        public = opened.config.ensure_report_key()
        body["report_key"] = crypto.public_key_to_pem(public).decode()
    own = client is None
    http = client or httpx.Client(base_url=server_url.rstrip("/"), timeout=TIMEOUT,
                                  verify=tls if tls is not None else True)
    try:
        try:
            response = http.post("/api/v1/devices", json=body,
                                 headers={"Authorization": f"Bearer {admin_token}"})
        except httpx.HTTPError as e:
            raise TrackerUnreachable(f"POST /api/v1/devices: {network_reason(e)}") from None
        if response.status_code != 201:
            raise TrackerError(f"POST /api/v1/devices: HTTP {response.status_code}: "
                               f"{error_of(response)}")
        try:
            doc = response.json()
            device_id, token = doc["id"], doc["token"]
        except (ValueError, KeyError, TypeError):
            raise TrackerError("POST /api/v1/devices: the answer is not a registration") from None
        if not isinstance(device_id, str) or not isinstance(token, str):
            raise TrackerError("POST /api/v1/devices: the answer is not a registration")
        opened.config = bind_tracker_id(folder, device_id)
        http.headers["Authorization"] = f"Bearer {token}"
        _Tracker(http, device_id).inventory(opened)
        return token
    finally:
        if own:
            http.close()
        else:
            http.headers.pop("Authorization", None)


def error_of(response: httpx.Response) -> str:
    """The one-line reason of a refused call: the server's ``{"error": ...}`` or the status text."""
    try:
        doc = response.json()
    except ValueError:
        return response.reason_phrase or "no reason given"
    message = doc.get("error") if isinstance(doc, dict) else None
    return str(message)[:300] if message else (response.reason_phrase or "no reason given")


def fetch_envelope(url: str, max_bytes: int, *, deadline: float = ENVELOPE_DEADLINE,
                   tls: ssl.SSLContext | None = None) -> bytes:
    """The envelope at ``url`` (http(s) with Range resume, or coap block-wise), at most
    ``max_bytes``, within ``deadline`` seconds for the whole download (a server that trickles
    bytes is cut off); no credential is sent to it.

    Raises:
        TrackerError: network error, HTTP status other than 200/206, too large or too slow.
    """
    fetcher: PayloadFetcher = (CoapFetcher(deadline=deadline)
                               if urlparse(url).scheme == "coap"
                               else HttpFetcher(deadline=deadline, tls=tls))
    try:
        return b"".join(fetcher.fetch(url, max_bytes=max_bytes))
    except FetchError as e:
        raise TrackerError(f"envelope {e}") from None


def _boot(opened: OpenDevice) -> tuple[bool, str]:
    """One boot and the Invocation Procedure: (the application started, what ran)."""
    result = opened.bootloader.boot()
    config = opened.config
    launcher: Launcher = (ProcessLauncher(config.app_command, config.directory / "app.pid")
                          if config.app_command else RecordingLauncher())
    invoked = invoke_running(config, opened.bootloader, launcher, extensions=opened.extensions)
    images = ", ".join(f"{i.name} #{i.sequence_number}" for i in result.images)
    failures = [r.reason for r in invoked.results if not r.succeeded]
    return invoked.succeeded, f"booted {images}" + (f" ({failures[0]})" if failures else "")


_RESUMABLE = ("downloading", "downloaded", "installing", "waiting", "rebooting")


def _saved_envelope(opened: OpenDevice, release: str) -> Path:
    """Where a ``download`` action keeps the envelope until ``install``, and a waiting install
    until it resumes."""
    name = "".join(c for c in release if c in "0123456789abcdefABCDEF")[:128] or "release"
    return opened.config.directory / "agent" / f"{name}.suit"


def run_once(folder: Path, server_url: str, credential: str, *, fetcher: PayloadFetcher,
             limits: Limits | None = None, say: Callable[[str], None] | None = None,
             client: httpx.Client | None = None,
             assigned: Mapping[str, Any] | None = None, protocol: str = "suitkit",
             tenant: str = "DEFAULT", tls: ssl.SSLContext | None = None) -> AgentResult:
    """One run against the tracker at ``server_url`` with ``credential``
    (``<device-id>.<secret>``); installs what is assigned (``assigned``: a pushed notice's
    document, used instead of ``GET .../update``). ``say`` receives each step as it happens.
    ``protocol``: ``suitkit`` (the JSON API) or ``ddi`` (hawkBit DDI, ``tenant``:
    ``_DdiTracker``). ``tls``: the device's TLS context (``device.tls.ClientTls``) for the
    tracker and the envelope (the payload ``fetcher`` has its own)."""
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
    try:
        check_tracker_id(opened.config, device_id)
    except PolicyError as e:
        return result("error", str(e))
    own = client is None
    http = client or httpx.Client(base_url=server_url.rstrip("/"), timeout=TIMEOUT,
                                  headers={"Authorization": f"Bearer {credential.strip()}"},
                                  verify=tls if tls is not None else True)
    tracker = (_DdiTracker(http, device_id, credential.strip(), tenant) if protocol == "ddi"
               else _Tracker(http, device_id))
    try:
        try:
            watch = load_watch(opened.config.directory)
        except SuitError as e:
            return result("error", str(e))
        try:
            job, state = tracker.checkin(opened, pending=assigned is None)
            step("checked in" if not tracker.old_server else "inventory sent")
            if opened.config.tracker_id is None:
                # the tracker took the credential: from now on the folder is this device
                opened.config = bind_tracker_id(opened.config.directory, device_id)
                step(f"device folder bound to tracker device {device_id}")
            if watch is not None:  # nothing new until the health window is over
                return _watch_step(opened, tracker, watch, reachable=True, step=step,
                                   result=result)
            if assigned is not None:
                job = (None if assigned.get("release") is None
                       else Assigned.of(assigned, "notice"))
                if job is not None and tracker.old_server:
                    state = tracker.state()
            trial_agent = agent_on_trial(opened)
            if trial_agent and (job is None or state not in ("installing", "rebooting")):
                # The confirm step of a self-update: this agent came up and checked in.
                opened.bootloader.confirm()
                step("this agent ran on trial and checked in: confirmed")
                tracker.inventory(opened)
                trial_agent = False
            if job is None:
                return result("up-to-date", "no update assigned")
        except TrackerError as e:
            if watch is not None:
                step(f"tracker: {e}")
                return _watch_step(opened, tracker, watch, reachable=False, step=step,
                                   result=result)
            return result("error", str(e))
        release = job.release
        url = urljoin(server_url.rstrip("/") + "/", job.envelope_url)
        step(f"release {release} assigned ({job.action}; {url})"
             + (" by the pushed notice" if assigned is not None else ""))
        if state not in (None, "notified", *_RESUMABLE):
            return result("up-to-date", f"the tracker has the device {state} and nothing "
                                        "pending for it (an old notice)", release)
        if state in _RESUMABLE:
            step(f"resuming: the tracker has the device {state}")
        if trial_agent and state == "installing":
            # stopped after marking the new agent pending, before telling the tracker
            tracker.event("rebooting")
            state = "rebooting"
        if state == "rebooting":
            return _install(opened, tracker, None, release=release, fetcher=fetcher,
                            step=step, result=result, job=job, state=state)
        saved = _saved_envelope(opened, release)
        for stale in saved.parent.glob("*.suit") if saved.parent.is_dir() else ():
            if stale != saved:  # kept for a release no longer assigned: never used again
                stale.unlink(missing_ok=True)
        try:
            if state == "downloaded" and job.action == "download":
                return result("downloaded", "already downloaded; waiting for install", release)
            envelope = (saved.read_bytes()
                        if state in ("downloaded", "installing", "waiting") and saved.is_file()
                        else None)
            if envelope is None:
                if state in (None, "notified"):
                    tracker.event("downloading", url)
                    step("downloading")
                try:
                    envelope = fetch_envelope(url, limits.max_envelope_bytes, tls=tls)
                except TrackerError as e:
                    tracker.event("failed", str(e))
                    return result("failed", str(e), release)
                if job.action == "download":
                    saved.parent.mkdir(exist_ok=True)
                    atomic_write(saved, envelope)
                if state in (None, "notified", "downloading"):
                    tracker.event("downloaded", f"{len(envelope)} bytes")
                step(f"downloaded {len(envelope)} bytes")
            if job.action == "download":
                return result("downloaded", "envelope kept until the install is ordered",
                              release)
            if state not in ("installing", "waiting"):  # waiting: the install is tried again
                tracker.event("installing")
            step("installing")
        except TrackerError as e:
            return result("error", str(e), release)
        outcome = _install(opened, tracker, envelope, release=release, fetcher=fetcher,
                           step=step, result=result, job=job, state=state)
        if outcome.outcome == "waiting":
            # the next run resumes the install from this copy (the tracker has it installing)
            saved.parent.mkdir(exist_ok=True)
            atomic_write(saved, envelope)
        else:
            saved.unlink(missing_ok=True)
        return outcome
    finally:
        if own:
            http.close()


def _install(opened: OpenDevice, tracker: _Tracker, envelope: bytes | None, *, release: str,
             fetcher: PayloadFetcher, step: Callable[[str], None],
             result: Callable[[str, str, str | None], AgentResult], job: Assigned,
             state: str | None) -> AgentResult:
    """Install, report, boot, confirm or revert; the tracker is told on a best-effort basis.
    ``envelope=None``: the install was done before an agent restart (``rebooting``).
    The report carries the nonce of ``job`` and the device's capability report, signed with
    the device's report key when it has one (report §8); ``state``: the tracker's state of
    the device (``waiting``: it knows the install waits)."""
    missed: list[str] = []

    def tell(what: Callable[[], None]) -> None:
        try:
            what()
        except TrackerError as e:
            missed.append(str(e))
            step(f"tracker: {e}")

    if envelope is None:
        return _resume_boot(opened, tracker, release=release, step=step, result=result)
    try:
        outcome = opened.consumer(fetcher).install(envelope, nonce=job.nonce)
    finally:
        opened.save()
    if outcome.waiting:
        # update-management §5.6: not a failure; the tracker has the device waiting (and
        # what for) and the report is sent once the update ends.
        if state != "waiting":
            tell(lambda: tracker.event("waiting", outcome.reason))
        step(outcome.reason)
        return result("waiting", outcome.reason, release)
    if outcome.report is not None:
        raw, media, line = _report_bytes(opened, outcome.report)
        tell(lambda: tracker.report(raw, media))
        step(f"report sent ({'ok' if outcome.report.succeeded else 'failure'}{line})")
    if not outcome.installed:
        tell(lambda: tracker.event("failed", outcome.reason))
        tell(lambda: tracker.inventory(opened))
        return result("failed", outcome.reason, release)
    step(f"installed: {outcome.reason}")
    tell(lambda: tracker.event("rebooting"))
    step("rebooting")
    if has_agent(opened):
        # The agent is a component: this agent does not boot the new set (nor its successor);
        # the launcher does, and keeps this one to come back to (device.selfupdate). Every
        # update goes this way, the agent's own or not: the agent always runs from the active
        # slot, never from a slot the next update will overwrite.
        clear_note(opened.config.directory)
        what = "a new agent" if AGENT_IMAGE in outcome.written else "the update"
        return result("restarting", f"{what} is installed; the launcher boots it on trial "
                      "(the agent confirms it at its first check-in)", release)
    return _reboot(opened, tracker, release=release, step=step, result=result, missed=missed,
                   success=f"running sequence number {outcome.sequence_number}",
                   report_ok=outcome.report.succeeded if outcome.report is not None else None,
                   records=len(outcome.report.records) if outcome.report is not None else 0)


def _report_bytes(opened: OpenDevice, report: Report) -> tuple[bytes, str, str]:
    """The report as sent: with the device's capability report (report §6), signed with its
    report key when it has one (report §8: COSE_Sign1 or COSE_Mac0 around it); its media type
    and a note for the step's line. A report key that does not load leaves it unsigned."""
    note = ""
    try:
        report = dataclasses.replace(report, capability_report=capability_report(opened))
    except SuitError as e:  # what it supports could not be read: the report goes without
        note = f"; no capability report: {e}"
    raw = encode_report(report)
    if report.nonce is None:
        # no nonce came with the update (a protocol without one, LwM2M): a signed report
        # without it is refused (it could be replayed), an unsigned one is taken by default
        return raw, REPORT_MEDIA_TYPE, note
    try:
        signer = opened.config.report_signer()
    except SuitError as e:
        return raw, REPORT_MEDIA_TYPE, f"{note}; unsigned: {e}"
    if signer is None:
        return raw, REPORT_MEDIA_TYPE, note
    return sign_report(raw, signer), SIGNED_REPORT_MEDIA_TYPE, f"{note}; signed"


def _reboot(opened: OpenDevice, tracker: _Tracker, *, release: str,
            step: Callable[[str], None],
            result: Callable[[str, str, str | None], AgentResult], missed: list[str],
            success: str, booted: bool = False, report_ok: bool | None = None,
            records: int = 0) -> AgentResult:
    """Boot (unless ``booted``), confirm or revert, tell the tracker (best effort). With a
    health configuration the started image stays on trial and a health window opens
    (``report_ok``, ``records``: the install's SUIT report, its first record)."""

    def tell(what: Callable[[], None]) -> None:
        try:
            what()
        except TrackerError as e:
            missed.append(str(e))
            step(f"tracker: {e}")

    watch: Watch | None = None
    try:
        started, line = (True, "running the new image") if booted else _boot(opened)
        step(line)
        if started:
            health = opened.config.health
            if health is None:
                opened.bootloader.confirm()
            else:  # on trial until its health window passed (device.health)
                watch = open_watch(opened.config.directory, release, health,
                                   report_ok=report_ok, records=records,
                                   sequence=_trial(opened)[1])
                success += f"; on trial for its health window of {health.window:g} s"
            final, reason = "succeeded", success
        else:
            _, line = _boot(opened)
            step(f"the new image did not start; {line}")
            final, reason = "rolled-back", "the new image did not start and was reverted"
    except SuitError as e:  # NoBootableImage among them
        final, reason = "failed", f"boot: {e}"
    finally:
        opened.save()
    step(final if final != "succeeded" else "confirmed" if watch is None else "watching")
    tell(lambda: tracker.event(final, reason))
    tell(lambda: tracker.inventory(opened))
    step("inventory sent")
    if watch is not None:
        opened_watch = watch
        tell(lambda: step("health window opened" + (
            "; the tracker orders a rollback" if tracker.health(opened_watch.report()) else "")))
    if missed:
        reason += f" (the tracker missed {len(missed)} message(s): {missed[0]})"
    done = result(final, reason, release)
    if watch is not None and opened.config.health is not None:
        return replace(done, next_check=min(opened.config.health.interval, watch.left()))
    return done


def _trial(opened: OpenDevice) -> tuple[bool, int | None]:
    """Whether the running images are on trial (booted, not confirmed), and the sequence
    number of the boot set's first image (``None``: none verifies)."""
    observation = opened.bootloader.observe()  # type: ignore[attr-defined]
    state = getattr(observation, "boot_state", None) or observation.state
    first = observation.primary[0] if observation.primary else None
    sequence = (first.info.sequence_number
                if first is not None and first.info is not None else None)
    # a new stage-1 bootloader on trial is confirmed with the device (docs/selfupdate.md)
    stage1 = isinstance(opened.bootloader, Stage1Bootloader) and \
        opened.bootloader.stage1_on_trial()
    return state.phase.name.lower() in ("trial", "tried") or stage1, sequence


def _restart(opened: OpenDevice) -> str:
    """Start the running images' application again (after a crash in the health window).

    Raises:
        SuitError: the Invocation Procedure failed (the image no longer verifies or does not
            start).
    """
    config = opened.config
    launcher: Launcher = (ProcessLauncher(config.app_command, config.directory / "app.pid")
                          if config.app_command else RecordingLauncher())
    invoked = invoke_running(config, opened.bootloader, launcher, extensions=opened.extensions)
    failures = [r.reason for r in invoked.results if not r.succeeded]
    if failures:
        raise StorageError(f"the application did not start again: {failures[0]}")
    return "; ".join(invoked.started) or "started"


def _watch_step(opened: OpenDevice, tracker: _Tracker, watch: Watch, *, reachable: bool,
                step: Callable[[str], None],
                result: Callable[[str, str, str | None], AgentResult]) -> AgentResult:
    """One step of the open health window (``device.health``): a rollback the tracker
    ordered, or a round of checks sent to the tracker; at the window's end the confirmation.
    ``reachable``: the check-in reached the tracker (else the checks run all the same and
    nothing is sent)."""
    folder = opened.config.directory
    config = opened.config.health or HealthConfig(window=max(watch.window, 1.0), interval=1.0)
    release = watch.release
    on_trial, sequence = _trial(opened)
    if not on_trial:
        # not on trial any more: a reboot inside the window reverted the unconfirmed update,
        # or someone confirmed it (suitkit device confirm)
        close_watch(folder)
        reverted = watch.sequence is not None and sequence != watch.sequence
        try:
            if reverted:
                reason = (f"the device rebooted inside the health window of release {release} "
                          "and the bootloader reverted it (it was not confirmed)")
                if reachable:
                    tracker.health(watch.report("rolled-back", detail=reason))
            else:
                reason = f"release {release} was confirmed inside its health window"
                if reachable:
                    tracker.health(watch.report("healthy" if watch.status == "watching"
                                                else watch.status, detail=reason))
            tracker.inventory(opened)
        except TrackerError as e:
            step(f"tracker: {e}")
        return result("rolled-back" if reverted else "healthy" if watch.status == "watching"
                      else "unhealthy", reason, release)
    ordered = reachable and tracker.rollback is not None \
        and tracker.rollback.lower() == release.lower()
    if ordered:
        step(f"the tracker orders release {release} rolled back")
    else:
        pid_file = folder / "app.pid" if opened.config.app_command else None
        watch = check_health(folder, watch, config, pid_file=pid_file,
                             restart=lambda: _restart(opened))
        last = watch.records[-1]["detail"] if watch.records else "no check configured"
        over = watch.over()
        status = "healthy" if over and watch.status == "watching" else watch.status
        step(f"health check {watch.checks}: {status} ({last})")
        if reachable and status != "healthy":  # healthy: said once it is confirmed
            try:
                ordered = tracker.health(watch.report(status))
            except TrackerError as e:
                step(f"tracker: {e}")
        if ordered:
            step(f"the tracker orders release {release} rolled back")
        elif not over:
            left = watch.left()
            done = result("watching", f"health window of release {release} open for "
                          f"{left:.0f} s more ({watch.status})", release)
            return replace(done, next_check=min(config.interval, max(left, 0.05)))
        else:
            try:
                opened.bootloader.confirm()
            except SuitError as e:
                step(f"confirm: {e}")
            finally:
                opened.save()
            close_watch(folder)
            try:
                if status == "healthy" and reachable:
                    tracker.health(watch.report(status))
                tracker.inventory(opened)
            except TrackerError as e:
                step(f"tracker: {e}")
            if status == "healthy":
                return result("healthy", f"release {release} stayed healthy for its window "
                              f"of {watch.window:g} s and is confirmed", release)
            return result("unhealthy", f"release {release} was found unhealthy in its "
                          "window and the tracker did not order it back; confirmed", release)
    # the tracker ordered it back: a boot without confirming reverts (the bootloader's revert
    # of an image on trial, as after one that did not start)
    try:
        _, line = _boot(opened)
        step(f"rolling back: {line}")
        final, reason = "rolled-back", (f"release {release} was found unhealthy in its health "
                                        "window; the tracker ordered it back and the previous "
                                        "image runs")
    except SuitError as e:  # NoBootableImage among them
        final, reason = "failed", f"rollback: boot: {e}"
    finally:
        opened.save()
    close_watch(folder)
    try:
        if final == "rolled-back":
            tracker.health(watch.report("rolled-back", detail=reason))
        tracker.inventory(opened)
    except TrackerError as e:
        step(f"tracker: {e}")
    return result(final, reason, release)


def _resume_boot(opened: OpenDevice, tracker: _Tracker, *, release: str,
                 step: Callable[[str], None],
                 result: Callable[[str, str, str | None], AgentResult]) -> AgentResult:
    """The agent stopped after ``rebooting`` was reported: boot what is pending, or confirm
    the new image the device already runs on trial."""
    bootloader = opened.bootloader
    if bootloader.pending_update():
        step("rebooting (the installed update is still pending)")
        return _reboot(opened, tracker, release=release, step=step, result=result, missed=[],
                       success="the pending update booted")
    observation = bootloader.observe()  # type: ignore[attr-defined]
    state = getattr(observation, "boot_state", None) or observation.state
    if state.phase.name.lower() in ("trial", "tried"):
        success = ("the agent came up on the new set and checked in" if has_agent(opened)
                   else "the new image runs on trial")
        return _reboot(opened, tracker, release=release, step=step, result=result, missed=[],
                       success=success, booted=True)
    if has_agent(opened):
        final, reason = _after_handover(opened, release)
        if final is not None:
            try:
                tracker.event(final, reason)
                tracker.inventory(opened)
            except TrackerError as e:
                step(f"tracker: {e}")
                return result("error", str(e), release)
            clear_note(opened.config.directory)
            return result(final, reason, release)
    reason = "the agent restarted during the reboot and the device has no update on trial"
    try:
        tracker.event("failed", reason)
        tracker.inventory(opened)
    except TrackerError as e:
        step(f"tracker: {e}")
    return result("failed", reason, release)


def _after_handover(opened: OpenDevice, release: str) -> tuple[str | None, str]:
    """After a self-update's handover, the outcome the tracker has not heard: ``rolled-back``
    when the launcher reverted the new agent (with its reason), ``succeeded`` when the release
    runs confirmed (the new agent was stopped between its confirm and its report)."""
    note = read_note(opened.config.directory)
    phase = slot_phase(opened)
    if note is not None and phase == "reverted":
        return "rolled-back", f"{note}; the launcher reverted to the previous agent"
    for spec in opened.config.components:
        try:
            record, _ = opened.bootloader.running(spec.image)
            _, envelope = split_slot_record(record, limits=Limits())
            digest = verify_envelope(envelope, opened.config.trust_anchors()).digest
        except SuitError:
            continue
        if digest.value.hex() == release and phase == "confirmed":
            return "succeeded", "the new agent runs confirmed"
    if note is not None:
        return "rolled-back", f"{note}; the launcher reverted to the previous agent"
    if phase == "reverted":
        return "rolled-back", ("the device restarted while the new agent was on trial, before "
                               "it checked in; the previous agent runs")
    return None, ""


# ============================================================================ the agent loop


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """How ``run_agent`` learns of updates and when it stops.

    ``mode``: ``poll`` (``GET .../update`` every ``interval`` s), ``push`` (act on each notice's
    document) or ``hybrid`` (a notice triggers ``GET .../update``). In push and hybrid modes the
    agent also polls every ``interval`` s, in case a notice was lost. ``transport`` (push,
    hybrid): ``sse``, ``longpoll``, ``mqtt`` (``mqtt=(host, port)``) or ``coap``
    (``coap="coap://host:port"``). ``max_runs``: stop after that many runs; ``duration``: after
    that many seconds. ``backoff``/``max_backoff``: the bounds of the jittered wait after a
    failure to reach the tracker or the notice source. ``protocol``: ``suitkit`` or ``ddi``
    (hawkBit DDI under ``tenant``; poll mode only).
    """

    mode: str = "poll"
    transport: str = "sse"
    interval: float = 60.0
    max_runs: int | None = None
    duration: float | None = None
    mqtt: tuple[str, int] | None = None
    coap: str | None = None
    wait: float = 30.0
    backoff: float = 0.5
    max_backoff: float = 30.0
    protocol: str = "suitkit"
    tenant: str = "DEFAULT"

    def check(self) -> None:
        """Raises: ValueError: an inconsistent option (one line)."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got "
                             f"{self.protocol!r}")
        if self.protocol == "ddi" and self.mode != "poll":
            raise ValueError("the ddi protocol polls (hawkBit DDI has no notices): use the "
                             "poll mode")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got "
                             f"{self.transport!r}")
        if self.mode != "poll" and self.transport == "mqtt" and self.mqtt is None:
            raise ValueError("the mqtt transport needs the broker (--mqtt HOST:PORT)")
        if self.mode != "poll" and self.transport == "coap" and self.coap is None:
            raise ValueError("the coap transport needs the CoAP server (--coap coap://HOST:PORT)")
        if self.interval < 0 or self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ValueError("interval must be >= 0 and 0 < backoff <= max backoff")
        if (self.max_runs is not None and self.max_runs < 1) or (
                self.duration is not None and self.duration <= 0):
            raise ValueError("max runs must be >= 1 and duration > 0")


def _source(options: AgentOptions, server_url: str, credential: str, device_id: str,
            say: Callable[[str], None], *, tls: ssl.SSLContext | None = None) -> NoticeSource:
    common: dict[str, Any] = {"backoff": options.backoff, "max_backoff": options.max_backoff,
                              "on_state": say}
    if options.transport == "sse":
        return SseSource(server_url, credential, device_id, tls=tls, **common)
    if options.transport == "longpoll":
        return LongPollSource(server_url, credential, device_id, wait=options.wait, tls=tls,
                              **common)
    if options.transport == "mqtt":
        assert options.mqtt is not None
        return MqttSource(options.mqtt[0], options.mqtt[1], device_id, **common)
    assert options.coap is not None
    return CoapSource(options.coap, device_id, **common)


def run_agent(folder: Path, server_url: str, credential: str, *, fetcher: PayloadFetcher,
              options: AgentOptions | None = None, limits: Limits | None = None,
              say: Callable[[str], None] | None = None,
              until: Callable[[AgentResult], bool] | None = None,
              stop: threading.Event | None = None,
              tls: ssl.SSLContext | None = None) -> AgentResult | None:
    """Run until ``options.max_runs`` runs, ``options.duration`` seconds, ``until(result)`` is
    true or ``stop`` is set; the last run's result (``None`` if none ran). ``tls``: the
    device's TLS context for the tracker, the envelope and the HTTP notices.

    Raises:
        ValueError: inconsistent options.
    """
    options = options or AgentOptions()
    options.check()
    stop = stop or threading.Event()
    credential = credential.strip()
    device_id = credential.partition(".")[0]
    try:  # before any notice source listens in that device's name
        check_credential(folder, credential)
    except SuitError as e:
        if say is not None:
            say(f"error: {e}")
        return AgentResult("error", str(e))
    ends = time.monotonic() + options.duration if options.duration is not None else None

    def tell(line: str) -> None:
        if say is not None:
            say(line)

    def left() -> float:
        return max(0.0, ends - time.monotonic()) if ends is not None else float("inf")

    source = (None if options.mode == "poll"
              else _source(options, server_url, credential, device_id, tell, tls=tls))
    last: AgentResult | None = None
    runs = failures = 0
    seen = -1
    todo: Mapping[str, Any] | None = None  # a pushed document still to act on
    due = 0.0  # when the next poll (or retry) is due
    try:
        if source is not None:
            source.start()
        while not stop.is_set() and left() > 0:
            now = time.monotonic()
            if source is not None and now < due:
                notice = source.get(min(due - now, left(), 1.0))
                if notice is not None and int(notice["serial"]) != seen:
                    seen = int(notice["serial"])
                    tell(f"notice {seen} ({source.name}): release {notice.get('release')}")
                    if notice.get("release") is not None:  # a withdrawal needs no run
                        try:
                            Assigned.of(notice, "notice")
                        except TrackerError as e:
                            tell(f"ignored: {e}")
                            continue
                        todo = notice if options.mode == "push" else {}
                        due = time.monotonic() if failures == 0 else due
                continue
            if now < due:
                stop.wait(min(due - now, left()))
                continue
            assigned = todo if todo else None
            last = run_once(folder, server_url, credential, fetcher=fetcher, limits=limits,
                            say=say, assigned=assigned, protocol=options.protocol,
                            tenant=options.tenant, tls=tls)
            runs += 1
            if last.outcome == "error":
                failures += 1
                delay = backoff_delay(failures, options.backoff, options.max_backoff)
                tell(f"retrying in {delay:.1f} s")
            else:
                failures, todo = 0, None
                delay = options.interval
            if last.next_check is not None:  # a health window is open: check it in time
                delay = min(delay, last.next_check)
            due = time.monotonic() + delay
            if (options.max_runs is not None and runs >= options.max_runs) or (
                    until is not None and until(last)) or last.outcome == "restarting":
                break
    finally:
        if source is not None:
            source.close()
    return last
