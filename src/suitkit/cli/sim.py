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
    new_app,
    out,
    read_token,
)
from suitkit.fileio import atomic_write

if TYPE_CHECKING:
    from suitkit.sim.load import LoadResult
    from suitkit.sim.swarm import Swarm

app = new_app(no_args_is_help=True,
              help="Simulated devices: a fleet in one process, for load.")

MODE_CHOICES = ("poll", "push", "hybrid", "mixed")
PIPED_PROGRESS = 10.0
"""Seconds between progress lines when the output is not a terminal."""


@app.command()
@handles_errors
def fleet(
    devices: Annotated[int, typer.Option("--devices", help="Number of devices.")] = 100,
    server: Annotated[list[str] | None, typer.Option(
        "--server", help="Server URL (default: start a local one). Repeat it for replicas "
        "(devices take them in turn; the operator's calls go to the first), or give one "
        "load balancer's URL.")] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="Operating mode: poll, push (SSE), hybrid (long-poll) or mixed (the "
        "three in turn); --mix overrides it.")] = "poll",
    mix: Annotated[str | None, typer.Option(
        "--mix", help="Kinds of devices in proportions, e.g. poll=2,sse=1,longpoll=1,hybrid=1 "
        "(sse and longpoll: push over either; hybrid: long-poll notices that trigger a "
        "check-in).")] = None,
    admin_token_file: Annotated[Path | None, typer.Option(
        "--admin-token-file", help="With --server: the tracker's admin token.")] = None,
    upload_token_file: Annotated[Path | None, typer.Option(
        "--upload-token-file", help="With --server: the firmware server's upload token.")
    ] = None,
    author_key: Annotated[Path | None, typer.Option(
        "--author-key", help="With --server: the author's private key (the server's "
        "--author-anchor).")] = None,
    server_pid: Annotated[list[int] | None, typer.Option(
        "--server-pid", help="With --server: a server process whose CPU time to report "
        "(repeat it for replicas).")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", help="Connections per server for ordinary requests (push streams "
        "and long-polls hold one more each).")] = 64,
    poll_interval: Annotated[float | None, typer.Option(
        "--poll-interval", help="Seconds between check-ins of a poll device (default: 2, or "
        "N/100 for more than 200 poll devices, so that polls stay near 100 per second).")
    ] = None,
    long_poll: Annotated[float, typer.Option(
        "--long-poll", help="The wait of a long-poll, seconds (at most the server's 60).")
    ] = 30.0,
    safety_interval: Annotated[float, typer.Option(
        "--safety-interval", help="Seconds between the check-ins push and hybrid devices "
        "make in case a notice was lost (as the agent does).")] = 300.0,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds to wait for the whole fleet to update.")] = 600.0,
    workdir: Annotated[Path | None, typer.Option(
        "--dir", help="Where to put keys and releases (default: a new temporary folder).")
    ] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write the figures as JSON to this file.")] = None,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Show live progress.")
                    ] = True,
) -> None:
    """Run N simulated devices against a server; report how long the fleet takes to update."""
    from suitkit.sim.load import MODE_MIXES  # noqa: PLC0415 - loaded only when asked for
    from suitkit.sim.swarm import parse_mix  # noqa: PLC0415
    from suitkit.sim.wire import parse_server_url  # noqa: PLC0415

    if devices < 1:
        fail(f"--devices must be at least 1, got {devices}", EXIT_USAGE)
    if mode not in MODE_CHOICES:
        fail(f"--mode must be one of {', '.join(MODE_CHOICES)}, got {mode!r}", EXIT_USAGE)
    try:
        weights = parse_mix(mix) if mix is not None else dict(MODE_MIXES[mode])
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    for url in server or ():
        try:
            parse_server_url(url)
        except ValueError as e:
            fail(f"--server: {e}", EXIT_USAGE)
    if poll_interval is None:
        polling = devices * weights.get("poll", 0) / sum(weights.values())
        poll_interval = max(2.0, polling / 100)
    if (concurrency < 1 or poll_interval <= 0 or timeout <= 0 or safety_interval <= 0
            or not 0 < long_poll <= 60):
        fail("--concurrency, --poll-interval, --safety-interval and --timeout must be "
             "positive, --long-poll from 0 to 60", EXIT_USAGE)
    if server_pid and not server:
        fail("--server-pid goes with --server (the server started here is measured anyway)",
             EXIT_USAGE)
    from suitkit.author import keys as keyfiles  # noqa: PLC0415 - loaded only when asked for
    from suitkit.sim.firmware import Keys, make_keys  # noqa: PLC0415
    from suitkit.sim.local import local_server  # noqa: PLC0415

    if server and (admin_token_file is None or upload_token_file is None
                   or author_key is None):
        fail("--server needs --admin-token-file, --upload-token-file and --author-key",
             EXIT_USAGE)
    root = workdir or Path(tempfile.mkdtemp(prefix="suitkit-fleet-"))
    root.mkdir(parents=True, exist_ok=True)
    keys = make_keys(root / "keys")
    context: AbstractContextManager[Any]
    if not server:
        context = local_server(root / "server", keys.author_pub)
    else:
        assert author_key is not None and admin_token_file is not None
        assert upload_token_file is not None
        author = keyfiles.load_private_key(author_key)
        keyfiles.write_public_key(root / "keys" / "author.pub", author)
        keyfiles.write_private_key(root / "keys" / "author.pem", author)
        keys = Keys(author, keys.operator, root / "keys" / "author.pem", keys.operator_key,
                    root / "keys" / "author.pub", keys.operator_pub)
        context = nullcontext(([u.rstrip("/") for u in server], read_token(admin_token_file),
                               read_token(upload_token_file), list(server_pid or ())))
    with context as running:
        if isinstance(running, tuple):
            urls, admin, upload, pids = running
        else:
            urls, admin, upload = [running.url], running.admin_token, running.upload_token
            pids = [running.pid]
        out.print(f"{devices} devices ({', '.join(f'{k}={v:g}' for k, v in weights.items())})"
                  f" against {', '.join(urls)}; files in {root}", markup=False)
        result = _run(root, urls, admin, upload, devices, mix=weights, keys=keys,
                      concurrency=concurrency, poll_interval=poll_interval,
                      long_poll=long_poll, safety_interval=safety_interval, timeout=timeout,
                      pids=pids, console=out, live=live)
    _print(out, result)
    if json_path is not None:
        atomic_write(json_path, json.dumps(result.as_json(), indent=2).encode() + b"\n")
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


def _run(root: Path, urls: list[str], admin: str, upload: str, n: int, *,
         mix: dict[str, float], keys: Any, concurrency: int, poll_interval: float,
         long_poll: float, safety_interval: float, timeout: float, pids: list[int],
         console: Console,
         live: bool) -> LoadResult:
    from suitkit.sim.load import run_load  # noqa: PLC0415

    started = time.monotonic()
    holder: dict[str, Swarm] = {}

    def say(line: str) -> None:
        console.print(f"[{time.monotonic() - started:6.1f} s] {line}", markup=False)

    async def main() -> LoadResult:
        task = asyncio.create_task(run_load(
            root, urls, admin, upload, n, mix=mix, keys=keys, concurrency=concurrency,
            poll_interval=poll_interval, long_poll=long_poll,
            safety_interval=safety_interval, timeout=timeout, server_pids=pids,
            on_swarm=lambda s: holder.__setitem__("swarm", s), say=say))
        display: Live | None = None
        # Not a terminal (a pipe, a log file): no cursor to redraw a line with, so a progress
        # line of its own every PIPED_PROGRESS seconds instead of one redrawn in place.
        redraw = console.is_terminal
        next_line = time.monotonic() + PIPED_PROGRESS
        try:
            while not task.done():
                current = holder.get("swarm")
                if live and current is not None and redraw:
                    if display is None:
                        display = Live(_line(current), console=console, refresh_per_second=2)
                        display.start()
                    display.update(_line(current))
                elif live and current is not None and time.monotonic() >= next_line:
                    say(_line(current))
                    next_line = time.monotonic() + PIPED_PROGRESS
                await asyncio.wait({task}, timeout=0.5)
        finally:
            if display is not None:
                display.stop()
        return await task

    return asyncio.run(main())


def _line(swarm: Swarm) -> str:
    counts: dict[str, int] = {}
    for device in swarm.devices:
        category = {"succeeded": "updated", None: "updating" if device.release else "waiting"
                    }.get(device.outcome, device.outcome or "")
        counts[category] = counts.get(category, 0) + 1
    stats = swarm.stats
    elapsed = max(time.monotonic() - stats.started, 1e-6)
    return (" ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            + f" | {stats.total} requests ({stats.total / elapsed:.0f}/s), "
              f"{stats.server_errors} server errors, {stats.transport_errors} transport errors")


def _print(console: Console, result: LoadResult) -> None:
    window = result.window
    p = result.percentiles
    console.print(f"fleet of {result.devices} "
                  f"({', '.join(f'{k}={v:g}' for k, v in result.mix.items())}): set up in "
                  f"{result.setup_seconds:.1f} s (registration {result.register_seconds:.1f} s);"
                  f" updated in {result.update_seconds:.1f} s after the deployment",
                  markup=False)
    console.print("updated after: " + ", ".join(
        f"{k[1:]}% {v:.1f} s" if v is not None else f"{k[1:]}% never" for k, v in p.items()),
        markup=False)
    console.print(f"outcomes: {', '.join(f'{k} {v}' for k, v in result.outcomes.items())}",
                  markup=False)
    console.print(f"during the update: {window['requests']} requests "
                  f"({window['requests_per_second']}/s), by kind {window['by_kind']}, "
                  f"by status {window['by_status']}, server errors {window['server_errors']}, "
                  f"transport errors {window['transport_errors']}", markup=False)
    cpu = result.cpu["window"]
    server = cpu["server_seconds"]
    console.print(f"CPU during the update: server {server if server is not None else 'unknown'}"
                  f" s, simulator {cpu['simulator_seconds']} s", markup=False)
    for failure in result.failures[:10]:
        console.print(f"not updated: {failure['device']}: {failure['outcome']}: "
                      f"{failure['reason']}", markup=False)
