"""``suitkit serve`` and ``suitkit upload``: run the firmware server and upload releases to it.

``serve`` builds a ``ServerConfig`` from its options and runs ``server.app.create_app`` on
uvicorn; FastAPI and uvicorn are imported only when it runs, so the rest of the CLI works
without them. With ``--admin-token-file`` it also mounts the status tracker's routes
(``tracker.edges.create_router``) and the dashboard (``dashboard.create_dashboard_router``,
``/dashboard/``) on the same application. Before it says it runs, ``serve`` binds its sockets,
checks that the data directory is writable and opens the database: any problem is one line and
exit 2. It logs to stderr (an access line per request, each 500 once with its cause).
``upload`` streams an envelope and its detached images (multipart, see docs/server.md) from
their files, with the bearer token from a file, and prints the release the server stored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import httpx
import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from suitkit.author import keys as keyfiles
from suitkit.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    err,
    fail,
    handles_errors,
    out,
    read_token,
)
from suitkit.cli.notices import TrackerWiring, parse_host_port, release_lookup, tracker_routes
from suitkit.core.verify import TrustAnchor, TrustAnchors
from suitkit.errors import StorageError, SuitError
from suitkit.tracker.quotas import Quotas

DEFAULT_QUOTAS = Quotas()

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

MIB = 1024 * 1024


_LOG_LEVELS = ("debug", "info", "warning", "error")


@app.command()
@handles_errors
def serve(
    data: Annotated[Path, typer.Option("--data", help="Data directory (created if missing).")],
    author_anchor: Annotated[list[Path], typer.Option(
        "--author-anchor", help="Author public key uploads must be signed with; repeat for "
        "several (any one suffices).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8080,
    upload_token_file: Annotated[Path | None, typer.Option(
        "--upload-token-file", help="File holding the bearer token uploads need; without it "
        "uploads are disabled.")] = None,
    max_upload_mib: Annotated[int, typer.Option(
        "--max-upload-mib", help="Largest upload request body, in MiB.")] = 256,
    limit_concurrency: Annotated[int, typer.Option(
        "--limit-concurrency", help="Requests in progress at once (503 beyond); push streams "
        "and long-polls are not counted here but by --max-push.")] = 1000,
    max_push: Annotated[int, typer.Option(
        "--max-push", help="SSE streams and long-polls of all devices at once (503 beyond; "
        "4 per device, 429 beyond).")] = 10_000,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", help="Open connections; beyond it a new one evicts the "
        "connection idle the longest before its request head.")] = 10_000,
    head_timeout: Annotated[float, typer.Option(
        "--head-timeout", help="Seconds a connection may take to send a whole request head "
        "before it is closed.")] = 10.0,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="debug, info (one access line per request), warning or error; "
        "the log goes to stderr.")] = "info",
    coap_port: Annotated[int | None, typer.Option(
        "--coap-port", help="Also serve the blobs over CoAP (block-wise) on this UDP port.")
    ] = None,
    lwm2m_port: Annotated[int | None, typer.Option(
        "--lwm2m-port", help="Also run the LwM2M server (registration interface, Firmware "
        "Update object 5) on this UDP port; needs --admin-token-file and --lwm2m-nosec.")
    ] = None,
    lwm2m_nosec: Annotated[bool, typer.Option(
        "--lwm2m-nosec", help="Accept LwM2M devices without transport security (NoSec, the "
        "only mode available: docs/devices.md, LwM2M); they are marked unauthenticated in "
        "the tracker.")] = False,
    admin_token_file: Annotated[Path | None, typer.Option(
        "--admin-token-file", help="File holding the status tracker's admin token; with it "
        "the status tracker API is served too (/api/v1/devices), and the dashboard "
        "(/dashboard/).")] = None,
    tracker_db: Annotated[str | None, typer.Option(
        "--db", "--tracker-db", help="Status tracker database URL (default "
        "sqlite:///DATA/tracker.db; e.g. postgresql+psycopg://user@host/suitkit); migrated to "
        "the newest schema on start.")] = None,
    mqtt: Annotated[str | None, typer.Option(
        "--mqtt", help="MQTT broker HOST:PORT: publish each device's update notice to "
        "suitkit/devices/<id>/update (QoS 1, retained).")] = None,
    public_url: Annotated[str | None, typer.Option(
        "--public-url", help="This server's base URL as devices reach it (e.g. "
        "https://fw.example.com), for the envelope URLs the tracker derives; default: the URL "
        "each deployment or campaign request came to.")] = None,
    device_reports_per_minute: Annotated[float, typer.Option(
        "--device-reports-per-minute", help="SUIT reports one device may send a minute "
        "(429 beyond; 0: no limit).")] = DEFAULT_QUOTAS.reports_per_minute,
    device_events_per_minute: Annotated[float, typer.Option(
        "--device-events-per-minute", help="State events one device may send a minute.")
    ] = DEFAULT_QUOTAS.events_per_minute,
    device_inventory_per_minute: Annotated[float, typer.Option(
        "--device-inventory-per-minute", help="Inventories one device may send a minute.")
    ] = DEFAULT_QUOTAS.inventory_per_minute,
    max_reports_per_device: Annotated[int, typer.Option(
        "--max-reports-per-device", help="Reports kept per device (the oldest are deleted; "
        "0: no limit).")] = DEFAULT_QUOTAS.max_reports,
    max_report_kib_per_device: Annotated[int, typer.Option(
        "--max-report-kib-per-device", help="KiB of reports kept per device (the oldest are "
        "deleted; the newest is always kept; 0: no limit).")
    ] = DEFAULT_QUOTAS.max_report_bytes // 1024,
    max_events_per_device: Annotated[int, typer.Option(
        "--max-events-per-device", help="State events kept per device (the oldest are "
        "deleted; 0: no limit).")] = DEFAULT_QUOTAS.max_events,
    history_retention_days: Annotated[float, typer.Option(
        "--history-retention-days", help="Days state events are kept (0: for ever).")
    ] = DEFAULT_QUOTAS.history_days,
    report_retention_days: Annotated[float, typer.Option(
        "--report-retention-days", help="Days reports are kept (0: for ever).")
    ] = DEFAULT_QUOTAS.report_days,
    retention_interval: Annotated[float, typer.Option(
        "--retention-interval", help="Seconds between two retention passes (each deletes at "
        "most 10000 rows per table).")] = DEFAULT_QUOTAS.retention_interval,
    accel_redirect: Annotated[str | None, typer.Option(
        "--accel-redirect", metavar="PREFIX", help="Hand the bytes of /firmware and "
        "/envelopes downloads to nginx in front: answer X-Accel-Redirect: PREFIX<ab>/<sha256> "
        "(e.g. /_suitkit_blobs/, an internal nginx location over DATA/blobs/; "
        "docs/server.md, Scale out).")] = None,
) -> None:
    """Run the firmware server (verified uploads, immutable content-addressed downloads over
    HTTP and CoAP) and, with --admin-token-file, the status tracker and the dashboard."""
    try:
        import uvicorn  # noqa: PLC0415 - optional at import time of the CLI

        from suitkit.server.app import (  # noqa: PLC0415
            ServerConfig,
            accel_prefix_problem,
            create_app,
        )
        from suitkit.server.background import UVICORN_OPTIONS  # noqa: PLC0415
        from suitkit.server.guard import Guards, guarded_protocol  # noqa: PLC0415
        from suitkit.server.store import BlobStore  # noqa: PLC0415
    except ImportError as e:
        fail(f"the firmware server needs fastapi and uvicorn: {e}", EXIT_USAGE)
    for name, value in (("--port", port), ("--coap-port", coap_port),
                        ("--lwm2m-port", lwm2m_port)):
        if value is not None and not 0 < value < 65536:
            fail(f"{name}: expected a port number from 1 to 65535, got {value}", EXIT_USAGE)
    for name, value in (("--max-upload-mib", max_upload_mib),
                        ("--limit-concurrency", limit_concurrency), ("--max-push", max_push),
                        ("--max-connections", max_connections)):
        if value < 1:
            fail(f"{name} must be at least 1", EXIT_USAGE)
    if not 0 < head_timeout <= 3600:
        fail(f"--head-timeout: expected 0 to 3600 seconds, got {head_timeout:g}", EXIT_USAGE)
    if log_level.lower() not in _LOG_LEVELS:
        fail(f"--log-level: expected one of {', '.join(_LOG_LEVELS)}, got {log_level!r}",
             EXIT_USAGE)
    bounds = {"--device-reports-per-minute": device_reports_per_minute,
              "--device-events-per-minute": device_events_per_minute,
              "--device-inventory-per-minute": device_inventory_per_minute,
              "--max-reports-per-device": max_reports_per_device,
              "--max-report-kib-per-device": max_report_kib_per_device,
              "--max-events-per-device": max_events_per_device,
              "--history-retention-days": history_retention_days,
              "--report-retention-days": report_retention_days,
              "--retention-interval": retention_interval}
    for option, bound in bounds.items():
        if not 0 <= bound < 1e9:
            fail(f"{option} must be 0 (off) or a positive number below 1e9, got {bound:g}",
                 EXIT_USAGE)
    quotas = Quotas(reports_per_minute=device_reports_per_minute,
                    events_per_minute=device_events_per_minute,
                    inventory_per_minute=device_inventory_per_minute,
                    max_reports=max_reports_per_device,
                    max_report_bytes=max_report_kib_per_device * 1024,
                    max_events=max_events_per_device, history_days=history_retention_days,
                    report_days=report_retention_days, retention_interval=retention_interval)
    if accel_redirect is not None:
        problem = accel_prefix_problem(accel_redirect)
        if problem is not None:
            fail(f"--accel-redirect: {problem}", EXIT_USAGE)
    if tracker_db is not None and admin_token_file is None:
        fail("--db/--tracker-db needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    if public_url is not None and (
            not public_url.lower().startswith(("http://", "https://"))
            or any(c.isspace() for c in public_url) or len(public_url) > 1024):
        fail(f"--public-url: expected an http:// or https:// URL, got {public_url[:80]!r}",
             EXIT_USAGE)
    if public_url is not None and admin_token_file is None:
        fail("--public-url needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    if lwm2m_port is not None and admin_token_file is None:
        fail("--lwm2m-port needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    if lwm2m_port is not None and not lwm2m_nosec:
        fail("--lwm2m-port: LwM2M is served without transport security only (no DTLS-PSK "
             "server in aiocoap; OSCORE not wired yet): add --lwm2m-nosec to accept that "
             "explicitly", EXIT_USAGE)
    if mqtt is not None and admin_token_file is None:
        fail("--mqtt needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    anchors = TrustAnchors(tuple(TrustAnchor(keyfiles.load_verifier(p), role="author")
                                 for p in author_anchor))
    token = read_token(upload_token_file) if upload_token_file is not None else None
    admin_token = read_token(admin_token_file) if admin_token_file is not None else None
    broker = None
    if mqtt is not None:
        try:
            broker = parse_host_port(mqtt, "--mqtt")
        except ValueError as e:
            fail(str(e), EXIT_USAGE)
    _configure_logging(log_level.lower())
    open_files = _raise_open_files()
    routers: tuple[Any, ...] = ()
    wiring: TrackerWiring | None = None
    coap: Any = None
    lwm2m: Any = None
    sock: socket.socket | None = None
    try:
        try:  # every start-up problem is bad usage (exit 2), whatever its kind
            store = BlobStore(data)  # creates the data directory, or fails with one line
            store.check_writable()
            if admin_token is not None:
                from suitkit.dashboard import create_dashboard_router  # noqa: PLC0415
                from suitkit.tracker.config import TrackerConfig  # noqa: PLC0415

                db_url = tracker_db or f"sqlite:///{data.resolve() / 'tracker.db'}"
                # deployments and campaigns name a release this server holds (the tracker
                # derives and checks its envelope URL)
                tracker_config = TrackerConfig(db_url, admin_token, releases=release_lookup(data),
                                               public_url=public_url, quotas=quotas)
                wiring = tracker_routes(tracker_config, mqtt=broker, coap=coap_port is not None,
                                        max_push=max_push)
                routers = (*wiring.routers, create_dashboard_router(redirect_root=True))
            config = ServerConfig(data_dir=data, anchors=anchors, upload_token=token,
                                  max_upload_bytes=max_upload_mib * MIB, routers=routers,
                                  authorizer=wiring.authorizer if wiring is not None else None,
                                  max_requests=limit_concurrency,
                                  accel_redirect=accel_redirect)
            application = create_app(config)
            sock = _listen(host, port)  # before anything says it runs
            if coap_port is not None:
                from suitkit.server.coap import CoapServer, create_coap_site  # noqa: PLC0415

                site = create_coap_site(store, extra_resources=wiring.coap_resources
                                        if wiring is not None else ())
                coap = CoapServer(store, host, coap_port, site=site)
                try:
                    coap.start()
                except StorageError as e:
                    cause = e.__cause__
                    reason = getattr(cause, "strerror", None) or cause or e
                    where = (f"{host}:{coap_port}" if ":" not in host
                             else f"[{host}]:{coap_port}")
                    fail(f"--coap-port: cannot listen on {where} (UDP): {reason}", EXIT_USAGE)
            if lwm2m_port is not None and wiring is not None:
                from suitkit.tracker.edges.lwm2m import Lwm2mConfig, Lwm2mServer  # noqa: PLC0415

                lwm2m = Lwm2mServer(wiring.db, wiring.hub,
                                    Lwm2mConfig(host=host, port=lwm2m_port, nosec=lwm2m_nosec))
                try:
                    lwm2m.start()
                except StorageError as e:
                    fail(f"--lwm2m-port: {e}", EXIT_USAGE)
            guards = Guards(head_timeout=head_timeout,
                            max_connections=max(16, min(max_connections, open_files - 64)))
            options = {**UVICORN_OPTIONS, "http": guarded_protocol(guards)}
            server = uvicorn.Server(uvicorn.Config(
                application, log_config=None, log_level=log_level.lower(),
                access_log=log_level.lower() in ("debug", "info"), timeout_graceful_shutdown=5,
                **options))  # type: ignore[arg-type]
        except SuitError as e:
            fail(str(e), EXIT_USAGE)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            fail(f"cannot start: {e.strerror or e}{where}", EXIT_USAGE)
        shown = f"[{host}]" if ":" in host else host
        out.print(f"suitkit firmware server on http://{shown}:{port}/ (data {data}; uploads "
                  f"{'enabled' if token or wiring is not None else 'disabled'}"
                  f"{'; status tracker enabled' if routers else ''}"
                  f"{'; downloads sent by the proxy in front' if accel_redirect else ''})",
                  markup=False)
        if coap_port is not None:
            out.print(f"and on coap://{shown}:{coap_port}/", markup=False)
        if lwm2m is not None:
            out.print(f"and LwM2M on coap://{shown}:{lwm2m.port}/rd (NoSec)", markup=False)
        server.run(sockets=[sock])
    finally:
        if lwm2m is not None:
            lwm2m.stop()
        if coap is not None:
            coap.stop()
        if sock is not None:
            sock.close()
        if wiring is not None:
            wiring.close()


class _Redacting(logging.Formatter):
    """The log's format; SQL parameters in a database error's traceback are left out (they
    may hold credential hashes)."""

    _PARAMETERS = re.compile(r"\[parameters: .*?\]$", re.MULTILINE | re.DOTALL)

    def formatException(self, ei: Any) -> str:
        return self._PARAMETERS.sub("[parameters hidden]", super().formatException(ei))


class _Quieter(logging.Filter):
    """Lines a client makes a library write for each bad message it sends, at most once a
    minute each (counted, the count said with the next one): aiocoap's (``coap``,
    ``coap-server``: "Ignoring unparsable message" for every malformed datagram, from any
    address, spoofed too) and uvicorn's "Invalid HTTP request received." Everything else
    passes."""

    _SECONDS = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._next: dict[tuple[str, object], float] = {}
        self._held: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not (name in ("coap", "coap-server") or name.startswith(("coap.", "coap-server."))
                or (name == "uvicorn.error"
                    and record.msg == "Invalid HTTP request received.")):
            return True
        key = (name, record.msg)
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            if len(self._held) < 1000 or key in self._held:
                self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._next) >= 1000:  # a library that formats its own messages: bounded
            self._next = {k: t for k, t in self._next.items() if t > now}
            if len(self._next) >= 1000:
                self._next.clear()
        self._next[key] = now + self._SECONDS
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last minute, not shown)"
        return True


def _configure_logging(level: str) -> None:
    """The server's log on stderr: suitkit's and uvicorn's loggers (the access log at info);
    other libraries only from warning up. Requests are logged as method, path and status:
    never a header (where credentials travel) nor a body."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Quieter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("suitkit", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level.upper())


def _raise_open_files() -> int:
    """Raise the soft limit of open files to the hard limit (at most 65536): idle and push
    connections hold one each. The soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else soft


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (exit 2 with one line if it cannot be had).

    Made with ``IPPROTO_TCP`` named, so asyncio turns Nagle's algorithm off on its connections
    (server/background.py ``listening_socket``)."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      proto=socket.IPPROTO_TCP)[0]
    except (OSError, UnicodeError) as e:
        fail(f"--host: cannot resolve {host!r}: {getattr(e, 'strerror', None) or e}",
             EXIT_USAGE)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        fail(f"cannot listen on {where}: {e.strerror or e}", EXIT_USAGE)
    return sock


db_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                     help="The status tracker's database: schema migrations.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@handles_errors
def db_upgrade(
    db: Annotated[str | None, typer.Option(
        "--db", help="Database URL, e.g. postgresql+psycopg://user@host/suitkit.")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Data directory of a server whose database is the default "
        "sqlite:///DATA/tracker.db (instead of --db).")] = None,
    revision: Annotated[str, typer.Option(
        "--revision", help="Schema revision to upgrade to.")] = "head",
) -> None:
    """Migrate the status tracker's database to the newest schema (serve also does it)."""
    from suitkit.tracker.store import migrate  # noqa: PLC0415 - SQLAlchemy only when asked for

    if (db is None) == (data is None):
        fail("give exactly one of --db URL or --data DIR", EXIT_USAGE)
    if data is not None:
        if not (data / "tracker.db").is_file():
            fail(f"no tracker database in {data} (expected {data / 'tracker.db'})", EXIT_USAGE)
        db = f"sqlite:///{data.resolve() / 'tracker.db'}"
    assert db is not None
    before, after = migrate(db, revision)
    if before == after:
        out.print(f"tracker database already at {after}", markup=False)
    else:
        out.print(f"tracker database upgraded from {before or 'no revision'} to {after}",
                  markup=False)


class _Counted:
    """A binary file whose reads move a progress bar (httpx streams a multipart part from it
    in 64 KiB reads; its length comes from ``fileno``)."""

    def __init__(self, file: BinaryIO, advance: Callable[[int], None]) -> None:
        self._file = file
        self._advance = advance
        self.name = file.name

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._advance(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


@app.command()
@handles_errors
def upload(
    envelope: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Signed envelope.")],
    server: Annotated[str, typer.Option("--server", envvar="SUITKIT_SERVER",
                                        help="Server URL, e.g. http://127.0.0.1:8080")],
    token_file: Annotated[Path, typer.Option("--token-file", envvar="SUITKIT_TOKEN_FILE",
                                             help="File holding the upload token (or an "
                                             "author's or admin's API token).")],
    images: Annotated[list[str] | None, typer.Argument(
        metavar="[IMAGE...]", help="Detached images: PATH (matched by digest) or N=PATH "
        "(for component index N).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 60.0,
) -> None:
    """Upload a release (envelope and detached images) to a firmware server; the files are
    streamed from disk (never held in memory), with a progress bar on a terminal."""
    token = read_token(token_file)
    parts = [("envelope", envelope, "envelope", "application/suit-envelope+cose")]
    for spec in images or []:
        index, sep, name = spec.partition("=")
        if sep and index.isascii() and index.isdigit():
            parts.append((f"image-{int(index)}", Path(name), "image",
                          "application/octet-stream"))
        else:
            parts.append(("image", Path(spec), "image", "application/octet-stream"))
    url = server.rstrip("/")
    with contextlib.ExitStack() as stack:
        opened: list[tuple[str, BinaryIO, str]] = []
        for part, path, what, media in parts:
            try:
                opened.append((part, stack.enter_context(path.open("rb")), media))
            except OSError as e:
                fail(f"cannot read {what} {path}: {e.strerror or e}", EXIT_USAGE)
        total = sum(os.fstat(file.fileno()).st_size for _, file, _ in opened)
        progress = Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                            transient=True, disable=not err.is_terminal)
        task = progress.add_task("upload", total=total)

        def advance(count: int) -> None:
            progress.advance(task, count)

        files = [(part, (Path(file.name).name, _Counted(file, advance), media))
                 for part, file, media in opened]
        try:
            with progress:
                response = httpx.post(f"{url}/api/v1/releases", files=files,  # type: ignore[arg-type]
                                      timeout=timeout,
                                      headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as e:
            fail(f"cannot upload to {url}: {type(e).__name__}: {e}", EXIT_FAILED)
    doc = _json(response)
    if response.status_code not in (200, 201):
        message = doc.get("error") if isinstance(doc, dict) else None
        fail(f"upload refused (HTTP {response.status_code}): "
             f"{message or response.reason_phrase}", EXIT_FAILED)
    if not isinstance(doc, dict) or "id" not in doc:
        fail(f"unexpected answer from {url}: not a release", EXIT_FAILED)
    state = "stored" if response.status_code == 201 else "already stored"
    out.print(f"release {doc['id']} (sequence number {doc['sequence_number']}) {state}",
              markup=False)
    out.print(f"  envelope: {url}{doc['envelope']['url']}", markup=False)
    for component in doc["components"]:
        where = f"{url}{component['url']}" if component.get("url") else "no image stored"
        out.print(f"  component {component['index']}: {where}", markup=False)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
