"""``suitkit campaign ...``: create and drive update campaigns on a status tracker (operator).

``create`` makes a draft; another operator ``approve``s it (four-eyes); ``start`` resolves the
devices and opens the first wave; ``pause``/``resume``/``cancel``/``trigger`` act on it;
``status`` and ``list`` show where campaigns are; ``tags`` sets a device's tags. Every command
takes ``--server`` and ``--token-file`` (or ``SUITKIT_SERVER``/``SUITKIT_TOKEN_FILE``) and uses
``cli.operator.ApiClient``: exit 0 done, 1 the server refused (its one-line error), 2 bad usage
or the server cannot be reached. docs/tracker.md, "Campaigns", has the rules.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from suitkit.cli.common import EXIT_USAGE, JsonOption, fail, handles_errors, new_app, out
from suitkit.cli.common import print_json as _print_json
from suitkit.cli.operator import (
    ApiClient,
    ServerOption,
    TimeoutOption,
    TokenFileOption,
    class_label,
    release_label,
)

__all__ = ["campaign_app"]

campaign_app = new_app(
    help="Update campaigns (operator): create, approve, start, pause, resume, cancel, trigger, "
    "status, list; device tags.", no_args_is_help=True)

_PATH = "/api/v1/campaigns"
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Campaign id.")]


def _status_line(doc: dict[str, Any]) -> str:
    line = f"campaign {doc.get('id')} ({doc.get('name')}): {doc.get('status')}"
    if doc.get("status") == "paused" and doc.get("pause_reason"):
        line += f" ({doc['pause_reason']})"
    return line


def _waves(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        fail(f"--waves: expected percentages such as 1,10,50,100, got {text!r}", EXIT_USAGE)


@campaign_app.command("create")
@handles_errors
def create(
    server: ServerOption, token_file: TokenFileOption,
    release: Annotated[str, typer.Option("--release", help="Manifest digest (hex) of the "
                                         "release, as the firmware server lists it.")],
    envelope_url: Annotated[str | None, typer.Option(
        "--envelope-url", help="Where devices fetch the envelope (http/https); by default the "
        "server derives it from the release (a given URL must be that release's envelope, "
        "e.g. on a mirror).")] = None,
    name: Annotated[str, typer.Option("--name", help="A name for people.")] = "",
    vendor_id: Annotated[str | None, typer.Option("--vendor-id", help="Target: vendor UUID."
                                                  )] = None,
    class_id: Annotated[str | None, typer.Option("--class-id", help="Target: class UUID.")
                        ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Target: devices with this "
                                                  "tag (repeat: all of them).")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="Target: this device "
                                                     "id (repeat for a list).")] = None,
    waves: Annotated[str, typer.Option("--waves", help="Cumulative percentages, e.g. "
                                       "1,10,50,100.")] = "100",
    success_threshold: Annotated[float, typer.Option(
        "--success-threshold", help="Fraction of the open waves that must succeed before "
        "the next wave opens.")] = 1.0,
    failure_threshold: Annotated[float, typer.Option(
        "--failure-threshold", help="Pause when failed / finished devices exceeds this.")
    ] = 0.2,
    mode: Annotated[str, typer.Option("--mode", help="download-only, install-now or "
                                      "install-on-trigger.")] = "install-now",
    start_after: Annotated[str | None, typer.Option(
        "--start-after", help="ISO 8601 time with zone, e.g. 2026-03-02T22:00:00Z.")] = None,
    window: Annotated[str | None, typer.Option(
        "--window", help="Daily maintenance window HH:MM-HH:MM (UTC, may wrap midnight).")
    ] = None,
    unhealthy_threshold: Annotated[float | None, typer.Option(
        "--unhealthy-threshold", help="Pause when more than this fraction of the devices "
        "that confirmed turn unhealthy within --health-window (e.g. 0.02).")] = None,
    health_window: Annotated[float | None, typer.Option(
        "--health-window", help="Seconds after confirming during which a device's health "
        "counts: unhealthy devices are told to roll back, and waves open only once their "
        "devices' windows passed healthy.")] = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Create a campaign (a draft: another operator must approve it)."""
    client = ApiClient.from_options(server, token_file, timeout)
    target: dict[str, Any] = {}
    if vendor_id is not None:
        target["vendor_id"] = vendor_id
    if class_id is not None:
        target["class_id"] = class_id
    if tag:
        target["tags"] = tag
    if device:
        target["devices"] = device
    body: dict[str, Any] = {
        "name": name, "release": release, "target": target,
        "waves": _waves(waves), "success_threshold": success_threshold,
        "failure_threshold": failure_threshold, "mode": mode}
    if envelope_url is not None:
        body["envelope_url"] = envelope_url
    if start_after is not None:
        body["start_after"] = start_after
    if window is not None:
        body["window"] = window
    if unhealthy_threshold is not None:
        body["unhealthy_threshold"] = unhealthy_threshold
    if health_window is not None:
        body["health_window"] = health_window
    doc = client.post(_PATH, body)
    if as_json:
        _print_json(doc)
        return
    out.print(f"{_status_line(doc)}; waves {doc.get('waves')}, mode {doc.get('mode')}; "
              "another operator must approve it", markup=False)


def _action(name: str, help_text: str) -> None:
    @campaign_app.command(name, help=help_text)
    @handles_errors
    def act(campaign_id: IdArgument, server: ServerOption, token_file: TokenFileOption,
            as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
        client = ApiClient.from_options(server, token_file, timeout)
        doc = client.post(f"{_PATH}/{campaign_id}/{name}", None)
        if as_json:
            _print_json(doc)
        else:
            out.print(_status_line(doc), markup=False)


_action("approve", "Approve a draft campaign (not its author: four-eyes).")
_action("start", "Start an approved campaign: resolve its devices, open the first wave.")
_action("resume", "Resume a paused campaign (the failures so far are acknowledged).")
_action("cancel", "Cancel a campaign: devices not started lose the assignment.")
_action("trigger", "Tell an install-on-trigger campaign's devices to install now.")


@campaign_app.command("pause")
@handles_errors
def pause(campaign_id: IdArgument, server: ServerOption, token_file: TokenFileOption,
          reason: Annotated[str, typer.Option("--reason", help="Why (kept in the log).")] = "",
          as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """Pause a running campaign: devices not started wait; started ones finish."""
    client = ApiClient.from_options(server, token_file, timeout)
    doc = client.post(f"{_PATH}/{campaign_id}/pause", {"reason": reason} if reason else None)
    if as_json:
        _print_json(doc)
    else:
        out.print(_status_line(doc), markup=False)


@campaign_app.command("status")
@handles_errors
def status(campaign_id: IdArgument, server: ServerOption, token_file: TokenFileOption,
           members: Annotated[int, typer.Option("--members", help="How many members to list."
                                                )] = 20,
           as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """A campaign: status, counts per state and per wave, members, log."""
    if not 0 <= members <= 1000:
        fail("--members: expected 0 to 1000", EXIT_USAGE)
    client = ApiClient.from_options(server, token_file, timeout)
    doc = client.get(f"{_PATH}/{campaign_id}", params={"limit": str(members)})
    if as_json:
        _print_json(doc)
        return
    out.print(_status_line(doc), markup=False)
    out.print(f"  release {release_label(doc.get('release_version'), doc.get('release'))} "
              f"({doc.get('mode')}); created by "
              f"{doc.get('created_by')}, approved by {doc.get('approved_by') or '-'}",
              markup=False)
    target = doc.get("target") or {}
    if target.get("class_id"):
        out.print(f"  target class {class_label(target)}", markup=False)
    waves = doc.get("waves_detail") or []
    out.print(f"  wave {doc.get('current_wave')} of {len(waves)}; {doc.get('devices')} devices: "
              + (", ".join(f"{n} {s}" for s, n in sorted((doc.get("counts") or {}).items()))
                 or "none yet"), markup=False)
    table = Table("wave", "percent", "open", "devices", "states", show_edge=False)
    for wave in waves:
        table.add_row(str(wave["wave"]), f"{wave['percent']:g}%", "yes" if wave["open"] else "no",
                      str(wave["devices"]),
                      ", ".join(f"{n} {s}" for s, n in sorted(wave["states"].items())))
    out.print(table)
    if doc.get("health_window") is not None:
        health = doc.get("health") or {}
        threshold = doc.get("unhealthy_threshold")
        out.print(f"  health gate: window {doc['health_window']:g} s after confirming"
                  + (f", pause above {threshold * 100:g}% unhealthy" if threshold is not None
                     else "")
                  + f"; {health.get('unhealthy', 0)} unhealthy of "
                    f"{health.get('confirmed', 0)} confirmed", markup=False)
    for member in doc.get("members") or []:
        out.print(f"  {member['device_id']}  wave {member['wave']}  {member['state']}"
                  + (f"  health {member['health']}" if member.get("health") else ""),
                  markup=False)
    for entry in (doc.get("log") or [])[-5:]:
        out.print(f"  log {entry['timestamp']} {entry['actor']} {entry['action']} "
                  f"{entry['detail']}".rstrip(), markup=False)


@campaign_app.command("list")
@handles_errors
def list_campaigns(server: ServerOption, token_file: TokenFileOption,
                   state: Annotated[list[str] | None, typer.Option(
                       "--state", help="Only campaigns in this state (draft, approved, "
                                       "running, paused, completed, cancelled); repeatable: "
                                       "any.")] = None,
                   total: Annotated[bool, typer.Option(
                       "--total", help="Print how many match (with --json: {campaigns, "
                                       "total}).")] = False,
                   as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """Every campaign, newest first (``--state``: filtered by the server)."""
    client = ApiClient.from_options(server, token_file, timeout)
    campaigns, count = client.pages_total(  # every page
        _PATH, "campaigns", params={"state": list(state)} if state else None, total=total)
    if as_json:
        _print_json({"campaigns": campaigns, "total": count} if total else campaigns)
        return
    table = Table("id", "name", "release", "status", "mode", "wave", "devices",
                  show_edge=False)
    for c in campaigns:
        table.add_row(c["id"], c["name"], release_label(c.get("release_version"),
                                                        c.get("release")),
                      c["status"], c["mode"], f"{c['current_wave']}/{len(c['waves'])}",
                      str(c["devices"]))
    out.print(table)
    if total:
        out.print(f"{count} campaign(s) match", markup=False)


@campaign_app.command("tags")
@handles_errors
def tags(device_id: Annotated[str, typer.Argument(metavar="DEVICE", help="Device id.")],
         server: ServerOption, token_file: TokenFileOption,
         tag: Annotated[list[str] | None, typer.Argument(metavar="[TAG...]", help="The tags "
                                                         "(none: clear them).")] = None,
         as_json: JsonOption = False, timeout: TimeoutOption = 30.0) -> None:
    """Set a device's tags (what campaigns target with --tag)."""
    client = ApiClient.from_options(server, token_file, timeout)
    doc = client.request("PUT", f"/api/v1/devices/{device_id}/tags", body={"tags": tag or []})
    if as_json:
        _print_json(doc)
        return
    out.print(f"device {device_id} tags: {', '.join(doc.get('tags') or []) or '(none)'}",
              markup=False)
