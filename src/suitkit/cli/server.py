"""``suitkit serve`` and ``suitkit upload``: run the firmware server and upload releases to it.

``serve`` takes each option from its flag, a ``SUITKIT_<KEY>`` variable or the TOML file of
``--config`` (``cli.config``), builds ``ServeOptions`` once, then a ``ServerConfig``, and runs
``server.app.create_app`` on uvicorn (with TLS, and a ``--metrics-port`` listener, if asked);
FastAPI and uvicorn are imported only when it runs, so the rest of the CLI works without them.
With ``--admin-token-file`` it also mounts the status tracker's routes
(``tracker.edges.create_router``) and the dashboard (``dashboard.create_dashboard_router``,
``/dashboard/``) on the same application. Before it says it runs, ``serve`` binds its sockets,
checks that the data directory is writable and opens the database: any problem is one line and
exit 2. It logs to stderr, plain or JSON (an access line per request, each 500 once with its
cause, each line of a request with its id). ``config show`` prints the configuration in force.
``upload`` streams an envelope and its detached images (multipart, see docs/server.md) from
their files, with the bearer token from a file, and prints the release the server stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JsonOption,
    err,
    fail,
    handles_errors,
    new_app,
    out,
    print_json,
    read_token,
)
from suitkit.cli.notices import TrackerWiring, parse_host_port, tracker_routes
from suitkit.core.verify import TrustAnchor, TrustAnchors
from suitkit.errors import StorageError, SuitError
from suitkit.tracker.quotas import Quotas

DEFAULT_QUOTAS = Quotas()

app = new_app()

MIB = 1024 * 1024


_LOG_LEVELS = ("debug", "info", "warning", "error")


@app.command()
@handles_errors
def serve(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file of serve's options (keys as the flags, dashes as "
        "underscores; docs/operations.md); also SUITKIT_CONFIG. Flags win over `SUITKIT_<KEY>` "
        "environment variables, which win over the file.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the configuration in force (TOML, each value's source, "
        "secrets redacted) and exit.")] = False,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Data directory (created if missing); required.")] = None,
    author_anchor: Annotated[list[Path] | None, typer.Option(
        "--author-anchor", help="Author public key uploads must be signed with; repeat for "
        "several (any one suffices); at least one is required.")] = None,
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
    max_push: Annotated[int | None, typer.Option(
        "--max-push", help="SSE streams and long-polls of all devices at once (503 beyond; "
        "4 per device, 429 beyond); default 10000, fewer when the open-file limit does not "
        "allow as many (the start-up line says how many).", show_default=False)] = None,
    max_connections: Annotated[int | None, typer.Option(
        "--max-connections", help="Open connections; beyond it a new one evicts the "
        "connection idle the longest before its request head. Default: --max-push plus "
        "twice --limit-concurrency, within the open-file limit.", show_default=False)] = None,
    head_timeout: Annotated[float, typer.Option(
        "--head-timeout", help="Seconds a connection may take to send a whole request head "
        "before it is closed.")] = 10.0,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="debug, info (one access line per request), warning or error; "
        "the log goes to stderr.")] = "info",
    log_format: Annotated[str, typer.Option(
        "--log-format", help="plain (text lines) or json (one JSON object a line).")
    ] = "plain",
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="PEM certificate (chain) to serve HTTPS with; the key too unless "
        "--tls-key names it.")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(
        "--tls-client-ca", help="PEM CA certificates: every client must present a "
        "certificate one of them issued (mutual TLS), or its handshake is refused.")] = None,
    forwarded_allow_ips: Annotated[str, typer.Option(
        "--forwarded-allow-ips", help="Comma-separated addresses (or *) of proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are trusted (the client's address and scheme "
        "in logs and derived URLs).")] = "127.0.0.1",
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Serve /metrics (Prometheus), /healthz and /readyz on this TCP "
        "port too, and nothing else there; /metrics is served nowhere else.")] = None,
    metrics_host: Annotated[str, typer.Option(
        "--metrics-host", help="Address of the --metrics-port listener.")] = "127.0.0.1",
    coap_port: Annotated[int | None, typer.Option(
        "--coap-port", help="Also serve the blobs over CoAP (block-wise) on this UDP port.")
    ] = None,
    lwm2m_port: Annotated[int | None, typer.Option(
        "--lwm2m-port", help="Also run the LwM2M server (registration interface, Firmware "
        "Update object 5) on this UDP port, secured with OSCORE (each device's context under "
        "DATA/lwm2m-oscore, keyed from its credential); needs --admin-token-file.")
    ] = None,
    lwm2m_nosec: Annotated[bool, typer.Option(
        "--lwm2m-nosec", help="Also accept LwM2M devices without security (NoSec) beside "
        "OSCORE; they are marked unauthenticated in the tracker.")] = False,
    admin_token_file: Annotated[Path | None, typer.Option(
        "--admin-token-file", help="File holding the status tracker's admin token; with it "
        "the status tracker API is served too (/api/v1/devices), and the dashboard "
        "(/dashboard/).")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", "--tracker-db", help="Status tracker database URL (default "
        "sqlite:///DATA/tracker.db; e.g. postgresql+psycopg://user@host/suitkit); migrated to "
        "the newest schema on start.")] = None,
    db_pool_size: Annotated[int, typer.Option(
        "--db-pool-size", help="Database connections this process keeps open (with several "
        "replicas on one PostgreSQL: replicas x (pool size + overflow + 1) must stay under "
        "its max_connections).")] = 5,
    db_max_overflow: Annotated[int, typer.Option(
        "--db-max-overflow", help="Database connections opened beyond the pool under load.")
    ] = 10,
    db_pool_timeout: Annotated[float, typer.Option(
        "--db-pool-timeout", help="Seconds a request waits for a database connection before "
        "it fails (500).")] = 30.0,
    mqtt: Annotated[str | None, typer.Option(
        "--mqtt", help="MQTT broker HOST:PORT: publish each device's update notice to "
        "`suitkit/devices/<id>/update` (QoS 1, retained).")] = None,
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
    ddi: Annotated[bool, typer.Option(
        "--ddi/--no-ddi", help="Serve the hawkBit DDI controller API "
        "(/TENANT/controller/v1/DEVICE-ID, target tokens = device credentials) for SWUpdate, "
        "RAUC and suitkit agents (with the status tracker).")] = True,
    ddi_tenant: Annotated[str, typer.Option(
        "--ddi-tenant", help="The DDI tenant in the paths.")] = "DEFAULT",
    ddi_poll_seconds: Annotated[int, typer.Option(
        "--ddi-poll-seconds", help="Seconds a DDI controller is told to sleep between two "
        "polls (1 to 86399).")] = 60,
    retention_interval: Annotated[float, typer.Option(
        "--retention-interval", help="Seconds between two retention passes (each deletes at "
        "most 10000 rows per table).")] = DEFAULT_QUOTAS.retention_interval,
    accel_redirect: Annotated[str | None, typer.Option(
        "--accel-redirect", metavar="PREFIX", help="Hand the bytes of /firmware and "
        "/envelopes downloads to nginx in front: answer `X-Accel-Redirect: PREFIX<ab>/<sha256>` "
        "(e.g. /_suitkit_blobs/, an internal nginx location over DATA/blobs/; "
        "docs/server.md, Scale out).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", help="Server processes on the one port (each a whole server; rates "
        "per device are shared out among them). More than 1: no --coap-port or --mqtt, and "
        "push notices (SSE, long-poll) need a PostgreSQL --db (each worker hears the others' "
        "changes); on SQLite they are off: devices poll (docs/server.md).")] = 1,
    signed_reports: Annotated[list[str] | None, typer.Option(
        "--signed-reports", metavar="all|CLASS-ID", help="Who must sign its SUIT reports "
        "(COSE_Sign1/COSE_Mac0 with its registered report key, and the nonce of its update): "
        "all devices, or those of a device class ID; repeat for several classes. Default: "
        "unsigned reports are accepted (signed ones are always checked).")] = None,
    report_nonce_days: Annotated[float, typer.Option(
        "--report-nonce-days", help="Days the nonce issued with an update stays valid for "
        "its report (0: no expiry).")] = 30.0,
) -> None:
    """Run the firmware server (verified uploads, immutable content-addressed downloads over
    HTTP and CoAP) and, with --admin-token-file, the status tracker and the dashboard."""
    options = serve_options(ctx, config)
    if print_config:
        out.print(show_config(ctx, config), markup=False)
        return
    _serve(options)


def _signed_reports(values: list[str]) -> tuple[str, ...]:
    """``--signed-reports`` as ``TrackerConfig.signed_reports``: ``all`` or class IDs
    (canonical lower-case UUIDs); exit 2 naming a value that is neither."""
    chosen = []
    for value in values:
        if value.strip().lower() == "all":
            chosen.append("all")
            continue
        try:
            chosen.append(str(uuid.UUID(value.strip())))
        except ValueError:
            fail(f"--signed-reports: expected all or a device class ID (a UUID), got "
                 f"{value[:60]!r}", EXIT_USAGE)
    return tuple(dict.fromkeys(chosen))


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Every option of ``serve`` in force (flag > `SUITKIT_<KEY>` > config file > default),
    built once by ``serve_options``; the field names are serve's parameter names."""

    data: Path | None
    author_anchor: list[Path] | None
    host: str
    port: int
    upload_token_file: Path | None
    max_upload_mib: int
    limit_concurrency: int
    max_push: int | None
    max_connections: int | None
    head_timeout: float
    log_level: str
    log_format: str
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    forwarded_allow_ips: str
    metrics_port: int | None
    metrics_host: str
    coap_port: int | None
    admin_token_file: Path | None
    db: str | None
    db_pool_size: int
    db_max_overflow: int
    db_pool_timeout: float
    mqtt: str | None
    public_url: str | None
    device_reports_per_minute: float
    device_events_per_minute: float
    device_inventory_per_minute: float
    max_reports_per_device: int
    max_report_kib_per_device: int
    max_events_per_device: int
    history_retention_days: float
    report_retention_days: float
    retention_interval: float
    ddi: bool
    ddi_tenant: str
    ddi_poll_seconds: int
    accel_redirect: str | None
    workers: int
    lwm2m_port: int | None
    lwm2m_nosec: bool
    signed_reports: list[str] | None
    report_nonce_days: float


_NOT_KEYS = frozenset({"config", "print_config"})


def _resolved(ctx: typer.Context, config: Path | None) -> tuple[list[Any], Any]:
    from suitkit.cli import config as settings  # noqa: PLC0415

    keys = settings.keys_of(ctx.command, ServeOptions, skip=_NOT_KEYS)
    from_flag = frozenset(
        k.name for k in keys
        if getattr(ctx.get_parameter_source(k.name), "name", None) == "COMMANDLINE")
    if config is None and os.environ.get("SUITKIT_CONFIG"):
        config = Path(os.environ["SUITKIT_CONFIG"])
    try:
        return keys, settings.resolve(keys, ctx.params, from_flag, config)
    except settings.ConfigError as e:
        fail(str(e), EXIT_USAGE)


def serve_options(ctx: typer.Context, config: Path | None) -> ServeOptions:
    """``ServeOptions`` from the command line, the environment and ``config`` (exit 2 with
    one line naming the key and its source when one is unusable)."""
    _, resolved = _resolved(ctx, config)
    return ServeOptions(**resolved.values)


def show_config(ctx: typer.Context, config: Path | None, *, as_json: bool = False) -> str:
    """The configuration in force as TOML with sources, or as JSON (secrets redacted)."""
    from suitkit.cli import config as settings  # noqa: PLC0415

    keys, resolved = _resolved(ctx, config)
    if as_json:
        return json.dumps(settings.as_json(keys, resolved), indent=2, sort_keys=True)
    return settings.render(keys, resolved)


CONTRACT_LOG_ENV = "SUITKIT_TEST_CONTRACT_LOG"
"""Test runs: the file where the server writes what in its answers contradicts its
``/openapi.json`` (``server.contract``); not a serve option: nothing for an operator."""


def _contract_log() -> Path | None:
    value = os.environ.get(CONTRACT_LOG_ENV)
    return Path(value) if value else None


def _serve(o: ServeOptions) -> None:
    """Run the server with options ``o`` (see ``serve``)."""
    if o.data is None:
        fail("--data is required (or SUITKIT_DATA, or the key data in the --config file)",
             EXIT_USAGE)
    if not o.author_anchor:
        fail("--author-anchor is required (or SUITKIT_AUTHOR_ANCHOR, or the key "
             "author_anchor in the --config file)", EXIT_USAGE)
    data = o.data
    host, port, coap_port, log_level = o.host, o.port, o.coap_port, o.log_level
    head_timeout, public_url, mqtt = o.head_timeout, o.public_url, o.mqtt
    admin_token_file, upload_token_file = o.admin_token_file, o.upload_token_file
    tracker_db = o.db
    ddi, ddi_tenant, ddi_poll_seconds = o.ddi, o.ddi_tenant, o.ddi_poll_seconds
    accel_redirect = o.accel_redirect
    workers = o.workers
    lwm2m_port, lwm2m_nosec = o.lwm2m_port, o.lwm2m_nosec
    try:
        import uvicorn  # noqa: PLC0415 - optional at import time of the CLI

        from suitkit.server.app import (  # noqa: PLC0415
            ServerConfig,
            accel_prefix_problem,
            create_app,
        )
        from suitkit.server.background import UVICORN_OPTIONS, run_workers  # noqa: PLC0415
        from suitkit.server.guard import (  # noqa: PLC0415
            Guards,
            guarded_protocol,
            plan_capacity,
        )
        from suitkit.server.observe import Metrics  # noqa: PLC0415
        from suitkit.server.store import BlobStore  # noqa: PLC0415
    except ImportError as e:
        fail(f"the firmware server needs fastapi and uvicorn: {e}", EXIT_USAGE)
    for name, value in (("--port", port), ("--coap-port", coap_port),
                        ("--metrics-port", o.metrics_port), ("--lwm2m-port", lwm2m_port)):
        if value is not None and not 0 < value < 65536:
            fail(f"{name}: expected a port number from 1 to 65535, got {value}", EXIT_USAGE)
    tls = _tls_options(o)
    if o.metrics_port == port:
        fail(f"--metrics-port must differ from --port (both {port})", EXIT_USAGE)
    for name, value in (("--max-upload-mib", o.max_upload_mib),
                        ("--limit-concurrency", o.limit_concurrency), ("--max-push", o.max_push),
                        ("--max-connections", o.max_connections)):
        if value is not None and value < 1:
            fail(f"{name} must be at least 1", EXIT_USAGE)
    db_pool_size, db_max_overflow, db_pool_timeout = (o.db_pool_size, o.db_max_overflow,
                                                      o.db_pool_timeout)
    if db_pool_size < 1 or not 0 <= db_max_overflow <= 10_000 or db_pool_size > 10_000:
        fail(f"--db-pool-size must be 1 to 10000 and --db-max-overflow 0 to 10000, got "
             f"{db_pool_size} and {db_max_overflow}", EXIT_USAGE)
    if not 0 < db_pool_timeout <= 3600:
        fail(f"--db-pool-timeout: expected 0 to 3600 seconds, got {db_pool_timeout:g}",
             EXIT_USAGE)
    if not 1 <= workers <= MAX_WORKERS:
        fail(f"--workers: expected 1 to {MAX_WORKERS} processes, got {workers}", EXIT_USAGE)
    if workers > 1:
        for name, given in (("--coap-port", coap_port is not None),
                            ("--mqtt", mqtt is not None),
                            ("--lwm2m-port", lwm2m_port is not None),
                            ("--metrics-port", o.metrics_port is not None)):
            if given:
                fail(f"{name} needs --workers 1: {_ONE_PROCESS[name]}", EXIT_USAGE)
    if not 0 < head_timeout <= 3600:
        fail(f"--head-timeout: expected 0 to 3600 seconds, got {head_timeout:g}", EXIT_USAGE)
    if o.log_format not in ("plain", "json"):
        fail(f"--log-format: expected plain or json, got {o.log_format[:40]!r}", EXIT_USAGE)
    if log_level.lower() not in _LOG_LEVELS:
        fail(f"--log-level: expected one of {', '.join(_LOG_LEVELS)}, got {log_level!r}",
             EXIT_USAGE)
    bounds = {"--device-reports-per-minute": o.device_reports_per_minute,
              "--device-events-per-minute": o.device_events_per_minute,
              "--device-inventory-per-minute": o.device_inventory_per_minute,
              "--max-reports-per-device": o.max_reports_per_device,
              "--max-report-kib-per-device": o.max_report_kib_per_device,
              "--max-events-per-device": o.max_events_per_device,
              "--history-retention-days": o.history_retention_days,
              "--report-retention-days": o.report_retention_days,
              "--retention-interval": o.retention_interval}
    for option, bound in bounds.items():
        if not 0 <= bound < 1e9:
            fail(f"{option} must be 0 (off) or a positive number below 1e9, got {bound:g}",
                 EXIT_USAGE)
    # a device's rates are counted in each process: each of N workers allows 1/N of them,
    # so that a device never gets more than the rate in all
    quotas = Quotas(reports_per_minute=o.device_reports_per_minute / workers,
                    events_per_minute=o.device_events_per_minute / workers,
                    inventory_per_minute=o.device_inventory_per_minute / workers,
                    max_reports=o.max_reports_per_device,
                    max_report_bytes=o.max_report_kib_per_device * 1024,
                    max_events=o.max_events_per_device, history_days=o.history_retention_days,
                    report_days=o.report_retention_days, retention_interval=o.retention_interval)
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
    if not 0 < ddi_poll_seconds < 86400:
        fail(f"--ddi-poll-seconds: expected 1 to 86399, got {ddi_poll_seconds}", EXIT_USAGE)
    if not (0 < len(ddi_tenant) <= 64 and ddi_tenant.isascii()
            and all(c.isalnum() or c in "-_." for c in ddi_tenant)):
        fail(f"--ddi-tenant: expected 1 to 64 letters, digits or '-_.', got {ddi_tenant[:40]!r}",
             EXIT_USAGE)
    if public_url is not None and admin_token_file is None:
        fail("--public-url needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    if lwm2m_port is not None and admin_token_file is None:
        fail("--lwm2m-port needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    if lwm2m_nosec and lwm2m_port is None:
        fail("--lwm2m-nosec needs --lwm2m-port", EXIT_USAGE)
    if mqtt is not None and admin_token_file is None:
        fail("--mqtt needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    signed = _signed_reports(o.signed_reports or [])
    if not 0 <= o.report_nonce_days < 1e6:
        fail(f"--report-nonce-days must be 0 (no expiry) or a positive number, got "
             f"{o.report_nonce_days:g}", EXIT_USAGE)
    # root_threshold 0: a trust-anchor rotation (docs/keys.md) uploads when a key given here
    # signed it; whether its signers may rotate a device's anchors is the device's to check
    anchors = TrustAnchors(tuple(TrustAnchor(keyfiles.load_verifier(p), role="author")
                                 for p in o.author_anchor), root_threshold=0)
    token = read_token(upload_token_file) if upload_token_file is not None else None
    admin_token = read_token(admin_token_file) if admin_token_file is not None else None
    broker = None
    if mqtt is not None:
        try:
            broker = parse_host_port(mqtt, "--mqtt")
        except ValueError as e:
            fail(str(e), EXIT_USAGE)
    _configure_logging(log_level.lower(), o.log_format)
    capacity = plan_capacity(_raise_open_files(), max_connections=o.max_connections,
                             max_push=o.max_push, max_requests=o.limit_concurrency)
    db_url = tracker_db or f"sqlite:///{data.resolve() / 'tracker.db'}"
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    said = (f"suitkit firmware server on {scheme}://{shown}:{port}/ (data {data}; uploads "
            f"{'enabled' if token or admin_token is not None else 'disabled'}"
            f"{'; status tracker enabled' if admin_token is not None else ''}"
            f"{'; downloads sent by the proxy in front' if accel_redirect else ''}"
            f"{f'; {workers} worker processes' if workers > 1 else ''})")
    metrics_sock: socket.socket | None = None

    def build(sock: socket.socket) -> tuple[Any, TrackerWiring | None, Any]:
        """The uvicorn server for this process, the tracker's wiring and the CoAP server
        (each to stop); any start-up problem is one line and exit 2."""
        wiring: TrackerWiring | None = None
        coap: Any = None
        try:  # every start-up problem is bad usage (exit 2), whatever its kind
            routers: tuple[Any, ...] = ()
            if admin_token is not None:
                from suitkit.dashboard import create_dashboard_router  # noqa: PLC0415
                from suitkit.tracker.config import DdiOptions, TrackerConfig  # noqa: PLC0415

                # deployments and campaigns name a release of the database's records, which
                # this server writes as uploads commit; the DDI edge lists their files
                # (tracker_routes(data=...))
                tracker_config = TrackerConfig(db_url, admin_token, public_url=public_url,
                                               quotas=quotas, signed_reports=signed,
                                               nonce_days=o.report_nonce_days)
                from suitkit.tracker.store import PoolOptions  # noqa: PLC0415

                wiring = tracker_routes(tracker_config, mqtt=broker, coap=coap_port is not None,
                                        max_push=capacity.push, data=data,
                                        # several workers: each one's relay hears the others'
                                        # changes on PostgreSQL (LISTEN/NOTIFY), not on SQLite
                                        push=workers == 1 or _is_postgresql(db_url),
                                        ddi=DdiOptions(ddi_tenant, ddi_poll_seconds)
                                        if ddi else None,
                                        pool=PoolOptions(db_pool_size, db_max_overflow,
                                                         db_pool_timeout))
                routers = (*wiring.routers, create_dashboard_router(redirect_root=True))
            config = ServerConfig(data_dir=data, anchors=anchors, upload_token=token,
                                  max_upload_bytes=o.max_upload_mib * MIB, routers=routers,
                                  authorizer=wiring.authorizer if wiring is not None else None,
                                  releases=wiring.releases if wiring is not None else None,
                                  max_requests=o.limit_concurrency,
                                  max_downloads=capacity.downloads,
                                  accel_redirect=accel_redirect,
                                  metrics=Metrics(ports=frozenset(
                                      {o.metrics_port} if o.metrics_port else ()),
                                      collectors=wiring.collectors() if wiring else ()),
                                  readiness=(wiring.database_ready,) if wiring else (),
                                  contract_log=_contract_log())
            application = create_app(config)
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
                                    Lwm2mConfig(host=host, port=lwm2m_port, nosec=lwm2m_nosec,
                                                oscore_dir=data / "lwm2m-oscore"))
                try:
                    lwm2m.start()
                except StorageError as e:
                    fail(f"--lwm2m-port: {e}", EXIT_USAGE)
                coap = _Stops(coap, lwm2m)  # stopped with the CoAP server, LwM2M first
            guards = Guards(head_timeout=head_timeout, max_connections=capacity.connections)
            options = {**UVICORN_OPTIONS, "http": guarded_protocol(guards)}
            server = uvicorn.Server(uvicorn.Config(
                application, log_config=None, log_level=log_level.lower(),
                access_log=log_level.lower() in ("debug", "info"), timeout_graceful_shutdown=5,
                proxy_headers=True, forwarded_allow_ips=o.forwarded_allow_ips, **tls,
                **options))  # type: ignore[arg-type]
        except BaseException as e:
            if coap is not None:
                coap.stop()
            if wiring is not None:
                wiring.close()
            if isinstance(e, SuitError):
                fail(str(e), EXIT_USAGE)
            if isinstance(e, OSError):
                where = f" ({e.filename})" if e.filename else ""
                fail(f"cannot start: {e.strerror or e}{where}", EXIT_USAGE)
            raise
        return server, wiring, coap

    def run(sock: socket.socket) -> int:
        """Build and serve in this process until told to stop; the exit status."""
        try:
            server, wiring, coap = build(sock)
        except typer.Exit as e:
            return e.exit_code
        try:
            server.run(sockets=[sock])
        finally:
            if coap is not None:
                coap.stop()
            if wiring is not None:
                wiring.close()
        return 0

    sock: socket.socket | None = None
    try:
        try:
            store = BlobStore(data)  # creates the data directory, or fails with one line
            store.check_writable()
            if workers > 1 and admin_token is not None:
                # migrated once here: the workers find the schema at its newest revision
                from suitkit.tracker.store import migrate  # noqa: PLC0415

                migrate(db_url)
            if workers == 1:
                built = build(sock := _listen(host, port))  # bound before anything says it runs
        except SuitError as e:
            fail(str(e), EXIT_USAGE)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            fail(f"cannot start: {e.strerror or e}{where}", EXIT_USAGE)
        if workers == 1:
            server, wiring, coap = built
            out.print(said, markup=False)
            if coap_port is not None:
                out.print(f"and on coap://{shown}:{coap_port}/", markup=False)
            if lwm2m_port is not None and wiring is not None:
                security = "OSCORE and NoSec" if lwm2m_nosec else "OSCORE"
                out.print(f"and LwM2M on coap://{shown}:{lwm2m_port}/rd ({security})",
                          markup=False)
            if o.metrics_port is not None:
                metrics_sock = _listen(o.metrics_host, o.metrics_port, "--metrics-host")
                out.print(f"metrics and health on {scheme}://{_shown(o.metrics_host)}:"
                          f"{o.metrics_port}/metrics", markup=False)
            out.print(_capacity_line(capacity, tracker=wiring is not None), markup=False)
            try:
                server.run(sockets=[sock] if metrics_sock is None else [sock, metrics_sock])
            finally:
                if coap is not None:
                    coap.stop()
                if wiring is not None:
                    wiring.close()
            return
        sock = _listen(host, port)
        out.print(said, markup=False)
        out.print(_capacity_line(capacity, tracker=admin_token is not None), markup=False)
        status = run_workers(sock, workers, lambda _: run(sock))
        if status:
            raise typer.Exit(EXIT_FAILED if status != EXIT_USAGE else EXIT_USAGE)
    finally:
        if metrics_sock is not None:
            metrics_sock.close()
        if sock is not None:
            sock.close()


class _Stops:
    """Servers stopped together, the last started first."""

    def __init__(self, *servers: Any) -> None:
        self.servers = [server for server in servers if server is not None]

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


MAX_WORKERS = 64


def _is_postgresql(db_url: str) -> bool:
    """Whether the tracker database of ``db_url`` is PostgreSQL (its notices cross processes
    through LISTEN/NOTIFY: ``tracker.notices.pg``)."""
    return db_url.split(":", 1)[0].split("+", 1)[0].lower() in ("postgresql", "postgres")
_ONE_PROCESS = {
    "--coap-port": "one UDP port is served by one process (run a second suitkit serve with "
                   "--workers 1 --coap-port for CoAP)",
    "--mqtt": "each worker's notices know only the deployments made in that process",
    "--lwm2m-port": "a device's registration lives in the process that received it",
    "--metrics-port": "each worker counts only its own requests (run one suitkit serve per "
                      "port to scrape each)",
}


class _Redacting(logging.Formatter):
    """The plain log's format; SQL parameters in a database error (its traceback or a message
    that quotes it) are left out (they may hold credential hashes); the request's id, when the
    line has one, at its end."""

    _PARAMETERS = re.compile(r"\[parameters: .*?\]$", re.MULTILINE | re.DOTALL)

    def formatException(self, ei: Any) -> str:
        return self._PARAMETERS.sub("[parameters hidden]", super().formatException(ei))

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = self._PARAMETERS.sub("[parameters hidden]", super().formatMessage(record))
        rid = getattr(record, "request_id", None)
        return f"{line} [request {rid}]" if rid else line


class _Json(_Redacting):
    """One JSON object per line (``--log-format json``): ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, ``request_id`` (in a request), ``exception`` (a traceback); an
    access line also has ``client``, ``method``, ``path``, ``http_version``, ``status``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "message": self._PARAMETERS.sub("[parameters hidden]", record.getMessage())}
        rid = getattr(record, "request_id", None)
        if rid:
            doc["request_id"] = rid
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(
                record.args) == 5:
            client, method, path, version, status = record.args
            doc.update(client=client, method=method, path=path, http_version=version,
                       status=status)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=True, default=str)


_SECRET_QUERY = re.compile(r"(?i)([?&](?:[^=&]*(?:token|secret|password|passwd|credential|"
                           r"key|auth)[^=&]*)=)[^&]*")


class _Context(logging.Filter):
    """Adds the request's id (``server.observe.request_id``) to every record made while a
    request is served, and hides the values of query parameters whose names say they are
    secret (``?token=...``) in the access log: suitkit never takes a secret in a URL, but a
    client may put one there."""

    def __init__(self, request_id: Callable[[], str | None]) -> None:
        super().__init__()
        self._request_id = request_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = self._request_id()
        if (record.name == "uvicorn.access" and isinstance(record.args, tuple)
                and len(record.args) == 5):
            client, method, path, version, status = record.args
            record.args = (client, method, _SECRET_QUERY.sub(r"\1***", str(path)), version,
                           status)
        return True


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


def _configure_logging(level: str, log_format: str = "plain") -> None:
    """The server's log on stderr: suitkit's and uvicorn's loggers (the access log at info);
    other libraries only from warning up. Requests are logged as method, path and status:
    never a header (where credentials travel) nor a body. Each line made while a request is
    served carries its id; ``log_format`` ``json``: one JSON object a line."""
    from suitkit.server.observe import request_id  # noqa: PLC0415

    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_Json(fmt) if log_format == "json" else _Redacting(fmt))
    handler.addFilter(_Quieter())
    handler.addFilter(_Context(request_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("suitkit", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level.upper())


def _capacity_line(capacity: Any, *, tracker: bool) -> str:
    """What the process can hold (``server.guard.Capacity``), for the start-up output."""
    line = (f"holds up to {capacity.connections:,} connections (open-file limit "
            f"{capacity.open_files:,})")
    if tracker:
        line += (f", {capacity.push:,} of them push streams (SSE, long-poll; about "
                 f"{capacity.push_mib:,} MiB at that cap); more devices: MQTT "
                 f"(docs/server.md, push capacity)")
    return "; ".join((line, *capacity.lowered))


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


def _tls_options(o: ServeOptions) -> dict[str, Any]:
    """uvicorn's TLS options for ``o``, checked now (a bad file is one line and exit 2, not a
    traceback once uvicorn starts)."""
    if o.tls_cert is None:
        for name, value in (("--tls-key", o.tls_key), ("--tls-client-ca", o.tls_client_ca)):
            if value is not None:
                fail(f"{name} needs --tls-cert", EXIT_USAGE)
        return {}
    import ssl  # noqa: PLC0415

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(o.tls_cert, o.tls_key)
    except (OSError, ssl.SSLError) as e:
        fail(f"--tls-cert/--tls-key: cannot load {o.tls_cert}"
             f"{f' and {o.tls_key}' if o.tls_key else ''}: "
             f"{getattr(e, 'strerror', None) or getattr(e, 'reason', None) or e}", EXIT_USAGE)
    options: dict[str, Any] = {"ssl_certfile": str(o.tls_cert)}
    if o.tls_key is not None:
        options["ssl_keyfile"] = str(o.tls_key)
    if o.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=o.tls_client_ca)
        except (OSError, ssl.SSLError) as e:
            fail(f"--tls-client-ca: cannot load {o.tls_client_ca}: "
                 f"{getattr(e, 'strerror', None) or getattr(e, 'reason', None) or e}",
                 EXIT_USAGE)
        options.update(ssl_ca_certs=str(o.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _listen(host: str, port: int, option: str = "--host") -> socket.socket:
    """A listening TCP socket on ``host:port`` (exit 2 with one line if it cannot be had).

    Made with ``IPPROTO_TCP`` named, so asyncio turns Nagle's algorithm off on its connections
    (server/background.py ``listening_socket``)."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      proto=socket.IPPROTO_TCP)[0]
    except (OSError, UnicodeError) as e:
        fail(f"{option}: cannot resolve {host!r}: {getattr(e, 'strerror', None) or e}",
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


db_app = new_app(help="The status tracker's database: schema migrations.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@handles_errors
def db_upgrade(
    db: Annotated[str | None, typer.Option(
        "--db", envvar="SUITKIT_DB", help="Database URL, e.g. "
        "postgresql+psycopg://user@host/suitkit (also SUITKIT_DB: a password kept off the "
        "command line).")] = None,
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
    version: Annotated[str | None, typer.Option(
        "--version", help="The release's version (e.g. 1.4.0), when the manifest's text has "
        "no component-version (up to 64 characters).")] = None,
    notes: Annotated[str | None, typer.Option(
        "--notes", help="Release notes (up to 4096 characters); @FILE reads them from a "
        "file.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a release (envelope and detached images) to a firmware server; the files are
    streamed from disk (never held in memory), with a progress bar on a terminal."""
    token = read_token(token_file)
    fields: dict[str, str] = {}
    if version is not None:
        fields["version"] = version
    if notes is not None:
        if notes.startswith("@"):
            try:
                notes = Path(notes[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                fail(f"--notes {notes}: cannot read: {e}", EXIT_USAGE)
        fields["notes"] = notes
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
                                      data=fields, timeout=timeout,
                                      headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as e:
            fail(f"cannot reach {url} to upload: {type(e).__name__}: {e}", EXIT_UNREACHABLE)
    doc = _json(response)
    if response.status_code not in (200, 201):
        message = doc.get("error") if isinstance(doc, dict) else None
        fail(f"upload refused (HTTP {response.status_code}): "
             f"{message or response.reason_phrase}", EXIT_FAILED)
    if not isinstance(doc, dict) or "id" not in doc:
        fail(f"unexpected answer from {url}: not a release", EXIT_FAILED)
    state = "stored" if response.status_code == 201 else "already stored"
    if as_json:
        print_json({**doc, "stored": response.status_code == 201})
        return
    named = f"version {doc['version']}, " if doc.get("version") else ""
    out.print(f"release {doc['id']} ({named}sequence number {doc['sequence_number']}) {state}",
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


config_app = new_app(help="serve's configuration (flags > `SUITKIT_<KEY>` > file > defaults).")
app.add_typer(config_app, name="config")


@config_app.command("show")
@handles_errors
def config_show(
    config: Annotated[Path | None, typer.Option(
        "--config", help="TOML file of serve's options (default: SUITKIT_CONFIG).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print the configuration serve would run with here (the environment and the file; no
    flags), as TOML with each value's source; secrets redacted."""
    import typer.main  # noqa: PLC0415

    group: Any = typer.main.get_command(app)
    args = ["--config", str(config)] if config is not None else []
    with group.commands["serve"].make_context("serve", args) as ctx:
        out.print(show_config(ctx, config, as_json=as_json), markup=False)
