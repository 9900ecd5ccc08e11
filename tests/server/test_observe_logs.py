"""Request ids and structured logs (issue #13 item 2): ``X-Request-Id`` in each response and in
every log line its request causes; JSON lines; an unexpected exception is one 500 logged once
with its traceback."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from device.device_kit import Author
from serve_kit import serving
from server.test_cli_server import read_only
from suitkit.core.verify import TrustAnchors
from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server
from suitkit.server.observe import request_id

HEX_ID = re.compile(r"[0-9a-f]{32}")


def json_lines(log: str) -> list[dict[str, Any]]:
    """Every line of a --log-format json log, each a JSON object (a traceback included)."""
    lines = []
    for line in log.splitlines():
        doc = json.loads(line)  # a line that is no JSON object fails the test here
        assert isinstance(doc, dict), line
        lines.append(doc)
    return lines


def test_request_id_in_the_response_and_in_every_json_line_of_its_request(
        tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text("admin-json-log-secret\n")
    data = tmp_path / "data"
    argv = ["--data", str(data), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token"), "--log-format", "json"]
    admin = {"Authorization": "Bearer admin-json-log-secret"}
    with serving(argv, timeout=30) as server:
        envelope, image = author.release(1, "log", size=3000, uri="https://fw.example/a.bin")
        with read_only(data / "blobs", data / "tmp"):  # the store fails: a logged 500
            failed = httpx.post(f"{server.url}/api/v1/releases", timeout=30,
                                headers={**admin, "X-Request-Id": "upload-500.rid:1"},
                                files=[("envelope", ("e.suit", envelope)),
                                       ("image-0", ("a.bin", image))])
        assert failed.status_code == 500, failed.text
        assert failed.headers["x-request-id"] == "upload-500.rid:1"
        made = httpx.get(f"{server.url}/api/v1/devices", headers=admin, timeout=30)
        assert made.status_code == 200
        generated = made.headers["x-request-id"]
        assert HEX_ID.fullmatch(generated), generated
        # an id a client could forge log lines with is replaced by a new one
        forged = httpx.get(f"{server.url}/healthz", timeout=30,
                           headers={"X-Request-Id": 'x" level=error fake'})
        assert HEX_ID.fullmatch(forged.headers["x-request-id"])
        too_long = httpx.get(f"{server.url}/healthz", headers={"X-Request-Id": "a" * 129},
                             timeout=30)
        assert HEX_ID.fullmatch(too_long.headers["x-request-id"])
    lines = json_lines(server.stderr)
    for doc in lines:
        assert {"time", "level", "logger", "message"} <= doc.keys(), doc
    of_upload = [d for d in lines if d.get("request_id") == "upload-500.rid:1"]
    # the access line and the error line with its traceback, and nothing of it without its id
    access = [d for d in of_upload if d["logger"] == "uvicorn.access"]
    assert len(access) == 1, of_upload
    assert access[0]["method"] == "POST" and access[0]["path"] == "/api/v1/releases"
    assert access[0]["status"] == 500
    errors = [d for d in lines if d["level"] == "error"]
    assert len(errors) == 1, errors  # the 500 is logged once
    assert errors[0]["request_id"] == "upload-500.rid:1"
    assert errors[0]["message"] == ("POST /api/v1/releases -> 500 the server could not store "
                                    "the upload")
    assert "Traceback (most recent call last)" in errors[0]["exception"]
    assert [d["path"] for d in lines if d.get("request_id") == generated] == [
        "/api/v1/devices"]
    assert "admin-json-log-secret" not in server.stderr


def test_plain_log_lines_carry_the_request_id(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    with serving(["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor)],
                 timeout=30) as server:
        answer = httpx.get(f"{server.url}/api/v1/releases?token=hunter2&limit=5",
                           headers={"X-Request-Id": "plain-1"}, timeout=30)
        assert answer.headers["x-request-id"] == "plain-1"
    line = next(x for x in server.stderr.splitlines() if "GET /api/v1/releases?" in x)
    # 400: a list refuses a query parameter it does not take (issue #17); the line is the test
    assert line.endswith('"GET /api/v1/releases?token=***&limit=5 HTTP/1.1" 400 '
                         "[request plain-1]"), line
    assert "hunter2" not in server.stderr  # a secret a client put in a URL is not logged


def test_an_unexpected_exception_is_one_500_logged_once_with_its_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    router = APIRouter()
    seen: list[str | None] = []

    @router.get("/boom")
    async def boom() -> None:
        seen.append(request_id())
        raise RuntimeError("a bug in a route")

    author = Author.create(tmp_path / "author")
    config = ServerConfig(data_dir=tmp_path / "data", routers=(router,),
                          anchors=TrustAnchors.of(author.key.public_key()))
    with caplog.at_level(logging.INFO), running_server(config) as url:
        answer = httpx.get(f"{url}/boom", headers={"X-Request-Id": "boom-1"}, timeout=30)
    assert answer.status_code == 500
    assert answer.json()["error"] == answer.json()["detail"] == "internal server error"
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["x-request-id"] == "boom-1"
    assert answer.headers["connection"] == "close"
    assert seen == ["boom-1"]  # the route ran with the request's id in its context
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].getMessage() == "GET /boom -> 500 unexpected error"
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)
