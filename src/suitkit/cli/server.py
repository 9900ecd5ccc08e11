"""``suitkit serve`` and ``suitkit upload``: run the firmware server and upload releases to it.

``serve`` builds a ``ServerConfig`` from its options and runs ``server.app.create_app`` on
uvicorn; FastAPI and uvicorn are imported only when it runs, so the rest of the CLI works
without them. With ``--admin-token-file`` it also mounts the status tracker's routes
(``tracker.api.create_router``) and the dashboard (``dashboard.create_dashboard_router``,
``/dashboard/``) on the same application. ``upload`` posts an envelope and its
detached images (multipart, see docs/server.md) with the bearer token from a file and prints
the release the server stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from suitkit.author import keys as keyfiles
from suitkit.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    fail,
    handles_errors,
    out,
    read_input,
    read_token,
)
from suitkit.cli.notices import TrackerWiring, parse_host_port, release_lookup, tracker_routes
from suitkit.core.verify import TrustAnchor, TrustAnchors
from suitkit.tracker.quotas import Quotas

DEFAULT_QUOTAS = Quotas()

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

MIB = 1024 * 1024


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
        "--limit-concurrency", help="Open connections served at once (503 beyond); a push "
        "fleet holds one per device (SSE, long-poll).")] = 1000,
    coap_port: Annotated[int | None, typer.Option(
        "--coap-port", help="Also serve the blobs over CoAP (block-wise) on this UDP port.")
    ] = None,
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
) -> None:
    """Run the firmware server (verified uploads, immutable content-addressed downloads over
    HTTP and CoAP) and, with --admin-token-file, the status tracker and the dashboard."""
    try:
        import uvicorn  # noqa: PLC0415 - optional at import time of the CLI

        from suitkit.server.app import ServerConfig, create_app  # noqa: PLC0415
        from suitkit.server.background import UVICORN_OPTIONS  # noqa: PLC0415
    except ImportError as e:
        fail(f"the firmware server needs fastapi and uvicorn: {e}", EXIT_USAGE)
    if max_upload_mib < 1:
        fail("--max-upload-mib must be at least 1", EXIT_USAGE)
    if limit_concurrency < 1:
        fail("--limit-concurrency must be at least 1", EXIT_USAGE)
    bounds = {"--device-reports-per-minute": device_reports_per_minute,
              "--device-events-per-minute": device_events_per_minute,
              "--device-inventory-per-minute": device_inventory_per_minute,
              "--max-reports-per-device": max_reports_per_device,
              "--max-report-kib-per-device": max_report_kib_per_device,
              "--max-events-per-device": max_events_per_device,
              "--history-retention-days": history_retention_days,
              "--report-retention-days": report_retention_days,
              "--retention-interval": retention_interval}
    for option, value in bounds.items():
        if not 0 <= value < 1e9:
            fail(f"{option} must be 0 (off) or a positive number below 1e9, got {value:g}",
                 EXIT_USAGE)
    quotas = Quotas(reports_per_minute=device_reports_per_minute,
                    events_per_minute=device_events_per_minute,
                    inventory_per_minute=device_inventory_per_minute,
                    max_reports=max_reports_per_device,
                    max_report_bytes=max_report_kib_per_device * 1024,
                    max_events=max_events_per_device, history_days=history_retention_days,
                    report_days=report_retention_days, retention_interval=retention_interval)
    options = {**UVICORN_OPTIONS, "limit_concurrency": limit_concurrency}
    anchors = TrustAnchors(tuple(TrustAnchor(keyfiles.load_verifier(p), role="author")
                                 for p in author_anchor))
    token = read_token(upload_token_file) if upload_token_file is not None else None
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
    if mqtt is not None and admin_token_file is None:
        fail("--mqtt needs --admin-token-file (the status tracker is off without it)",
             EXIT_USAGE)
    routers: tuple[Any, ...] = ()
    wiring: TrackerWiring | None = None
    if admin_token_file is not None:
        from suitkit.tracker.api import TrackerConfig  # noqa: PLC0415

        data.mkdir(parents=True, exist_ok=True)
        db_url = tracker_db or f"sqlite:///{data.resolve() / 'tracker.db'}"
        try:
            broker = parse_host_port(mqtt, "--mqtt") if mqtt is not None else None
        except ValueError as e:
            fail(str(e), EXIT_USAGE)
        # deployments and campaigns name a release this server holds (the tracker derives
        # and checks its envelope URL)
        tracker_config = TrackerConfig(db_url, read_token(admin_token_file),
                                       releases=release_lookup(data), public_url=public_url,
                                       quotas=quotas)
        wiring = tracker_routes(tracker_config, mqtt=broker, coap=coap_port is not None)
        from suitkit.dashboard import create_dashboard_router  # noqa: PLC0415

        routers = (*wiring.routers, create_dashboard_router(redirect_root=True))
    config = ServerConfig(data_dir=data, anchors=anchors, upload_token=token,
                          max_upload_bytes=max_upload_mib * MIB, routers=routers,
                          authorizer=wiring.authorizer if wiring is not None else None)
    application = create_app(config)
    shown = f"[{host}]" if ":" in host else host
    out.print(f"suitkit firmware server on http://{shown}:{port}/ (data {data}; uploads "
              f"{'enabled' if token or wiring is not None else 'disabled'}"
              f"{'; status tracker enabled' if routers else ''})", markup=False)
    try:
        if coap_port is None:
            uvicorn.run(application, host=host, port=port, log_level="warning",
                        timeout_graceful_shutdown=5, **options)  # type: ignore[arg-type]
            return
        from suitkit.server.coap import CoapServer, create_coap_site  # noqa: PLC0415
        from suitkit.server.store import BlobStore  # noqa: PLC0415

        site = create_coap_site(BlobStore(data), extra_resources=wiring.coap_resources
                                if wiring is not None else ())
        with CoapServer(BlobStore(data), host, coap_port, site=site):
            out.print(f"and on coap://{shown}:{coap_port}/", markup=False)
            uvicorn.run(application, host=host, port=port, log_level="warning",
                        timeout_graceful_shutdown=5, **options)  # type: ignore[arg-type]
    finally:
        if wiring is not None:
            wiring.close()


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
    from suitkit.tracker.db import migrate  # noqa: PLC0415 - SQLAlchemy only when asked for

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


@app.command()
@handles_errors
def upload(
    envelope: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Signed envelope.")],
    server: Annotated[str, typer.Option("--server", help="Server URL, e.g. "
                                        "http://127.0.0.1:8080")],
    token_file: Annotated[Path, typer.Option("--token-file", help="File holding the upload "
                                             "token.")],
    images: Annotated[list[str] | None, typer.Argument(
        metavar="[IMAGE...]", help="Detached images: PATH (matched by digest) or N=PATH "
        "(for component index N).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 60.0,
) -> None:
    """Upload a release (envelope and detached images) to a firmware server."""
    token = read_token(token_file)
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("envelope", (envelope.name, read_input(envelope, "envelope"),
                      "application/suit-envelope+cose"))]
    for spec in images or []:
        index, sep, name = spec.partition("=")
        if sep and index.isdigit():
            part, path = f"image-{int(index)}", Path(name)
        else:
            part, path = "image", Path(spec)
        files.append((part, (path.name, read_input(path, "image"), "application/octet-stream")))
    url = server.rstrip("/")
    try:
        response = httpx.post(f"{url}/api/v1/releases", files=files, timeout=timeout,
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
