"""What the tracker's HTTP edges share (``tracker.edges``): error mapping, bounded and strict
request bodies, member checks, the keyset pages' cursors and parameters, release URLs, and the
lifespan helper that runs a router's background loop.

Every check answers with ``auth.Refused`` (the server's problem details): 400 naming
the member and what was expected, 413 for a body over its limit, 415 for a body that is not
JSON, 422 for a release the firmware server does not hold, 507 when the disk is full
(``storage_refused``). Edges import this module, never each other.

Deliberately not here: routes, the service's rules, anything of one protocol only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Route, compile_path

from suitkit.errors import StorageError, StorageFullError
from suitkit.tracker.auth import Refused
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.notices import MAX_ID, is_record_id
from suitkit.tracker.service import Page

__all__ = [
    "DEFAULT_PAGE",
    "DEVICE_API",
    "LEGACY_DEVICE_API",
    "MAX_DEVICE_ID",
    "MAX_DIGEST_BYTES",
    "MAX_FILTER_VALUES",
    "MAX_PAGE",
    "PAGE_PARAMETERS",
    "PAGE_QUERY",
    "check_path_ids",
    "check_query",
    "created_id_key",
    "decode_cursor",
    "encode_cursor",
    "envelope_url_of",
    "flag_param",
    "hex_member",
    "in_background",
    "json_object",
    "list_param",
    "list_parameters",
    "moment_param",
    "only_members",
    "page_params",
    "paged",
    "query_parameter",
    "read_body",
    "release_envelope_url",
    "serve_device_api",
    "storage_refused",
    "text_member",
    "uuid_member",
    "want_total",
]

DEVICE_API = "/device/v1"
"""The device API's prefix: every route a device calls is ``/device/v1/{device_id}/...``
(check-in, update, inventory, events, reports, health, notifications), apart from the operator
API under ``/api/v1``, so that a proxy can expose the one without the other."""
LEGACY_DEVICE_API = "/api/v1/devices"
"""Where the device routes were before ``DEVICE_API``: still served (agents in the field),
marked deprecated in OpenAPI."""
MAX_DIGEST_BYTES = 64
MAX_DEVICE_ID = 36
DEFAULT_PAGE = 500
MAX_PAGE = 1000
_MAX_JSON_BYTES = 64 * 1024
_MAX_URL = 2048
_MAX_CURSOR = 400
MAX_FILTER_VALUES = 20
"""Values one filter of a list takes (``?state=a,b&state=c``: 3); more is refused (400)."""
_MAX_QUERY_VALUE = 200


# ============================================================================ errors and bodies


def storage_refused(error: StorageError, message: str) -> Refused:
    """The answer for a database failure: 507 when the disk is full (the transaction was
    rolled back: nothing of the request was stored), 500 with ``message`` otherwise."""
    if isinstance(error, StorageFullError):
        return Refused(507, "the tracker's storage is full: nothing of this request was "
                            "stored; try again once an operator has freed space")
    return Refused(500, message)



async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is longer than ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and (not (length.isascii() and length.isdigit())
                               or int(length) > limit):
        raise Refused(413, f"request body of {length[:20]} bytes is larger than the {limit} "
                           "bytes allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"request body is larger than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


class _BadJson(Exception):
    """Valid for Python's ``json`` but not for RFC 8259 / I-JSON (RFC 7493)."""


def _no_constant(name: str) -> float:
    raise _BadJson(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise _BadJson(f"the number {text[:20]} is out of range")
    return number


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:  # two readers of one body must not see two different documents
            raise _BadJson(f"member {key[:40]!r} appears more than once")
        doc[key] = value
    return doc


async def json_object(request: Request) -> Mapping[str, Any]:
    """The body as a JSON object: bounded, strict RFC 8259 (no NaN or Infinity, no number
    out of float range: no JSON encoder could write them back) and no duplicate members."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise Refused(415, "the body must be application/json")
    data = await read_body(request, _MAX_JSON_BYTES)
    try:
        doc = json.loads(data, parse_constant=_no_constant, parse_float=_finite,
                         object_pairs_hook=_unique)
    except _BadJson as e:
        raise Refused(400, f"the body is not valid JSON: {e}") from None
    except (ValueError, RecursionError):
        raise Refused(400, "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise Refused(400, f"the body must be a JSON object, got {type(doc).__name__}")
    _storable_text(doc)
    return doc


def _storable_text(doc: Mapping[str, Any]) -> None:
    """Refuse (400, naming the member) a string or member name anywhere in ``doc`` that no
    database can store: a NUL (PostgreSQL text) or a lone surrogate (JSON ``"\\ud800"``, which
    has no UTF-8 form and fails when written or answered). Checked once for the whole body,
    so a member that a route stores without a check of its own is covered too. Iterative: a
    deep body must not exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                raise Refused(400, f"{where or 'the body'}: expected text without NUL "
                                   "characters or lone surrogates")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    raise Refused(400, f"{where or 'the body'}: a member name holds a NUL "
                                       "character or a lone surrogate")
                stack.append((f"{where}.{key[:40]}" if where else key[:40], item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _is_text(value: str) -> bool:
    return "\x00" not in value and (value.isascii() or _is_utf8(value))


_MAX_PATH_ID = MAX_ID


def check_path_ids(request: Request) -> None:
    """Refuse (400, before authentication and before any query) an id in the path that no
    record can have: device, token and campaign ids are letters, digits and ``-_.~:``, at
    most 64. A NUL (``%00``) made PostgreSQL fail (500); any other control or non-ASCII
    character is refused the same way, on every backend. The tracker's routers depend on it."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and not is_record_id(value, _MAX_PATH_ID):
            raise Refused(400, f"{name} in the path: expected 1 to {_MAX_PATH_ID} letters, "
                               f"digits or '-_.~:', got {value[:40]!r}")


def only_members(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise Refused(400, f"{where}: unknown member {unknown[0][:40]!r}; expected "
                           f"{', '.join(sorted(allowed))}")


def text_member(value: object, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise Refused(400, f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise Refused(400, f"{where}: {len(value)} characters is over the limit of {limit}")
    # PostgreSQL text cannot hold NUL; a lone surrogate (JSON "\ud800") has no UTF-8 form at all
    if "\x00" in value or not _is_utf8(value):
        raise Refused(400, f"{where}: expected text without NUL characters or lone surrogates")
    return value


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def uuid_member(value: object, where: str) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(text_member(value, where, 64)))
    except ValueError:
        raise Refused(400, f"{where}: expected a UUID such as "
                           "'fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe'") from None


def hex_member(value: object, where: str, max_bytes: int) -> str:
    text = text_member(value, where, 2 * max_bytes)
    try:
        return bytes.fromhex(text).hex()
    except ValueError:
        raise Refused(400, f"{where}: expected hexadecimal bytes, got {text[:40]!r}") from None



def envelope_url_of(value: object, schemes: tuple[str, ...]) -> str | None:
    """A request's ``envelope_url``: ``None`` when left out, else a URL of ``schemes``
    (``("http", "https", ...)``) without spaces; ``Refused`` (400) otherwise."""
    if value is None:
        return None
    url = text_member(value, "envelope_url", _MAX_URL)
    if not url.lower().startswith(tuple(f"{scheme}://" for scheme in schemes)) or any(
            c.isspace() for c in url):
        shown = ", ".join(f"{scheme}://" for scheme in schemes)
        raise Refused(400, f"envelope_url: expected a URL starting with {shown}")
    return url


async def release_envelope_url(config: TrackerConfig, request: Request, release: str,
                               url: str | None) -> str:
    """The envelope URL a deployment or campaign of ``release`` hands to devices.

    With the firmware server's releases (``TrackerConfig.releases``), ``release`` must be an
    uploaded release (422 otherwise): its URL is derived (``public_url`` or the URL the request
    came to, then ``/envelopes/<sha256 of its envelope>``), and an ``envelope_url`` given anyway
    must end in that path (a mirror or CDN may serve it; it may not name another release's
    envelope: 422). Without them, ``envelope_url`` is required and taken as given.
    """
    if config.releases is None:
        if url is None:
            raise Refused(400, "envelope_url: expected the URL of the release's envelope (this "
                               "tracker has no firmware server to derive it from)")
        return url
    try:
        known = await run_in_threadpool(config.releases, release)
    except StorageError:
        raise Refused(500, "the tracker could not read the firmware server's releases"
                       ) from None
    if known is None:
        raise Refused(422, f"release: {release} is not on the firmware server; upload it "
                           "first (suitkit upload) and name it by its id, the manifest digest")
    path = f"/envelopes/{known.envelope_sha256}"
    if url is None:
        base = config.public_url or str(request.base_url)
        return base.rstrip("/") + path
    try:
        parts = urlsplit(url)
    except ValueError:
        raise Refused(400, f"envelope_url: {url[:100]!r} is not a URL") from None
    if parts.query or parts.fragment or not parts.path.endswith(path):
        raise Refused(422, f"envelope_url: {url[:100]} is not the envelope of release "
                           f"{release}; expected a URL ending in {path} (or leave "
                           "envelope_url out: the server derives it)")
    return url



# ============================================================================ pages


def encode_cursor(kind: str, *key: Any) -> str:
    """An opaque cursor for the sort key ``key`` of a list ``kind`` (base64url of JSON)."""
    text = json.dumps([kind, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, types: tuple[type | tuple[type, ...], ...]
                  ) -> list[Any]:
    """The key in a cursor of ``encode_cursor(kind, ...)`` whose items have ``types`` (a
    tuple of types: any of them, e.g. ``(str, type(None))``); ``Refused`` (400) for anything
    else."""
    bad = Refused(400, f"after: expected the cursor 'next' of a previous page of this list, "
                       f"got {cursor[:40]!r}")
    if len(cursor) > _MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw.decode(), parse_constant=_no_constant)
    except (ValueError, binascii.Error, _BadJson, RecursionError):
        raise bad from None
    if (not isinstance(doc, list) or len(doc) != len(types) + 1 or doc[0] != kind
            or not all(type(v) in (t if isinstance(t, tuple) else (t,))
                       for v, t in zip(doc[1:], types, strict=True))):
        raise bad
    if any(isinstance(v, str) and ("\x00" in v or not _is_utf8(v)) for v in doc[1:]):
        raise bad
    return doc[1:]


PAGE_PARAMETERS: dict[str, Any] = {"parameters": [
    {"name": "limit", "in": "query", "required": False,
     "description": f"items per page, 1 to {MAX_PAGE}",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
    {"name": "after", "in": "query", "required": False,
     "description": "the cursor 'next' of the page before (opaque)",
     "schema": {"type": "string"}},
]}
"""``openapi_extra`` of a paged route (``page_params`` reads the two parameters itself, so
that a bad one gets a message with the range and what was seen)."""

PAGE_QUERY = frozenset({"limit", "after", "total"})
"""The query parameters every list takes (``check_query``'s ``allowed`` adds the filters)."""


def query_parameter(name: str, description: str, schema: dict[str, Any], *,
                    repeatable: bool = False) -> dict[str, Any]:
    """One query parameter of a route's OpenAPI ``parameters``; ``repeatable``: an array
    (``?state=a&state=b``, or ``?state=a,b``), at most ``MAX_FILTER_VALUES`` values."""
    if repeatable:
        schema = {"type": "array", "items": schema, "maxItems": MAX_FILTER_VALUES}
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema, **({"style": "form", "explode": True} if repeatable else {})}


def list_parameters(*filters: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a list: ``limit``, ``after``, ``total`` and the ``filters``
    (``query_parameter``)."""
    return {"parameters": [*PAGE_PARAMETERS["parameters"], query_parameter(
        "total", "true: the answer's 'total' counts every item of the list (its filters "
                 "applied), in one COUNT", {"type": "boolean", "default": False}), *filters]}


def check_query(request: Request, allowed: Collection[str],
                repeatable: Collection[str] = ()) -> None:
    """Refuse (400, naming it) a query parameter the route does not take, and one given twice
    that is not ``repeatable``: a filter the server ignored would answer a list that looks
    filtered and is not."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in allowed:
            raise Refused(400, f"{name[:40]!r}: not a query parameter of this list; expected "
                               f"{', '.join(sorted(allowed))}")
        if name in seen and name not in repeatable:
            raise Refused(400, f"{name}: given more than once; expected one value")
        seen.add(name)


def list_param(request: Request, name: str, allowed: Collection[str] | None = None
               ) -> list[str]:
    """The values of a filter: the parameter repeated and/or comma-separated, each stripped,
    at most ``MAX_FILTER_VALUES``; each one of ``allowed`` when given (400 otherwise)."""
    values: list[str] = []
    for given in request.query_params.getlist(name):
        for part in given.split(","):
            value = part.strip()
            if not value or len(value) > _MAX_QUERY_VALUE or "\x00" in value:
                raise Refused(400, f"{name}: expected a value of 1 to {_MAX_QUERY_VALUE} "
                                   f"characters, got {value[:40]!r}")
            if allowed is not None and value not in allowed:
                raise Refused(400, f"{name}: expected one of {', '.join(allowed)}, got "
                                   f"{value[:40]!r}")
            values.append(value)
            if len(values) > MAX_FILTER_VALUES:
                raise Refused(400, f"{name}: at most {MAX_FILTER_VALUES} values")
    return list(dict.fromkeys(values))


def flag_param(request: Request, name: str) -> bool:
    """A boolean query parameter: true/false (also 1/0, yes/no); absent: false."""
    text = request.query_params.get(name)
    if text is None:
        return False
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise Refused(400, f"{name}: expected true or false, got {text[:20]!r}")


def want_total(request: Request) -> bool:
    """``?total=true``: the answer carries ``total``."""
    return flag_param(request, "total")


def moment_param(request: Request, name: str) -> datetime | None:
    """An RFC 3339 date-time with its offset (``2026-01-31T12:00:00Z``), as naive UTC (how
    the database keeps times); ``None`` when absent; 400 otherwise."""
    text = request.query_params.get(name)
    if text is None:
        return None
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value) if "T" in value.upper() else None
    except ValueError:
        moment = None
    try:
        utc = moment.astimezone(UTC) if moment is not None and moment.tzinfo else None
    except OverflowError:  # year 1 or 9999 moved across midnight by its offset
        utc = None
    if utc is None:
        raise Refused(400, f"{name}: expected an RFC 3339 date-time with its offset, such as "
                           f"2026-01-31T12:00:00Z, got {text[:40]!r}")
    return utc.replace(tzinfo=None)


def page_params(request: Request, kind: str, types: tuple[type | tuple[type, ...], ...]
                ) -> tuple[int, list[Any] | None, str]:
    """The query's ``limit`` (1 to ``MAX_PAGE``, default ``DEFAULT_PAGE``), the key in its
    ``after`` cursor (``None`` for the first page) and the cursor as given; 400 otherwise."""
    text = request.query_params.get("limit")
    limit = DEFAULT_PAGE
    if text is not None:
        digits = text.strip()
        limit = int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 8 else 0
        if not 1 <= limit <= MAX_PAGE:
            raise Refused(400, f"limit: expected a whole number from 1 to {MAX_PAGE}, got "
                               f"{text[:20]!r}")
    after = request.query_params.get("after")
    return limit, None if after is None else decode_cursor(after, kind, types), after or ""


def created_id_key(key: list[Any] | None, cursor: str, *, max_id: int = MAX_DEVICE_ID
                   ) -> tuple[datetime, str] | None:
    if key is None:
        return None
    try:
        created = datetime.fromisoformat(key[0])
    except ValueError:
        created = None
    if created is None or created.tzinfo is not None or len(key[1]) > max_id:
        raise Refused(400, f"after: expected the cursor 'next' of a previous page of this "
                           f"list, got {cursor[:40]!r}")
    return created, key[1]


def paged(key: str, page: Page, cursor: Callable[[tuple[Any, ...]], str],
           **extra: Any) -> JSONResponse:
    """The one shape of a list's answer: ``{key: [...], "next": cursor or null}``, and
    ``"total": n`` when it was asked for (``Page.total``)."""
    doc = {**extra, key: page.items,
           "next": cursor(page.next) if page.next is not None else None}
    if page.total is not None:
        doc["total"] = page.total
    return JSONResponse(doc)



# ============================================================================ the device API


def serve_device_api(router: APIRouter, routes: Collection[tuple[str, str]]
                     ) -> dict[str, BaseRoute]:
    """Serve each route of ``router`` at ``LEGACY_DEVICE_API/{device_id}<suffix>`` with one
    of the ``routes`` (method, suffix) at ``DEVICE_API/{device_id}<suffix>`` too, the same
    endpoint, its OpenAPI entry in the tag "device API"; the legacy one is marked
    ``deprecated``. Called before the router is mounted (mounting copies its routes). Returns
    the new routes by ``"METHOD suffix"`` (a plain route names itself in the scope)."""
    added: dict[str, BaseRoute] = {}
    legacy = f"{LEGACY_DEVICE_API}/{{device_id}}"
    for route in list(router.routes):
        if not isinstance(route, Route) or not route.path.startswith(legacy):
            continue
        suffix = route.path.removeprefix(legacy)
        for method in sorted(route.methods or ()):
            if (method, suffix) not in routes:
                continue
            clone = copy.copy(route)
            clone.path = f"{DEVICE_API}/{{device_id}}{suffix}"
            clone.path_regex, clone.path_format, clone.param_convertors = compile_path(
                clone.path)
            if isinstance(route, APIRoute) and isinstance(clone, APIRoute):
                route.deprecated = True
                clone.tags = ["device API"]
            router.routes.append(clone)
            added.setdefault(f"{method} {suffix}", clone)
    return added


# ============================================================================ lifespans


@asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``work`` as a task while the block runs (a router's lifespan); cancel it after."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


