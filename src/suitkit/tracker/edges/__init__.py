"""The status tracker's protocol edges: one module per protocol, each only translating to and
from calls of ``tracker.service`` (and ``tracker.campaigns``).

- ``http_api``: the suitkit JSON API (devices, inventory, events, reports, deployments, tokens,
  audit);
- ``campaigns_http``: the campaign routes;
- ``push_http``: server-sent events and long-polls of update notices;
- ``lwm2m``: the LwM2M server (CoAP, not HTTP: the CLI starts it beside the routers).

An edge never imports another edge; what several HTTP edges share is ``tracker.web``.
``create_router`` mounts the JSON API and the campaign routes as one router (what the CLI and
the tests mount); the CLI's wiring adds the push routes beside it.
"""

from __future__ import annotations

from fastapi import APIRouter

from suitkit.tracker.auth import Authenticator
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges.campaigns_http import create_campaign_router
from suitkit.tracker.edges.http_api import create_api_router
from suitkit.tracker.service import TrackerDB, open_db

__all__ = ["create_router"]


def create_router(config: TrackerConfig, db: TrackerDB | None = None,
                  authenticator: Authenticator | None = None) -> APIRouter:
    """The tracker's routes (the JSON API and campaigns) over ``db`` (default:
    ``open_db(config.db_url)``), checked by ``authenticator`` (default: one over ``config`` and
    ``db``).

    Raises:
        StorageError: the database cannot be opened.
    """
    tracker = db if db is not None else open_db(config.db_url, clock=config.clock,
                                                 quotas=config.quotas)
    auth = authenticator if authenticator is not None else Authenticator(config, tracker)
    router = create_api_router(config, tracker, auth)
    router.include_router(create_campaign_router(config, tracker, auth))
    return router
