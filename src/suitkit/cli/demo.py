"""``suitkit demo``: a whole fleet updated through a staged campaign, faults included.

``suitkit demo`` (what ``make demo`` runs) starts ``suitkit serve`` (firmware server and status
tracker, SQLite in a temporary folder) on a free loopback port, creates the author's and the
operator's keys (the devices' trust anchors, both required), builds firmware v1 and v2 for each
device class, signs each release (author, then the operator's approval) and uploads it, then
runs a fleet of simulated devices of every shape (mcu, secure-split, dual-cpu, Linux-class) in
every operating mode (poll, push, hybrid) through staged campaigns (a first wave, then the
rest), with the faults a real fleet meets: a power cut in the middle of an install, a network
cut in the middle of a download, a device of the wrong class, an image altered by a hostile
mirror, and a new image that fails to start and is rolled back (``sim.scenario``). Two more
devices run suitkit's agent over the standard device protocols: one over LwM2M (the server's
LwM2M edge, ``--lwm2m-port``, delivers to it) and one over hawkBit DDI. Progress is live; the
end is a table of every device's protocol, outcome and reason against the one it was declared
to have, and the exit status is 0 only when every device ended where it should.

``suitkit demo --walkthrough`` is the author's flow step by step through the real command line
(keys, create, sign twice, show, verify, sever, a device, a firmware server).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.rule import Rule
from rich.table import Table

from suitkit.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, handles_errors, new_app, out
from suitkit.errors import SuitError
from suitkit.fileio import atomic_write

if TYPE_CHECKING:
    from suitkit.sim.fleet import Fleet
    from suitkit.sim.scenario import Summary

app = new_app()

OUTCOME_STYLE = {"updated": "green", "rolled-back": "yellow", "rejected": "magenta",
                 "failed": "red", "pending": "dim"}


@app.command()
@handles_errors
def demo(
    devices: Annotated[int, typer.Option("--devices", help="Number of simulated devices "
                                         "(at least 9: one fault-free device per shape and "
                                         "five faults).")] = 16,
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="Keep the server (and its dashboard) running after the "
        "summary, until Ctrl-C.")] = False,
    summary: Annotated[Path | None, typer.Option(
        "--summary", help="Also write the summary as JSON to this file.")] = None,
    workdir: Annotated[Path | None, typer.Option(
        "--dir", help="Where to put keys, firmware, devices and the server's data (default: "
        "a new temporary folder).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads that run installs.")
                       ] = 4,
    walkthrough: Annotated[bool, typer.Option(
        "--walkthrough", help="Instead: the author's flow step by step through the command "
        "line.")] = False,
) -> None:
    """Update a fleet of simulated devices through a staged campaign, with injected faults."""
    if walkthrough:
        run_walkthrough(workdir, out)
        return
    from suitkit.sim.scenario import MIN_DEVICES  # noqa: PLC0415 - loaded only when asked for

    if devices < MIN_DEVICES:
        fail(f"--devices must be at least {MIN_DEVICES} (one fault-free device per shape and "
             f"five faults), got {devices}", EXIT_USAGE)
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}", EXIT_USAGE)
    ok = run_fleet_demo(workdir, out, devices=devices, keep_running=keep_running,
                        summary_path=summary, workers=workers)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def run_fleet_demo(workdir: Path | None, console: Console, *, devices: int = 16,
                   keep_running: bool = False, summary_path: Path | None = None,
                   workers: int = 4) -> bool:
    """The fleet demo (see the module docstring); True when every device ended as declared.

    Raises:
        SuitError: the server did not start, or a call to it failed.
    """
    from suitkit.sim.firmware import make_keys  # noqa: PLC0415
    from suitkit.sim.local import free_udp_port, local_server  # noqa: PLC0415
    from suitkit.sim.scenario import demo_plans, run_scenario  # noqa: PLC0415

    started = time.monotonic()
    if not console.is_terminal and console.width < 140:
        # a log or a pipe: wide enough for the summary table's reasons
        console = Console(width=140, highlight=False, soft_wrap=True)
    root = workdir or Path(tempfile.mkdtemp(prefix="suitkit-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    console.print(Rule("suitkit demo: a fleet, a staged campaign, injected faults",
                       style="cyan"))
    console.print(f"work folder {root}", markup=False)
    keys = make_keys(root / "keys")
    plans = demo_plans(devices, protocols=True)
    lwm2m_port = free_udp_port()
    with local_server(root / "server", keys.author_pub,
                      extra_args=("--lwm2m-port", str(lwm2m_port), "--lwm2m-nosec")) as server:
        dashboard = f"{server.url}/dashboard/"
        lwm2m = f"coap://127.0.0.1:{lwm2m_port}"
        console.print(f"server (suitkit serve, SQLite) at {server.url}, LwM2M at {lwm2m} "
                      f"[{time.monotonic() - started:.1f} s]", markup=False)
        holder: dict[str, Fleet] = {}

        def say(line: str) -> None:
            console.print(f"[{time.monotonic() - started:5.1f} s] {line}", markup=False)

        async def main() -> Summary:
            task = asyncio.create_task(run_scenario(
                root, server.url, server.admin_token, server.upload_token, plans, keys=keys,
                workers=workers, on_fleet=lambda f: holder.__setitem__("fleet", f), say=say,
                dashboard=dashboard, lwm2m=lwm2m))
            live: Live | None = None
            try:
                while not task.done():
                    fleet = holder.get("fleet")
                    if fleet is not None and console.is_terminal:
                        if live is None:
                            live = Live(_progress(fleet), console=console,
                                        refresh_per_second=4, transient=False)
                            live.start()
                        live.update(_progress(fleet))
                    await asyncio.wait({task}, timeout=0.25)
                if live is not None and "fleet" in holder:
                    live.update(_progress(holder["fleet"]))
            finally:
                if live is not None:
                    live.stop()
            return await task

        result = asyncio.run(main())
        _print_summary(console, result)
        operator_token = _operator_token(server.url, server.admin_token, root)
        console.print(f"dashboard: {dashboard} (operator token in {operator_token})",
                      markup=False)
        if summary_path is not None:
            atomic_write(summary_path, json.dumps(result.as_json(), indent=2).encode() + b"\n")
            console.print(f"summary written to {summary_path}", markup=False)
        console.print(f"done in {time.monotonic() - started:.1f} s; files in {root}",
                      markup=False)
        if keep_running:
            console.print(f"the server keeps running at {server.url} (log {server.log}); "
                          "press Ctrl-C to stop", markup=False)
            _wait_for_interrupt()
    return result.ok


def _wait_for_interrupt() -> None:
    """Until Ctrl-C (SIGINT) or SIGTERM; the caller's ``with`` then stops the server."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _operator_token(url: str, admin_token: str, root: Path) -> Path:
    """An operator API token for the dashboard, written to ``root/operator.token``."""
    from suitkit.sim.control import Console as ControlConsole  # noqa: PLC0415

    path = root / "operator.token"
    with ControlConsole(url, admin_token) as control:
        try:
            token = control.create_token("dashboard-operator", "operator")
        except SuitError as e:
            token = f"(none: {e})"
    atomic_write(path, token.encode() + b"\n", mode=0o600)
    return path


def _progress(fleet: Fleet) -> Table:
    from suitkit.sim.fleet import classify  # noqa: PLC0415

    table = Table(title="fleet", title_justify="left", expand=False, show_lines=False)
    for column in ("device", "mode", "protocol", "class", "wave", "fault", "state"):
        table.add_column(column, overflow="ellipsis", no_wrap=True,
                         max_width=60 if column == "state" else None)
    for device in fleet.devices:
        plan = device.plan
        category = classify(device.outcome, device.reason)
        style = OUTCOME_STYLE.get(category, "")
        state = device.state if category == "pending" else f"{category}: {device.reason}"
        table.add_row(plan.name, plan.mode, plan.protocol, plan.class_name, str(plan.wave),
                      plan.fault or "", state, style=style)
    done = sum(1 for d in fleet.devices if d.done)
    table.caption = (f"{done}/{len(fleet.devices)} devices done; {fleet.stats.total} "
                     f"requests, {fleet.stats.server_errors} server errors")
    return table


def _print_summary(console: Console, result: Summary) -> None:
    table = Table(title="summary", title_justify="left")
    for column in ("device", "shape", "mode", "protocol", "fault", "outcome", "reason",
                   "expected", ""):
        table.add_column(column, overflow="fold")
    for row in result.devices:
        expected = row["expected"] + (f" ({row['expected_reason']})"
                                      if row["expected_reason"] else "")
        mark = "[green]ok[/green]" if row["as_expected"] else "[red]WRONG[/red]"
        reason = row["reason"] if row["outcome"] != "updated" else (
            "; ".join(row["faults_met"]) or row["reason"])
        table.add_row(row["name"], row["shape"], row["mode"], row["protocol"], row["fault"] or "",
                      f"[{OUTCOME_STYLE.get(row['outcome'], '')}]{row['outcome']}[/]",
                      _escape(reason), _escape(expected), mark)
    console.print(table)
    for line in result.campaign:
        console.print(f"campaign: {line}", markup=False)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    expected = ", ".join(f"{k} {v}" for k, v in result.expected.items())
    console.print(f"outcomes: {counts} (declared: {expected})", markup=False)
    requests: dict[str, Any] = result.requests
    console.print(f"requests: {requests.get('requests')} "
                  f"({requests.get('requests_per_second')}/s), server errors "
                  f"{requests.get('server_errors')}, transport errors "
                  f"{requests.get('transport_errors')}", markup=False)
    if result.ok:
        console.print("[bold green]every device ended where it should[/bold green]")
    else:
        wrong = [r["name"] for r in result.devices if not r["as_expected"]]
        console.print(f"[bold red]not as declared:[/bold red] {_escape(', '.join(wrong))}")


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


# --------------------------------------------------------------------------- the walkthrough

DESCRIPTION = """\
# A firmware update for the demo thermostat, as an author writes it.
sequence-number: 7
vendor-domain: example.com          # vendor id = UUID5(DNS, "example.com")
class-name: thermostat-v2           # class id = UUID5(vendor id, "thermostat-v2")
text:
  manifest-description: Demo thermostat firmware 2.0
  update-description: Faster control loop; fixes sensor drift.
sever: [text]                       # the text can be dropped before delivery
components:
  - id: ["0x00"]
    image: firmware.bin
    uri: https://firmware.example.com/thermostat/2.0/firmware.bin
    text:
      vendor-name: Example Inc.
      model-name: Thermostat v2
      component-version: "2.0.0"
"""


def run_walkthrough(workdir: Path | None, console: Console) -> None:
    """Run the author flow in ``workdir`` (a new temporary folder by default).

    Raises:
        SuitError: a step failed (the demo stops there).
    """
    from suitkit.cli.main import app  # noqa: PLC0415 - main imports this module

    root = workdir or Path(tempfile.mkdtemp(prefix="suitkit-demo-"))
    root.mkdir(parents=True, exist_ok=True)

    def step(title: str, *args: str, expect: int = 0) -> None:
        console.print(Rule(title, style="cyan"))
        console.print(f"$ suitkit {shlex.join(args)}", style="bold", markup=False)
        code = _invoke(app, args, root)
        if code != expect:
            raise SuitError(f"demo step {title!r} exited {code}, expected {expect}")

    console.print(f"[bold]suitkit demo[/bold]: the author's flow in {root}")
    image = _firmware(256 * 1024)
    (root / "firmware.bin").write_bytes(image)
    (root / "thermostat.yaml").write_text(DESCRIPTION, encoding="utf-8")
    console.print(f"firmware.bin: {len(image)} bytes, SHA-256 "
                  f"{hashlib.sha256(image).hexdigest()}", markup=False)

    step("1. Keys: the author signs with ESP256, the operator approves with Ed25519 (MTI)",
         "keygen", "--alg", "ESP256", "--out", "author.pem", "--force")
    step("", "keygen", "--alg", "Ed25519", "--out", "operator.pem", "--force")
    step("", "pubkey", "author.pem", "--out", "author.pub")
    step("", "pubkey", "operator.pem", "--out", "operator.pub")
    step("2. Create the manifest from the description", "create", "thermostat.yaml",
         "--out", "update.suit")
    step("3. Sign: author first, then operator (two authentication blocks)",
         "sign", "update.suit", "--key", "author.pem", "--out", "update.signed.suit")
    step("", "sign", "update.signed.suit", "--key", "operator.pem",
         "--out", "update.signed.suit")
    step("4. Show it", "show", "update.signed.suit")
    step("5. Verify: both authorities must have signed", "verify", "update.signed.suit",
         "--key", "author.pub", "--key", "operator.pub")
    step("6. Sever the text before delivery; the signatures still hold",
         "sever", "update.signed.suit", "--out", "update.delivered.suit")
    step("", "verify", "update.delivered.suit", "--key", "author.pub", "--key", "operator.pub")
    tampered = bytearray((root / "update.delivered.suit").read_bytes())
    tampered[-5] ^= 0x01
    (root / "update.tampered.suit").write_bytes(bytes(tampered))
    step("7. A single flipped bit is refused (exit 1)", "verify", "update.tampered.suit",
         "--key", "author.pub", expect=1)
    (root / "integrated.yaml").write_text(
        DESCRIPTION.replace("sequence-number: 7", "sequence-number: 8")
        .replace("    uri: https://firmware.example.com/thermostat/2.0/firmware.bin\n", ""),
        encoding="utf-8")
    step("8. The same firmware as sequence number 8, with the image inside the envelope",
         "create", "integrated.yaml", "--out", "integrated.suit")
    step("", "sign", "integrated.suit", "--key", "author.pem", "--out", "integrated.signed.suit")
    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, "example.com")
    klass = uuid.uuid5(vendor, "thermostat-v2")
    step("9. A microcontroller that trusts the author's key", "device", "init", "thermostat",
         "--vendor-id", str(vendor), "--class-id", str(klass), "--trust-anchor", "author.pub",
         "--shape", "mcu")
    step("", "device", "install", "thermostat", "integrated.signed.suit")
    step("10. Boot: the bootloader verifies, swaps and runs the update on trial",
         "device", "boot", "thermostat")
    step("", "device", "confirm", "thermostat")
    step("", "device", "status", "thermostat")
    step("11. The older release (sequence number 7) is refused: no rollback",
         "device", "install", "thermostat", "update.signed.suit", expect=1)
    _server_steps(root, step, console)
    signed = (root / "update.signed.suit").stat().st_size
    delivered = (root / "update.delivered.suit").stat().st_size
    console.print(Rule("done", style="green"))
    console.print(f"signed envelope {signed} bytes; delivered (text severed) {delivered} bytes;"
                  f" files in {root}", markup=False)


def _server_steps(root: Path, step: Callable[..., None], console: Console) -> None:
    """Steps 12-13: a firmware server on loopback delivers a detached release over HTTP."""
    from suitkit.author import keys as keyfiles  # noqa: PLC0415
    from suitkit.core.verify import TrustAnchors  # noqa: PLC0415
    from suitkit.server.app import ServerConfig  # noqa: PLC0415
    from suitkit.server.background import running_server  # noqa: PLC0415

    image = _firmware(200 * 1024)[::-1]  # another build
    (root / "firmware-3.0.bin").write_bytes(image)
    (root / "upload.token").write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    config = ServerConfig(data_dir=root / "server-data",
                          anchors=TrustAnchors.of(keyfiles.load_verifier(root / "author.pub")),
                          upload_token=(root / "upload.token").read_text().strip())
    with running_server(config) as url:
        console.print(Rule("12. A firmware server on loopback (suitkit serve) takes the release "
                           "sequence number 9, verified before it is stored", style="cyan"))
        console.print(f"firmware server at {url}", markup=False)
        # Content-addressed: the URL of an image is its SHA-256, known before signing.
        uri = f"{url}/firmware/{hashlib.sha256(image).hexdigest()}"
        (root / "detached.yaml").write_text(
            DESCRIPTION.replace("sequence-number: 7", "sequence-number: 9")
            .replace("firmware.bin\n", "firmware-3.0.bin\n", 1)
            .replace("https://firmware.example.com/thermostat/2.0/firmware.bin", uri),
            encoding="utf-8")
        step("", "create", "detached.yaml", "--out", "detached.suit")
        step("", "sign", "detached.suit", "--key", "author.pem", "--out", "detached.signed.suit")
        step("", "upload", "detached.signed.suit", "0=firmware-3.0.bin", "--server", url,
             "--token-file", "upload.token")
        step("13. The device fetches the image over HTTP (Range-resumable), installs and boots "
             "it", "device", "install", "thermostat", "detached.signed.suit")
        step("", "device", "boot", "thermostat")
        step("", "device", "confirm", "thermostat")


def _invoke(app: object, args: tuple[str, ...], cwd: Path) -> int:
    here = Path.cwd()
    os.chdir(cwd)
    try:
        code = app(list(args), standalone_mode=False)  # type: ignore[operator]
    except typer.Exit as e:
        code = e.exit_code
    finally:
        os.chdir(here)
    return code if isinstance(code, int) else 0


def _firmware(size: int) -> bytes:
    """A deterministic stand-in for a firmware image: code-like words, not random noise."""
    words = [hashlib.sha256(i.to_bytes(2, "big")).digest()[:4] for i in range(512)]
    seed = hashlib.sha256(b"suitkit demo firmware 2.0").digest()
    out = bytearray()
    i = 0
    while len(out) < size:
        out += words[(seed[i % 32] * 7 + i) % 512]
        i += 1
    return bytes(out[:size])
