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
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suitkit.errors import StorageError, SuitError

_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,49}")  # + ".MD5SUM": a path id

__all__ = ["PUSH_REFUSED", "DatabaseReleases", "TrackerWiring", "parse_host_port",
           "push_refused", "release_artifacts", "release_lookup", "schema_problem",
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


def release_lookup(records: Any) -> Callable[[str], Any]:  # records: ReleaseRecords | Path
    """``TrackerConfig.releases`` over the firmware server's release records (``records``, a
    ``server.store.ReleaseRecords``: ``DatabaseReleases`` in ``serve``): the release with an
    id (``tracker.config.KnownRelease``), or ``None`` for an id that is not stored (or that is
    no release id at all). Reads the records at each call: an upload through another replica
    is seen at once. A ``Path``: the records of the firmware server's store in that data
    directory (``server.store.BlobStore``)."""
    from suitkit.server.store import BlobStore, is_release_id  # noqa: PLC0415
    from suitkit.tracker.config import KnownRelease  # noqa: PLC0415

    if isinstance(records, Path):
        records = BlobStore(records)

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
        from suitkit.tracker.classes import ClassNames  # noqa: PLC0415

        names = [ClassNames(c.vendor_id, c.class_id, c.vendor_name, c.class_name,
                            c.vendor_domain) for c in record.classes]
        with self._lock:
            doc, created = self.db.put_release(record.release_id, record.sequence_number,
                                               record.envelope, decide, names=names)
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


def release_artifacts(data: Path, *, cache: int = 4096, records: Any = None
                      ) -> Callable[[str], Any]:
    """``TrackerConfig.artifacts`` over the firmware server's store in ``data``: a release's
    envelope and images (``tracker.config.ReleaseArtifacts``), ``None`` for an unknown id. The
    SHA-1 and MD5 of a blob are computed the first time it is listed and kept for the
    ``cache`` blobs listed last (blobs are content-addressed: an entry never goes stale).

    Each file's name: the envelope ``<release id>.suit``; an image the name of its integrated
    payload (``#app.swu`` -> ``app.swu``) or its component identifier's last part when that
    is a plain file name, else ``component-<index>.bin``. ``records``: where the release
    records are (``DatabaseReleases`` when the tracker's database keeps them); ``None``: the
    store's files.
    """
    import threading  # noqa: PLC0415
    from collections import OrderedDict  # noqa: PLC0415

    from suitkit.server.store import BlobStore, is_release_id  # noqa: PLC0415
    from suitkit.tracker.config import Artifact, ReleaseArtifacts  # noqa: PLC0415

    store = BlobStore(data)
    kept = records if records is not None else store
    sums: OrderedDict[str, tuple[int, str, str]] = OrderedDict()
    lock = threading.Lock()

    def digests(sha256: str) -> tuple[int, str, str]:
        with lock:
            known = sums.get(sha256)
            if known is not None:
                sums.move_to_end(sha256)
                return known
        sha1, md5, size = hashlib.sha1(usedforsecurity=False), hashlib.md5(
            usedforsecurity=False), 0
        with store.open_blob(sha256) as blob:
            while chunk := blob.read(1 << 20):
                sha1.update(chunk)
                md5.update(chunk)
                size += len(chunk)
        found = (size, sha1.hexdigest(), md5.hexdigest())
        with lock:
            sums[sha256] = found
            while len(sums) > cache:
                sums.popitem(last=False)
        return found

    def artifact(name: str, kind: str, sha256: str) -> Artifact:
        size, sha1, md5 = digests(sha256)
        path = f"/envelopes/{sha256}" if kind == "envelope" else f"/firmware/{sha256}"
        return Artifact(name, path, size, sha256, sha1, md5,
                        "envelope" if kind == "envelope" else "image")

    def lookup(release: str) -> ReleaseArtifacts | None:
        if not is_release_id(release):
            return None
        record = kept.get_release(release)
        if record is None:
            return None
        files = [artifact(f"{record.release_id[:16]}.suit", "envelope", record.envelope)]
        names = {files[0].filename}
        seen = {record.envelope}
        named = [(key.removeprefix("#"), blob) for key, blob in record.integrated.items()]
        for component in record.components:
            if component.blob is not None:
                part = component.identifier[-1] if component.identifier else ""
                try:
                    text = bytes.fromhex(part).decode("ascii")
                except (ValueError, UnicodeDecodeError):
                    text = ""
                named.append((text, component.blob))
        for position, (given, blob) in enumerate(named):
            if blob in seen:
                continue
            seen.add(blob)
            name = given if _FILENAME.fullmatch(given) and given not in names \
                else f"component-{position}.bin"
            names.add(name)
            files.append(artifact(name, "image", blob))
        return ReleaseArtifacts(record.release_id, record.sequence_number, tuple(files),
                                record.version)

    return lookup


PUSH_REFUSED = ("push notices (server-sent events, long-polls) need a server with --workers 1 "
                "or a PostgreSQL database: a deployment made in one worker process does not "
                "reach a stream held by another on SQLite; poll with POST "
                "/device/v1/{id}/checkin")
"""The 501 of the notices route under ``serve --workers N`` (docs/server.md)."""


def push_refused() -> Any:
    """A router whose notices route (``GET /api/v1/devices/{id}/notifications``) answers 501
    with ``PUSH_REFUSED``, for every caller (no state is read)."""
    from fastapi import APIRouter  # noqa: PLC0415
    from fastapi.responses import JSONResponse  # noqa: PLC0415

    from suitkit.problems import problem_response, problem_responses  # noqa: PLC0415

    router = APIRouter()

    @router.get("/api/v1/devices/{device_id}/notifications",
                summary="Push notices: off on a server with several worker processes (501)",
                responses=problem_responses(501, s501=PUSH_REFUSED))
    async def notifications(device_id: str) -> JSONResponse:
        return problem_response(501, PUSH_REFUSED)

    from suitkit.tracker.web import serve_device_api  # noqa: PLC0415

    serve_device_api(router, {("GET", "/notifications")})  # the device API's prefix too
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
    push_clients: Any = None
    """The push router's ``PushClients`` (connected devices per transport)."""
    relay: Any = None
    """The ``notices.pg.NoticeRelay`` (other replicas' notices)."""
    releases: Any = None
    """``DatabaseReleases`` (``tracker_routes(data=...)``): the firmware server's
    ``ServerConfig.releases``."""

    def database_ready(self) -> str | None:
        """``/readyz``'s check of the tracker's database: ``None`` when it answers and its
        schema is the newest this version knows, else one line saying what is wrong (never the
        URL: it may hold a password)."""
        if self.db is None:
            return None
        return schema_problem(self.db.engine)

    def collectors(self) -> tuple[Any, ...]:
        """Prometheus collectors of the tracker for ``/metrics`` (read at each scrape): its
        database pool's connections, and the fleet's series (``tracker.edges.metrics``)."""
        if self.db is None:
            return ()
        from suitkit.server.observe import Gauges  # noqa: PLC0415

        pool = self.db.engine.pool

        def pool_use() -> list[tuple[tuple[str], float]]:
            counts = [(("checked_out",), float(pool.checkedout()))]
            if hasattr(pool, "checkedin"):
                counts.append((("idle",), float(pool.checkedin())))
            return counts

        from suitkit.tracker.edges.metrics import TrackerCollector  # noqa: PLC0415

        clients = self.push_clients
        return (Gauges("suitkit_db_pool_connections", "The tracker database pool's "
                       "connections: checked out (in use) and idle", ["state"], pool_use),
                TrackerCollector(self.db, notices=lambda: self.hub.notices_made,
                                 push_clients=clients.counts if clients is not None
                                 else dict))

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


def schema_problem(engine: Any) -> str | None:
    """``None`` when the database of ``engine`` answers and its schema revision is the newest
    of the tracker's migrations; else one line naming the problem."""
    from alembic.config import Config  # noqa: PLC0415
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from suitkit.tracker.migrations import SCRIPT_LOCATION  # noqa: PLC0415

    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or type(e).__name__).strip().splitlines()
        return f"the tracker database does not answer: {(reason or ['?'])[0][:200]}"
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    head = ScriptDirectory.from_config(config).get_current_head()
    if current != head:
        return (f"the tracker database schema is at {current or 'no revision'}, this version "
                f"needs {head}: run suitkit db upgrade")
    return None


def tracker_routes(config: Any, *, mqtt: tuple[str, int] | None = None, coap: bool = False,
                   heartbeat: float = 15.0, max_push: int = 10_000, pool: Any = None,
                   data: Path | None = None, ddi: Any = None, push: bool = True
                   ) -> TrackerWiring:
    """The tracker over ``config`` (a ``tracker.config.TrackerConfig``) with its notices
    (``heartbeat``: seconds between SSE heartbeats; ``max_push``: SSE streams and long-polls
    of all devices at once; ``pool``: the database's ``store.PoolOptions``). On PostgreSQL a
    ``notices.pg.NoticeRelay`` hears the other replicas' changes. ``data``: the firmware
    server's data directory: its release records are the database's (``DatabaseReleases``,
    the records of ``data/releases`` imported once), and deployments and campaigns name a
    release it holds (``TrackerConfig.releases``). ``ddi``: the hawkBit DDI edge's
    ``DdiOptions``, ``None``: off; it needs ``config.artifacts``. ``push=False``: the
    notices route answers 501 with one line (``push_refused``; ``serve --workers N`` on
    SQLite, where the hub of one process does not hear the deployments made in another, so
    a stream would wait for ever; on PostgreSQL each worker's relay hears them).

    Raises:
        StorageError: the database cannot be opened.
    """
    from suitkit.tracker.auth import Authenticator, release_authorizer  # noqa: PLC0415
    from suitkit.tracker.edges import create_router  # noqa: PLC0415
    from suitkit.tracker.edges.push_http import PushClients, create_push_router  # noqa: PLC0415
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
        config = dataclasses.replace(
            config, releases=release_lookup(releases),
            artifacts=config.artifacts or release_artifacts(data, records=releases))
    hub = NotificationHub(db.notice, serials=db.store.serials)
    db.add_listener(hub.changed)
    relay = NoticeRelay(db.store, hub)  # other replicas' changes (PostgreSQL)
    relay.start()
    auth = Authenticator(config, db)
    clients = PushClients()
    routers: tuple[Any, ...] = (create_router(config, db, auth),
                                create_push_router(auth, hub, heartbeat=heartbeat,
                                                   max_total=max_push, clients=clients)
                                if push else push_refused())
    if ddi is not None and config.artifacts is not None:
        from suitkit.tracker.edges.ddi import create_ddi_router  # noqa: PLC0415

        routers = (*routers, create_ddi_router(config, db, auth, config.artifacts, ddi))
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
                         authorizer=release_authorizer(auth), push_clients=clients,
                         relay=relay, releases=releases)
