"""The operator's dashboard: static pages over the status tracker's and firmware server's APIs.

``create_dashboard_router()`` returns a FastAPI ``APIRouter`` that serves four files under
``/dashboard/`` (``index.html``, ``app.js``, ``style.css``, ``favicon.svg``, in ``static/``):
plain HTML, CSS and an ES module, no framework, no build step, nothing from another origin.
The page talks to ``/api/v1/...`` with the operator's API token (pasted at login, kept in
``sessionStorage``, sent as ``Authorization: Bearer``): the dashboard itself holds no
secret and has no routes that change anything, so it imports nothing from the other roles
(the CLI mounts it next to the tracker's router; design.md §2).

Every answer carries a strict Content-Security-Policy (``default-src 'self'``: no inline
script or style, no other origin, no framing), ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and an ``ETag`` with ``Cache-Control: no-cache`` (the
browser revalidates, so a new version of suitkit is picked up at once; a 304 costs no body).

docs/dashboard.md describes the views.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

__all__ = ["CONTENT_SECURITY_POLICY", "PREFIX", "SECURITY_HEADERS", "create_dashboard_router"]

PREFIX = "/dashboard"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'")
"""No inline script or style, no eval, nothing from another origin, never inside a frame."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


def _load_assets() -> dict[str, _Asset]:
    """The static files, read once (they ship inside the package)."""
    folder = resources.files(__name__).joinpath("static")
    assets = {}
    for name, media_type in _MEDIA_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        assets[name] = _Asset(body, media_type, etag)
    return assets


def _serve(asset: _Asset, request: Request) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    wanted = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip() for tag in wanted.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def create_dashboard_router(*, redirect_root: bool = False) -> APIRouter:
    """The dashboard's routes: ``GET /dashboard/`` (the page) and its two assets.

    ``redirect_root``: also answer ``GET /`` with a redirect to ``/dashboard/``.
    """
    assets = _load_assets()
    router = APIRouter(tags=["dashboard"], include_in_schema=False)

    @router.get(PREFIX)
    async def bare() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308, headers=SECURITY_HEADERS)

    @router.get(f"{PREFIX}/")
    async def page(request: Request) -> Response:
        return _serve(assets["index.html"], request)

    @router.get(f"{PREFIX}/{{name}}")
    async def asset(request: Request, name: str) -> Response:
        found = assets.get(name)
        if found is None or name == "index.html":
            raise HTTPException(404, f"no dashboard file {name[:40]!r}; the dashboard is at "
                                     f"{PREFIX}/")
        return _serve(found, request)

    if redirect_root:
        @router.get("/")
        async def root() -> Response:
            return RedirectResponse(f"{PREFIX}/", status_code=307, headers=SECURITY_HEADERS)

    return router
