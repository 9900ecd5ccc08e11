"""``suitkit demo``: the update flow, step by step, through the real command line.

The author builds, signs (author and operator), inspects, verifies and severs an update; a
simulated microcontroller installs it, boots it on trial, confirms it and refuses an older one;
a firmware server on loopback verifies and stores a detached release that the device then
fetches over HTTP.

Each step prints the command a user would type and runs it in-process through the same Typer
application, so the demo exercises exactly what users run. The status tracker, the fleet and
the dashboard join it in later issues.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.rule import Rule

from suitkit.errors import SuitError

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


def run_demo(workdir: Path | None, console: Console) -> None:
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

    step("1. Keys: the author signs with ES256, the operator approves with EdDSA",
         "keygen", "--alg", "ES256", "--out", "author.pem", "--force")
    step("", "keygen", "--alg", "EdDSA", "--out", "operator.pem", "--force")
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
