"""The device's LwM2M client (OMA LwM2M 1.1 Core, on aiocoap): ``suitkit device run --protocol
lwm2m``. The server-initiated mode of RFC 9019 §3 ("pushing a manifest and firmware image to
the Package Resource of the LwM2M Firmware Update Object is a server-initiated update").

What it implements:

- the registration interface (Core §6.2): ``POST /rd?ep=<tracker device id>&lt=..&lwm2m=1.1
  &b=U`` with the links ``</3/0>,</5/0>``, from the socket that also serves the objects (the
  server reaches the device at the address it registered from); registration updates at half
  the lifetime (``POST /rd/<location>``; a 4.04 registers again); de-registration on exit
  (``DELETE``). A server that cannot be reached or answers garbage is tried again after a
  bounded, jittered backoff.
- Object 3 (Device): 3/0/0 manufacturer (the folder's vendor ID), 3/0/1 model number (class
  ID), 3/0/2 serial number (device ID), 3/0/3 firmware version (per component, the running
  image's version, else ``#<sequence number>``), from the device folder.
- Object 5 (Firmware Update, Core Appendix E.6): 5/0/0 Package (write: the SUIT envelope,
  block-wise, Block1 assembled here with a bound of ``max_package`` bytes: 4.13 and Update
  Result 2 beyond it), 5/0/1 Package URI (write: downloaded over http(s) or coap by the agent's
  fetchers, bounded in size and time), 5/0/2 Update (execute), 5/0/3 State and 5/0/5 Update
  Result (observable), 5/0/6-7 package name and version, 5/0/8 protocols (coap, http, https),
  5/0/9 delivery method (pull, push or both). Writing an empty Package or Package URI resets
  the object (State Idle, Update Result 0).
- A downloaded package is checked at once (Appendix E.6: the integrity check ends the
  download): the envelope is decoded and its signatures verified against the folder's trust
  anchors; only then is State Downloaded. Update runs the agent's install (the consumer
  verifies the envelope again before it writes anything, then the boot, confirm or revert of
  ``device.agent``); the outcome is the Update Result (``RESULT_OF_REASON``), the full SUIT
  report goes to the tracker's JSON API with the device credential (best effort: LwM2M has no
  place for it), and so does the inventory.

Only requests from the address the client registered from are served (4.03 otherwise): with
NoSec this is no authentication (an address is easy to forge) but keeps strays out; the
device trusts nothing but the envelope's signatures anyway.

Update Result from the outcome (``result_code``): 1 the new image booted and was confirmed;
2 the package is over ``max_package`` bytes (push or pull); 4 the download failed (network,
server error); 5 the envelope's signatures or digests do not verify (SUIT reasons
``unauthorised``, ``condition-failed``); 6 it is no SUIT envelope this device can process
(``cbor-parse``, ``cose-unsupported``, ``alg-unsupported``, ``*-unsupported``); 7 the URI is
malformed or the server answered 4.xx/4xx; 8 any other failure (refused by policy, such as a
rollback, ``operation-failed``, rolled back after the boot); 9 the URI's scheme is not coap,
http or https.

Deliberately not here: TLV/SenML/CBOR content formats (plain text, 0 and 1541, is enough for
single resources), bootstrap, queue mode, DTLS and OSCORE (docs/devices.md says why), more
than one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

# aiocoap ships no type information (no py.typed): the imports below are the untyped seam.
import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
import httpx
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]
from aiocoap.optiontypes import BlockOption  # type: ignore[import-untyped]

from suitkit.core import codec
from suitkit.core.numbers import ReportReason
from suitkit.core.report import decode_report
from suitkit.core.verify import verify_decoded

# The agent's install, boot, confirm or revert and its tracker calls: one machinery for every
# protocol (the DDI client subclasses ``_Tracker`` the same way).
from suitkit.device.agent import (
    TIMEOUT,
    AgentResult,
    TrackerError,
    _install,
    _Tracker,
    inventory_of,
)
from suitkit.device.consumer import PayloadFetcher
from suitkit.device.fetch import CoapFetcher, HttpFetcher
from suitkit.device.listen import backoff_delay
from suitkit.device.wiring import OpenDevice, open_device
from suitkit.errors import AuthenticationError, DecodeError, FetchError, SuitError
from suitkit.fileio import atomic_write
from suitkit.limits import Limits

__all__ = ["DELIVERY", "RESULT_OF_REASON", "Lwm2mOptions", "result_code", "run_lwm2m"]

_log = logging.getLogger(__name__)

DELIVERY = {"pull": 0, "push": 1, "both": 2}
"""``--lwm2m-delivery`` -> Firmware Update Delivery Method (5/0/9)."""

IDLE, DOWNLOADING, DOWNLOADED, UPDATING = 0, 1, 2, 3
"""Object 5 State (5/0/3)."""

SUCCESS, NO_SPACE, CONNECTION_LOST, INTEGRITY, UNSUPPORTED_TYPE, INVALID_URI, FAILED, \
    UNSUPPORTED_PROTOCOL = 1, 2, 4, 5, 6, 7, 8, 9
"""Object 5 Update Result (5/0/5) values this client sets."""

RESULT_OF_REASON: Mapping[int, int] = {
    ReportReason.CBOR_PARSE: UNSUPPORTED_TYPE,
    ReportReason.COSE_UNSUPPORTED: UNSUPPORTED_TYPE,
    ReportReason.ALG_UNSUPPORTED: UNSUPPORTED_TYPE,
    ReportReason.UNAUTHORISED: INTEGRITY,
    ReportReason.COMMAND_UNSUPPORTED: UNSUPPORTED_TYPE,
    ReportReason.COMPONENT_UNSUPPORTED: UNSUPPORTED_TYPE,
    ReportReason.COMPONENT_UNAUTHORISED: FAILED,
    ReportReason.PARAMETER_UNSUPPORTED: UNSUPPORTED_TYPE,
    ReportReason.SEVERING_UNSUPPORTED: UNSUPPORTED_TYPE,
    ReportReason.CONDITION_FAILED: INTEGRITY,
    ReportReason.OPERATION_FAILED: FAILED,
    ReportReason.INVOKE_PENDING: FAILED,
}
"""A failed SUIT report's result reason (draft-ietf-suit-report §4) -> Update Result."""

_TEXT, _LWM2M_TEXT, _OCTETS = 0, 1541, 42
_SCHEMES = ("coap", "http", "https")
_MAX_URI = 2048
_MAX_LOCATION = 64
_MAX_OBSERVERS = 8
_PACKAGE = "lwm2m-package.suit"
_DEREGISTER_WAIT = 5.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Lwm2mOptions:
    """The LwM2M client's settings. ``server``: ``coap://HOST:PORT`` of the LwM2M server;
    ``lifetime``: seconds of a registration (updated at half of it); ``delivery``: ``pull``,
    ``push`` or ``both`` (5/0/9); ``bind``: the local address the client serves its objects on
    (port chosen by the system); ``max_package``: the largest envelope taken, pushed or
    pulled; ``duration``: stop after that many seconds."""

    server: str
    lifetime: int = 300
    delivery: str = "both"
    bind: str = "127.0.0.1"
    max_package: int = 1024 * 1024
    request_timeout: float = 20.0
    download_deadline: float = 60.0
    backoff: float = 0.5
    max_backoff: float = 30.0
    duration: float | None = None

    def check(self) -> None:
        """Raises: ValueError: an inconsistent option (one line)."""
        parts = urlparse(self.server)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "coap" or not parts.hostname or port is None or parts.path not in (
                "", "/"):
            raise ValueError(f"the LwM2M server must be coap://HOST:PORT, got "
                             f"{self.server[:80]!r}")
        if not 1 <= self.lifetime <= 7 * 24 * 3600:
            raise ValueError(f"the LwM2M lifetime must be 1 to 604800 seconds, got "
                             f"{self.lifetime}")
        if self.delivery not in DELIVERY:
            raise ValueError(f"the LwM2M delivery must be one of {', '.join(DELIVERY)}, got "
                             f"{self.delivery!r}")
        if self.max_package < 1 or self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ValueError("max package must be >= 1 and 0 < backoff <= max backoff")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be > 0")


def result_code(outcome: AgentResult, report: bytes | None) -> int:
    """The Update Result of an install's outcome; ``report``: the SUIT report it sent."""
    if outcome.outcome == "succeeded":
        return SUCCESS
    if report is not None:
        with contextlib.suppress(SuitError):
            decoded = decode_report(report)
            if decoded.result is not True:
                return RESULT_OF_REASON.get(decoded.result.reason, FAILED)
    return FAILED


def _verify_result(error: SuitError) -> int:
    """The Update Result of an envelope refused at the end of its download."""
    if isinstance(error, AuthenticationError):
        return INTEGRITY
    if isinstance(error, DecodeError):
        return UNSUPPORTED_TYPE
    return FAILED


def _fetch_result(error: FetchError) -> int:
    text = str(error)
    if "more than the" in text:
        return NO_SPACE
    if ": HTTP 4" in text or ": CoAP 4." in text:
        return INVALID_URI
    return CONNECTION_LOST


class _Sink(_Tracker):
    """The agent's tracker calls during an LwM2M install: states go to Object 5 (the LwM2M
    server maps them), the SUIT report and the inventory to the tracker's JSON API when it is
    known (``client``), best effort."""

    def __init__(self, client: httpx.Client | None, device_id: str) -> None:
        super().__init__(client if client is not None else httpx.Client(), device_id)
        self.reachable = client is not None
        self.report_sent: bytes | None = None
        self.events: list[tuple[str, str]] = []

    def event(self, state: str, detail: str = "") -> None:
        self.events.append((state, detail))

    def report(self, raw: bytes) -> None:
        self.report_sent = raw
        if self.reachable:
            super().report(raw)

    def inventory(self, opened: OpenDevice, waiting: str | None = None) -> None:
        if self.reachable:
            super().inventory(opened, waiting)


class _Value(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    """A readable (and observable) resource of plain text."""

    def __init__(self, client: _Client, value: object) -> None:
        super().__init__()
        self.client, self.value = client, value

    def set(self, value: object) -> None:
        if value != self.value:
            self.value = value
            self.updated_state()

    async def render_to_pipe(self, pipe: Any) -> None:
        await super().render_to_pipe(_NumberedFromOne(pipe))

    async def add_observation(self, request: Any, serverobservation: Any) -> None:
        if len(self._observations) < _MAX_OBSERVERS and self.client.allowed(request):
            await super().add_observation(request, serverobservation)

    async def render(self, request: Any) -> Any:
        refused = self.client.refuse(request)
        if refused is not None:
            return refused
        if request.code != Code.GET:
            return _answer(Code.METHOD_NOT_ALLOWED, "read only")
        return aiocoap.Message(code=Code.CONTENT, payload=str(self.value).encode(),
                               content_format=_TEXT)


class _NumberedFromOne:
    """A response pipe whose notifications are numbered from 1 and sent NON.

    Numbered from 1: aiocoap numbers an observation's first response 0 (RFC 7641 §4.4 allows
    it), and node-coap (lwm2m-node-lib's stack) keeps only notifications numbered above the
    last one it saw, starting from 0: it dropped the first one and never finished its
    observe. NON (RFC 7641 §4.5 allows it): lwm2m-node-lib's server sends its requests
    through its own CoAP proxy, which relays responses but not the ACK of a CON
    notification; aiocoap then retransmits it for 93 s, and holds every later CON message to
    that server behind it, the registration update too (the registration expired). A lost NON
    notification costs little: the server reads State again while an update is under way."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def add_response(self, response: Any, is_last: bool = False) -> None:
        if response.opt.observe is not None:
            response.opt.observe = (response.opt.observe + 1) % (1 << 24)
            if response.opt.observe > 1:  # a notification (the first is the ACK's)
                response.mtype = aiocoap.NON
        self._pipe.add_response(response, is_last=is_last)


class _Written(aiocoap.resource.Resource):  # type: ignore[misc]
    """5/0/0, 5/0/1 and 5/0/2: writes and the execute, handed to the client."""

    def __init__(self, client: _Client, resource: int) -> None:
        super().__init__()
        self.client, self.resource = client, resource

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        return False  # 5/0/0 assembles its Block1 itself, with a bound

    async def render(self, request: Any) -> Any:
        refused = self.client.refuse(request)
        if refused is not None:
            return refused
        return await self.client.written(self.resource, request)


def _answer(code: Any, text: str = "") -> Any:
    return aiocoap.Message(code=code, payload=text.encode()[:200], content_format=_TEXT)


class _Client:
    """One LwM2M client over a device folder, on the running event loop (``run``)."""

    def __init__(self, folder: Path, device_id: str, options: Lwm2mOptions, *,
                 fetcher: PayloadFetcher, tracker: httpx.Client | None, limits: Limits,
                 say: Callable[[str], None],
                 on_result: Callable[[AgentResult], None] | None = None) -> None:
        self.folder, self.device_id, self.options = folder, device_id, options
        self.on_result = on_result
        self.fetcher, self.tracker, self.limits, self.say = fetcher, tracker, limits, say
        self.state = _Value(self, IDLE)
        self.result = _Value(self, 0)
        self.name, self.version = _Value(self, ""), _Value(self, "")
        self.identity = [_Value(self, "") for _ in range(4)]
        self.uri = ""
        self.package: bytes | None = None
        self.assembly: tuple[str, bytearray, int] | None = None  # remote, bytes, block size
        self.servers: set[str] = set()  # the server's address (host:port) as requests show it
        self.context: Any = None
        self.location: tuple[str, ...] | None = None
        self.work: asyncio.Task[Any] | None = None
        self.generation = 0
        self.last: AgentResult | None = None
        self.updates = 0

    # ---- the objects

    def site(self) -> Any:
        site = aiocoap.resource.Site()
        for i, value in enumerate(self.identity):
            site.add_resource(("3", "0", str(i)), value)
        for resource in (0, 1, 2):
            site.add_resource(("5", "0", str(resource)), _Written(self, resource))
        for resource, value in ((3, self.state), (5, self.result), (6, self.name),
                                (7, self.version), (8, _Value(self, "0,1,2")),
                                (9, _Value(self, DELIVERY[self.options.delivery]))):
            site.add_resource(("5", "0", str(resource)), value)
        return site

    def allowed(self, request: Any) -> bool:
        return str(request.remote.hostinfo) in self.servers

    def refuse(self, request: Any) -> Any:
        if self.allowed(request):
            return None
        return _answer(Code.FORBIDDEN, "expected a request from the LwM2M server this client "
                                       "registered with")

    def read_identity(self) -> None:
        """Object 3 from the device folder (after each install: the firmware version)."""
        try:
            opened = open_device(self.folder)
        except SuitError as e:
            self.say(f"Object 3: cannot open the device: {e}")
            return
        config = opened.config
        versions = []
        for component in inventory_of(opened)["components"]:
            if "version" in component:
                versions.append(".".join(str(v) for v in component["version"]))
            elif "sequence" in component:
                versions.append(f"#{component['sequence']}")
            else:
                versions.append("none")
        for value, text in zip(self.identity, (str(config.vendor_id), str(config.class_id),
                                               str(config.device_id), ",".join(versions)),
                               strict=True):
            value.set(text)

    def _set(self, state: int, result: int | None = None) -> None:
        """State and Update Result, the result first (the server reads a result with the
        state it ends)."""
        if result is not None:
            self.result.set(result)
        self.state.set(state)

    def _reset(self, result: int = 0) -> None:
        self.generation += 1  # a download or check still running for the old package is void
        if self.work is not None and not self.work.done():
            self.work.cancel()
        self.package, self.uri, self.assembly = None, "", None
        self.name.set("")
        self.version.set("")
        (self.folder / "agent" / _PACKAGE).unlink(missing_ok=True)
        self._set(IDLE, result)

    async def written(self, resource: int, request: Any) -> Any:
        if self.state.value == UPDATING:
            return _answer(Code.BAD_REQUEST, "an update is being installed")
        if resource == 2:
            if request.code != Code.POST:
                return _answer(Code.METHOD_NOT_ALLOWED, "5/0/2 is executed (POST)")
            if self.state.value != DOWNLOADED or self.package is None:
                return _answer(Code.METHOD_NOT_ALLOWED, "Update needs State Downloaded (2)")
            self._set(UPDATING)
            self.work = asyncio.get_running_loop().create_task(self._update(self.package))
            return aiocoap.Message(code=Code.CHANGED)
        if request.code != Code.PUT:
            return _answer(Code.METHOD_NOT_ALLOWED, f"5/0/{resource} is written (PUT)")
        if resource == 1:
            return self._package_uri(request)
        return await self._package_block(request)

    def _package_uri(self, request: Any) -> Any:
        if request.opt.content_format not in (None, _TEXT, _LWM2M_TEXT):
            return _answer(Code.UNSUPPORTED_CONTENT_FORMAT, "5/0/1: expected plain text")
        if request.opt.block1 is not None or len(request.payload) > _MAX_URI:
            return _answer(Code.REQUEST_ENTITY_TOO_LARGE,
                           f"5/0/1: a URI of at most {_MAX_URI} bytes")
        try:
            uri = bytes(request.payload).decode("utf-8").strip()
        except UnicodeDecodeError:
            return _answer(Code.BAD_REQUEST, "5/0/1: expected a URI in UTF-8")
        if not uri:
            self.say("Package URI emptied: Object 5 reset")
            self._reset()
            return aiocoap.Message(code=Code.CHANGED)
        if uri == self.uri and self.state.value in (DOWNLOADING, DOWNLOADED):
            return aiocoap.Message(code=Code.CHANGED)  # the same URI again: nothing new
        self._reset()
        self.uri = uri
        parts = urlparse(uri)
        if not uri.isprintable() or not parts.scheme or not parts.netloc:
            self.say(f"Package URI {uri[:80]!r}: not a URI")
            self._set(IDLE, INVALID_URI)
        elif parts.scheme not in _SCHEMES:
            self.say(f"Package URI {uri[:80]!r}: unsupported scheme {parts.scheme[:16]!r}")
            self._set(IDLE, UNSUPPORTED_PROTOCOL)
        else:
            self._set(DOWNLOADING, 0)
            self.say(f"downloading {uri[:200]}")
            self.work = asyncio.get_running_loop().create_task(self._download(uri))
        return aiocoap.Message(code=Code.CHANGED)

    async def _package_block(self, request: Any) -> Any:
        """5/0/0: the envelope itself, Block1 (RFC 7959 §2.5) assembled here; at most
        ``max_package`` bytes."""
        if request.opt.content_format not in (None, _OCTETS):
            return _answer(Code.UNSUPPORTED_CONTENT_FORMAT, "5/0/0: expected "
                                                            "application/octet-stream (42)")
        block = request.opt.block1
        payload = bytes(request.payload)
        limit = self.options.max_package
        remote = request.remote.hostinfo
        if block is None:
            if not payload:
                self.say("Package emptied: Object 5 reset")
                self._reset()
                return aiocoap.Message(code=Code.CHANGED)
            self._reset()
            data = bytearray()
            offset, more, size = 0, False, len(payload)
        else:
            size = block.size
            offset = block.start
            if block.block_number == 0:
                self._reset()
                self.assembly = (remote, bytearray(), size)
                self._set(DOWNLOADING, 0)
                self.say("receiving the package (5/0/0, block-wise)")
            if (self.assembly is None or self.assembly[0] != remote
                    or offset != len(self.assembly[1])):
                return _answer(Code.REQUEST_ENTITY_INCOMPLETE,
                               f"5/0/0: expected block at byte "
                               f"{len(self.assembly[1]) if self.assembly else 0}, got byte "
                               f"{offset}")
            data, more = self.assembly[1], bool(block.more)
            if more and len(payload) != size:
                return _answer(Code.BAD_REQUEST, f"5/0/0: block {block.block_number} has "
                                                 f"{len(payload)} bytes, not {size}")
        if offset + len(payload) > limit:
            self.say(f"the package is over {limit} bytes: refused")
            self._reset(NO_SPACE)
            answer = _answer(Code.REQUEST_ENTITY_TOO_LARGE,
                             f"5/0/0: at most {limit} bytes")
            answer.opt.size1 = limit
            return answer
        data += payload
        if more:
            answer = aiocoap.Message(code=Code.CONTINUE)
            answer.opt.block1 = BlockOption.BlockwiseTuple(block.block_number, True,
                                                          block.size_exponent)
            return answer
        self.assembly = None
        self._set(DOWNLOADING, 0)
        await self._downloaded(bytes(data))
        answer = aiocoap.Message(code=Code.CHANGED)
        if block is not None:
            answer.opt.block1 = BlockOption.BlockwiseTuple(block.block_number, False,
                                                          block.size_exponent)
        return answer

    async def _download(self, uri: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.options.download_deadline
        fetcher: PayloadFetcher = (CoapFetcher(deadline=deadline)
                                   if urlparse(uri).scheme == "coap"
                                   else HttpFetcher(deadline=deadline))
        try:
            data = await loop.run_in_executor(None, lambda: b"".join(
                fetcher.fetch(uri, max_bytes=self.options.max_package)))
        except FetchError as e:
            if self.uri == uri:
                self.say(f"download failed: {e}")
                self._set(IDLE, _fetch_result(e))
            return
        if self.uri == uri:
            await self._downloaded(data)

    async def _downloaded(self, data: bytes) -> None:
        """The integrity check at the end of a download (Appendix E.6): the envelope's
        signatures against the device's trust anchors; State Downloaded only then."""
        loop = asyncio.get_running_loop()
        generation = self.generation
        try:
            sequence = await loop.run_in_executor(None, self._verify, data)
        except SuitError as e:
            if generation != self.generation:
                return  # the object was reset or written again meanwhile
            self.say(f"the package is refused: {e}")
            self._reset(_verify_result(e))
            self.last = AgentResult("failed", f"rejected: {e}")
            if self.on_result is not None:
                self.on_result(self.last)
            return
        if generation != self.generation:
            return
        (self.folder / "agent").mkdir(exist_ok=True)
        await loop.run_in_executor(None, atomic_write, self.folder / "agent" / _PACKAGE, data)
        if generation != self.generation:
            return  # reset or replaced meanwhile: void (a newer package owns the file; a
            # copy that outlived a reset is removed at the next start)
        self.package = data
        self.name.set(f"suit-{hashlib.sha256(data).hexdigest()[:16]}")
        self.version.set(str(sequence))
        self.say(f"downloaded {len(data)} bytes (sequence number {sequence}, signatures "
                 "verified)")
        self._set(DOWNLOADED)

    def _verify(self, data: bytes) -> int:
        """Raises: SuitError: not an envelope this device trusts."""
        opened = open_device(self.folder)
        envelope = codec.decode_envelope(data, limits=self.limits)
        verified = verify_decoded(envelope, opened.config.trust_anchors(), limits=self.limits)
        return int(verified.manifest.sequence_number)

    async def _update(self, data: bytes) -> None:
        self.say("updating (5/0/2 executed)")
        loop = asyncio.get_running_loop()
        try:
            outcome, code = await loop.run_in_executor(None, self._install, data)
        except Exception as e:  # noqa: BLE001 - the object must leave Updating whatever failed
            _log.exception("LwM2M: the install failed")
            outcome, code = AgentResult("failed", f"install: {type(e).__name__}"), FAILED
        self.last = outcome
        (self.folder / "agent" / _PACKAGE).unlink(missing_ok=True)
        self.package = None
        self.read_identity()
        self.say(f"update result {code} ({outcome.outcome}: {outcome.reason})")
        self._set(IDLE, code)
        if self.on_result is not None:
            self.on_result(outcome)

    def _install(self, data: bytes) -> tuple[AgentResult, int]:
        """The agent's install (consumer, report, boot, confirm or revert) in a worker
        thread."""
        opened = open_device(self.folder)
        sink = _Sink(self.tracker, self.device_id)
        try:
            outcome = _install(opened, sink, data, release=str(self.name.value),
                               fetcher=self.fetcher, step=self.say,
                               result=AgentResult)
        finally:
            if self.tracker is None:
                sink.client.close()
        if outcome.outcome == "waiting":
            return outcome, FAILED
        return outcome, result_code(outcome, sink.report_sent)

    # ---- the registration interface

    async def _request(self, code: Any, path: tuple[str, ...], query: tuple[str, ...] = (),
                       payload: bytes = b"", content_format: int | None = None) -> Any:
        message = aiocoap.Message(code=code, uri=self.options.server, payload=payload)
        message.opt.uri_path = path
        message.opt.uri_query = query
        if content_format is not None:
            message.opt.content_format = content_format
        return await asyncio.wait_for(self.context.request(message).response,
                                      self.options.request_timeout)

    async def register(self) -> bool:
        """True once registered.

        Raises:
            TrackerError: refused, unreachable or a garbled answer (one line)."""
        query = (f"ep={self.device_id}", f"lt={self.options.lifetime}", "lwm2m=1.1", "b=U")
        try:
            # known before the registration is sent: the server's first read may arrive
            # before the client has its answer
            self.servers = {await _hostinfo(self.options.server)}
            response = await self._request(Code.POST, ("rd",), query, b"</3/0>,</5/0>", 40)
        except (TimeoutError, aiocoap.error.Error, OSError) as e:
            raise TrackerError(f"LwM2M register: {type(e).__name__}: {e}") from None
        if response.code != Code.CREATED:
            raise TrackerError(f"LwM2M register: expected 2.01 Created, got {response.code}: "
                               f"{_text(response)}")
        location = tuple(str(p) for p in response.opt.location_path)
        if (not 1 <= len(location) <= 4 or any(not p or len(p) > _MAX_LOCATION
                                                for p in location)):
            raise TrackerError(f"LwM2M register: expected a Location-Path like rd/<id>, got "
                               f"{'/'.join(location)[:80]!r}")
        self.location = location
        self.servers.add(str(response.remote.hostinfo))
        self.say(f"registered with {self.options.server} as {self.device_id} "
                 f"(/{'/'.join(location)}, lifetime {self.options.lifetime} s)")
        return True

    async def update(self) -> bool:
        """A registration update; False when the server no longer knows the registration."""
        assert self.location is not None
        try:
            response = await self._request(Code.POST, self.location)
        except (TimeoutError, aiocoap.error.Error, OSError) as e:
            raise TrackerError(f"LwM2M update: {type(e).__name__}: {e}") from None
        if response.code == Code.CHANGED:
            self.updates += 1
            return True
        self.say(f"registration update answered {response.code}: registering again")
        return False

    async def deregister(self) -> None:
        if self.location is None:
            return
        location, self.location = self.location, None
        try:  # bounded: an unreachable server does not hold the exit for long
            response = await asyncio.wait_for(self._request(Code.DELETE, location),
                                              _DEREGISTER_WAIT)
            self.say(f"de-registered ({response.code})")
        except (TimeoutError, aiocoap.error.Error, OSError) as e:
            self.say(f"de-registration failed: {type(e).__name__}")

    async def run(self, stop: asyncio.Event) -> None:
        self.read_identity()
        (self.folder / "agent" / _PACKAGE).unlink(missing_ok=True)  # a download never ended
        self.context = await aiocoap.Context.create_server_context(
            self.site(), bind=(self.options.bind, 0), transports=["udp6"])
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if self.location is None:
                        if not await _unless_stopped(self.register(), stop):
                            break
                        failures = 0
                        wait = self.options.lifetime / 2
                    else:
                        updated = await _unless_stopped(self.update(), stop)
                        if updated is None:
                            break
                        wait = self.options.lifetime / 2 if updated else 0.0
                        if wait == 0.0:
                            self.location = None
                except TrackerError as e:
                    failures += 1
                    self.location = None
                    wait = backoff_delay(failures, self.options.backoff, self.options.max_backoff)
                    self.say(f"{e}; trying again in {wait:.1f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(wait, 0.05))
        finally:
            with contextlib.suppress(Exception):
                await self.deregister()
            if self.work is not None and not self.work.done():
                # an install under way finishes (the flash is written by then); a download stops
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self.work),
                                           None if self.state.value == UPDATING else 0.1)
                self.work.cancel()
            await self.context.shutdown()


async def _unless_stopped(step: Awaitable[_T], stop: asyncio.Event) -> _T | None:
    """``step``'s result, or ``None`` (``step`` cancelled) when ``stop`` is set first: a
    registration with a silent server does not hold the exit for its whole timeout."""
    task = asyncio.ensure_future(step)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TrackerError):
            await task
        return None
    return task.result()


async def _hostinfo(url: str) -> str:
    """``HOST:PORT`` (``[HOST]:PORT`` for IPv6) of the server at ``url``, resolved, as
    aiocoap shows the remote of its requests.

    Raises:
        OSError: the host name does not resolve."""
    parts = urlparse(url)
    host, port = parts.hostname or "", parts.port
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not found:
        raise OSError(f"{host}: no address")
    address = str(found[0][4][0])
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _text(response: Any) -> str:
    return bytes(response.payload[:120]).decode("utf-8", "replace").strip()


def run_lwm2m(folder: Path, credential: str, options: Lwm2mOptions, *,
              fetcher: PayloadFetcher, tracker_url: str | None = None,
              limits: Limits | None = None, say: Callable[[str], None] | None = None,
              stop: threading.Event | None = None,
              on_result: Callable[[AgentResult], None] | None = None) -> AgentResult | None:
    """Run the LwM2M client of the device in ``folder`` (endpoint name: the credential's
    device id) until ``options.duration`` seconds, ``stop`` is set, or SIGTERM/SIGINT (on the
    main thread); the last install's result (``None``: none ran). ``tracker_url``: where the
    SUIT report and the inventory go (the tracker's JSON API, with the credential).
    ``on_result``: called with each install's result (from the client's event loop thread).

    Raises:
        ValueError: inconsistent options.
    """
    options.check()
    device_id = credential.strip().partition(".")[0]

    def tell(line: str) -> None:
        if say is not None:
            say(line)

    tracker = (httpx.Client(base_url=tracker_url.rstrip("/"), timeout=TIMEOUT,
                            headers={"Authorization": f"Bearer {credential.strip()}"})
               if tracker_url else None)
    client = _Client(folder, device_id, options, fetcher=fetcher, tracker=tracker,
                     limits=limits or Limits(), say=tell, on_result=on_result)

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, done.set)
                    handled.append(sig)

        async def watch() -> None:
            ends = (time.monotonic() + options.duration if options.duration is not None
                    else None)
            while not done.is_set():
                if (stop is not None and stop.is_set()) or (
                        ends is not None and time.monotonic() >= ends):
                    done.set()
                    return
                await asyncio.sleep(0.1)
        watcher = loop.create_task(watch())
        try:
            await client.run(done)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for sig in handled:
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    finally:
        if tracker is not None:
            tracker.close()
    return client.last
