"""Wiring of the status tracker's notices for ``suitkit serve`` (the roles do not import each
other: the CLI connects the tracker's hub to the firmware server's HTTP app and CoAP site).

``tracker_routes(config, mqtt=...)`` opens the tracker database once and returns the tracker's
routers (the API and ``/notifications``), the CoAP resources to add to the firmware server's
site (``/notices/<device-id>``) and the hub and MQTT publisher to stop at shutdown.
``release_lookup(data)`` gives the tracker the firmware server's releases
(``TrackerConfig.releases``): deployments and campaigns name an uploaded release.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suitkit.errors import StorageError, SuitError

__all__ = ["DatabaseReleases", "TrackerWiring", "parse_host_port", "release_lookup",
           "tracker_routes"]


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


def release_lookup(records: Any) -> Callable[[str], Any]:
    """``TrackerConfig.releases`` over the firmware server's release records (``records``, a
    ``server.store.ReleaseRecords``: ``DatabaseReleases`` in ``serve``): the release with an
    id (``tracker.config.KnownRelease``), or ``None`` for an id that is not stored (or that is
    no release id at all). Reads the records at each call: an upload through another replica
    is seen at once."""
    from suitkit.server.store import is_release_id  # noqa: PLC0415
    from suitkit.tracker.config import KnownRelease  # noqa: PLC0415

    def lookup(release: str) -> KnownRelease | None:
        if not is_release_id(release):
            return None
        record = records.get_release(release)
        if record is None:
            return None
        return KnownRelease(record.release_id, record.envelope)

    return lookup


class DatabaseReleases:
    """The firmware server's release records (``server.store.ReleaseRecords``) in the
    tracker's database (``TrackerDB.put_release``): the record of which releases exist is
    written when the upload commits, in one transaction under the lock of the release's id,
    by ``server.store.store_release``'s rule; every replica on the database sees it (the
    blobs are in the blob directory the replicas share)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._lock = threading.Lock()  # SQLite: one upload of a new id at a time here

    def add_release(self, record: Any) -> tuple[Any, bool]:
        from suitkit.server.store import ReleaseRecord, store_release  # noqa: PLC0415

        def decide(stored: dict[str, Any] | None) -> dict[str, Any]:
            previous = _record(stored) if stored is not None else None
            kept: ReleaseRecord = store_release(previous, record)
            return kept.to_json()
        with self._lock:
            doc, created = self.db.put_release(record.release_id, record.sequence_number,
                                               record.envelope, decide)
        return _record(doc), created

    def get_release(self, release_id: str) -> Any:
        from suitkit.server.store import is_release_id  # noqa: PLC0415

        if not is_release_id(release_id):
            raise StorageError(f"not a release id: {release_id[:80]!r}")
        doc = self.db.release(release_id)
        return _record(doc) if doc is not None else None

    def releases(self) -> list[Any]:
        return [_record(doc) for doc in self.db.releases()]

    def import_files(self, data: Path) -> int:
        """Record the releases of ``data/releases`` that the database does not hold yet (a
        data directory from before the database kept them); how many."""
        from suitkit.server.store import BlobStore, ReleaseConflict  # noqa: PLC0415

        added = 0
        for record in BlobStore(data).releases():
            if self.db.release(record.release_id) is None:
                with contextlib.suppress(ReleaseConflict):  # recorded meanwhile, otherwise
                    added += self.add_release(record)[1]
        return added


def _record(doc: dict[str, Any]) -> Any:
    from suitkit.server.store import ReleaseRecord  # noqa: PLC0415

    try:
        return ReleaseRecord.from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StorageError(f"a release record in the tracker database is malformed: "
                           f"{e}") from e


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
    relay: Any = None
    """The ``notices.pg.NoticeRelay`` (other replicas' notices)."""
    releases: Any = None
    """``DatabaseReleases`` (``tracker_routes(data=...)``): the firmware server's
    ``ServerConfig.releases``."""

    def close(self) -> None:
        """End SSE streams and long-polls; stop hearing other replicas and the MQTT publisher;
        close the database's pooled connections (a PostgreSQL connection left to the garbage
        collector was a leak)."""
        if self.relay is not None:
            self.relay.stop()
        self.hub.close()
        if self.publisher is not None:
            self.publisher.stop()
        if self.db is not None:
            self.db.engine.dispose()


def tracker_routes(config: Any, *, mqtt: tuple[str, int] | None = None, coap: bool = False,
                   heartbeat: float = 15.0, max_push: int = 10_000,
                   pool: Any = None, data: Path | None = None) -> TrackerWiring:
    """The tracker over ``config`` (a ``tracker.config.TrackerConfig``) with its notices
    (``heartbeat``: seconds between SSE heartbeats; ``max_push``: SSE streams and long-polls
    of all devices at once; ``pool``: the database's ``store.PoolOptions``). On PostgreSQL a
    ``notices.pg.NoticeRelay`` hears the other replicas' changes. ``data``: the firmware
    server's data directory: its release records are the database's (``DatabaseReleases``,
    the records of ``data/releases`` imported once), and deployments and campaigns name a
    release it holds (``TrackerConfig.releases``).

    Raises:
        StorageError: the database cannot be opened.
    """
    from suitkit.tracker.auth import Authenticator, release_authorizer  # noqa: PLC0415
    from suitkit.tracker.edges import create_router  # noqa: PLC0415
    from suitkit.tracker.edges.push_http import create_push_router  # noqa: PLC0415
    from suitkit.tracker.notices import NotificationHub  # noqa: PLC0415
    from suitkit.tracker.notices.mqtt import MqttPublisher  # noqa: PLC0415
    from suitkit.tracker.notices.pg import NoticeRelay  # noqa: PLC0415
    from suitkit.tracker.service import open_db  # noqa: PLC0415

    db = open_db(config.db_url, clock=config.clock, quotas=config.quotas, pool=pool)
    releases = None
    if data is not None:
        releases = DatabaseReleases(db)
        try:
            releases.import_files(data)
        except StorageError:
            db.engine.dispose()
            raise
        config = dataclasses.replace(config, releases=release_lookup(releases))
    hub = NotificationHub(db.notice, serials=db.store.serials)
    db.add_listener(hub.changed)
    relay = NoticeRelay(db.store, hub)  # other replicas' changes (PostgreSQL)
    relay.start()
    auth = Authenticator(config, db)
    routers = (create_router(config, db, auth),
               create_push_router(auth, hub, heartbeat=heartbeat, max_total=max_push))
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
            relay.stop()
            db.engine.dispose()
            raise SuitError(f"cannot start the MQTT publisher for {mqtt[0]}:{mqtt[1]}: "
                            f"{e}") from e
    return TrackerWiring(routers, resources, hub, publisher, db=db,
                         authorizer=release_authorizer(auth), relay=relay, releases=releases)
