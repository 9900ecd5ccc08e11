"""The HTTP edge of campaigns (``tracker.campaigns``), mounted by ``edges.create_router``.

Routes (docs/tracker.md, "Campaigns", has the bodies):

- ``POST /api/v1/campaigns`` (operator, admin): create a campaign in ``draft``. Its release
  must be on the firmware server; the envelope URL is derived (``web.release_envelope_url``:
  422 for an unknown release or a URL that is not its envelope), and checked again at
  ``approve`` and ``start``.
- ``GET /api/v1/campaigns?limit=&after=`` (admin, operator, author): a page of campaigns,
  newest first; ``next`` is the cursor of the following page (``null``: the end).
- ``GET /api/v1/campaigns/{id}?offset=&limit=`` (admin, operator, author): status, counts per
  state and per wave, a page of members, the campaign's log.
- ``GET /api/v1/campaigns/{id}/members?limit=&after=&state=&total=`` (admin, operator,
  author): its members by position, in the lists' one style (``web.paged``).
- ``POST /api/v1/campaigns/{id}/approve|start|pause|resume|cancel|trigger|retry`` (operator,
  admin); approval is refused (403) to the principal who created the campaign (four-eyes);
  ``retry`` gives the failed members of a running or paused campaign another assignment.
- ``POST /api/v1/campaigns/preview`` (operator, admin): the devices a target matches and the
  devices per wave, as ``start`` would split them (nothing stored).
- ``GET /api/v1/campaigns/{id}/progress?points=`` (admin, operator, author): devices
  succeeded and failed over time.
- ``PUT /api/v1/devices/{id}/tags`` (admin, operator): the device's tags.
- ``GET /api/v1/fleet`` (admin, operator): devices per state, class, tag and installed
  version (the dashboard's overview and target picker).

Every operator action is written to the audit log (``TrackerDB.record_audit``) with who did
it. The router's lifespan runs ``CampaignEngine.tick`` every ``tick_seconds`` in a worker
thread while the server runs: thresholds, waves and schedules move without any request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from suitkit.errors import StorageError
from suitkit.problems import problem_responses
from suitkit.tracker.auth import Authenticator, Principal, Refused, Role
from suitkit.tracker.campaigns import (
    CAMPAIGN_STATUSES,
    MAX_DELTAS,
    MEMBER_STATES,
    MODES,
    CampaignEngine,
    CampaignSpec,
    DeltaOffer,
)
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.schemas import (
    CampaignBody,
    CampaignDetail,
    CampaignMembers,
    CampaignPage,
    CampaignPreview,
    CampaignPreviewBody,
    CampaignProgress,
    Fleet,
    PauseBody,
    Tags,
    TagsBody,
    json_body,
)
from suitkit.tracker.service import CampaignRefused, TrackerDB
from suitkit.tracker.web import (
    MAX_DIGEST_BYTES,
    PAGE_QUERY,
    check_query,
    created_id_key,
    encode_cursor,
    envelope_url_of,
    hex_member,
    in_background,
    json_object,
    list_param,
    list_parameters,
    only_members,
    page_params,
    paged,
    query_parameter,
    release_envelope_url,
    storage_refused,
    text_member,
    uuid_member,
    want_total,
)

__all__ = ["create_campaign_router"]

_log = logging.getLogger(__name__)
_CAMPAIGNS = "/api/v1/campaigns"
_STAFF: tuple[Role, ...] = ("operator", "admin")
_READERS: tuple[Role, ...] = ("admin", "operator", "author")
_STATUS = {"invalid": 400, "unknown": 404, "conflict": 409, "forbidden": 403}
_MAX_NAME = 128
_MAX_TARGET_DEVICES = 10_000
_MAX_WAVES = 20
_MAX_REASON = 512
_TICK_LOG_SECONDS = 60.0


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(400, f"{where}: expected a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond a float
        raise Refused(400, f"{where}: the number is out of range") from None


def _moment(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    text = text_member(value, where, 64)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Refused(400, f"{where}: expected an ISO 8601 time such as "
                           f"'2026-03-02T22:00:00Z', got {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise Refused(400, f"{where}: give the time zone (e.g. 'Z' for UTC)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 shifted by the zone offset
        raise Refused(400, f"{where}: {text[:40]!r} is out of range in UTC") from None


def _spec(doc: Mapping[str, Any], *, need_release: bool = True) -> CampaignSpec:
    """The campaign a request asks for; ``envelope_url`` is ``""`` when left out (the route
    derives it: ``release_envelope_url``); ``release`` may be left out with ``need_release``
    false (a preview)."""
    only_members(doc, {"name", "release", "envelope_url", "target", "waves", "success_threshold",
                "failure_threshold", "mode", "start_after", "window", "unhealthy_threshold",
                "health_window", "deltas"}, "campaign")
    release = (hex_member(doc.get("release"), "release", MAX_DIGEST_BYTES)
               if need_release or doc.get("release") is not None else "")
    if not release and need_release:
        raise Refused(400, "release: expected the manifest digest in hex")
    url = envelope_url_of(doc.get("envelope_url"), ("http", "https"))
    target = doc.get("target")
    if not isinstance(target, dict):
        raise Refused(400, "target: expected an object {vendor_id, class_id, tags, devices}")
    only_members(target, {"vendor_id", "class_id", "tags", "devices"}, "target")
    tags = target.get("tags", [])
    if not isinstance(tags, list):
        raise Refused(400, "target.tags: expected a list of tags")
    devices = target.get("devices")
    if devices is not None and (not isinstance(devices, list)
                                or len(devices) > _MAX_TARGET_DEVICES):
        raise Refused(400, f"target.devices: expected a list of at most {_MAX_TARGET_DEVICES} "
                           "device ids")
    waves = doc.get("waves", [100])
    if not isinstance(waves, list) or len(waves) > _MAX_WAVES:
        raise Refused(400, f"waves: expected a list of at most {_MAX_WAVES} percentages")
    mode = doc.get("mode", "install-now")
    if mode not in MODES:
        raise Refused(400, f"mode: expected one of {', '.join(MODES)}, got {str(mode)[:40]!r}")
    window = doc.get("window")
    return CampaignSpec(
        name=text_member(doc.get("name", ""), "name", _MAX_NAME),
        release=release or "", envelope_url=url or "",
        vendor_id=uuid_member(target.get("vendor_id"), "target.vendor_id"),
        class_id=uuid_member(target.get("class_id"), "target.class_id"),
        tags=tuple(text_member(t, f"target.tags[{i}]", 64) for i, t in enumerate(tags)),
        devices=(tuple(text_member(d, f"target.devices[{i}]", 36) for i, d in enumerate(devices))
                 if devices is not None else None),
        waves=tuple(_number(w, f"waves[{i}]") for i, w in enumerate(waves)),
        success_threshold=_number(doc.get("success_threshold", 1.0), "success_threshold"),
        failure_threshold=_number(doc.get("failure_threshold", 0.2), "failure_threshold"),
        mode=mode,
        start_after=_moment(doc.get("start_after"), "start_after"),
        window=text_member(window, "window", 11) if window is not None else None,
        unhealthy_threshold=_optional_number(doc, "unhealthy_threshold"),
        health_window=_optional_number(doc, "health_window"),
        deltas=_deltas(doc.get("deltas", [])))


def _optional_number(doc: Mapping[str, Any], name: str) -> float | None:
    value = doc.get(name)
    return None if value is None else _number(value, name)


def _deltas(raw: object) -> tuple[DeltaOffer, ...]:
    """``deltas: [{precursor, release, envelope_url?}]`` (docs/delta.md); the URLs are derived
    by the route like the campaign's own (``""``: left out)."""
    if not isinstance(raw, list) or len(raw) > MAX_DELTAS:
        raise Refused(400, f"deltas: expected a list of at most {MAX_DELTAS} "
                           "{precursor, release, envelope_url} objects")
    offers = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise Refused(400, f"deltas[{i}]: expected an object {{precursor, release, "
                               "envelope_url}")
        only_members(item, {"precursor", "release", "envelope_url"}, f"deltas[{i}]")
        precursor = hex_member(item.get("precursor"), f"deltas[{i}].precursor", 32)
        release = hex_member(item.get("release"), f"deltas[{i}].release", MAX_DIGEST_BYTES)
        if not precursor or not release:
            raise Refused(400, f"deltas[{i}]: expected precursor (the SHA-256 of the image it "
                               "applies to) and release (the delta's manifest digest) in hex")
        url = envelope_url_of(item.get("envelope_url"), ("http", "https"))
        offers.append(DeltaOffer(precursor.lower(), release.lower(), url or ""))
    return tuple(offers)


def create_campaign_router(config: TrackerConfig, db: TrackerDB, auth: Authenticator, *,
                           tick_seconds: float = 1.0) -> APIRouter:
    """The campaign routes over ``db``; while the app runs, ``tick`` every ``tick_seconds``."""
    engine = CampaignEngine(db)

    @asynccontextmanager
    async def ticking(_: FastAPI) -> AsyncIterator[None]:
        async def loop() -> None:
            failing = False
            quiet_until = 0.0
            while True:
                try:
                    await run_in_threadpool(engine.tick)
                    if failing:
                        failing = False
                        _log.warning("campaign ticks work again")
                except Exception as e:  # noqa: BLE001 - the next tick retries; the server stays up
                    failing = True
                    # a tick a second: a database outage (or a full disk under a running
                    # campaign) must not write 60 tracebacks a minute; one line a minute
                    now = time.monotonic()
                    if now >= quiet_until:
                        quiet_until = now + _TICK_LOG_SECONDS
                        if isinstance(e, StorageError):
                            _log.warning("campaign tick failed (retried every %g s; said at "
                                         "most once a minute): %s", tick_seconds, e)
                        else:
                            _log.exception("campaign tick failed (retried every %g s; said "
                                           "at most once a minute)", tick_seconds)
                await asyncio.sleep(tick_seconds)

        async with in_background(loop()):
            yield

    router = APIRouter(tags=["campaigns"], lifespan=ticking)

    async def call(function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await run_in_threadpool(function, *args, **kwargs)
        except CampaignRefused as e:
            raise Refused(_STATUS[e.kind], str(e)) from None
        except StorageError as e:
            raise storage_refused(
                e, "the tracker could not store or read its database") from None

    async def audit(who: Principal, action: str, target: str, detail: str = "") -> None:
        await call(db.record_audit, who.name, who.role, action, target, detail)

    @router.post(_CAMPAIGNS, status_code=201, response_model=CampaignDetail,
                 summary="Create a campaign in draft (operator, admin)",
                 responses=problem_responses(
                     400, 404, 409, 413, 415, 422, 507, s404="a target device is unknown",
                     s422="the release (or a delta's) is not on the firmware server, or "
                          "envelope_url is not its envelope"),
                 openapi_extra=json_body(CampaignBody))
    async def create(request: Request) -> Response:
        """Create a campaign in draft (operator, admin)."""
        who = await auth.require(request, *_STAFF)
        spec = _spec(await json_object(request))
        url = await release_envelope_url(config, request, spec.release,
                                         spec.envelope_url or None)
        deltas = tuple([dataclasses.replace(offer, envelope_url=await release_envelope_url(
            config, request, offer.release, offer.envelope_url or None))
            for offer in spec.deltas])
        spec = dataclasses.replace(spec, envelope_url=url, deltas=deltas)
        doc = await call(engine.create, spec, who.name)
        await audit(who, "campaign.create", f"campaign {doc['id']}",
                    f"release {spec.release}, target {doc['target']}, mode {spec.mode}")
        return JSONResponse(doc, status_code=201)

    @router.post(f"{_CAMPAIGNS}/preview", response_model=CampaignPreview,
                 summary="Preview a campaign's target and waves (admin, operator)",
                 responses=problem_responses(400, 404, 413, 415, 507),
                 openapi_extra=json_body(CampaignPreviewBody))
    async def preview(request: Request) -> Response:
        """How many devices a campaign's target matches now and how many each of its waves
        would get if it started now (operator, admin); the body of a campaign, ``release``
        optional. Nothing is stored."""
        await auth.require(request, *_STAFF)
        spec = _spec(await json_object(request), need_release=False)
        return JSONResponse(await call(engine.preview, spec))

    @router.get(_CAMPAIGNS, response_model=CampaignPage,
                summary="List campaigns, newest first (admin, operator, author)",
                responses=problem_responses(400),
                openapi_extra=list_parameters(query_parameter(
                    "state", "campaigns in any of these states",
                    {"type": "string", "enum": list(CAMPAIGN_STATUSES)}, repeatable=True)))
    async def list_campaigns(request: Request) -> Response:
        """A page of campaigns, newest first (admin, operator, author); ``?state=running``:
        only those (repeatable); ``?total=true``: with ``total``. ``next`` is the cursor for
        ``?after=`` (``null``: the end)."""
        await auth.require(request, *_READERS)
        check_query(request, PAGE_QUERY | {"state"}, {"state"})
        statuses = list_param(request, "state", CAMPAIGN_STATUSES)
        limit, key, after = page_params(request, "campaigns", (str, str))
        start = created_id_key(key, after)
        page = await call(engine.campaigns_page, limit=limit, after=start, statuses=statuses,
                          total=want_total(request))
        return paged("campaigns", page,
                      lambda k: encode_cursor("campaigns", k[0].isoformat(), k[1]))

    @router.get(f"{_CAMPAIGNS}/{{campaign_id}}", response_model=CampaignDetail,
                summary="A campaign: status, counts, members, log (admin, operator, author)",
                responses=problem_responses(400, 404))
    async def get(request: Request, campaign_id: str, offset: int = 0, limit: int = 100
                  ) -> Response:
        """A campaign's status, counts, a page of members and its log."""
        await auth.require(request, *_READERS)
        if not 0 <= offset < 1 << 63 or not 0 <= limit <= 1000:  # SQL OFFSET is 64-bit
            raise Refused(400, "offset must be ≥ 0 and limit between 0 and 1000")
        return JSONResponse(await call(engine.get, campaign_id, offset=offset, limit=limit))

    @router.get(f"{_CAMPAIGNS}/{{campaign_id}}/progress", response_model=CampaignProgress,
                summary="A campaign's outcomes over time (admin, operator, author)",
                responses=problem_responses(400, 404))
    async def progress(request: Request, campaign_id: str, points: int = 60) -> Response:
        """Devices succeeded and failed over time, ``points`` + 1 samples from the start to
        the end or now (admin, operator, author)."""
        await auth.require(request, *_READERS)
        if not 1 <= points <= 500:
            raise Refused(400, f"points: expected 1 to 500, got {points}")
        return JSONResponse(await call(engine.progress, campaign_id, points=points))

    @router.get(f"{_CAMPAIGNS}/{{campaign_id}}/members", response_model=CampaignMembers,
                summary="A page of a campaign's members (admin, operator, author)",
                responses=problem_responses(400, 404),
                openapi_extra=list_parameters(query_parameter(
                    "state", "members in any of these states",
                    {"type": "string", "enum": list(MEMBER_STATES)}, repeatable=True)))
    async def members(request: Request, campaign_id: str) -> Response:
        """A page of the campaign's members by position (admin, operator, author);
        ``?state=failed``: only those (repeatable); ``?total=true``: with ``total``."""
        await auth.require(request, *_READERS)
        check_query(request, PAGE_QUERY | {"state"}, {"state"})
        states = list_param(request, "state", MEMBER_STATES)
        limit, key, after = page_params(request, f"members:{campaign_id}", (int,))
        if key is not None and not 0 <= key[0] < 1 << 31:
            raise Refused(400, f"after: expected the cursor 'next' of a previous page of "
                               f"this list, got {after[:40]!r}")
        page = await call(engine.members_page, campaign_id, limit=limit,
                          after=key[0] if key is not None else -1, states=states,
                          total=want_total(request))
        return paged("members", page,
                     lambda k: encode_cursor(f"members:{campaign_id}", k[0]), id=campaign_id)

    def action(name: str) -> None:
        method = getattr(engine, name)

        @router.post(f"{_CAMPAIGNS}/{{campaign_id}}/{name}", name=f"campaign_{name}",
                     summary=f"{name.capitalize()} the campaign (operator, admin)",
                     response_model=CampaignDetail,
                     responses=problem_responses(
                         *((400, 404, 409, 413, 415, 507) if name == "pause"
                           else (400, 404, 409, 507)),
                         *((422,) if name in ("approve", "start") else ()),
                         s403="the credential's role may not do this (or, to approve: it "
                              "created the campaign; four-eyes)",
                         s409=f"the campaign's status does not allow {name}",
                         s422="the campaign's release is no longer on the firmware server"),
                     openapi_extra=json_body(PauseBody, required=False)
                     if name == "pause" else None)
        async def act(request: Request, campaign_id: str) -> Response:
            who = await auth.require(request, *_STAFF)
            if name in ("approve", "start") and config.releases is not None:
                # a campaign made before releases were checked (or whose release is gone)
                # is neither approved nor started: devices would fetch something else
                current = await call(engine.get, campaign_id, limit=0)
                await release_envelope_url(config, request, current["release"],
                                           current["envelope_url"])
            args: tuple[Any, ...] = (campaign_id, who.name)
            detail = ""
            if name == "pause" and request.headers.get("content-length", "0") != "0":
                doc = await json_object(request)
                only_members(doc, {"reason"}, "pause")
                detail = text_member(doc.get("reason", ""), "reason", _MAX_REASON)
                args = (*args, detail)
            doc = await call(method, *args)
            await audit(who, f"campaign.{name}", f"campaign {campaign_id}", detail)
            return JSONResponse(doc)

        act.__doc__ = f"{name.capitalize()} the campaign (operator, admin)."

    for name in ("approve", "start", "pause", "resume", "cancel", "trigger", "retry"):
        action(name)

    @router.put("/api/v1/devices/{device_id}/tags", response_model=Tags,
                summary="Replace a device's tags (admin, operator)",
                responses=problem_responses(400, 404, 413, 415, 507),
                openapi_extra=json_body(TagsBody))
    async def put_tags(request: Request, device_id: str) -> Response:
        """Replace the device's tags (admin, operator)."""
        who = await auth.require(request, "admin", "operator")
        doc = await json_object(request)
        only_members(doc, {"tags"}, "tags")
        tags = doc.get("tags")
        if not isinstance(tags, list):
            raise Refused(400, "tags: expected a list of tags")
        texts = [text_member(t, f"tags[{i}]", 64) for i, t in enumerate(tags)]
        stored = await call(engine.set_tags, device_id, texts)
        await audit(who, "device.tags", f"device {device_id}", ", ".join(stored))
        return JSONResponse({"id": device_id, "tags": stored})

    @router.get("/api/v1/fleet", response_model=Fleet,
                summary="The fleet in counts (admin, operator)")
    async def fleet(request: Request) -> Response:
        """The fleet in counts: devices per state, per vendor and class ID, per tag and per
        installed component version (admin, operator): what an overview and a campaign's
        target picker show, without listing every device."""
        await auth.require(request, "admin", "operator")
        return JSONResponse(await call(db.fleet_summary))

    return router
