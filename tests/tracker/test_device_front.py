"""The device API under its own prefix behind a device-only front (issue #17): the nginx site
of docs/operations.md ("Only the device API on the internet"), run as written (its addresses,
certificate paths and upstream filled in) with a test certificate, in front of a real server
on 127.0.0.1.

Through the internet's side the operator API, the dashboard, the OpenAPI pages, uploads and
the old device routes are refused (404) while a real agent polls, downloads, installs and
reports an update; the operators' side serves everything.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device.device_kit import Author, boot, confirm, image_bytes, install, new_device
from nginx_kit import NGINX, have_nginx
from serve_kit import READY, free_port, start_process, stop_process
from suitkit.core.verify import TrustAnchors
from suitkit.device.agent import run_once
from suitkit.device.fetch import HttpFetcher
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

ADMIN = "admin-token-for-the-device-front"
UPLOAD = "upload-token-for-the-device-front"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

pytestmark = pytest.mark.skipif(not have_nginx(), reason="needs nginx (apt-get install nginx)")


def site_of_the_docs() -> str:
    """The nginx site after ``<!-- device-front -->`` in docs/operations.md."""
    text = DOCS.read_text()
    found = re.search(r"<!-- device-front -->\n```nginx\n(.*?)```", text, re.S)
    assert found, f"no ```nginx block after <!-- device-front --> in {DOCS}"
    return found.group(1)


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own trust anchor) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-front")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder / "server.crt", folder / "server.key"


_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{site}
}}
"""


@dataclass
class Front:
    devices: str  # the internet's side
    operators: str  # the internal listener
    tls: ssl.SSLContext


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[Front, Author, Path]]:
    author = Author.create(tmp_path / "author")
    router = create_router(TrackerConfig(f"sqlite:///{tmp_path / 'tracker.db'}", ADMIN))
    config = ServerConfig(data_dir=tmp_path / "data", upload_token=UPLOAD, routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config) as upstream:
        root = (tmp_path / "nginx").resolve()
        cert, _ = certificate(root / "tls")
        tls = ssl.create_default_context(cafile=str(cert))
        device_port, operator_port = free_port(), free_port()
        site = (site_of_the_docs()
                .replace("server 10.0.0.5:8080;", f"server {upstream.removeprefix('http://')};")
                .replace("listen 443 ssl;", f"listen 127.0.0.1:{device_port} ssl;")
                .replace("listen 10.0.0.2:8443 ssl;", f"listen 127.0.0.1:{operator_port} ssl;")
                .replace("/etc/nginx/tls/", f"{root / 'tls'}/"))
        user = "user root;" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(_MAIN.format(root=root, site=site, user=user))
        with (root / "nginx.out").open("w") as out:
            nginx = start_process([NGINX, "-p", str(root), "-e", str(root / "error.log"),
                                   "-c", str(root / "nginx.conf")], stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            operators = f"https://127.0.0.1:{operator_port}"
            deadline = time.monotonic() + READY
            while True:
                try:
                    if httpx.get(f"{operators}/healthz", verify=tls, timeout=5).is_success:
                        break
                except httpx.TransportError:
                    pass
                assert nginx.poll() is None, (root / "error.log").read_text()
                assert time.monotonic() < deadline, (
                    f"nginx did not pass GET {operators}/healthz within {READY} s")
                time.sleep(0.05)
            yield Front(f"https://127.0.0.1:{device_port}", operators, tls), author, tmp_path
        finally:
            stop_process(nginx)


def test_the_device_only_front_refuses_the_operator_api_and_serves_a_device_update(
        front: tuple[Front, Author, Path]) -> None:
    site, author, tmp = front
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=site.operators, verify=site.tls, timeout=30) as ops, \
            httpx.Client(base_url=site.devices, verify=site.tls, timeout=30) as net:
        registered = ops.post("/api/v1/devices", json={"name": "outside"}, headers=admin)
        assert registered.status_code == 201, registered.text
        dev = registered.json()
        mine = {"Authorization": f"Bearer {dev['token']}"}

        # the internet's side: no operator route, no dashboard, no docs, no old device route
        for method, path, headers in (
                ("GET", "/api/v1/devices", admin), ("POST", "/api/v1/devices", admin),
                ("GET", "/api/v1/releases", admin), ("POST", "/api/v1/deployments", admin),
                ("GET", "/api/v1/audit", admin), ("GET", "/api/v1/whoami", mine),
                ("GET", f"/api/v1/devices/{dev['id']}", mine),
                ("POST", f"/api/v1/devices/{dev['id']}/checkin", mine),
                ("GET", "/dashboard/", {}), ("GET", "/openapi.json", {}), ("GET", "/docs", {}),
                ("GET", "/metrics", {}), ("GET", "/healthz", {})):
            answer = net.request(method, path, headers=headers, json={} if method == "POST"
                                 else None)
            assert answer.status_code == 404, (method, path, answer.status_code)
            assert "nginx" in answer.text, answer.text  # nginx's own: suitkit never saw it
        upload = net.post(f"/firmware/{'ab' * 32}", headers={
            "Authorization": f"Bearer {UPLOAD}"}, content=b"x")
        assert upload.status_code == 403, upload.text  # downloads only
        # ... and the operators' side serves them
        assert ops.get("/api/v1/devices", headers=admin).status_code == 200
        assert ops.get("/openapi.json").status_code == 200

        # a device updates through the internet's side only: poll, envelope, image, states
        folder = new_device(tmp / "device", [author.anchor])
        base, _ = author.release(1, "base")
        assert install(folder, base).installed
        boot(folder)
        confirm(folder)
        image = image_bytes("app-2-", 2000)
        envelope, built = author.release(
            2, uri=f"{site.devices}/firmware/{hashlib.sha256(image).hexdigest()}")
        assert built == image
        uploaded = ops.post("/api/v1/releases", headers={"Authorization": f"Bearer {UPLOAD}"},
                            files=[("envelope", ("e.suit", envelope,
                                                 "application/suit-envelope+cose")),
                                   ("image", ("app.bin", image, "application/octet-stream"))])
        assert uploaded.status_code == 201, uploaded.text
        release = uploaded.json()
        deployed = ops.post("/api/v1/deployments", headers=admin, json={
            "release": release["id"], "devices": [dev["id"]],
            "envelope_url": site.devices + release["envelope"]["url"]})
        assert deployed.status_code == 201, deployed.text
        result = run_once(folder, site.devices, dev["token"], fetcher=HttpFetcher(tls=site.tls),
                          tls=site.tls)
        assert result.outcome == "succeeded", result.steps
        shown = ops.get(f"/api/v1/devices/{dev['id']}", headers=admin).json()
        assert shown["state"] == "succeeded"
        assert shown["components"][0]["sequence"] == 2
