"""Debian's SWUpdate (its suricatta hawkBit mode) as an independent DDI client of suitkit's
tracker (issue #14), over loopback.

The test builds a small ``.swu`` (cpio ``newc``: ``sw-description`` with a raw file image
writing into the test's temp dir, its CMS signature, the payload); the packaged build requires
signed images, so a test certificate signs it and SWUpdate is given it with ``-k``. The
``.swu`` is the image of a SUIT release (its integrated payload ``#update.swu``) uploaded to
the firmware server and deployed to a registered device; SWUpdate runs as a daemon with that
device's credential as its target token (its sockets in the test's TMPDIR): it polls,
downloads the artifact from the firmware server, installs it and sends feedback. A device with
no persistent update state reports the result at its next start (``-c 2``, the "after
reboot" confirmation): the tracker then shows the device succeeded, marked as a device that
did not check SUIT signatures. A ``.swu`` whose ``sw-description`` names a wrong SHA-256 fails
with SWUpdate's own message.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from serve_kit import READY, start_process, stop_process
from suitkit.tracker.edges.ddi import UNREPORTED
from tracker.ddi_kit import DdiWorld, Device, ddi_world

SWUPDATE = shutil.which("swupdate")
pytestmark = pytest.mark.skipif(SWUPDATE is None, reason="swupdate is not installed "
                                "(apt-get install swupdate; .ci/run installs it)")
HARDWARE = "suitkit-test:1.0"
WAIT = 120.0
"""How long SWUpdate may take to poll, download, install and report (a busy machine)."""


# ---------------------------------------------------------------------------- the .swu


def signing_certificate(folder: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    """A self-signed signing certificate for S/MIME (SWUpdate's default purpose)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "suitkit swupdate test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=7))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / "swupdate-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def newc(files: list[tuple[str, bytes]]) -> bytes:
    """A cpio archive in the ``newc`` format (what SWUpdate reads)."""
    out = b""
    for inode, (name, data) in enumerate([*files, ("TRAILER!!!", b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (inode, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += ("070701" + "".join(f"{v:08x}" for v in fields)).encode() + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


def swu(signer: tuple[rsa.RSAPrivateKey, x509.Certificate, Path], payload: bytes,
        target: Path, *, sha256: str | None = None) -> bytes:
    """A signed ``.swu`` whose raw file image writes ``payload`` to ``target``."""
    key, cert, _ = signer
    digest = sha256 if sha256 is not None else hashlib.sha256(payload).hexdigest()
    description = (
        'software = {\n  version = "1.0.0";\n  description = "suitkit ddi test";\n'
        f'  hardware-compatibility: [ "{HARDWARE.split(":")[1]}" ];\n'
        '  files: (\n    {\n      filename = "payload.bin";\n'
        f'      path = "{target}";\n      sha256 = "{digest}";\n    }}\n  );\n}}\n').encode()
    signature = (pkcs7.PKCS7SignatureBuilder().set_data(description)
                 .add_signer(cert, key, hashes.SHA256())
                 .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                                    pkcs7.PKCS7Options.Binary,
                                                    pkcs7.PKCS7Options.NoCapabilities]))
    return newc([("sw-description", description), ("sw-description.sig", signature),
                 ("payload.bin", payload)])


# ---------------------------------------------------------------------------- the daemon


def suricatta(world: DdiWorld, device: Device, cert: Path, folder: Path, log: Path,
              *extra: str) -> subprocess.Popen[Any]:
    """SWUpdate's hawkBit client for ``device`` against the tracker, polling every second;
    its IPC sockets in ``folder`` (TMPDIR), its log in ``log``."""
    folder.mkdir(exist_ok=True)
    assert SWUPDATE is not None
    options = " ".join(("-t DEFAULT", f"-u {world.url}", f"-i {device.id}",
                        f"-k {device.token}", "-p 1", "-r 2", "-w 1", *extra))
    with log.open("ab") as out:
        return start_process([SWUPDATE, "-v", "-H", HARDWARE, "-k", str(cert), "-u", options],
                             stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, "TMPDIR": str(folder)})


def wait_for(what: str, check: Callable[[], bool], log: Path, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + max(timeout, READY)
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    raise AssertionError(f"waited {max(timeout, READY):g} s for {what}; SWUpdate's log:\n{tail}")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DdiWorld]:
    with ddi_world(tmp_path, poll_seconds=1) as w:
        yield w


def test_swupdate_installs_a_deployed_swu_and_the_tracker_shows_it_succeeded(
        world: DdiWorld, tmp_path: Path) -> None:
    signer = signing_certificate(tmp_path)
    installed = tmp_path / "installed.bin"
    payload = b"installed by SWUpdate through suitkit's DDI API\n"
    release = world.release_with("update.swu", swu(signer, payload, installed))
    device = world.register("swupdate")
    world.deploy(release, device)
    log = tmp_path / "swupdate.log"
    daemon = suricatta(world, device, signer[2], tmp_path / "sw", log)
    try:
        wait_for("SWUpdate to install the .swu into the test's file",
                 lambda: installed.exists() and installed.read_bytes() == payload, log)
        wait_for("SWUpdate's feedback that the chunk was installed",
                 lambda: "All Chunks Installed" in log.read_text(errors="replace")
                 or "pending testing" in log.read_text(errors="replace"), log)
    finally:
        stop_process(daemon)
    assert world.device(device.id)["state"] == "downloading"  # installed, not yet confirmed
    # the "reboot": SWUpdate starts again and confirms the update (no persistent state here)
    daemon = suricatta(world, device, signer[2], tmp_path / "sw", log, "-c 2")
    try:
        wait_for("the tracker to show the device succeeded",
                 lambda: world.device(device.id)["state"] == "succeeded", log)
    finally:
        stop_process(daemon)
    assert world.states(device.id) == ["notified", "downloading", "downloaded", "installing",
                                       "rebooting", "succeeded"]
    final = world.history(device.id)[-1]["detail"]
    assert final.startswith(UNREPORTED) and "Update Installed" in final
    # nothing is pending any more: the base poll offers no deployment
    assert "deploymentBase" not in world.poll(device)["_links"]


def test_a_swu_with_a_wrong_sha256_fails_with_swupdate_s_message(
        world: DdiWorld, tmp_path: Path) -> None:
    signer = signing_certificate(tmp_path)
    installed = tmp_path / "installed.bin"
    wrong = hashlib.sha256(b"not the payload").hexdigest()
    image = swu(signer, b"tampered payload\n", installed, sha256=wrong)
    release = world.release_with("update.swu", image)
    device = world.register("swupdate-failing")
    world.deploy(release, device)
    log = tmp_path / "swupdate.log"
    daemon = suricatta(world, device, signer[2], tmp_path / "sw", log)
    try:
        wait_for("the tracker to show the device failed",
                 lambda: world.device(device.id)["state"] == "failed", log)
    finally:
        stop_process(daemon)
    detail = world.history(device.id)[-1]["detail"]
    assert "ddi closed failure" in detail, detail
    # SWUpdate's own message, whichever of its error lines it sent as the action's details
    # (the hash mismatch, or the "no suitable .swu image" that follows it in its log)
    text = log.read_text(errors="replace")
    lines = [part for part in detail.split(": ", 2)[-1].split("; ") if part]
    assert lines and all(line in text for line in lines), detail
    assert "HASH mismatch" in text
    assert not installed.exists() or installed.read_bytes() != b"tampered payload\n"
