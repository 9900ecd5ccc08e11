"""``suitkit serve --tls-cert/--tls-key/--tls-client-ca`` (issue #13 item 6), against a real
server process with a test CA made here: a device with a certificate of that CA is served,
one without a certificate or with another CA's is refused at the handshake."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device.device_kit import Author
from serve_kit import READY, SUITKIT, free_port, start_process, stop_process

ADMIN = "admin-token-for-tls-tests"


class Authority:
    """A test CA that issues server and client certificates (files in ``folder``)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(
                         digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                         crl_sign=True, encipher_only=False, decipher_only=False),
                         critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = folder / f"{name}.ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server
                        else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


def client_context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


@contextmanager
def tls_server(tmp_path: Path, *extra: str, ready: ssl.SSLContext) -> Iterator[str]:
    """``suitkit serve`` with ``extra`` TLS options until the block ends; its https URL. Its
    log holds no traceback (a refused handshake is not one)."""
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        process = start_process([*SUITKIT, "serve", "--data", str(tmp_path / "data"),
                                 "--author-anchor", str(author.anchor), "--port", str(port),
                                 "--admin-token-file", str(tmp_path / "admin.token"), *extra],
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
            log.seek(0)
            text = log.read()
        assert f"suitkit firmware server on {url}/" in text, text
        assert "Traceback" not in text, text


def test_mutual_tls_serves_a_device_with_a_certificate_and_refuses_one_without(
        tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki", "fleet-ca")
    other = Authority(tmp_path / "other", "other-ca")
    server_cert, server_key = ca.issue("server", server=True)
    device = ca.issue("device-1", server=False)
    stranger = other.issue("device-x", server=False)
    with tls_server(tmp_path, "--tls-cert", str(server_cert), "--tls-key", str(server_key),
                    "--tls-client-ca", str(ca.pem),
                    ready=client_context(ca.pem, device)) as url:
        # a device with a certificate of the fleet's CA registers and checks in over TLS
        made = httpx.post(f"{url}/api/v1/devices", json={"name": "tls-device"}, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN}"},
                          verify=client_context(ca.pem, device))
        assert made.status_code == 201, made.text
        checked = httpx.get(f"{url}/api/v1/devices/{made.json()['id']}/update", timeout=30,
                            headers={"Authorization": f"Bearer {made.json()['token']}"},
                            verify=client_context(ca.pem, device))
        assert checked.status_code == 204, checked.text
        # without a certificate, or with another CA's, the handshake is refused
        for context in (client_context(ca.pem), client_context(ca.pem, stranger)):
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                httpx.get(f"{url}/healthz", verify=context, timeout=30)
        assert httpx.get(f"{url}/healthz", verify=client_context(ca.pem, device),
                         timeout=30).status_code == 200  # still serving
        # and plain HTTP on the TLS port is no request
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=30)


def test_tls_without_client_certificates(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki", "fleet-ca")
    server_cert, server_key = ca.issue("server", server=True)
    combined = tmp_path / "combined.pem"  # a certificate file that holds its key too
    combined.write_bytes(server_cert.read_bytes() + server_key.read_bytes())
    with tls_server(tmp_path, "--tls-cert", str(combined),
                    ready=client_context(ca.pem)) as url:
        answer = httpx.get(f"{url}/api/v1/devices", timeout=30, verify=client_context(ca.pem),
                           headers={"Authorization": f"Bearer {ADMIN}"})
        assert answer.status_code == 200


@pytest.mark.parametrize(("args", "expected"), [
    (["--tls-key", "k.pem"], "suitkit: error: --tls-key needs --tls-cert"),
    (["--tls-client-ca", "ca.pem"], "suitkit: error: --tls-client-ca needs --tls-cert"),
    (["--tls-cert", "missing.pem"],
     "suitkit: error: --tls-cert/--tls-key: cannot load missing.pem: No such file or directory"),
])
def test_bad_tls_options_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    author = Author.create(tmp_path / "author")
    done = subprocess.run([*SUITKIT, "serve", "--data", str(tmp_path / "d"), "--author-anchor",
                           str(author.anchor), "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == expected
    assert done.stdout == ""
