"""The hawkBit Direct Device Integration (DDI) API, controller side: what SWUpdate's
suricatta, rauc-hawkbit-updater, Zephyr's hawkBit client and suitkit's own agent
(``--protocol ddi``) poll. Only translating DDI requests to calls of ``tracker.service`` and
answers back; the DDI quirks (action ids, action types, execution states) stay here.

Routes, under ``/{tenant}/controller/v1/{controllerId}`` (the tenant of ``DdiOptions``,
``DEFAULT`` by default; the controller id is the device id):

- ``GET ""``: the base poll: ``config.polling.sleep`` and ``_links`` to ``deploymentBase``
  (a pending, deliverable assignment), ``cancelAction`` (an assignment withdrawn before the
  device started it), ``configData`` (always: the tracker takes the controller's attributes)
  and ``installedBase`` (the last finished assignment).
- ``GET deploymentBase/{actionId}``: the assignment as one chunk whose artifacts are the SUIT
  envelope (``<release>.suit``) and the release's images, each with its size, SHA-256, SHA-1
  and MD5 and a ``download``/``download-http`` link to the firmware server (public,
  content-addressed, Range) and an ``md5sum`` link here. Action types: a direct deployment is
  ``attempt`` (soft), a campaign's ``forced``; a download-only assignment (download-only mode,
  install-on-trigger before its trigger) ``update: skip``; a campaign's window is
  ``maintenanceWindow`` (``available`` or ``unavailable``).
- ``POST deploymentBase/{actionId}/feedback``: ``proceeding`` (and ``resumed``) moves a device
  that has not started to ``downloading``; ``downloaded`` to ``downloaded``; ``closed`` with
  ``success`` to ``succeeded`` (``downloaded`` for a download-only assignment), with
  ``failure`` (or ``rejected``) to ``failed``, the details (and progress) as the events'
  detail. ``scheduled`` and ``canceled`` change nothing. The steps a coarse client skips are
  added too (``TrackerDB.advance``). A device that ends its update without a SUIT report of it
  is marked: it ``did not check SUIT signatures`` (a legacy client installs its artifact).
- ``GET cancelAction/{actionId}``, ``POST cancelAction/{actionId}/feedback``: the client
  acknowledges; the device's update ends (``failed``, "cancelled ...").
- ``PUT configData``: the attributes (``data``) become the inventory's hardware facts.
- ``GET installedBase/{actionId}``: the finished assignment, as ``deploymentBase``.
- ``GET softwaremodules/{actionId}/artifacts/{filename}.MD5SUM``: ``<md5>  <filename>``.

An action id is the device's assignment: 31 bits of the SHA-256 of (device id, creation
time of the assignment), the same on every replica, a new one for each assignment (hawkBit's
clients read it as a 32-bit int). Feedback for another action id than the device's current
assignment is refused (409) and changes nothing.

Authentication: ``Authorization: TargetToken <device credential>`` (``<device-id>.<secret>``,
or the secret alone, as registration returned them), or ``Bearer <device credential>``; the
credential must be the controller's own (403 otherwise, 401 when it is not valid).
GatewayToken is not supported (401 naming it). Bodies are JSON objects of at most 64 KiB,
validated by pydantic models (400 naming the member). Feedback and configData are
rate-limited per device like the JSON API's events and inventories (``tracker.quotas``: 429
with ``Retry-After``; this edge keeps its own buckets).

Deliberately not here: the state machine's rules (``tracker.service``), the firmware server's
downloads, hawkBit's management API, several tenants, download-only links without a token
(``usetokentodwl``: the firmware server ignores it).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from suitkit.errors import StorageError
from suitkit.tracker.auth import Authenticator, Principal, Refused
from suitkit.tracker.config import ArtifactLookup, DdiOptions, ReleaseArtifacts, TrackerConfig
from suitkit.tracker.quotas import RateLimiter, retry_after
from suitkit.tracker.service import (
    AssignmentView,
    ComponentEntry,
    IdentityRefused,
    Inventory,
    NotAssigned,
    TrackerDB,
    TransitionRefused,
    UpdateView,
    in_window,
)
from suitkit.tracker.web import check_path_ids, json_object, storage_refused

__all__ = ["UNREPORTED", "action_id", "create_ddi_router"]

UNREPORTED = "did not check SUIT signatures"
"""The mark of a final state a device reached without a SUIT report of its update."""
_BASE = "/{tenant}/controller/v1/{controller_id}"
_MAX_DETAILS = 48
_MAX_DETAIL_TEXT = 1024
_MAX_ATTRIBUTES = 64
_MAX_ATTRIBUTE_KEY = 64
_MAX_ATTRIBUTE_TEXT = 256
_MAX_ACTION = (1 << 31) - 1
_M = TypeVar("_M", bound=BaseModel)


# ============================================================================ models


class _Progress(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cnt: int = Field(ge=0, le=_MAX_ACTION)
    of: int | None = Field(default=None, ge=0, le=_MAX_ACTION)


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore")
    finished: Literal["success", "failure", "none"] = "none"
    progress: _Progress | None = None


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore")
    execution: Literal["closed", "proceeding", "canceled", "scheduled", "rejected", "resumed",
                       "downloaded", "download"]
    result: _Result = Field(default_factory=_Result)
    details: list[str] = Field(default_factory=list, max_length=_MAX_DETAILS)


class Feedback(BaseModel):
    """A DDI action feedback (``deploymentBase`` and ``cancelAction``); ``id`` and ``time`` are
    optional (hawkBit ignores them; SWUpdate sends its own time format)."""

    model_config = ConfigDict(extra="ignore")
    id: int | str | None = None
    time: str | None = Field(default=None, max_length=64)
    status: _Status


class ConfigData(BaseModel):
    """A controller's attributes (``PUT configData``): ``data`` maps names to text."""

    model_config = ConfigDict(extra="ignore")
    data: dict[str, str] = Field(max_length=_MAX_ATTRIBUTES)
    mode: Literal["merge", "replace", "remove"] = "replace"


def _parsed(model: type[_M], doc: Mapping[str, Any], where: str) -> _M:
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        member = ".".join(str(part) for part in first["loc"]) or where
        raise Refused(400, f"{where}: {member[:80]}: {first['msg'][:200]}") from None


# ============================================================================ action ids


def action_id(device_id: str, created: datetime) -> int:
    """The DDI action id of the device's assignment created at ``created`` (1 to 2^31 - 1)."""
    digest = hashlib.sha256(f"{device_id}|{created.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % _MAX_ACTION + 1


def _action_path(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 10 \
            or not 0 < int(value) <= _MAX_ACTION:
        raise Refused(400, f"actionId in the path: expected a whole number from 1 to "
                           f"{_MAX_ACTION}, got {value[:20]!r}")
    return int(value)


def _sleep(seconds: int) -> str:
    seconds = max(1, min(seconds, 24 * 3600 - 1))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _cancelled_id(device_id: str, view: UpdateView) -> int | None:
    """The action a device was given and lost before it started (its assignment withdrawn:
    a cancelled campaign): it is still ``notified``, since the assignment was made."""
    assignment = view.assignment
    if view.device_state != "notified" or view.state_changed is None:
        return None
    if assignment is not None and not assignment.done:
        return None
    return action_id(device_id, view.state_changed)


# ============================================================================ the router


def create_ddi_router(config: TrackerConfig, tracker: TrackerDB, auth: Authenticator,
                      artifacts: ArtifactLookup, options: DdiOptions | None = None
                      ) -> APIRouter:
    """The DDI controller routes over ``tracker`` (``artifacts``: the firmware server's files
    of a release), checked by ``auth`` (device credentials as target tokens)."""
    ddi = options if options is not None else DdiOptions()
    router = APIRouter(tags=["hawkBit DDI"], dependencies=[Depends(check_path_ids)])
    limiter = RateLimiter(config.quotas)

    def throttle(device_id: str, kind: str) -> None:
        """429 with ``Retry-After`` when the device is over its rate for ``kind`` (the
        feedback counts as events, configData as inventories: ``tracker.quotas``)."""
        wait = limiter.take(device_id, kind)
        if wait is not None:
            after = retry_after(wait)
            raise HTTPException(429, f"too many {kind} from this controller: at most "
                                     f"{config.quotas.rate(kind):g} a minute; retry in {after} s",
                                headers={"Retry-After": after})

    async def storage(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(function, *args)
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store or read its database"
                                  ) from None

    async def controller(request: Request, tenant: str, controller_id: str) -> str:
        """The device the request is from: the tenant is ours, the credential the
        controller's own."""
        if tenant.lower() != ddi.tenant.lower():
            raise Refused(404, f"tenant: this tracker serves tenant {ddi.tenant}, not "
                               f"{tenant[:40]!r}")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        kind = scheme.lower()
        if kind == "gatewaytoken":
            raise Refused(401, "GatewayToken is not supported; use 'Authorization: "
                               "TargetToken <device credential>'")
        if kind not in ("targettoken", "bearer") or not token:
            raise Refused(401, "the DDI API requires 'Authorization: TargetToken <device "
                               "credential>' (the <device-id>.<secret> given at registration)")
        if kind == "targettoken" and "." not in token:  # the secret alone
            token = f"{controller_id}.{token}"
        who: Principal = await run_in_threadpool(auth.check, token)
        if who.role != "device" or who.device_id is None:
            raise Refused(403, f"the DDI API takes a device credential; the credential is "
                               f"of the {who.role} role")
        if not hmac.compare_digest(who.device_id.encode(), controller_id.encode()):
            raise Refused(403, f"the target token is device {who.device_id}'s; it does not "
                               f"open controller {controller_id[:40]!r}")
        return who.device_id

    def links(request: Request, tenant: str, device_id: str) -> str:
        return str(request.base_url).rstrip("/") + f"/{tenant}/controller/v1/{device_id}"

    async def window_now(assignment: AssignmentView) -> datetime | None:
        # the tracker's time (the database's clock on PostgreSQL), read only for a window
        if assignment.window is None:
            return None
        now: datetime = await storage(tracker.now)
        return now

    async def view_of(device_id: str) -> UpdateView:
        view: UpdateView | None = await storage(tracker.update_view, device_id)
        if view is None:  # authenticated a moment ago: deleted meanwhile
            raise Refused(404, f"no device {device_id}")
        return view

    async def files(release: str) -> ReleaseArtifacts:
        try:
            found: ReleaseArtifacts | None = await run_in_threadpool(artifacts, release)
        except StorageError:
            raise Refused(500, "the tracker could not read the firmware server's releases"
                          ) from None
        if found is None:
            raise Refused(410, f"release {release} is no longer on the firmware server")
        return found

    def current(device_id: str, view: UpdateView, action: int, *, finished: bool = False
                ) -> AssignmentView:
        """The assignment ``action`` names: the device's current one (pending, or with
        ``finished`` done), else 404."""
        assignment = view.assignment
        if assignment is None or action_id(device_id, assignment.created) != action:
            raise Refused(404, f"action {action} is not an action of controller {device_id} "
                               "(withdrawn, replaced, or never given)")
        if finished and not assignment.done:
            raise Refused(404, f"action {action} is not finished")
        if not finished and not assignment.pending:
            raise Refused(404, f"action {action} is not pending (done, or held back by its "
                               "campaign)")
        return assignment

    @router.get(_BASE, summary="DDI base poll (the controller)")
    async def base_poll(request: Request, tenant: str, controller_id: str) -> Response:
        device_id = await controller(request, tenant, controller_id)
        view = await view_of(device_id)
        base = links(request, tenant, device_id)
        found: dict[str, Any] = {"configData": {"href": f"{base}/configData"}}
        assignment = view.assignment
        cancelled = _cancelled_id(device_id, view)
        if cancelled is not None:
            found["cancelAction"] = {"href": f"{base}/cancelAction/{cancelled}"}
        elif assignment is not None and assignment.pending:
            number = action_id(device_id, assignment.created)
            kind = _types(assignment, await window_now(assignment))
            found["deploymentBase"] = {
                "href": f"{base}/deploymentBase/{number}?c=-{_tag(kind)}"}
        if assignment is not None and assignment.done:
            found["installedBase"] = {
                "href": f"{base}/installedBase/{action_id(device_id, assignment.created)}"}
        return JSONResponse({"config": {"polling": {"sleep": _sleep(ddi.poll_seconds)}},
                             "_links": found}, headers={"Cache-Control": "no-store"})

    async def deployment(request: Request, tenant: str, device_id: str, action: int,
                         assignment: AssignmentView) -> Response:
        release = await files(assignment.release)
        base = links(request, tenant, device_id)
        origin = (config.public_url or str(request.base_url)).rstrip("/")
        items = []
        for item in release.artifacts:
            url = origin + item.path
            items.append({
                "filename": item.filename, "size": item.size,
                "hashes": {"sha1": item.sha1, "md5": item.md5, "sha256": item.sha256},
                "_links": {
                    ("download" if url.startswith("https:") else "download-http"): {
                        "href": url},
                    ("md5sum" if url.startswith("https:") else "md5sum-http"): {
                        "href": f"{base}/softwaremodules/{action}/artifacts/"
                                f"{item.filename}.MD5SUM"}}})
        metadata = [{"key": "suit-release", "value": release.release}]
        if assignment.nonce is not None:  # for the device's SUIT report (report §4)
            metadata.append({"key": "suit-nonce", "value": assignment.nonce})
        # the software module's version: the release's, else its sequence number
        chunk = {"part": "os", "version": release.version or str(release.sequence_number),
                 "name": f"suit-{release.release[:16]}", "artifacts": items,
                 "metadata": metadata}
        body: dict[str, Any] = {"id": str(action), "deployment": {
            **_types(assignment, await window_now(assignment)), "chunks": [chunk]}}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @router.get(f"{_BASE}/deploymentBase/{{action}}", summary="A DDI deployment (the controller)")
    async def deployment_base(request: Request, tenant: str, controller_id: str,
                              action: str) -> Response:
        device_id = await controller(request, tenant, controller_id)
        number = _action_path(action)
        assignment = current(device_id, await view_of(device_id), number)
        return await deployment(request, tenant, device_id, number, assignment)

    @router.get(f"{_BASE}/installedBase/{{action}}",
                summary="The last finished DDI deployment (the controller)")
    async def installed_base(request: Request, tenant: str, controller_id: str,
                             action: str) -> Response:
        device_id = await controller(request, tenant, controller_id)
        number = _action_path(action)
        assignment = current(device_id, await view_of(device_id), number, finished=True)
        return await deployment(request, tenant, device_id, number, assignment)

    async def feedback_on(request: Request, tenant: str, controller_id: str,
                          action: str) -> tuple[str, int, Feedback]:
        """The controller's device, the action's number and its feedback, checked (a
        feedback counts as a device event for the rate limit)."""
        device_id = await controller(request, tenant, controller_id)
        number = _action_path(action)
        throttle(device_id, "events")
        feedback = _parsed(Feedback, await json_object(request), "feedback")
        _same_id(feedback, number)
        return device_id, number, feedback

    @router.post(f"{_BASE}/deploymentBase/{{action}}/feedback",
                 summary="Feedback on a DDI deployment (the controller)")
    async def deployment_feedback(request: Request, tenant: str, controller_id: str,
                                  action: str) -> Response:
        device_id, number, feedback = await feedback_on(request, tenant, controller_id, action)
        view = await view_of(device_id)
        assignment = view.assignment
        if assignment is None or action_id(device_id, assignment.created) != number:
            raise Refused(409, f"action {number} is not controller {device_id}'s current "
                               "action (withdrawn, replaced, or never given); nothing was "
                               "stored")
        status = feedback.status
        target = _target(status.execution, status.result.finished, assignment.action)
        if target is None:
            return Response(status_code=200)
        if assignment.done:  # a repeated or late message about a finished action
            return Response(status_code=200)
        detail = _detail(status.execution, status.result, status.details)
        try:
            await run_in_threadpool(functools.partial(
                tracker.advance, device_id, target, detail, release=assignment.release,
                unreported=UNREPORTED))
        except (NotAssigned, TransitionRefused) as e:
            raise Refused(409, f"feedback {status.execution}/{status.result.finished}: {e}"
                          ) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the feedback") from None
        return Response(status_code=200)

    @router.get(f"{_BASE}/cancelAction/{{action}}", summary="A DDI cancellation (the controller)")
    async def cancel_action(request: Request, tenant: str, controller_id: str,
                            action: str) -> Response:
        device_id = await controller(request, tenant, controller_id)
        number = _action_path(action)
        if _cancelled_id(device_id, await view_of(device_id)) != number:
            raise Refused(404, f"action {number} of controller {device_id} is not cancelled")
        return JSONResponse({"id": str(number), "cancelAction": {"stopId": str(number)}},
                            headers={"Cache-Control": "no-store"})

    @router.post(f"{_BASE}/cancelAction/{{action}}/feedback",
                 summary="Feedback on a DDI cancellation (the controller)")
    async def cancel_feedback(request: Request, tenant: str, controller_id: str,
                              action: str) -> Response:
        device_id, number, feedback = await feedback_on(request, tenant, controller_id, action)
        view = await view_of(device_id)
        if _cancelled_id(device_id, view) != number or view.state_changed is None:
            raise Refused(409, f"action {number} of controller {device_id} is not cancelled; "
                               "nothing was stored")
        status = feedback.status
        if status.execution in {"closed", "canceled"}:
            detail = "cancelled: the assignment was withdrawn before the device started; " \
                     + _detail(status.execution, status.result, status.details)
            ended = await storage(tracker.close_withdrawn, device_id, view.state_changed,
                                  detail[:_MAX_DETAIL_TEXT])
            if ended is None:
                raise Refused(409, f"action {number} of controller {device_id} is no longer "
                                   "cancelled (acknowledged already, or a new assignment "
                                   "came); nothing was stored")
        return Response(status_code=200)

    @router.put(f"{_BASE}/configData", summary="A DDI controller's attributes (the controller)")
    async def config_data(request: Request, tenant: str, controller_id: str) -> Response:
        device_id = await controller(request, tenant, controller_id)
        throttle(device_id, "inventory")
        body = _parsed(ConfigData, await json_object(request), "configData")
        facts: dict[str, object] = {}
        for key, value in body.data.items():
            if len(key) > _MAX_ATTRIBUTE_KEY or len(value) > _MAX_ATTRIBUTE_TEXT:
                raise Refused(400, f"configData: data.{key[:40]}: names of at most "
                                   f"{_MAX_ATTRIBUTE_KEY} and values of at most "
                                   f"{_MAX_ATTRIBUTE_TEXT} characters")
            facts[key] = value
        doc = await storage(tracker.device, device_id)
        if doc is None:
            raise Refused(404, f"no device {device_id}")
        if body.mode == "merge":
            facts = {**doc["hardware"], **facts}
        elif body.mode == "remove":
            facts = {k: v for k, v in doc["hardware"].items() if k not in facts}
        inventory = Inventory(doc["vendor_id"], doc["class_id"], tuple(
            ComponentEntry(tuple(c["id"]), c["sequence"], c["digest"])
            for c in doc["components"]), facts)
        try:
            await run_in_threadpool(tracker.set_inventory, device_id, inventory)
        except IdentityRefused as e:
            raise Refused(409, str(e)) from None
        except StorageError as e:
            raise storage_refused(e, "the tracker could not store the attributes") from None
        return Response(status_code=200)

    @router.get(f"{_BASE}/softwaremodules/{{action}}/artifacts/{{filename}}",
                summary="An artifact's MD5SUM file (the controller)")
    async def md5sum(request: Request, tenant: str, controller_id: str, action: str,
                     filename: str) -> Response:
        device_id = await controller(request, tenant, controller_id)
        number = _action_path(action)
        view = await view_of(device_id)
        assignment = view.assignment
        if assignment is None or action_id(device_id, assignment.created) != number:
            raise Refused(404, f"action {number} is not an action of controller {device_id}")
        name = filename.removesuffix(".MD5SUM")
        if name == filename:
            raise Refused(404, "only the .MD5SUM of an artifact is served here; the artifact "
                               "itself is on the firmware server (its download link)")
        for item in (await files(assignment.release)).artifacts:
            if item.filename == name:
                return PlainTextResponse(f"{item.md5}  {item.filename}\n")
        raise Refused(404, f"action {number} has no artifact {name[:80]!r}")

    return router


# ============================================================================ mapping


def _types(assignment: AssignmentView, now: datetime | None) -> dict[str, str]:
    """DDI's action type of an assignment: ``download``/``update`` (forced, attempt, skip)
    and the maintenance window (``now``: the tracker's time, naive UTC; read when there is
    a window)."""
    handling = "forced" if assignment.campaign_id is not None else "attempt"
    kinds = {"download": handling,
             "update": "skip" if assignment.action == "download" else handling}
    if assignment.window is not None and now is not None:
        kinds["maintenanceWindow"] = ("available" if in_window(assignment.window, now)
                                      else "unavailable")
    return kinds


def _tag(kind: Mapping[str, str]) -> str:
    """hawkBit's cache-busting ``?c=`` of a deployment link: changes with the action type."""
    text = ",".join(f"{k}={v}" for k, v in sorted(kind.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _same_id(feedback: Feedback, number: int) -> None:
    if feedback.id is None or feedback.id == "":
        return
    text = str(feedback.id).strip()
    if text != str(number):
        raise Refused(400, f"feedback: id {text[:20]!r} is not the action of the path "
                           f"({number})")


def _target(execution: str, finished: str, action: str) -> str | None:
    """The tracker state a DDI execution/result moves the device to (``None``: no change)."""
    if execution in ("proceeding", "resumed", "download"):
        return "downloading"
    if execution == "downloaded":
        return "downloaded"
    if execution == "rejected":
        return "failed"
    if execution == "closed":
        if finished == "success":
            return "downloaded" if action == "download" else "succeeded"
        if finished == "failure":
            return "failed"
        raise Refused(400, "feedback: status.result.finished: a closed action is 'success' "
                           "or 'failure', got 'none'")
    return None  # scheduled, canceled


def _detail(execution: str, result: Any, details: list[str]) -> str:
    progress = result.progress
    head = f"ddi {execution}"
    if result.finished != "none":
        head += f" {result.finished}"
    if progress is not None:
        head += f" ({progress.cnt}/{progress.of})" if progress.of is not None \
            else f" ({progress.cnt})"
    text = "; ".join(d.strip() for d in details if d.strip())
    return (f"{head}: {text}" if text else head)[:_MAX_DETAIL_TEXT]
