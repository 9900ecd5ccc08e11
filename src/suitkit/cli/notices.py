"""Wiring of the status tracker's notices for ``suitkit serve`` (the roles do not import each
other: the CLI connects the tracker's hub to the firmware server's HTTP app and CoAP site).

``tracker_routes(config, mqtt=...)`` opens the tracker database once and returns the tracker's
routers (the API and ``/notifications``), the CoAP resources to add to the firmware server's
site (``/notices/<device-id>``) and the hub and MQTT publisher to stop at shutdown.
``release_lookup(data)`` gives the tracker the firmware server's releases
(``TrackerConfig.releases``): deployments and campaigns name an uploaded release.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suitkit.errors import SuitError

__all__ = ["PUSH_REFUSED", "TrackerWiring", "parse_host_port", "push_refused",
           "release_lookup", "tracker_routes"]


def parse_host_port(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too).

    Raises:
        ValueError: not HOST:PORT with a port in 1..65535 (one line naming ``option``).
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if (not sep or not host or not (port.isascii() and port.isdigit())
            or not 0 < int(port) < 65536):
        raise ValueError(f"{option}: expected HOST:PORT such as 127.0.0.1:1883, got {value!r}")
    return host, int(port)


def release_lookup(data: Path) -> Callable[[str], Any]:
    """``TrackerConfig.releases`` over the firmware server's store in ``data``: the release
    with an id (``tracker.config.KnownRelease``), or ``None`` for an id the store does not
    hold (or that is no release id at all). Reads the store at each call: an upload by another
    replica is seen at once."""
    from suitkit.server.store import BlobStore, is_release_id  # noqa: PLC0415
    from suitkit.tracker.config import KnownRelease  # noqa: PLC0415

    store = BlobStore(data)

    def lookup(release: str) -> KnownRelease | None:
        if not is_release_id(release):
            return None
        record = store.get_release(release)
        if record is None:
            return None
        return KnownRelease(record.release_id, record.envelope)

    return lookup


PUSH_REFUSED = ("push notices (server-sent events, long-polls) need a server with --workers 1: "
                "a deployment made in one worker process does not reach a stream held by "
                "another; poll with POST /api/v1/devices/{id}/checkin")
"""The 501 of the notices route under ``serve --workers N`` (docs/server.md)."""


def push_refused() -> Any:
    """A router whose notices route (``GET /api/v1/devices/{id}/notifications``) answers 501
    with ``PUSH_REFUSED``, for every caller (no state is read)."""
    from fastapi import APIRouter  # noqa: PLC0415
    from fastapi.responses import JSONResponse  # noqa: PLC0415

    router = APIRouter()

    @router.get("/api/v1/devices/{device_id}/notifications",
                summary="Push notices: off on a server with several worker processes (501)")
    async def notifications(device_id: str) -> JSONResponse:
        return JSONResponse({"error": PUSH_REFUSED}, status_code=501)

    return router


@dataclass(frozen=True, slots=True)
class TrackerWiring:
    """What ``serve`` needs: routers, CoAP resources, and ``close()`` for the shutdown."""

    routers: tuple[Any, ...]
    coap_resources: tuple[tuple[tuple[str, ...], Any], ...]
    hub: Any
    publisher: Any
    db: Any = None
    authorizer: Any = None
    """The firmware server's ``ServerConfig.authorizer`` over the tracker's API tokens."""

    def close(self) -> None:
        """End SSE streams and long-polls; stop the MQTT publisher; close the database's pooled
        connections (a PostgreSQL connection left to the garbage collector was a leak)."""
        self.hub.close()
        if self.publisher is not None:
            self.publisher.stop()
        if self.db is not None:
            self.db.engine.dispose()


def tracker_routes(config: Any, *, mqtt: tuple[str, int] | None = None, coap: bool = False,
                   heartbeat: float = 15.0, max_push: int = 10_000,
                   push: bool = True) -> TrackerWiring:
    """The tracker over ``config`` (a ``tracker.config.TrackerConfig``) with its notices
    (``heartbeat``: seconds between SSE heartbeats; ``max_push``: SSE streams and long-polls
    of all devices at once). ``push=False`` (``serve --workers N``): the notices route answers
    501 with one line (``push_refused``): the hub of one process does not hear the
    deployments made in another, so a stream would wait for ever.

    Raises:
        StorageError: the database cannot be opened.
    """
    from suitkit.tracker.auth import Authenticator, release_authorizer  # noqa: PLC0415
    from suitkit.tracker.edges import create_router  # noqa: PLC0415
    from suitkit.tracker.edges.push_http import create_push_router  # noqa: PLC0415
    from suitkit.tracker.notices import NotificationHub  # noqa: PLC0415
    from suitkit.tracker.notices.mqtt import MqttPublisher  # noqa: PLC0415
    from suitkit.tracker.service import open_db  # noqa: PLC0415

    db = open_db(config.db_url, clock=config.clock, quotas=config.quotas)
    hub = NotificationHub(db.pending_update)
    db.add_listener(hub.changed)
    auth = Authenticator(config, db)
    routers = (create_router(config, db, auth),
               create_push_router(auth, hub, heartbeat=heartbeat, max_total=max_push)
               if push else push_refused())
    resources: tuple[tuple[tuple[str, ...], Any], ...] = ()
    if coap:
        from suitkit.tracker.notices.coap import NOTICES_PATH, NoticeResource  # noqa: PLC0415

        resources = ((NOTICES_PATH, NoticeResource(hub)),)
    publisher = None
    if mqtt is not None:
        try:
            publisher = MqttPublisher(hub, *mqtt)
            publisher.start()
        except (ImportError, OSError, ValueError) as e:
            db.engine.dispose()
            raise SuitError(f"cannot start the MQTT publisher for {mqtt[0]}:{mqtt[1]}: "
                            f"{e}") from e
    return TrackerWiring(routers, resources, hub, publisher, db=db,
                         authorizer=release_authorizer(auth))
