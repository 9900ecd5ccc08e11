"""``suitkit serve --admin-token-file``: the status tracker served by the real CLI process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from device.device_kit import Author
from serve_kit import SUITKIT, serving


def test_serve_with_an_admin_token_serves_the_tracker_on_sqlite_in_the_data_dir(
        tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text("cli-admin-token\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token")]
    with serving(argv, timeout=15) as server:
        url = server.url
        admin = {"Authorization": "Bearer cli-admin-token"}
        registered = httpx.post(f"{url}/api/v1/devices", json={"name": "d"}, headers=admin,
                                timeout=5)
        assert registered.status_code == 201
        token = registered.json()["token"]
        own = httpx.get(f"{url}/api/v1/devices/{registered.json()['id']}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert own.status_code == 200 and own.json()["name"] == "d"
        assert httpx.get(f"{url}/api/v1/devices", timeout=5).status_code == 401
    assert "status tracker enabled" in server.stdout
    assert (tmp_path / "data" / "tracker.db").is_file()


def test_tracker_db_without_an_admin_token_is_a_usage_error(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    done = subprocess.run(
        [*SUITKIT, "serve", "--data", str(tmp_path / "data"), "--author-anchor",
         str(author.anchor), "--tracker-db", "sqlite:///x.db"],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "--tracker-db needs --admin-token-file" in done.stderr
