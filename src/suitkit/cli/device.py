"""``suitkit device ...``: a simulated or Linux-class device kept in a folder.

Thin commands over ``suitkit.device``: each opens the device folder, calls one library function,
saves the simulated flash, and prints what happened.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from suitkit.bootloader.api import NoBootableImage
from suitkit.bootloader.fsslots import FsBootloader
from suitkit.bootloader.powercut import SCENARIOS, run_scenario
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
    read_input,
    writing,
)
from suitkit.core import codec, jsonform
from suitkit.core.report import Report
from suitkit.device.config import BOOTLOADER_ID, SHAPE_COMPONENTS, HealthConfig, create_device
from suitkit.device.consumer import running_version
from suitkit.device.fetch import FileFetcher, HttpFetcher, RoutingFetcher
from suitkit.device.invoke import Launcher, ProcessLauncher, RecordingLauncher, invoke_running
from suitkit.device.wiring import (
    OpenDevice,
    SlotDependencies,
    Stage1Bootloader,
    open_device,
    stage1_status,
)
from suitkit.errors import StorageError, SuitError
from suitkit.limits import Limits
from suitkit.sim.powercut import REAL_SCENARIOS, run_real_scenario

app = new_app(help="A simulated (or Linux-class) device kept in a folder.",
              no_args_is_help=True)


_ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - the LwM2M client's default: it must reach its server


# The health window's options, shared by `device init` and `device health`.
HealthWindowOption = Annotated[float | None, typer.Option(
    "--health-window", help="Seconds the agent watches the application after an update "
    "before it confirms it (health-gated rollouts; default: confirm at once).")]
HealthIntervalOption = Annotated[float | None, typer.Option(
    "--health-interval", help="Seconds between health checks (default 5).")]
HealthCommandOption = Annotated[str | None, typer.Option(
    "--health-command", help="A health check: exit 0 is healthy ({pid}: the "
    "application's process id).")]
HealthUrlOption = Annotated[str | None, typer.Option(
    "--health-url", help="A health check: a 2xx answer to GET URL is healthy.")]
MaxCrashesOption = Annotated[int, typer.Option(
    "--max-crashes", help="Crashes of the application restarted in the health window "
    "before it is unhealthy.")]


def _uuid(value: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        fail(f"{option}: not a UUID: {value!r}", EXIT_USAGE)


@app.command()
@handles_errors
def init(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder for the device.")],
    trust_anchor: Annotated[list[str], typer.Option(
        "--trust-anchor", help="Public key the device trusts, as FILE or ROLE=FILE "
        "(e.g. operator=op.pub); repeat for several.")],
    vendor_id: Annotated[str | None, typer.Option("--vendor-id", help="Vendor UUID.")] = None,
    class_id: Annotated[str | None, typer.Option("--class-id", help="Class UUID.")] = None,
    vendor_domain: Annotated[str | None, typer.Option(
        "--vendor-domain", help="Instead of --vendor-id: the vendor's domain name, as in a "
        "description file (UUID5 of the DNS namespace, manifest §8.4.8.1).")] = None,
    class_name: Annotated[str | None, typer.Option(
        "--class-name", help="Instead of --class-id: the class name, as in a description "
        "file (UUID5 under the vendor ID).")] = None,
    shape: Annotated[str, typer.Option(
        "--shape", help="mcu, secure-split, dual-cpu, linux or mcu-inplace (one slot, "
        "patched in place: docs/delta.md §9).")] = "mcu",
    device_id: Annotated[str | None, typer.Option("--device-id", help="Device UUID "
                                                  "(default: random).")] = None,
    decryption_key: Annotated[list[Path] | None, typer.Option(
        "--decryption-key", help="A key-encryption key (A128KW...) or an ECDH-ES private key "
        "(ECDH-P256 or X25519; suitkit keygen); repeat for several.")
    ] = None,
    require: Annotated[list[str] | None, typer.Option(
        "--require", help="A role whose signature every update needs (e.g. author and "
        "operator); repeat for several.")] = None,
    app_command: Annotated[str | None, typer.Option(
        "--app-command", help="Linux-class: the command that starts the application, "
        "{image} standing for the image file (e.g. 'python3 {image}').")] = None,
    agent: Annotated[bool, typer.Option(
        "--agent", help="Linux-class: the device agent is a component too, ['suitkit', "
        "'agent'], updated by SUIT manifests; run it with 'suitkit device launch' "
        "(docs/selfupdate.md).")] = False,
    health_window: HealthWindowOption = None,
    health_interval: HealthIntervalOption = None,
    health_command: HealthCommandOption = None,
    health_url: HealthUrlOption = None,
    max_crashes: MaxCrashesOption = 0,
    image: Annotated[list[str] | None, typer.Option(
        "--image", help="Linux-class: an image of the boot set (default: app); repeat for "
        "several (image i is component h'0i').")] = None,
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="N=HEX[,HEX...]: the components the N-th --trust-anchor (from 0) may "
        "update, as hex component identifiers of one part (e.g. 1=00); default: any.")
    ] = None,
    dependency_role: Annotated[list[str] | None, typer.Option(
        "--dependency-role", help="Trust domains: a role whose keys sign dependency "
        "manifests alone, each within its --scope; repeat for several.")] = None,
    unpack: Annotated[str | None, typer.Option(
        "--unpack", help="The packed payloads it accepts, comma-separated: zlib, zstd, xz, "
        "bzip2, delta (default: all; none: refuses them; docs/delta.md).")] = None,
    stage1: Annotated[Path | None, typer.Option(
        "--stage1", metavar="ENVELOPE", help="mcu: an immutable stage 0 and two stage-1 "
        "bootloader copies; ENVELOPE is the signed manifest of the factory stage 1, component "
        "['suitkit', 'bootloader'] (payload integrated or beside it), installed into copy 0 "
        "(docs/selfupdate.md).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a device: identity, trust anchors, empty slots (component i is h'0i')."""
    health = _health(health_window, health_interval, health_command, health_url, max_crashes)
    factory = _stage1_envelope(stage1) if stage1 is not None else None
    if shape not in SHAPE_COMPONENTS:
        fail(f"--shape must be one of {', '.join(SHAPE_COMPONENTS)}, got {shape!r}", EXIT_USAGE)
    anchors: list[Path | tuple[str, Path]] = []
    for item in trust_anchor:
        role, sep, file = item.partition("=")
        anchors.append((role, Path(file)) if sep and role and file else Path(item))
    vendor, klass = _identity(vendor_id, class_id, vendor_domain, class_name)
    device = _uuid(device_id, "--device-id") if device_id else None
    scopes = _scopes(scope or [], len(anchors)) if scope else None
    new_folder = not directory.exists()
    try:
        with writing(f"device folder {directory}"):
            config = create_device(
                directory, vendor_id=vendor, class_id=klass, trust_anchors=anchors,
                shape=shape, device_id=device, decryption_keys=decryption_key,
                required_roles=require or (), app_command=app_command, health=health,
                images=image, scopes=scopes, dependency_roles=dependency_role or (),
                unpack=None if unpack is None else [
                    n.strip() for n in unpack.split(",") if n.strip() and n.strip() != "none"],
                agent=agent, stage1=stage1 is not None)
            opened = open_device(directory)
            if stage1 is not None and factory is not None:
                fetcher = RoutingFetcher(HttpFetcher(), FileFetcher(stage1.parent))
                outcome = opened.consumer(fetcher).install(factory)
                if not outcome.installed:
                    fail(f"--stage1 {stage1}: the factory stage 1 was not installed: "
                         f"{outcome.reason}", EXIT_FAILED)
            opened.save()
    except BaseException:
        if new_folder:  # no half-made device left behind (a full disk, an interrupt)
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if as_json:
        print_json({"directory": str(directory), "shape": shape,
                    "device_id": str(config.device_id), "vendor_id": str(vendor),
                    "class_id": str(klass),
                    "components": [{"image": c.image, "id": [p.hex() for p in c.suit_id]}
                                   for c in config.components]})
        return
    components = ", ".join(f"{c.image}=[{', '.join(_part(p) for p in c.suit_id)}]"
                           for c in config.components)
    out.print(f"created {shape} device in {directory} (device id {config.device_id}; "
              f"components {components})", markup=False)


def _stage1_envelope(path: Path) -> bytes:
    """The factory stage-1 envelope of ``--stage1``: a manifest for the bootloader only."""
    data = read_input(path, "--stage1 envelope")
    try:
        components = codec.decode_envelope(data).manifest.common.components
    except SuitError as e:
        fail(f"--stage1 {path}: {e}", EXIT_USAGE)
    if tuple(components) != (BOOTLOADER_ID,):
        fail(f"--stage1 {path}: expected a manifest for the bootloader ['suitkit', "
             f"'bootloader'] alone, it addresses "
             f"{', '.join('[' + ', '.join(_part(p) for p in c) + ']' for c in components)}",
             EXIT_USAGE)
    return data


def _part(part: bytes) -> str:
    return f"'{part.decode()}'" if part.isascii() and part.isalpha() else f"h'{part.hex()}'"


def _scopes(items: list[str], count: int) -> list[list[tuple[bytes, ...]] | None]:
    """``--scope N=HEX[,HEX]`` options as one scope (or ``None``: any) per trust anchor."""
    scopes: list[list[tuple[bytes, ...]] | None] = [None] * count
    for item in items:
        number, sep, ids = item.partition("=")
        if not sep or not number.isdigit() or int(number) >= count or not ids:
            fail(f"--scope {item[:60]!r}: expected N=HEX[,HEX...] with N the position of a "
                 f"--trust-anchor (0 to {count - 1})", EXIT_USAGE)
        try:
            parts = [(bytes.fromhex(h.removeprefix("0x")),) for h in ids.split(",")]
        except ValueError:
            fail(f"--scope {item[:60]!r}: component identifiers must be hex", EXIT_USAGE)
        scopes[int(number)] = [*(scopes[int(number)] or []), *parts]
    return scopes


def _identity(vendor_id: str | None, class_id: str | None, vendor_domain: str | None,
              class_name: str | None) -> tuple[uuid.UUID, uuid.UUID]:
    """The vendor and class IDs from the UUIDs or from the names a description file uses
    (the same derivation as ``author.describe``: manifest §8.4.8.1)."""
    if (vendor_id is None) == (vendor_domain is None):
        fail("give exactly one of --vendor-id and --vendor-domain", EXIT_USAGE)
    if (class_id is None) == (class_name is None):
        fail("give exactly one of --class-id and --class-name", EXIT_USAGE)
    if vendor_id is not None:
        vendor = _uuid(vendor_id, "--vendor-id")
    else:
        assert vendor_domain is not None
        if not vendor_domain.strip():
            fail("--vendor-domain must not be empty", EXIT_USAGE)
        vendor = uuid.uuid5(uuid.NAMESPACE_DNS, vendor_domain)
    if class_id is not None:
        return vendor, _uuid(class_id, "--class-id")
    assert class_name is not None
    if not class_name.strip():
        fail("--class-name must not be empty", EXIT_USAGE)
    return vendor, uuid.uuid5(vendor, class_name)


def _report_json(report: Report | None) -> Any:
    if report is None:
        return None
    doc: dict[str, Any] = {"manifest-digest": jsonform.to_json(report.reference.manifest_digest),
                           "records": len(report.records)}
    if report.result is True:
        doc["result"] = "ok"
    else:
        from suitkit.core.report import reason_name  # noqa: PLC0415

        doc["result"] = {"reason": reason_name(report.result.reason),
                         "section": report.result.record.manifest_section,
                         "offset": report.result.record.section_offset,
                         "component": report.result.record.component_index}
    return doc


@app.command()
@handles_errors
def install(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    envelope: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Signed envelope.")],
    firmware_dir: Annotated[Path | None, typer.Option(
        "--firmware-dir", help="Where file URIs and relative paths are read from "
        "(default: the envelope's folder).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify and process an update; it is pending until the next boot.

    Exit 0 installed, 1 rejected or failed (the running images and counters are unchanged).
    """
    data = read_input(envelope, "envelope")
    opened = open_device(directory)
    fetcher = RoutingFetcher(HttpFetcher(), FileFetcher(firmware_dir or envelope.parent))
    with writing(f"device folder {directory}"):
        outcome = opened.consumer(fetcher).install(data)
        opened.save()
    report = _report_json(outcome.report)
    if as_json:  # the outcome, failed or not; exit 1 as without --json
        print_json({"envelope": str(envelope), "installed": outcome.installed,
                    "waiting": outcome.waiting, "reason": outcome.reason, "report": report})
    if outcome.waiting:  # update-management §5.6: nothing staged; install it again later
        fail(f"not installed yet: {outcome.reason}", EXIT_FAILED)
    if report is not None and not as_json:
        out.print("SUIT report: " + json.dumps(report), markup=False)
    if not outcome.installed:
        fail(outcome.reason, EXIT_FAILED)
    if not as_json:
        out.print(outcome.reason, markup=False)


@app.command()
@handles_errors
def uninstall(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    envelope: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="Signed envelope with "
                                             "a suit-uninstall section.")],
    as_json: JsonOption = False,
) -> None:
    """Run a manifest's suit-uninstall (trust-domains §6): the dependency manifests it unlinks
    leave the device's store at the next boot (Linux-class devices).

    Exit 0 uninstalled (pending until the next boot), 1 rejected or failed.
    """
    data = read_input(envelope, "envelope")
    opened = open_device(directory)
    with writing(f"device folder {directory}"):
        outcome = opened.consumer().uninstall(data)
        opened.save()
    report = _report_json(outcome.report)
    if as_json:  # the outcome, failed or not; exit 1 as without --json
        print_json({"envelope": str(envelope), "uninstalled": outcome.installed,
                    "reason": outcome.reason, "report": report})
    elif report is not None:
        out.print("SUIT report: " + json.dumps(report), markup=False)
    if not outcome.installed:
        fail(outcome.reason, EXIT_FAILED)
    if not as_json:
        out.print(outcome.reason, markup=False)


def _boot(opened: OpenDevice, boots: list[dict[str, Any]] | None = None) -> bool:
    """Boot, then run the Invocation Procedure; False when the application did not start.
    ``boots``: collect what happened there (``--json``) instead of printing it."""
    result = opened.bootloader.boot()
    stage1: dict[str, Any] | None = None
    if isinstance(opened.bootloader, Stage1Bootloader) and opened.bootloader.last is not None:
        started = opened.bootloader.last
        stage1 = {"sequence_number": started.sequence_number, "copy": started.copy,
                  "trial": started.trial, "notes": list(started.notes)}
        for note in started.notes if boots is None else ():
            out.print(f"stage 0: {note}", markup=False)
        if boots is None:
            out.print(f"stage 0 started stage-1 bootloader #{started.sequence_number} (copy "
                      f"{started.copy}): " + ("on trial (confirm the device, or the next "
                                              "boot falls back to the other copy)"
                                              if started.trial else "confirmed"),
                      markup=False)
    images = ", ".join(f"{i.name} #{i.sequence_number}" for i in result.images)
    steps = " -> ".join(d.action.name.lower().replace("_", "-") for d in result.steps)
    state = "on trial (confirm it, or the next boot reverts)" if result.trial else "confirmed"
    doc: dict[str, Any] = {
        "images": [{"name": i.name, "sequence_number": i.sequence_number}
                   for i in result.images],
        "trial": result.trial,
        "steps": [d.action.name.lower().replace("_", "-") for d in result.steps],
        "started": [], "invocation_failures": []}
    if stage1 is not None:
        doc["stage1"] = stage1
    if boots is None:
        out.print(f"booted {images}: {state} [{steps}]", markup=False)
    else:
        boots.append(doc)
    config = opened.config
    launcher: Launcher = (
        ProcessLauncher(config.app_command, config.directory / "app.pid")
        if config.app_command else RecordingLauncher())
    invoked = invoke_running(config, opened.bootloader, launcher, extensions=opened.extensions)
    doc["started"] = list(invoked.started)
    doc["invocation_failures"] = [r.reason for r in invoked.results if not r.succeeded]
    for line in invoked.started if boots is None else ():
        out.print(line, markup=False)
    for r in invoked.results:
        if not r.succeeded:
            err.print(f"suitkit: error: invocation failed: {r.reason}", markup=False)
    return invoked.succeeded


_FACT_OPTIONS = ("battery-mwh", "power", "network", "timezone", "time", "other-devices",
                 "consent")


@app.command()
@handles_errors
def facts(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    battery: Annotated[int | None, typer.Option(
        "--battery", help="Remaining battery energy in mWh (minimum-battery).")] = None,
    power: Annotated[int | None, typer.Option(
        "--power", help="Power state for wait events: 0 battery only, 1 external power.")
    ] = None,
    network: Annotated[int | None, typer.Option(
        "--network", help="Network state for wait events: 0 none, 1 metered, 2 unmetered.")
    ] = None,
    timezone: Annotated[str | None, typer.Option(
        "--timezone", help="Local time zone (IANA name, e.g. Europe/Paris) for the local "
        "time-of-day and day-of-week wait events.")] = None,
    at_time: Annotated[int | None, typer.Option(
        "--time", help="Simulated clock, seconds since 1970 (use-before, time wait events).")
    ] = None,
    other_device: Annotated[list[str] | None, typer.Option(
        "--other-device", help="HEXID=VERSION (e.g. 0a0b=1.2.3) for the other-device-version "
        "wait event; repeat for several.")] = None,
    consent: Annotated[str | None, typer.Option(
        "--consent", help="update-authorized policy: allow, deny or command.")] = None,
    consent_command: Annotated[list[str] | None, typer.Option(
        "--consent-command", help="With --consent command: the program and its arguments, "
        "one per option ({priority} is replaced); exit 0 yes, 75 later, else no.")] = None,
    max_priority: Annotated[int | None, typer.Option(
        "--max-priority", help="With --consent allow: allow only priorities up to this "
        "(smaller is more urgent).")] = None,
    unset: Annotated[list[str] | None, typer.Option(
        "--unset", help="Remove a fact: " + ", ".join(_FACT_OPTIONS) + ".")] = None,
    as_json: JsonOption = False,
) -> None:
    """Set the facts update management reads (battery, power, network, time zone, clock, other
    devices, consent; docs/device.md "Update management") and print them. Without options:
    print them."""
    from suitkit.device.config import load_config  # noqa: PLC0415
    from suitkit.device.facts import FACTS, load_facts, parse_facts, save_facts  # noqa: PLC0415

    load_config(directory)  # a device folder, or a clear error
    doc = json.loads(load_facts(directory).to_json())
    for name in unset or []:
        if name not in _FACT_OPTIONS:
            fail(f"--unset: unknown fact {name!r}; expected one of {', '.join(_FACT_OPTIONS)}",
                 EXIT_USAGE)
        doc.pop(name, None)
    for key, value in (("battery-mwh", battery), ("power", power), ("network", network),
                       ("timezone", timezone), ("time", at_time)):
        if value is not None:
            doc[key] = value
    for item in other_device or []:
        ident, sep, version = item.partition("=")
        parts = version.split(".")
        if not sep or not all(re.fullmatch(r"-?[0-9]+", p) for p in parts):
            fail(f"--other-device: expected HEXID=VERSION such as 0a0b=1.2.3, got {item!r}",
                 EXIT_USAGE)
        doc.setdefault("other-devices", {})[ident] = [int(p) for p in parts]
    if consent is not None or consent_command or max_priority is not None:
        rule = {"policy": consent or doc.get("consent", {}).get("policy", "allow")}
        if consent_command:
            rule["command"] = consent_command
        if max_priority is not None:
            rule["max-priority"] = max_priority
        doc["consent"] = rule
    parsed = parse_facts(doc, "suitkit device facts")  # every value checked, named if wrong
    with writing(f"device folder {directory}"):
        save_facts(directory, parsed)
    if as_json:
        print_json({"file": str(directory / FACTS), "facts": json.loads(parsed.to_json())})
        return
    out.print(f"{directory / FACTS}:", markup=False)
    out.print(parsed.to_json().decode().rstrip(), markup=False)


@app.command()
@handles_errors
def boot(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    fail_boot: Annotated[bool, typer.Option("--fail", help="The new image never confirms: "
                                            "it dies and the device boots again.")] = False,
    as_json: JsonOption = False,
) -> None:
    """One boot: verify, start a pending update on trial or revert an unconfirmed one, run.

    The images are started by the manifest's invoke sequence (Linux-class: the application is
    restarted). Exit 1 when nothing can boot or the application does not start (it is then not
    confirmed).
    """
    opened = open_device(directory)
    boots: list[dict[str, Any]] | None = [] if as_json else None
    with writing(f"device folder {directory}"):
        try:
            started = _boot(opened, boots)
            if fail_boot:
                if boots is None:
                    out.print("the new image failed before it confirmed; rebooting",
                              markup=False)
                started = _boot(opened, boots)
        except NoBootableImage as e:
            fail(f"nothing to boot: {e}", EXIT_FAILED)
        finally:
            opened.save()
    if boots is not None:
        print_json({"boots": boots, "started": started})
    if not started:
        raise typer.Exit(EXIT_FAILED)


@app.command()
@handles_errors
def run(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    server: Annotated[str, typer.Option("--server", envvar="SUITKIT_SERVER",
                                        help="Status tracker URL, e.g. "
                                        "http://127.0.0.1:8080")],
    credential_file: Annotated[Path, typer.Option(
        "--credential-file", help="File holding the device credential `<device-id>.<secret>`.")],
    once: Annotated[bool, typer.Option("--once", help="Poll once and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between polls (in "
                                            "push and hybrid modes: safety polls).")
                        ] = 60.0,
    max_runs: Annotated[int | None, typer.Option("--max-runs", help="Stop after N update runs "
                                                 "(default: run until interrupted).")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after this many "
                                                   "seconds.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="poll (client-initiated), push (act on "
                                      "the notices) or hybrid (a notice triggers a poll).")
                    ] = "poll",
    transport: Annotated[str, typer.Option("--transport", help="How notices arrive in push "
                                           "and hybrid modes: sse, longpoll, mqtt or coap.")
                         ] = "sse",
    mqtt: Annotated[str | None, typer.Option("--mqtt", help="MQTT broker HOST:PORT (for "
                                             "--transport mqtt).")] = None,
    coap: Annotated[str | None, typer.Option("--coap", help="CoAP server of the notices, "
                                             "coap://HOST:PORT (for --transport coap).")
                    ] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="suitkit (the tracker's JSON "
                                          "API), ddi (hawkBit DDI: the base poll, the "
                                          "deployment's *.suit artifact, action feedback; "
                                          "poll mode) or lwm2m (an LwM2M client of --lwm2m: "
                                          "Objects 3 and 5; the SUIT report goes to "
                                          "--server).")] = "suitkit",
    ddi_tenant: Annotated[str, typer.Option("--ddi-tenant", help="The hawkBit tenant (with "
                                            "--protocol ddi).")] = "DEFAULT",
    tls_ca: Annotated[Path | None, typer.Option(
        "--tls-ca", envvar="SUITKIT_TLS_CA", help="PEM CA certificates the server's "
        "certificate must chain to (default: device.json's tls.ca, else the system's).")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", envvar="SUITKIT_TLS_CERT", help="The device's PEM client certificate "
        "(chain), for a server that requires one (default: device.json's tls.cert).")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", envvar="SUITKIT_TLS_KEY", help="PEM private key of --tls-cert, unless "
        "that file holds it too.")] = None,
    lwm2m: Annotated[str | None, typer.Option("--lwm2m", help="With --protocol lwm2m: the "
                                              "LwM2M server, coap://HOST:PORT.")] = None,
    lwm2m_lifetime: Annotated[int, typer.Option("--lwm2m-lifetime", help="Seconds a "
                                                "registration lasts (updated at half of it).")
                              ] = 300,
    lwm2m_delivery: Annotated[str, typer.Option("--lwm2m-delivery", help="How the envelope "
                                                "may come (5/0/9): pull (Package URI), push "
                                                "(Package) or both.")] = "both",
    lwm2m_bind: Annotated[str, typer.Option("--lwm2m-bind", help="Local address the LwM2M "
                                            "client registers from and serves Objects 3 and 5 "
                                            "on (port: the system's choice); only the LwM2M "
                                            "server's requests are served.")] = _ANY_ADDRESS,
    lwm2m_nosec: Annotated[bool, typer.Option("--lwm2m-nosec", help="With --protocol lwm2m: "
                                              "no OSCORE (the default protects every message "
                                              "with the device's OSCORE context, kept in DIR/"
                                              "lwm2m-oscore); the server must accept NoSec and "
                                              "shows the device unauthenticated.")] = False,
) -> None:
    """Keep a device up to date from a status tracker (RFC 9019 §2.3): register the inventory,
    learn of updates in the chosen mode, download (resumably), install, boot, confirm and
    report. Survives server restarts and network cuts (bounded, jittered backoff). Exit 1 when
    the last run failed or could not reach the tracker."""
    from suitkit.cli.notices import parse_host_port  # noqa: PLC0415
    from suitkit.device.agent import AgentOptions, check_credential, run_agent  # noqa: PLC0415
    from suitkit.device.fetch import CoapFetcher  # noqa: PLC0415

    if protocol == "lwm2m":
        _run_lwm2m(directory, server, credential_file, lwm2m=lwm2m, lifetime=lwm2m_lifetime,
                   delivery=lwm2m_delivery, bind=lwm2m_bind, duration=duration,
                   nosec=lwm2m_nosec)
        return
    if lwm2m is not None:
        fail("--lwm2m needs --protocol lwm2m", EXIT_USAGE)
    if lwm2m_nosec:
        fail("--lwm2m-nosec needs --protocol lwm2m", EXIT_USAGE)
    try:
        options = AgentOptions(
            mode=mode, transport=transport, interval=interval,
            max_runs=1 if once else max_runs, duration=duration,
            mqtt=parse_host_port(mqtt, "--mqtt") if mqtt is not None else None, coap=coap,
            protocol=protocol, tenant=ddi_tenant)
        options.check()
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if coap is not None and not coap.startswith("coap://"):
        fail(f"--coap: expected coap://HOST:PORT, got {coap!r}", EXIT_USAGE)
    if not (0 < len(ddi_tenant) <= 64 and ddi_tenant.isascii()
            and all(c.isalnum() or c in "-_." for c in ddi_tenant)):
        fail(f"--ddi-tenant: expected 1 to 64 letters, digits or '-_.', got "
             f"{ddi_tenant[:40]!r}", EXIT_USAGE)
    credential = read_input(credential_file, "credential").decode("utf-8", "replace").strip()
    try:  # the folder runs only with its own device's credential
        check_credential(directory, credential)
    except SuitError as e:
        fail(f"{credential_file}: {e}", EXIT_USAGE)
    tls = _client_tls(directory, tls_ca, tls_cert, tls_key)
    fetcher = RoutingFetcher(HttpFetcher(tls=tls), coap=CoapFetcher())
    try:
        result = run_agent(directory, server, credential, fetcher=fetcher, options=options,
                           say=lambda line: out.print(line, markup=False), tls=tls)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_FAILED) from None
    if result is not None and result.outcome == "restarting":
        from suitkit.device.selfupdate import HANDOVER_EXIT  # noqa: PLC0415

        raise typer.Exit(HANDOVER_EXIT)  # the launcher boots the new agent
    if result is None or not result.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handles_errors
def launch(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    confirm_deadline: Annotated[float, typer.Option(
        "--confirm-deadline", help="Seconds a new agent has to check in (and so confirm "
        "itself) before it is stopped and reverted.")] = 120.0,
) -> None:
    """Run the device agent of a Linux-class device with an agent component, and own its
    self-update: boot the slots, start the agent from the active slot, give a new agent
    --confirm-deadline seconds to check in or revert it (docs/selfupdate.md).
    Every other option goes to 'suitkit device run' (--server, --credential-file, --mode...)."""
    from suitkit.device.selfupdate import LaunchOptions, supervise  # noqa: PLC0415

    options = LaunchOptions(agent_args=tuple(ctx.args), confirm_deadline=confirm_deadline)
    try:
        options.check()
    except ValueError as e:
        fail(f"--confirm-deadline: {e}", EXIT_USAGE)
    if any(a in ("--once", "--max-runs", "--duration") for a in ctx.args):
        fail("the launcher keeps the agent running: --once, --max-runs and --duration are "
             "for 'suitkit device run'", EXIT_USAGE)
    try:
        supervise(directory, options, say=lambda line: out.print(line, markup=False))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _client_tls(directory: Path, ca: Path | None, cert: Path | None,
                key: Path | None) -> ssl.SSLContext | None:
    """The agent's TLS context: ``--tls-*`` flags (or ``SUITKIT_TLS_*``) over device.json's
    ``tls``; one line naming the file when one cannot be loaded (``KeyMaterialError``)."""
    from suitkit.device.config import load_config  # noqa: PLC0415
    from suitkit.device.tls import ClientTls  # noqa: PLC0415

    return ClientTls(ca, cert, key).over(load_config(directory).client_tls()).context()


def _health(window: float | None, interval: float | None, command: str | None,
            url: str | None, max_crashes: int) -> HealthConfig | None:
    """The ``--health-*`` options as a ``HealthConfig`` (``None`` without ``--health-window``);
    a usage error naming what is wrong."""
    if window is None:
        if interval is not None or command is not None or url is not None or max_crashes:
            fail("--health-interval, --health-command, --health-url and --max-crashes need "
                 "--health-window", EXIT_USAGE)
        return None
    health = HealthConfig(window=window, interval=interval if interval is not None
                          else min(5.0, window), command=command, url=url,
                          max_crashes=max_crashes)
    try:
        health.check()
    except ValueError as e:
        fail(f"--health-*: {e}", EXIT_USAGE)
    return health


@app.command("health")
@handles_errors
def health_command(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    health_window: HealthWindowOption = None,
    health_interval: HealthIntervalOption = None,
    health_command: HealthCommandOption = None,
    health_url: HealthUrlOption = None,
    max_crashes: MaxCrashesOption = 0,
    off: Annotated[bool, typer.Option("--off", help="No health window: confirm a new "
                                      "image as soon as it started.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Set how the agent watches the application after an update (docs/operations.md,
    "Health-gated rollouts"), or turn it off."""
    from suitkit.device.config import set_health  # noqa: PLC0415

    health = None if off else _health(health_window, health_interval, health_command,
                                      health_url, max_crashes)
    if health is None and not off:
        fail("give --health-window (and the checks), or --off", EXIT_USAGE)
    with writing(f"device folder {directory}"):
        set_health(directory, health)
    if as_json:
        print_json({"directory": str(directory),
                    "health": None if health is None else health.to_json()})
        return
    shown = "off" if health is None else json.dumps(health.to_json())
    out.print(f"health window: {shown}", markup=False)


def _run_lwm2m(directory: Path, server: str, credential_file: Path, *, lwm2m: str | None,
               lifetime: int, delivery: str, bind: str, duration: float | None,
               nosec: bool = False) -> None:
    """``device run --protocol lwm2m``: the device's LwM2M client until interrupted."""
    from suitkit.device.agent import check_credential  # noqa: PLC0415
    from suitkit.device.fetch import CoapFetcher  # noqa: PLC0415
    from suitkit.device.lwm2m import Lwm2mOptions, run_lwm2m  # noqa: PLC0415

    if lwm2m is None:
        fail("--protocol lwm2m needs the LwM2M server: --lwm2m coap://HOST:PORT", EXIT_USAGE)
    options = Lwm2mOptions(server=lwm2m, lifetime=lifetime, delivery=delivery, bind=bind,
                           duration=duration, nosec=nosec)
    try:
        options.check()
    except ValueError as e:
        fail(f"--lwm2m: {e}", EXIT_USAGE)
    credential = read_input(credential_file, "credential").decode("utf-8", "replace").strip()
    try:  # the folder runs only with its own device's credential
        check_credential(directory, credential)
    except SuitError as e:
        fail(f"{credential_file}: {e}", EXIT_USAGE)
    fetcher = RoutingFetcher(HttpFetcher(), coap=CoapFetcher())
    try:
        result = run_lwm2m(directory, credential, options, fetcher=fetcher, tracker_url=server,
                           say=lambda line: out.print(line, markup=False))
    except StorageError as e:
        fail(f"--lwm2m: {e}", EXIT_FAILED)
    except OSError as e:
        fail(f"--lwm2m-bind {bind}: cannot serve the LwM2M objects: {e}", EXIT_USAGE)
    if result is not None and not result.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
@handles_errors
def register(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    server: Annotated[str, typer.Option("--server", envvar="SUITKIT_SERVER",
                                        help="Status tracker URL.")],
    token_file: Annotated[Path, typer.Option("--token-file", envvar="SUITKIT_TOKEN_FILE",
                                             help="File holding an admin's API token "
                                             "(provisioning).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the device's "
                                           "credential (mode 0600).")],
    name: Annotated[str | None, typer.Option("--name", help="Name shown to operators "
                                             "(default: the folder's name).")] = None,
    report_key: Annotated[bool, typer.Option(
        "--report-key/--no-report-key", help="Register the key the device signs its SUIT "
        "reports with (DIR/report.key, made now as an ESP256 key if missing).")] = True,
    tls_ca: Annotated[Path | None, typer.Option(
        "--tls-ca", envvar="SUITKIT_TLS_CA", help="PEM CA certificates the server's "
        "certificate must chain to (default: device.json's tls.ca, else the system's).")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", envvar="SUITKIT_TLS_CERT", help="The device's PEM client certificate "
        "(chain), for a server that requires one (default: device.json's tls.cert).")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", envvar="SUITKIT_TLS_KEY", help="PEM private key of --tls-cert, unless "
        "that file holds it too.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Enrol the device with a status tracker: register it (and its report key), write its
    credential (shown by the tracker only once) for `device run --credential-file`, and send
    its inventory."""
    from suitkit.device.agent import TrackerError, TrackerUnreachable  # noqa: PLC0415
    from suitkit.device.agent import register as enrol  # noqa: PLC0415
    from suitkit.fileio import atomic_write  # noqa: PLC0415

    token = read_input(token_file, "token").decode("utf-8", "replace").strip()
    if out_file.exists():
        fail(f"{out_file}: already exists; a device is registered once", EXIT_USAGE)
    try:
        credential = enrol(directory, server, token, name=name, report_key=report_key,
                           tls=_client_tls(directory, tls_ca, tls_cert, tls_key))
    except TrackerUnreachable as e:
        fail(f"cannot reach {server}: {e}", EXIT_UNREACHABLE)
    except TrackerError as e:
        fail(f"registration refused: {e}", EXIT_FAILED)
    atomic_write(out_file, credential.encode() + b"\n", mode=0o600)
    if as_json:  # never the secret: it is in the file only
        print_json({"device_id": credential.partition(".")[0], "credential_file": str(out_file),
                    "server": server})
        return
    out.print(f"registered device {credential.partition('.')[0]}; credential in {out_file}",
              markup=False)


@app.command()
@handles_errors
def confirm(directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
            as_json: JsonOption = False) -> None:
    """The running images are healthy: keep them and raise the anti-rollback counters."""
    opened = open_device(directory)
    with writing(f"device folder {directory}"):
        try:
            opened.bootloader.confirm()
        finally:
            opened.save()
    counters = opened.bootloader.read_counters()
    if as_json:
        print_json({"confirmed": True, "counters": dict(counters)})
        return
    out.print(f"confirmed; counters {counters}", markup=False)


@app.command()
@handles_errors
def status(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Device folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Running sequence number and image digest per component, pending update, counters."""
    opened = open_device(directory)
    doc = device_status(opened)
    if as_json:
        out.print(json.dumps(doc, indent=2), markup=False)
        return
    out.print(f"{doc['shape']} device {doc['device-id']}", markup=False)
    for c in doc["components"]:
        running = c["running"]
        what = (f"#{running['sequence-number']} sha256 {running['digest']}" if running
                else "no valid image")
        if running and "version" in running:
            what += " version " + ".".join(str(v) for v in running["version"])
        out.print(f"  {c['image']} {c['id']}: {what}; counter {c['counter']}", markup=False)
    out.print(f"  pending update: {doc['pending']}; on trial: {doc['trial']}", markup=False)
    stage1 = doc.get("stage1")
    if stage1 is not None:
        now = stage1["running"]
        trial = ", on trial" if now and now["trial"] else ""
        what = (f"#{now['sequence-number']} (copy {now['copy']}{trial})" if now
                else "not started yet (boot)")
        out.print(f"  stage-1 bootloader: {what}; a new one pending: {stage1['pending']}; "
                  f"counter {stage1['counter']}", markup=False)


def device_status(opened: OpenDevice) -> dict[str, Any]:
    """The status document of a device (read-only: no boot, no write)."""
    bootloader = opened.bootloader
    observation = bootloader.observe()  # type: ignore[attr-defined]
    counters = bootloader.read_counters()
    anchors = opened.config.trust_anchors()
    components = []
    for spec, check in zip(opened.config.components, observation.primary, strict=True):
        info: dict[str, Any] | None = None
        if check.info is not None and check.verdict.name == "GOOD":
            info = {"sequence-number": check.info.sequence_number,
                    "digest": check.info.digest.hex()}
            # update-management §3.1: the set-version of the manifest it was installed with
            version = running_version(bootloader, spec.image, anchors, Limits(),
                                      opened.config.dependency_anchors())
            if version is not None:
                info["version"] = list(version)
        components.append({"image": spec.image, "id": [f"0x{p.hex()}" for p in spec.suit_id],
                           "running": info, "counter": counters.get(spec.image, 0),
                           "reason": check.reason})
    # FlashBootloader calls the decision input "state"; FsBootloader "boot_state".
    state = getattr(observation, "boot_state", None) or observation.state
    return {
        "shape": opened.config.shape,
        "device-id": str(opened.config.device_id),
        "components": components,
        # A set marked only in part (a cut while marking) is no request: the next boot drops it.
        "pending": state.pending.name.lower() in ("test", "permanent"),
        # TRIAL: swapped in, not booted yet; TRIED: booted once and running unconfirmed.
        "trial": state.phase.name.lower() in ("trial", "tried"),
        "phase": state.phase.name.lower(),
        "anchors-version": opened.config.anchors_version(),  # docs/keys.md
        **_dependencies_status(opened),
        **_stage1_status(opened),
    }


def _stage1_status(opened: OpenDevice) -> dict[str, Any]:
    """The stage-1 bootloader of a device with a stage 0 (docs/selfupdate.md)."""
    found = stage1_status(opened.bootloader)
    return {} if found is None else {"stage1": found}


def _dependencies_status(opened: OpenDevice) -> dict[str, Any]:
    """The dependency manifests of the installed set (trust-domains; Linux-class devices)."""
    if not isinstance(opened.bootloader, FsBootloader):
        return {}
    try:
        sequence, stored = SlotDependencies(opened.bootloader, Limits()).installed()
    except SuitError as e:
        return {"dependencies": {"error": str(e)}}
    manifests = []
    for cid, envelope in stored.items():
        entry: dict[str, Any] = {"id": [p.hex() for p in cid]}
        try:
            parts = codec.decode_envelope_parts(envelope)
            entry["digest"] = parts.authentication.digest.value.hex()
        except SuitError as e:
            entry["error"] = str(e)
        manifests.append(entry)
    return {"dependencies": {"root-sequence-number": sequence, "manifests": manifests}}


@app.command()
@handles_errors
def powercut(
    scenario: Annotated[str, typer.Option("--scenario", help="One of: " + ", ".join(
        [*SCENARIOS, *REAL_SCENARIOS]) + ", or 'all-real' (every real-path scenario).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sample: Annotated[int | None, typer.Option("--sample", help="Try this many cut points "
                                               "(seeded) instead of all of them; for "
                                               "double-cut, the first cut points.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the images, the torn states, the "
                                      "lost writes and the sample.")] = 0,
    second_cuts: Annotated[str, typer.Option(
        "--second-cuts", help="Real-path scenarios: after each cut, cut again during the "
        "recovery, at N seeded points of it or at 'all' of them (default 0: no second cut).")
    ] = "0",
) -> None:
    """Cut power at every flash operation (and, for the real-path scenarios, every file write)
    of a scenario, reboot, and check the device.

    The real-path scenarios (real-SHAPE-integrated, real-SHAPE-detached) drive a device folder
    through Consumer.install of a signed envelope, boot, confirm and a second update."""
    names = list(REAL_SCENARIOS) if scenario == "all-real" else [scenario]
    if any(n not in SCENARIOS and n not in REAL_SCENARIOS for n in names):
        fail(f"--scenario must be one of {', '.join([*SCENARIOS, *REAL_SCENARIOS])} or "
             f"all-real, got {scenario!r}", EXIT_USAGE)
    if sample is not None and sample < 1:
        fail(f"--sample must be at least 1, got {sample}", EXIT_USAGE)
    second: int | None = None
    if second_cuts != "all":
        try:
            second = int(second_cuts)
        except ValueError:
            second = -1
        if second < 0:
            fail(f"--second-cuts must be a number of cut points or 'all', got {second_cuts!r}",
                 EXIT_USAGE)
    docs: list[dict[str, Any]] = []
    failed = False
    for name in names:
        if name in REAL_SCENARIOS:
            real = run_real_scenario(name, sample=sample, seed=seed, second=second)
            doc: dict[str, Any] = {
                "scenario": real.scenario, "shape": real.shape,
                "clean-run-events": real.clean_events, "flash-operations": real.flash_ops,
                "file-steps": real.clean_events - real.flash_ops,
                "cut-points-tried": real.cut_points_tried, "outcomes": real.outcomes,
                "failures": len(real.failures), "seconds": round(real.seconds, 2),
                "failure-details": list(real.failures)[:20]}
            line = (f"{name} ({real.shape}): {real.cut_points_tried} cut points tried over "
                    f"{real.clean_events} events ({real.flash_ops} flash operations, "
                    f"{real.clean_events - real.flash_ops} file steps); "
                    f"{len(real.failures)} failed ({real.seconds:.1f} s)")
        else:
            result = run_scenario(name, sample=sample, seed=seed)
            doc = {"scenario": result.scenario, "shape": result.shape,
                   "clean-run-operations": result.clean_ops,
                   "cut-points-tried": result.cut_points_tried,
                   "failures": len(result.failures), "seconds": round(result.seconds, 2),
                   "failure-details": list(result.failures)[:20]}
            line = (f"{name} ({result.shape}): {result.cut_points_tried} cut points tried "
                    f"over {result.clean_ops} flash operations; {len(result.failures)} left an "
                    f"unbootable or wrong device ({result.seconds:.1f} s)")
        failed = failed or bool(doc["failures"])
        docs.append(doc)
        if not as_json:
            out.print(line, markup=False)
            for detail in doc["failure-details"]:
                err.print(f"  {detail}", markup=False)
    if as_json:
        out.print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2), markup=False)
    if failed:
        raise typer.Exit(EXIT_FAILED)
