"""``suitkit serve`` mounts the dashboard when the status tracker is on (a real CLI process)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from suitkit.dashboard import CONTENT_SECURITY_POLICY

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(tmp_path: Path, *extra: str) -> Iterator[str]:
    author = Author.create(tmp_path / "author")
    port = free_port()
    process = subprocess.Popen(
        [*SUITKIT, "serve", "--data", str(tmp_path / "data"), "--author-anchor",
         str(author.anchor), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                httpx.get(f"{url}/api/v1/releases", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "suitkit serve did not start within 20 s"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_serve_with_the_tracker_serves_the_dashboard(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("cli-admin-token-for-the-dashboard\n")
    with serve(tmp_path, "--admin-token-file", str(tmp_path / "admin.token")) as url:
        root = httpx.get(f"{url}/", timeout=5)
        assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
        page = httpx.get(f"{url}/dashboard/", timeout=5)
        assert page.status_code == 200 and "app.js" in page.text
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        script = httpx.get(f"{url}/dashboard/app.js", timeout=5)
        assert script.status_code == 200 and "/api/v1/whoami" in script.text

