"""``suitkit campaign ...`` against a real server (uvicorn on 127.0.0.1 with the status tracker
and its campaign ticker), run in-process through the real entry point.

Two operators (alice creates, bob approves), simulated devices posting their events over HTTP.
Exit statuses: 0 done, 1 refused by the server (one line with its error), 2 bad usage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.test_cli_operator import one_error_line, run
from suitkit.core import crypto
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.tracker.config import TrackerConfig
from suitkit.tracker.edges import create_router

BOOTSTRAP = "bootstrap-admin-token-for-campaign-cli-tests"
RELEASE = "cd" * 32


@dataclass
class Server:
    url: str
    client: httpx.Client
    files: dict[str, Path]

    def args(self, who: str) -> list[str | Path]:
        return ["--server", self.url, "--token-file", self.files[who]]

    def device(self) -> dict[str, Any]:
        made = self.client.post("/api/v1/devices", json={"name": "d"},
                                headers={"Authorization": f"Bearer {BOOTSTRAP}"})
        assert made.status_code == 201
        return dict(made.json())

    def event(self, device: dict[str, Any], state: str) -> None:
        sent = self.client.post(f"/api/v1/devices/{device['id']}/events", json={"state": state},
                                headers={"Authorization": f"Bearer {device['token']}"})
        assert sent.status_code == 201, sent.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("campaign-cli")
    router = create_router(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", BOOTSTRAP))
    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    config = ServerConfig(data_dir=tmp / "data", anchors=anchors, routers=(router,))
    with running_server(config) as url, httpx.Client(base_url=url, timeout=10) as client:
        files = {}
        for name in ("alice", "bob"):
            made = client.post("/api/v1/tokens", json={"name": name, "role": "operator"},
                               headers={"Authorization": f"Bearer {BOOTSTRAP}"})
            assert made.status_code == 201, made.text
            files[name] = tmp / f"{name}.token"
            files[name].write_text(made.json()["token"] + "\n")
        yield Server(url, client, files)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def test_create_approve_start_and_follow_a_campaign(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    devices = [server.device() for _ in range(2)]
    for dev in devices:
        code, out, err = run(capsys, "campaign", "tags", dev["id"], "cli", "eu",
                             *server.args("alice"))
        assert code == 0 and out.strip() == f"device {dev['id']} tags: cli, eu", err
    code, out, err = run(capsys, "campaign", "tags", devices[0]["id"], "cli", "eu", "--json",
                         *server.args("alice"))
    assert code == 0 and json.loads(out)["tags"] == ["cli", "eu"], err
    code, out, err = run(capsys, "campaign", "create", "--name", "cli rollout",
                         "--release", RELEASE, "--envelope-url", "http://127.0.0.1:9/e.suit",
                         "--tag", "cli", "--waves", "50,100", "--failure-threshold", "0.5",
                         "--json", *server.args("alice"))
    assert code == 0, err
    cid = json.loads(out)["id"]

    code, out, err = run(capsys, "campaign", "approve", cid, *server.args("alice"))
    assert code == 1
    assert one_error_line(err) == (
        f"suitkit: error: POST /api/v1/campaigns/{cid}/approve refused (HTTP 403): alice "
        "created this campaign and cannot approve it; another operator must (four-eyes)")
    code, out, err = run(capsys, "campaign", "approve", cid, *server.args("bob"))
    assert code == 0 and out.strip() == f"campaign {cid} (cli rollout): approved", err
    code, out, err = run(capsys, "campaign", "start", cid, *server.args("alice"))
    assert code == 0 and out.strip() == f"campaign {cid} (cli rollout): running", err

    code, out, err = run(capsys, "campaign", "status", cid, "--json", *server.args("bob"))
    doc = json.loads(out)
    (first,) = [m["device_id"] for m in doc["members"] if m["state"] == "notified"]
    dev = next(d for d in devices if d["id"] == first)
    for state in ("downloading", "downloaded", "installing", "rebooting", "succeeded"):
        server.event(dev, state)
    deadline = time.monotonic() + 60  # generous: a loaded machine
    while True:  # the server's ticker opens wave 2 within about a second
        code, out, err = run(capsys, "campaign", "status", cid, *server.args("bob"))
        if "wave 2 of 2" in out:
            break
        assert time.monotonic() < deadline, f"wave 2 not opened within 60 s: {out}"
        time.sleep(0.2)
    assert code == 0 and "1 notified, 1 succeeded" in out and "wave 2 of 2 opened" in out

    code, out, err = run(capsys, "campaign", "pause", cid, "--reason", "lunch",
                         *server.args("bob"))
    assert out.strip() == f"campaign {cid} (cli rollout): paused (paused by bob: lunch)"
    code, out, err = run(capsys, "campaign", "pause", cid, *server.args("bob"))
    assert code == 1 and one_error_line(err).endswith(
        "(HTTP 409): campaign is paused; only running campaigns can be paused")
    code, out, err = run(capsys, "campaign", "trigger", cid, *server.args("bob"))
    assert code == 1 and "only install-on-trigger campaigns can be triggered" in err
    code, out, err = run(capsys, "campaign", "cancel", cid, *server.args("alice"))
    assert code == 0 and out.strip().endswith(": cancelled")
    code, out, err = run(capsys, "campaign", "list", *server.args("alice"))
    assert code == 0 and cid in out and "cancelled" in out


def test_bad_options_exit_2_and_bad_bodies_exit_1(
        server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "campaign", "create", "--release", RELEASE, "--envelope-url",
                       "http://x/e", "--tag", "t", "--waves", "ten", *server.args("alice"))
    assert code == 2 and "--waves: expected percentages" in one_error_line(err)
    code, _, err = run(capsys, "campaign", "create", "--release", RELEASE, "--envelope-url",
                       "http://x/e", "--tag", "t", "--window", "8-9", *server.args("alice"))
    assert code == 1 and "window: expected 'HH:MM-HH:MM'" in one_error_line(err)
    code, _, err = run(capsys, "campaign", "status", "nope", *server.args("alice"))
    assert code == 1 and one_error_line(err).endswith("(HTTP 404): no campaign 'nope'")
