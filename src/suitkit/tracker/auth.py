"""Who is calling the status tracker, and what each role may do (issues #4 and #6).

Every call carries ``Authorization: Bearer <token>``, one of:

- the **bootstrap admin token** (``TrackerConfig.admin_token``, from ``--admin-token-file``),
  compared in constant time; it creates the first API tokens;
- an **API token** ``tok_<id>.<secret>`` with a role ``admin``, ``author`` or ``operator``
  (``model.ApiToken``: hashed secret, expiry, revocation);
- a **device credential** ``<device-id>.<secret>`` (returned once at registration): it opens
  that device's own records and nothing else.

``Authenticator.principal`` answers 401 (with ``WWW-Authenticate: Bearer``) for a missing,
unknown, wrong, expired or revoked token; ``require``, ``require_device`` and
``require_device_or`` answer 403 naming who may call. Errors are ``Refused`` (a Starlette
``HTTPException``) so the firmware server's handler turns them into problem details
(``suitkit.problems``: ``type``, ``title``, ``status``, ``detail`` and ``error``).

Roles: ``admin`` does everything; ``author`` uploads releases and cannot deploy; ``operator``
approves and deploys and cannot upload; ``device`` reaches only its own records.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from suitkit.errors import StorageError
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.service import TokenCheck, TrackerDB

__all__ = ["BOOTSTRAP_ADMIN", "ROLES", "TOKEN_PREFIX", "WANT_BEARER", "Authenticator",
           "Principal", "Refused", "Role", "release_authorizer"]

Role = Literal["admin", "author", "operator", "device"]
ROLES: tuple[Role, ...] = get_args(Role)
TOKEN_PREFIX = "tok_"  # noqa: S105 - a prefix, not a secret
BOOTSTRAP_ADMIN = "bootstrap-admin"
WANT_BEARER = ("this API requires 'Authorization: Bearer <token>' (an API token "
               "tok_<id>.<secret>, the admin token, or a device credential "
               "<device-id>.<secret>)")
"""The 401 for a request without a bearer token."""
_MAX_TOKEN = 256
_UPLOAD: tuple[Role, ...] = ("admin", "author")
_READ: tuple[Role, ...] = ("admin", "author", "operator")


class Refused(HTTPException):
    """A refused request; the firmware server's handler turns it into problem details."""

    def __init__(self, status: int, message: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(status, message, headers)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role and a name for the audit log."""

    role: Role
    name: str
    """The API token's name, ``"bootstrap-admin"``, or the device id."""
    token_id: str | None
    """The API token's id; ``None`` for the bootstrap admin token and devices."""
    device_id: str | None
    """Set only for a device."""


def _roles_text(roles: tuple[Role, ...]) -> str:
    names = list(roles)
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} or {names[-1]}"


class Authenticator:
    """Turns a request's bearer token into a ``Principal`` and checks roles.

    The principal is computed once per request (kept on ``request.state``).
    """

    def __init__(self, config: TrackerConfig, db: TrackerDB) -> None:
        self._admin = config.admin_token.encode() if config.admin_token is not None else None
        self._db = db

    # ---- synchronous core (also used by the firmware server's hook, in a worker thread)

    def check(self, token: str) -> Principal:
        """The principal ``token`` stands for.

        Raises:
            Refused: 401 for an unknown, wrong, expired or revoked token; 500 when the
                database fails.
        """
        if not token or len(token) > _MAX_TOKEN:
            raise Refused(401, "the credential is not valid")
        expected = self._admin if self._admin is not None else b"\0" * 32
        if hmac.compare_digest(token.encode(), expected) and self._admin is not None:
            return Principal("admin", BOOTSTRAP_ADMIN, None, None)
        try:
            if token.startswith(TOKEN_PREFIX):
                token_id, _, secret = token[len(TOKEN_PREFIX):].partition(".")
                return _token_principal(token_id, self._db.check_token(token_id, secret))
            device_id, dot, secret = token.partition(".")
            if dot and self._db.authenticate(device_id, secret):
                return Principal("device", device_id, None, device_id)
        except StorageError:
            raise Refused(500, "the tracker could not read its database") from None
        raise Refused(401, "the credential is not valid")

    # ---- the request edge

    async def principal(self, request: Request) -> Principal:
        """The caller. Raises ``Refused`` 401 (missing or invalid credentials)."""
        known = getattr(request.state, "suitkit_principal", None)
        if isinstance(known, Principal):
            return known
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, WANT_BEARER)
        who: Principal = await run_in_threadpool(self.check, token)
        request.state.suitkit_principal = who
        return who

    async def require(self, request: Request, *roles: Role) -> Principal:
        """The caller, who must have one of ``roles`` (403 otherwise)."""
        who = await self.principal(request)
        if who.role not in roles:
            raise Refused(403, f"this needs the {_roles_text(roles)} role; the credential "
                               f"is {_a(who.role)}")
        return who

    async def require_device(self, request: Request, device_id: str) -> Principal:
        """The caller, who must be device ``device_id`` itself (403 otherwise)."""
        who = await self.principal(request)
        if who.role != "device":
            raise Refused(403, "only the device itself may send this (its device "
                               f"credential); the credential is {_a(who.role)}")
        if who.device_id != device_id:
            raise Refused(403, "a device credential opens only that device's own records")
        return who

    async def require_device_or(self, request: Request, device_id: str, *roles: Role
                                ) -> Principal:
        """The caller: device ``device_id`` itself or one of ``roles``; for a role, 404 when
        there is no such device."""
        who = await self.principal(request)
        if who.role == "device":
            if who.device_id != device_id:
                raise Refused(403, "a device credential opens only that device's own records")
            return who
        if who.role not in roles:
            raise Refused(403, f"this needs the {_roles_text(roles)} role or the device's own "
                               f"credential; the credential is {_a(who.role)}")
        try:
            exists: bool = await run_in_threadpool(self._db.exists, device_id)
        except StorageError:
            raise Refused(500, "the tracker could not read its database") from None
        if not exists:
            raise Refused(404, f"no device {device_id[:40]!r}")
        return who


def _a(role: str) -> str:
    return f"an {role} credential" if role[0] in "aeiou" else f"a {role} credential"


def _token_principal(token_id: str, check: TokenCheck) -> Principal:
    if check.status == "expired":
        raise Refused(401, f"the token {TOKEN_PREFIX}{token_id} has expired")
    if check.status == "revoked":
        raise Refused(401, f"the token {TOKEN_PREFIX}{token_id} has been revoked")
    if check.status != "valid" or check.role not in ROLES or check.name is None:
        raise Refused(401, "the credential is not valid")
    role: Role = "admin" if check.role == "admin" else (
        "author" if check.role == "author" else "operator")
    return Principal(role, check.name, token_id, None)


def release_authorizer(auth: Authenticator
                       ) -> Callable[[str, str], Literal["allowed", "forbidden", "invalid"]]:
    """The firmware server's ``ServerConfig.authorizer`` hook over the tracker's tokens:
    ``upload`` needs admin or author, ``read`` admin, author or operator. Synchronous (the
    server runs it in a worker thread)."""

    def authorize(token: str, action: str) -> Literal["allowed", "forbidden", "invalid"]:
        try:
            who = auth.check(token)
        except Refused:
            return "invalid"
        allowed = _UPLOAD if action == "upload" else _READ
        return "allowed" if who.role in allowed else "forbidden"

    return authorize
