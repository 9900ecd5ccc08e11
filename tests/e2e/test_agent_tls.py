"""The device agent's client certificate (issue #13): a real ``suitkit serve --tls-cert/--tls-key
--tls-client-ca`` that requires a client certificate of a test CA, and the real agent (``suitkit
device register`` and ``suitkit device run`` processes).

- registered with ``--tls-ca/--tls-cert/--tls-key`` flags;
- without a certificate (only the CA, from ``SUITKIT_TLS_CA``) the agent is refused with one
  line that says what to give, and the device is not updated;
- with the certificate from ``SUITKIT_TLS_CERT``/``SUITKIT_TLS_KEY`` and the CA from
  ``device.json``'s ``tls`` (a path relative to the folder), it checks in, downloads the
  envelope and the detached image over mutual TLS, installs and reports ``succeeded``;
- the operator CLI reads ``SUITKIT_TLS_*`` too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from serve_kit import READY, SUITKIT, free_port, start_process, stop_process
from server.test_tls import Authority, client_context
from suitkit.cli.main import app as cli
from suitkit.device.wiring import open_device

ADMIN = "admin-token-for-the-agent-tls-test"
UPLOAD = "upload-token-for-the-agent-tls-test"


@contextmanager
def mtls_server(tmp: Path, author: Author, ca: Authority,
                device: tuple[Path, Path]) -> Iterator[str]:
    """``suitkit serve`` over HTTPS requiring client certificates of ``ca``; its URL."""
    cert, key = ca.issue("server", server=True)
    (tmp / "admin").write_text(ADMIN)
    (tmp / "upload").write_text(UPLOAD)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    ready = client_context(ca.pem, device)
    with tempfile.TemporaryFile("w+") as log:
        process = start_process([
            *SUITKIT, "serve", "--data", str(tmp / "data"), "--author-anchor",
            str(author.anchor), "--port", str(port), "--admin-token-file", str(tmp / "admin"),
            "--upload-token-file", str(tmp / "upload"), "--tls-cert", str(cert), "--tls-key",
            str(key), "--tls-client-ca", str(ca.pem), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + READY
            while True:
                assert process.poll() is None, (log.seek(0), log.read())
                try:
                    httpx.get(f"{url}/healthz", verify=ready, timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, (
                        f"suitkit serve did not answer GET {url}/healthz within {READY} s")
                    time.sleep(0.1)
            yield url
        finally:
            stop_process(process)


def agent(folder: Path, url: str, cred: Path, env: dict[str, str]
          ) -> subprocess.CompletedProcess[str]:
    """``suitkit device run --once`` as a process with ``env`` added (bounded)."""
    process = start_process([*SUITKIT, "device", "run", str(folder), "--server", url,
                             "--credential-file", str(cred), "--once"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env})
    try:
        out, _ = process.communicate(timeout=120)
    finally:
        stop_process(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, None)


def test_the_agent_with_a_client_certificate_is_served_and_without_one_refused(
        tmp_path: Path) -> None:
    for name in ("SUITKIT_TLS_CA", "SUITKIT_TLS_CERT", "SUITKIT_TLS_KEY"):
        assert name not in os.environ
    ca = Authority(tmp_path / "pki", "fleet-ca")
    device_cert, device_key = ca.issue("device-1", server=False)
    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "dev", [author.anchor])
    base, _ = author.release(1, "base")
    assert install(folder, base).installed
    boot(folder)
    confirm(folder)
    runner = CliRunner()
    context = client_context(ca.pem, (device_cert, device_key))
    with mtls_server(tmp_path, author, ca, (device_cert, device_key)) as url, \
            httpx.Client(base_url=url, verify=context, timeout=30) as client:
        # a release whose image is detached: the payload download needs the certificate too
        image = image_bytes("tls-2", 3000)
        uri = f"{url}/firmware/{hashlib.sha256(image).hexdigest()}"
        envelope = author.envelope(2, [author.component("tls.bin", image, uri=uri)])
        up = client.post("/api/v1/releases", headers={"Authorization": f"Bearer {UPLOAD}"},
                         files=[("envelope", ("e.suit", envelope,
                                              "application/suit-envelope+cose")),
                                ("image", ("tls.bin", image, "application/octet-stream"))])
        assert up.status_code == 201, up.text
        release: dict[str, Any] = up.json()

        # registration, certificate from the flags
        enrolled = runner.invoke(cli, [
            "device", "register", str(folder), "--server", url, "--token-file",
            str(tmp_path / "admin"), "--out", str(tmp_path / "cred"), "--tls-ca", str(ca.pem),
            "--tls-cert", str(device_cert), "--tls-key", str(device_key)])
        assert enrolled.exit_code == 0, enrolled.output
        device_id = (tmp_path / "cred").read_text().partition(".")[0]
        deployed = client.post("/api/v1/deployments", headers={"Authorization": f"Bearer {ADMIN}"},
                               json={"release": release["id"], "devices": [device_id]})
        assert deployed.status_code == 201, deployed.text

        # without a certificate: refused, one line saying what to give; nothing installed
        refused = agent(folder, url, tmp_path / "cred", {"SUITKIT_TLS_CA": str(ca.pem)})
        assert refused.returncode == 1, refused.stdout
        assert ("TLS: the server requires a client certificate: give the device's "
                "(--tls-cert/--tls-key, SUITKIT_TLS_CERT or device.json's tls)" in refused.stdout
                or "TLS: the server closed the TLS connection before it answered, as a server "
                "that requires a client certificate does when it got none: give the device's "
                "(--tls-cert/--tls-key, SUITKIT_TLS_CERT or device.json's tls) if it has none"
                in refused.stdout), refused.stdout
        assert len([line for line in refused.stdout.splitlines() if "error" in line]) == 1
        assert "Traceback" not in refused.stdout
        # without the CA the server's certificate is not trusted, and says so
        untrusted = agent(folder, url, tmp_path / "cred", {})
        assert untrusted.returncode == 1, untrusted.stdout
        assert "TLS: the server's certificate is not one the device trusts" in untrusted.stdout
        shown = client.get(f"/api/v1/devices/{device_id}",
                           headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert shown["state"] == "notified"

        # with the certificate (environment) and the CA (device.json, relative): updated
        shutil.copy(ca.pem, folder / "fleet-ca.pem")
        config = json.loads((folder / "device.json").read_text())
        config["tls"] = {"ca": "fleet-ca.pem"}
        (folder / "device.json").write_text(json.dumps(config))
        done = agent(folder, url, tmp_path / "cred", {"SUITKIT_TLS_CERT": str(device_cert),
                                                      "SUITKIT_TLS_KEY": str(device_key)})
        assert done.returncode == 0, done.stdout
        assert "succeeded: running sequence number 2" in done.stdout, done.stdout
        shown = client.get(f"/api/v1/devices/{device_id}",
                           headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert shown["state"] == "succeeded"
        (check,) = open_device(folder).bootloader.observe().primary  # type: ignore[attr-defined]
        assert check.info.sequence_number == 2

        # the operator CLI: SUITKIT_TLS_* too
        (tmp_path / "admin-token").write_text(ADMIN)
        listed = runner.invoke(cli, ["devices", "list", "--server", url, "--token-file",
                                     str(tmp_path / "admin-token"), "--json"],
                               env={"SUITKIT_TLS_CA": str(ca.pem),
                                    "SUITKIT_TLS_CERT": str(device_cert),
                                    "SUITKIT_TLS_KEY": str(device_key)})
        assert listed.exit_code == 0, listed.output
        assert device_id in listed.output
        bare = runner.invoke(cli, ["devices", "list", "--server", url, "--token-file",
                                   str(tmp_path / "admin-token")],
                             env={"SUITKIT_TLS_CA": str(ca.pem)})
        assert bare.exit_code == 5  # the server could not be reached (the TLS handshake)
        assert "TLS: the server requires a client certificate" in bare.output \
            or "TLS: the server closed the TLS connection before it answered" in bare.output, \
            bare.output


def test_bad_tls_files_are_one_line(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "dev", [author.anchor])
    (tmp_path / "cred").write_text("abc.def")
    (tmp_path / "junk.pem").write_text("not a certificate")
    runner = CliRunner()
    for args, expected in (
            (["--tls-cert", str(tmp_path / "missing.pem")],
             f"--tls-cert/--tls-key: cannot load {tmp_path / 'missing.pem'}: "
             "No such file or directory"),
            (["--tls-ca", str(tmp_path / "junk.pem")],
             f"--tls-ca: cannot load {tmp_path / 'junk.pem'}"),
            (["--tls-key", str(tmp_path / "junk.pem")], "--tls-key needs --tls-cert")):
        result = runner.invoke(cli, ["device", "run", str(folder), "--server",
                                     "https://127.0.0.1:9", "--credential-file",
                                     str(tmp_path / "cred"), "--once", *args])
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
