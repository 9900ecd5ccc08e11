"""``suitkit token ...`` and ``suitkit devices ...`` against a real server (uvicorn on
127.0.0.1 with the status tracker), run in-process through the real entry point.

Exit statuses: 0 done, 1 refused by the server (one line with its error), 2 bad usage or
unreachable server.
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from suitkit.core import crypto
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

from helpers import run_cli

BOOTSTRAP = "bootstrap-admin-token-for-cli-tests"


@dataclass
class Server:
    url: str
    admin_file: Path
    tmp: Path


run = run_cli  # suitkit ARGS in-process (tests/helpers.py)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("suitkit: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("operator")
    router = create_router(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", BOOTSTRAP))
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=tmp / "data", anchors=anchors, routers=(router,))
    admin_file = tmp / "admin.token"
    admin_file.write_text(BOOTSTRAP + "\n")
    with running_server(config) as url:
        yield Server(url, admin_file, tmp)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they need (ids are not wrapped)."""
    monkeypatch.setenv("COLUMNS", "200")


def common(server: Server, token_file: Path | None = None) -> list[str | Path]:
    return ["--server", server.url, "--token-file", token_file or server.admin_file]


def test_token_create_writes_a_private_file_and_the_token_works(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = server.tmp / "operator.token"
    code, out, err = run(capsys, "token", "create", "night-shift", "--role", "operator",
                         "--expires-in-days", "7", "--out", out_file, *common(server))
    assert code == 0, err
    assert "night-shift" in out and str(out_file) in out
    token = out_file.read_text().strip()
    assert token.startswith("tok_") and token not in out
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    me = httpx.get(f"{server.url}/api/v1/whoami", timeout=10,
                   headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "operator" and me["name"] == "night-shift"


def test_token_create_refuses_an_existing_out_file_unless_forced(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """``--out`` over an existing file was overwritten silently (issue #11 item 18): now it is
    refused before any token is made; ``--force`` replaces it, mode 0600 whatever it was."""
    out_file = server.tmp / "kept.token"
    out_file.write_text("an older token the operator still needs\n")
    out_file.chmod(0o644)
    _, out, _ = run(capsys, "token", "list", "--json", *common(server))
    count = len(json.loads(out))
    code, out, err = run(capsys, "token", "create", "second", "--role", "operator",
                         "--out", out_file, *common(server))
    assert code == 2
    assert one_error_line(err) == (f"suitkit: error: --out {out_file} already exists; give "
                                   "--force to replace it")
    assert out_file.read_text() == "an older token the operator still needs\n"
    _, out, _ = run(capsys, "token", "list", "--json", *common(server))
    assert len(json.loads(out)) == count  # no token was made
    code, out, err = run(capsys, "token", "create", "second", "--role", "operator",
                         "--out", out_file, "--force", *common(server))
    assert code == 0, err
    assert out_file.read_text().startswith("tok_")
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert not [p for p in server.tmp.iterdir() if p.name.endswith(".tmp")]
    # a folder that is not there: refused before a token is made too
    code, out, err = run(capsys, "token", "create", "third", "--role", "operator",
                         "--out", server.tmp / "missing" / "t.token", *common(server))
    assert code == 2
    assert "not a writable directory" in one_error_line(err)
    _, out, _ = run(capsys, "token", "list", "--json", *common(server))
    assert len(json.loads(out)) == count + 1  # only the forced one was made


def test_token_create_prints_the_token_without_out(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "token", "create", "ci", "--role", "author", *common(server))
    assert code == 0, err
    token = out.strip()
    assert token.startswith("tok_") and "\n" not in token and "author" in err


def test_token_create_and_revoke_in_json(server: Server,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "token", "create", "script", "--role", "author", "--json",
                         *common(server))
    assert code == 0, err
    made = json.loads(out)
    assert made["role"] == "author" and made["token"].startswith(f"tok_{made['id']}.")
    out_file = server.tmp / "script.token"
    code, out, err = run(capsys, "token", "create", "script-2", "--role", "author", "--json",
                         "--out", out_file, *common(server))
    doc = json.loads(out)
    assert code == 0 and "token" not in doc and doc["written_to"] == str(out_file)
    assert out_file.read_text().strip() not in out
    code, out, err = run(capsys, "token", "revoke", made["id"], "--json", *common(server))
    assert code == 0 and json.loads(out) == {"id": made["id"], "revoked": True}


def test_token_list_and_revoke(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "token", "create", "to-go", "--role", "author", *common(server))
    token_id = out.strip()[4:].partition(".")[0]
    code, out, err = run(capsys, "token", "list", "--json", *common(server))
    assert code == 0, err
    listed = {t["id"]: t for t in json.loads(out)}
    assert listed[token_id]["name"] == "to-go" and listed[token_id]["revoked"] is None
    assert "tok_" not in out  # no secrets
    code, out, err = run(capsys, "token", "list", *common(server))
    assert code == 0 and token_id in out and "to-go" in out
    code, out, err = run(capsys, "token", "revoke", token_id, *common(server))
    assert code == 0 and f"token {token_id} revoked" in out
    code, out, _ = run(capsys, "token", "list", "--json", *common(server))
    assert {t["id"]: t for t in json.loads(out)}[token_id]["revoked"] is not None
    code, _, err = run(capsys, "token", "revoke", "0000000000000000", *common(server))
    assert code == 1 and "no token" in one_error_line(err) and "HTTP 404" in err


def test_refusals_exit_1_with_the_servers_error(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    author_file = server.tmp / "author.token"
    code, _, err = run(capsys, "token", "create", "writer", "--role", "author", "--out",
                       author_file, *common(server))
    assert code == 0, err
    code, _, err = run(capsys, "token", "create", "x", "--role", "admin",
                       *common(server, author_file))
    line = one_error_line(err)
    assert code == 1 and "HTTP 403" in line and "admin role" in line
    code, _, err = run(capsys, "devices", "list", *common(server, author_file))
    assert code == 1 and "admin or operator" in one_error_line(err)
    code, _, err = run(capsys, "token", "create", "x", "--role", "root", *common(server))
    assert code == 1 and "role: expected one of" in one_error_line(err)
    wrong = server.tmp / "wrong.token"
    wrong.write_text("tok_0000.nope")
    code, _, err = run(capsys, "devices", "list", *common(server, wrong))
    assert code == 1 and "HTTP 401" in one_error_line(err)


def test_bad_usage_exits_2_and_unreachable_servers_exit_5(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = run(capsys, "devices", "list", "--server", closed, "--token-file",
                       server.admin_file, "--timeout", "5")
    assert code == 5 and "cannot reach" in one_error_line(err)
    code, _, err = run(capsys, "devices", "list", "--server", "ftp://x", "--token-file",
                       server.admin_file)
    assert code == 2 and "--server" in one_error_line(err)
    code, _, err = run(capsys, "devices", "list", "--server", server.url, "--token-file",
                       server.tmp / "missing.token")
    assert code == 2 and "cannot read token file" in one_error_line(err)
    code, _, _ = run(capsys, "token", "create", "x", *common(server))  # --role missing
    assert code == 2


def test_devices_list_and_show(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    device = httpx.post(f"{server.url}/api/v1/devices", json={"name": "[bold]boiler"},
                        headers=admin, timeout=10).json()
    device_auth = {"Authorization": f"Bearer {device['token']}"}
    httpx.put(f"{server.url}/api/v1/devices/{device['id']}/inventory", headers=device_auth,
              timeout=10, json={"components": [{"id": ["00"], "sequence": 3}],
                                "hardware": {"board": "nrf52840"}}).raise_for_status()
    httpx.post(f"{server.url}/api/v1/deployments", headers=admin, timeout=10, json={
        "release": "ab" * 32, "envelope_url": "http://127.0.0.1:1/envelopes/x",
        "devices": [device["id"]]}).raise_for_status()
    code, out, err = run(capsys, "devices", "list", "--json", *common(server))
    assert code == 0, err
    assert [d["name"] for d in json.loads(out) if d["id"] == device["id"]] == ["[bold]boiler"]
    code, out, err = run(capsys, "devices", "list", *common(server))
    assert code == 0 and device["id"] in out and "[bold]boiler" in out
    code, out, err = run(capsys, "devices", "show", device["id"], "--json", *common(server))
    doc = json.loads(out)
    assert code == 0 and doc["components"][0]["sequence"] == 3
    assert [h["state"] for h in doc["history"]] == ["notified"]
    code, out, err = run(capsys, "devices", "show", device["id"], *common(server))
    assert code == 0, err
    assert "[00] sequence 3" in out and "board: nrf52840" in out and "-> notified" in out
    for state in ("downloading", "downloaded"):
        httpx.post(f"{server.url}/api/v1/devices/{device['id']}/events", headers=device_auth,
                   timeout=10, json={"state": state}).raise_for_status()
    code, out, err = run(capsys, "devices", "show", device["id"], "--limit", "2", "--json",
                         *common(server))
    assert code == 0, err
    assert [h["state"] for h in json.loads(out)["history"]] == ["downloading", "downloaded"]
    code, out, err = run(capsys, "devices", "show", device["id"], "--limit", "1",
                         *common(server))
    assert code == 0 and "-> downloaded" in out and "-> notified" not in out, out
    code, _, err = run(capsys, "devices", "show", "00000000-0000-4000-8000-000000000000",
                       *common(server))
    assert code == 1 and "HTTP 404" in one_error_line(err)


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\rnext"
"""An OSC retitle, ESC [2J (clear the screen), a one-character C1 CSI, a right-to-left override
and a carriage return: what a device could store as text to run on an operator's terminal."""


def test_device_text_cannot_command_the_operators_terminal(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """A device's hardware facts and event details (and an admin-made name) were printed raw
    by ``devices show`` and ``devices list``: a device credential could clear, retitle or
    reorder the operator's terminal. Control and bidirectional characters are escapes now."""
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    device = httpx.post(f"{server.url}/api/v1/devices", json={"name": f"n{HOSTILE}"},
                        headers=admin, timeout=10).json()
    device_auth = {"Authorization": f"Bearer {device['token']}"}
    httpx.put(f"{server.url}/api/v1/devices/{device['id']}/inventory", headers=device_auth,
              timeout=10, json={"hardware": {f"k{HOSTILE}": f"v{HOSTILE}"}}).raise_for_status()
    httpx.post(f"{server.url}/api/v1/deployments", headers=admin, timeout=10, json={
        "release": "ab" * 32, "envelope_url": "http://127.0.0.1:1/envelopes/x",
        "devices": [device["id"]]}).raise_for_status()
    httpx.post(f"{server.url}/api/v1/devices/{device['id']}/events", headers=device_auth,
               timeout=10, json={"state": "downloading", "detail": f"d{HOSTILE}"}
               ).raise_for_status()
    for command in (["devices", "show", device["id"]], ["devices", "list"]):
        code, out, err = run(capsys, *command, *common(server))
        assert code == 0, err
        assert not any(c in out + err for c in "\x1b\x07\x9b\u202e\r"), (command, out)
        assert "n\\u001b]0;owned" in out, (command, out)  # the name, shown as escapes
    code, out, _ = run(capsys, "devices", "show", device["id"], *common(server))
    for shown in ("k\\u001b]0;owned", "v\\u001b]0;owned", "d\\u001b]0;owned",
                  "\\u001b[2J\\u009b31m\\u202eevil"):
        assert shown in out, (shown, out)
    code, out, _ = run(capsys, "devices", "show", device["id"], "--json", *common(server))
    assert json.loads(out)["hardware"] == {f"k{HOSTILE}": f"v{HOSTILE}"}  # data kept as sent


def test_devices_reset_ends_a_stuck_update(server: Server,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    device = httpx.post(f"{server.url}/api/v1/devices", json={"name": "stuck"},
                        headers=admin, timeout=10).json()
    httpx.post(f"{server.url}/api/v1/deployments", headers=admin, timeout=10, json={
        "release": "ab" * 32, "envelope_url": "http://127.0.0.1:1/envelopes/x",
        "devices": [device["id"]]}).raise_for_status()
    code, out, err = run(capsys, "devices", "reset", device["id"], "--reason", "wiped",
                         *common(server))
    assert code == 0, err
    assert "update ended as failed (reset by bootstrap-admin: wiped)" in out
    code, _, err = run(capsys, "devices", "reset", device["id"], *common(server))
    assert code == 1 and "nothing to reset" in one_error_line(err)
    httpx.post(f"{server.url}/api/v1/deployments", headers=admin, timeout=10, json={
        "release": "ab" * 32, "envelope_url": "http://127.0.0.1:1/envelopes/x",
        "devices": [device["id"]]}).raise_for_status()
    code, out, err = run(capsys, "devices", "reset", device["id"], "--json", *common(server))
    assert code == 0, err
    assert json.loads(out)["state"] == "failed"


def test_devices_show_prints_a_digest_whole_in_a_narrow_pipe(
        server: Server, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """COLUMNS=40, output captured (not a terminal): the component digest is printed whole on
    its line; it used to be cut at column 40 with no ellipsis."""
    monkeypatch.setenv("COLUMNS", "40")
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    device = httpx.post(f"{server.url}/api/v1/devices", json={"name": "narrow"},
                        headers=admin, timeout=10).json()
    digest = "6658ea560262696dd1f13b782239a064da7c6c5cbaf52fded428a6fc83c7e5af"
    httpx.put(f"{server.url}/api/v1/devices/{device['id']}/inventory", timeout=10,
              headers={"Authorization": f"Bearer {device['token']}"},
              json={"components": [{"id": ["00"], "sequence": 3, "digest": digest}]}
              ).raise_for_status()
    code, out, err = run(capsys, "devices", "show", device["id"], *common(server))
    assert code == 0, err
    assert f"[00] sequence 3 digest {digest}\n" in out, out
    assert f"device {device['id']} (narrow)" in out
