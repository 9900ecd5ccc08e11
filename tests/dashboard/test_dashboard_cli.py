"""``suitkit serve`` mounts the dashboard when the status tracker is on (a real CLI process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from serve_kit import serving
from suitkit.dashboard import CONTENT_SECURITY_POLICY

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

@contextmanager
def serve(tmp_path: Path, *extra: str) -> Iterator[str]:
    author = Author.create(tmp_path / "author")
    with serving(["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
                  *extra]) as server:
        yield server.url


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

