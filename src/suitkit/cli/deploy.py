"""``suitkit deploy RELEASE --device ID ...``: assign a release to devices now (operator).

A deployment is the direct form of a campaign: no waves, no approval, every named device is
notified at once (``POST /api/v1/deployments``, admin or operator; docs/tracker.md). The release
is named by its id (the manifest digest in hex, as ``suitkit upload`` prints it) or by the signed
envelope file it was uploaded from; the server derives the URL devices fetch it from. Exit 0
deployed, 1 the server refused (its one-line reason), 2 bad usage or the server cannot be
reached.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from suitkit.cli.common import EXIT_USAGE, fail, handles_errors, out
from suitkit.cli.operator import ApiClient, ServerOption, TimeoutOption, TokenFileOption
from suitkit.core.codec import decode_envelope
from suitkit.errors import SuitError
from suitkit.limits import Limits

__all__ = ["deploy", "release_id_of"]

_LIMITS = Limits()
_HEX_ID = re.compile(r"[0-9a-f]{32,128}")


def release_id_of(text: str) -> str:
    """The release id ``text`` names: a manifest digest in hex as it is, or the digest of the
    signed envelope in the file ``text`` (exit 2 when it is neither)."""
    if _HEX_ID.fullmatch(text):
        return text
    path = Path(text)
    if not path.is_file():
        fail(f"release {text!r}: expected a release id (the manifest digest in lower-case hex) "
             "or a signed envelope file", EXIT_USAGE)
    try:
        if path.stat().st_size > _LIMITS.max_envelope_bytes:
            fail(f"release {text}: larger than an envelope may be "
                 f"({_LIMITS.max_envelope_bytes} bytes)", EXIT_USAGE)
        data = path.read_bytes()
    except OSError as e:
        fail(f"cannot read release {text}: {e.strerror or e}", EXIT_USAGE)
    try:
        envelope = decode_envelope(data)
    except SuitError as e:
        fail(f"release {text}: not a SUIT envelope: {e}", EXIT_USAGE)
    return envelope.authentication.digest.value.hex()


@handles_errors
def deploy(
    release: Annotated[str, typer.Argument(
        metavar="RELEASE", help="Release id (manifest digest, hex) or the signed envelope file "
        "it was uploaded from.")],
    device: Annotated[list[str], typer.Option(
        "--device", help="Device id (repeat for several).")],
    server: ServerOption, token_file: TokenFileOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Assign a release to devices now (no waves, no approval; for staged rollouts use
    `suitkit campaign`)."""
    release_id = release_id_of(release)
    client = ApiClient.from_options(server, token_file, timeout)
    doc = client.post("/api/v1/deployments", {"release": release_id, "devices": device})
    if as_json:
        out.print(json.dumps(doc, indent=2, sort_keys=True), markup=False)
        return
    devices = doc.get("devices") if isinstance(doc, dict) else None
    count = len(devices) if isinstance(devices, list) else 0
    out.print(f"release {release_id} deployed to {count} device(s); they fetch "
              f"{doc.get('envelope_url') if isinstance(doc, dict) else '?'}", markup=False)

