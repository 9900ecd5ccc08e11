"""``suitkit serve --admin-token-file``: the status tracker served by the real CLI process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from device.device_kit import Author

SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_an_admin_token_serves_the_tracker_on_sqlite_in_the_data_dir(
        tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text("cli-admin-token\n")
    port = free_port()
    process = subprocess.Popen(
        [*SUITKIT, "serve", "--data", str(tmp_path / "data"), "--author-anchor",
         str(author.anchor), "--port", str(port), "--admin-token-file",
         str(tmp_path / "admin.token")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                httpx.get(f"{url}/api/v1/releases", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "suitkit serve did not start within 15 s"
                time.sleep(0.05)
        admin = {"Authorization": "Bearer cli-admin-token"}
        registered = httpx.post(f"{url}/api/v1/devices", json={"name": "d"}, headers=admin,
                                timeout=5)
        assert registered.status_code == 201
        token = registered.json()["token"]
        own = httpx.get(f"{url}/api/v1/devices/{registered.json()['id']}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert own.status_code == 200 and own.json()["name"] == "d"
        assert httpx.get(f"{url}/api/v1/devices", timeout=5).status_code == 401
    finally:
        process.terminate()
        try:
            stdout, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
    assert "status tracker enabled" in stdout
    assert (tmp_path / "data" / "tracker.db").is_file()


def test_tracker_db_without_an_admin_token_is_a_usage_error(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    done = subprocess.run(
        [*SUITKIT, "serve", "--data", str(tmp_path / "data"), "--author-anchor",
         str(author.anchor), "--tracker-db", "sqlite:///x.db"],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "--tracker-db needs --admin-token-file" in done.stderr
