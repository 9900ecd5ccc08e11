"""``suitkit sim fleet``: many simulated devices against a server, for load (``sim.load``).

Without ``--server`` it starts its own ``suitkit serve`` on loopback (like ``suitkit demo``);
with ``--server URL`` it needs the admin and upload tokens of that server and the author's
private key its uploads must be signed with (``--author-anchor`` of ``suitkit serve``).
It prints the time until the whole fleet is updated, the request rate the fleet put on the
server and the error answers, and exits 0 only when every device was updated.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.live import Live

from suitkit.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    handles_errors,
    out,
    read_token,
)
from suitkit.fileio import atomic_write

if TYPE_CHECKING:
    from suitkit.sim.fleet import Fleet
    from suitkit.sim.load import LoadResult

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Simulated devices: a fleet in one process, for load.")

MODE_CHOICES = ("poll", "push", "hybrid", "mixed")


@app.command()
@handles_errors
def fleet(
    devices: Annotated[int, typer.Option("--devices", help="Number of devices.")] = 100,
    server: Annotated[str | None, typer.Option(
        "--server", help="Server URL (default: start a local one).")] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="Operating mode: poll, push (SSE), hybrid (long-poll) or mixed.")
    ] = "poll",
    admin_token_file: Annotated[Path | None, typer.Option(
        "--admin-token-file", help="With --server: the tracker's admin token.")] = None,
    upload_token_file: Annotated[Path | None, typer.Option(
        "--upload-token-file", help="With --server: the firmware server's upload token.")
    ] = None,
    author_key: Annotated[Path | None, typer.Option(
        "--author-key", help="With --server: the author's private key (the server's "
        "--author-anchor).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads that run installs.")
                       ] = 4,
    poll_interval: Annotated[float | None, typer.Option(
        "--poll-interval", help="Seconds between polls of a poll-mode device (default: 2, or "
        "N/100 for more than 200 devices, so that polls stay near 100 per second).")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds to wait for the whole fleet to update.")] = 600.0,
    workdir: Annotated[Path | None, typer.Option(
        "--dir", help="Where to put the devices (default: a new temporary folder).")] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the figures as JSON to this file.")] = None,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Show live progress.")
                    ] = True,
) -> None:
    """Run N simulated devices against a server; report how long the fleet takes to update."""
    if devices < 1:
        fail(f"--devices must be at least 1, got {devices}", EXIT_USAGE)
    if mode not in MODE_CHOICES:
        fail(f"--mode must be one of {', '.join(MODE_CHOICES)}, got {mode!r}", EXIT_USAGE)
    if poll_interval is None:
        poll_interval = max(2.0, devices / 100)
    if workers < 1 or poll_interval <= 0 or timeout <= 0:
        fail("--workers, --poll-interval and --timeout must be positive", EXIT_USAGE)
    from suitkit.author import keys as keyfiles  # noqa: PLC0415 - loaded only when asked for
    from suitkit.sim.firmware import Keys, make_keys  # noqa: PLC0415
    from suitkit.sim.local import local_server  # noqa: PLC0415

    root = workdir or Path(tempfile.mkdtemp(prefix="suitkit-fleet-"))
    root.mkdir(parents=True, exist_ok=True)
    keys = make_keys(root / "keys")
    context: AbstractContextManager[Any]
    if server is None:
        context = local_server(root / "server", keys.author_pub)
    else:
        if admin_token_file is None or upload_token_file is None or author_key is None:
            fail("--server needs --admin-token-file, --upload-token-file and --author-key",
                 EXIT_USAGE)
        author = keyfiles.load_private_key(author_key)
        keyfiles.write_public_key(root / "keys" / "author.pub", author)
        keyfiles.write_private_key(root / "keys" / "author.pem", author)
        keys = Keys(author, keys.operator, root / "keys" / "author.pem", keys.operator_key,
                    root / "keys" / "author.pub", keys.operator_pub)
        context = nullcontext((server.rstrip("/"), read_token(admin_token_file),
                               read_token(upload_token_file)))
    with context as running:
        if isinstance(running, tuple):
            url, admin, upload = running
        else:
            url, admin, upload = running.url, running.admin_token, running.upload_token
        out.print(f"{devices} devices ({mode}) against {url}; files in {root}", markup=False)
        result = _run(root, url, admin, upload, devices, mode=mode, keys=keys,
                      workers=workers, poll_interval=poll_interval, timeout=timeout,
                      console=out, live=live)
    _print(out, result)
    if json_path is not None:
        atomic_write(json_path, json.dumps(result.as_json(), indent=2).encode() + b"\n")
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


def _run(root: Path, url: str, admin: str, upload: str, n: int, *, mode: str, keys: Any,
         workers: int, poll_interval: float, timeout: float, console: Console,
         live: bool) -> LoadResult:
    from suitkit.sim.load import run_load  # noqa: PLC0415

    started = time.monotonic()
    holder: dict[str, Fleet] = {}

    def say(line: str) -> None:
        console.print(f"[{time.monotonic() - started:6.1f} s] {line}", markup=False)

    async def main() -> LoadResult:
        task = asyncio.create_task(run_load(
            root, url, admin, upload, n, mode=mode, keys=keys, workers=workers,
            poll_interval=poll_interval, timeout=timeout,
            on_fleet=lambda f: holder.__setitem__("fleet", f), say=say))
        display: Live | None = None
        try:
            while not task.done():
                current = holder.get("fleet")
                if live and current is not None:
                    if display is None:
                        display = Live(_line(current), console=console, refresh_per_second=4)
                        display.start()
                    display.update(_line(current))
                await asyncio.wait({task}, timeout=0.25)
        finally:
            if display is not None:
                display.stop()
        return await task

    return asyncio.run(main())


def _line(fleet: Fleet) -> str:
    from suitkit.sim.fleet import classify  # noqa: PLC0415

    counts: dict[str, int] = {}
    for device in fleet.devices:
        category = classify(device.outcome, device.reason)
        if category == "pending" and device.attempts:
            category = "updating"
        counts[category] = counts.get(category, 0) + 1
    stats = fleet.stats
    elapsed = max(time.monotonic() - stats.started, 1e-6)
    return (" ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            + f" | {stats.total} requests ({stats.total / elapsed:.0f}/s), "
              f"{stats.server_errors} server errors, {stats.transport_errors} transport errors")


def _print(console: Console, result: LoadResult) -> None:
    window = result.window
    console.print(f"fleet of {result.devices} ({result.mode}): set up in "
                  f"{result.setup_seconds:.1f} s; updated in {result.update_seconds:.1f} s "
                  f"after the deployment", markup=False)
    console.print(f"outcomes: {', '.join(f'{k} {v}' for k, v in result.outcomes.items())}",
                  markup=False)
    console.print(f"during the update: {window['requests']} requests "
                  f"({window['requests_per_second']}/s), by kind {window['by_kind']}, "
                  f"by status {window['by_status']}, server errors {window['server_errors']}, "
                  f"transport errors {window['transport_errors']}", markup=False)
    for failure in result.failures[:10]:
        console.print(f"not updated: {failure['device']}: {failure['outcome']}: "
                      f"{failure['reason']}", markup=False)
