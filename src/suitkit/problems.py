"""Problem details for HTTP APIs (RFC 9457): the one shape of every error the firmware server
and the status tracker answer over HTTP.

An error is ``application/problem+json``::

    {"type": "urn:suitkit:problem:not-found", "title": "Not found", "status": 404,
     "detail": "no device 'x'", "error": "no device 'x'"}

``type`` is a stable URI per kind of error (``PROBLEM_TYPES``, listed in docs/server.md
"Errors"); a program branches on it, never on the text. ``detail`` is the one-line, readable
message (what was expected, what was seen, where); ``error`` repeats it, for the clients that
read suitkit's errors before problem details (agents, the CLI, the simulator, the dashboard).

``problem_response`` makes the answer (server/app.py's ``_error`` calls it for every error of
the app, the tracker's ``Refused`` included); ``problem_bytes`` is the body for the ASGI
middlewares that answer without Starlette; ``problem_responses`` is what a route declares in
OpenAPI for the statuses it really returns (``Problem`` is the schema).

Deliberately not here: which status a refusal gets (the edges decide), extension members
beyond ``error``, the hawkBit DDI contract's own error bodies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

__all__ = ["PROBLEM_MEDIA_TYPE", "PROBLEM_SCHEMA_REF", "PROBLEM_TYPES", "Problem",
           "ProblemType", "problem_bytes", "problem_doc", "problem_response",
           "problem_responses", "problem_type"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"
_URN = "urn:suitkit:problem:"


@dataclass(frozen=True, slots=True)
class ProblemType:
    """A kind of error: its HTTP status, its ``type`` URI and its ``title``."""

    status: int
    slug: str
    title: str
    meaning: str

    @property
    def uri(self) -> str:
        return f"{_URN}{self.slug}"


PROBLEM_TYPES: Mapping[int, ProblemType] = {t.status: t for t in (
    ProblemType(400, "invalid-request", "Invalid request",
                "a parameter, a header or the body is malformed or out of range; detail "
                "names it"),
    ProblemType(401, "unauthenticated", "Unauthenticated",
                "no credential, or an unknown, wrong, expired or revoked one"),
    ProblemType(403, "forbidden", "Forbidden",
                "the credential's role may not do this (or four-eyes, a report key missing)"),
    ProblemType(404, "not-found", "Not found",
                "no such route, device, token, campaign, release or blob"),
    ProblemType(405, "method-not-allowed", "Method not allowed",
                "the route exists, not with this method"),
    ProblemType(409, "conflict", "Conflict",
                "the request contradicts the current state (a transition, an assignment, an "
                "identity, a campaign's status)"),
    ProblemType(413, "too-large", "Request too large",
                "the body (or one of its parts) is over its limit"),
    ProblemType(415, "unsupported-media-type", "Unsupported media type",
                "the body is not of the media type the route takes"),
    ProblemType(422, "unprocessable", "Unprocessable content",
                "well-formed, but refused for what it says: an envelope that does not "
                "verify, an image that does not match, a release the server does not hold"),
    ProblemType(429, "rate-limited", "Too many requests",
                "over a per-device rate or cap; retry after Retry-After seconds"),
    ProblemType(500, "internal-error", "Internal server error",
                "a fault of the server (logged with the request id)"),
    ProblemType(501, "not-implemented", "Not implemented",
                "a feature this server was started without"),
    ProblemType(503, "unavailable", "Service unavailable",
                "over a cap of requests, uploads, downloads or push streams; retry after "
                "Retry-After seconds"),
    ProblemType(507, "storage-full", "Insufficient storage",
                "the disk is full: nothing of the request was stored"),
)}
"""Every ``type`` the API answers, by status (a status not here: ``about:blank``)."""


def problem_type(status: int) -> tuple[str, str]:
    """The ``type`` URI and ``title`` of an error of ``status``."""
    known = PROBLEM_TYPES.get(status)
    if known is not None:
        return known.uri, known.title
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return "about:blank", title  # RFC 9457 §4.2.1: the status says it all


class Problem(BaseModel):
    """An error (RFC 9457 problem details, plus ``error``: the same text as ``detail``)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="a stable URI per kind of error (docs/server.md, Errors)",
                      examples=["urn:suitkit:problem:not-found"])
    title: str = Field(description="a short summary of the kind of error")
    status: int = Field(ge=400, le=599, description="the HTTP status code")
    detail: str = Field(description="what is wrong, where, what was expected (one line)")
    error: str = Field(description="the same text as detail (suitkit's errors before RFC 9457)")


def problem_doc(status: int, detail: str) -> dict[str, Any]:
    uri, title = problem_type(status)
    return {"type": uri, "title": title, "status": status, "detail": detail, "error": detail}


def problem_bytes(status: int, detail: str) -> bytes:
    return json.dumps(problem_doc(status, detail), separators=(",", ":")).encode()


def problem_response(status: int, detail: str, headers: Mapping[str, str] | None = None
                     ) -> JSONResponse:
    """The answer for an error: ``application/problem+json`` with ``status``."""
    return JSONResponse(problem_doc(status, detail), status_code=status,
                        headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


def problem_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for the errors it answers: each status with the ``Problem``
    schema under ``application/problem+json``; ``described`` gives a route's own description
    of a status (``s409="..."``)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = described.get(f"s{status}")
        if text is None:
            known = PROBLEM_TYPES.get(status)
            text = known.meaning if known is not None else problem_type(status)[1]
        out[status] = {"description": text, "content": {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}}}
    return out
