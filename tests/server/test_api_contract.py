"""The API contract (issue #17): ``/openapi.json`` types every body and every status the routes
answer, every error is RFC 9457 problem details, ``/docs`` and ``/redoc`` load from the
package alone, and the response check (``server.contract``) catches an answer that
contradicts the document. The whole API is exercised against the schema by
tests/security/test_api_fuzz.py (schemathesis) and every test of the tracker, server and e2e
suites (tests/contract_kit.py)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from device.device_kit import Author
from suitkit.cli.notices import tracker_routes
from suitkit.core.verify import TrustAnchors
from suitkit.problems import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA_REF, PROBLEM_TYPES
from suitkit.server import background
from suitkit.server.app import ServerConfig, create_app
from suitkit.tracker.config import TrackerConfig

ADMIN = "contract-admin-token-0123456789abc"
CHROMIUM = Path("/usr/bin/chromium")
WAIT = 30.0


@dataclass
class Served:
    url: str
    client: httpx.Client
    tmp: Path
    spec: dict[str, Any]


def _config(tmp: Path, **extra: Any) -> tuple[ServerConfig, Any]:
    author = Author.create(tmp / "author")
    wiring = tracker_routes(TrackerConfig(f"sqlite:///{tmp / 'tracker.db'}", ADMIN),
                            heartbeat=0.5)
    config = ServerConfig(data_dir=tmp / "data",
                          anchors=TrustAnchors.of(author.key.public_key()),
                          max_upload_bytes=64 * 1024, routers=(*wiring.routers,
                                                              *extra.pop("routers", ())),
                          authorizer=wiring.authorizer, **extra)
    return config, wiring


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("contract")
    config, wiring = _config(tmp)
    try:
        with background.running_server(config) as url, httpx.Client(
                base_url=url, timeout=WAIT, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as client:
            spec = client.get("/openapi.json").json()
            yield Served(url, client, tmp, spec)
    finally:
        wiring.close()


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_openapi_types_every_body_and_every_error(served: Served) -> None:
    spec = served.spec
    operations = list(_operations(spec))
    assert len(operations) >= 36, [f"{m} {p}" for m, p, _ in operations]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["Problem"]["required"] == [
        "type", "title", "status", "detail", "error"]
    missing = []
    for method, path, operation in operations:
        where = f"{method} {path}"
        responses = operation["responses"]
        if "requestBody" in operation:
            for media, content in operation["requestBody"]["content"].items():
                if not content.get("schema"):
                    missing.append(f"{where}: request body {media} has no schema")
        successes = [s for s in responses if s.startswith("2")]
        if not successes:
            missing.append(f"{where}: no success status")
        for status, response in responses.items():
            content = response.get("content", {})
            typed = bool(content) and all(c.get("schema") for c in content.values())
            if status.startswith("2") and status != "204" and method != "DELETE" and not typed:
                missing.append(f"{where}: {status} has no schema")
            problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}}
            if status[0] in "45" and status != "416" and content != problem:
                missing.append(f"{where}: {status} is not problem details: {content}")
            if status == "422" and "HTTPValidationError" in json.dumps(response):
                missing.append(f"{where}: FastAPI's 422, which the app never sends")
        if path.startswith("/api/v1/") and not {"401", "403"} <= set(responses):
            missing.append(f"{where}: 401 and 403 are not declared")
        if "{" in path and "400" not in responses:
            missing.append(f"{where}: 400 (a bad id in the path) is not declared")
    assert not missing, "\n".join(missing)


def _problem(response: httpx.Response, status: int, fragment: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE, response.headers
    doc: dict[str, Any] = response.json()
    assert doc["type"] == PROBLEM_TYPES[status].uri, doc
    assert doc["title"] == PROBLEM_TYPES[status].title
    assert doc["status"] == status
    assert doc["detail"] == doc["error"], doc
    assert fragment in doc["detail"], doc
    assert "\n" not in doc["detail"] and "Traceback" not in doc["detail"]
    return doc


def test_every_kind_of_error_is_problem_details(served: Served) -> None:
    client = served.client
    _problem(client.get("/no/such/route"), 404, "Not Found")
    _problem(client.delete("/api/v1/whoami"), 405, "Method Not Allowed")
    _problem(httpx.get(f"{served.url}/api/v1/whoami", timeout=WAIT), 401, "Bearer")
    assert httpx.get(f"{served.url}/api/v1/whoami", timeout=WAIT).headers[
        "www-authenticate"] == "Bearer"
    # a request validation error is a 400 naming the parameter (FastAPI's 422 is gone)
    _problem(client.get("/api/v1/campaigns/c/progress", params={"points": "many"}), 400,
             "query points")
    _problem(client.get("/api/v1/audit", params={"limit": "many"}), 400, "limit")
    _problem(client.get("/api/v1/audit", params={"sort": "x"}), 400, "not a query parameter")
    _problem(client.get("/api/v1/devices", params={"limit": "0"}), 400, "limit")
    _problem(client.get("/api/v1/devices/no-such-device"), 404, "no device")
    _problem(client.post("/api/v1/devices", content=b"x" * 70_000,
                         headers={"Content-Type": "application/json"}), 413, "larger")
    _problem(client.post("/api/v1/devices", content=b"name=x",
                         headers={"Content-Type": "text/plain"}), 415, "application/json")
    _problem(client.post("/api/v1/devices", json={"nickname": "x"}), 400, "nickname")
    _problem(client.post("/api/v1/deployments", json={
        "release": "ab", "devices": ["x"], "envelope_url": "https://example.com/e"}), 404, "x")
    _problem(client.get("/firmware/not-a-digest"), 400, "SHA-256")
    _problem(client.get(f"/envelopes/{'0' * 64}"), 404, "no such blob")
    _problem(client.post("/api/v1/releases", content=b"x",
                         headers={"Content-Type": "text/plain"}), 415, "multipart")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_only_from_the_server(served: Served, page: str) -> None:
    response = served.client.get(page)
    assert response.status_code == 200
    links = _Links()
    links.feed(response.text)
    assert len(links.urls) >= 2, links.urls  # the script (and the style sheet) and the icon
    for url in links.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} loads {url} from elsewhere"
        asset = served.client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, (url, asset.status_code)
    for script in links.scripts:
        for word in ("http://", "https://", "//cdn", "fonts.googleapis"):
            assert word not in script, f"{page}: an inline script names {word}: {script[:300]}"
    assert "/openapi.json" in response.text


@pytest.mark.skipif(importlib.util.find_spec("playwright") is None or not CHROMIUM.exists(),
                    reason="install chromium (apt-get install chromium) and playwright")
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_render_in_a_browser_without_any_other_host(served: Served,
                                                                  page: str) -> None:
    from playwright.sync_api import sync_playwright

    here = urlsplit(served.url).netloc
    hosts: list[str] = []  # of every request that went out (a response came back)
    blocked: list[str] = []  # requests for another host the page's policy stopped
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-sync",
            "--disable-component-update"])
        try:
            context = browser.new_context()
            view = context.new_page()
            view.on("requestfinished",
                    lambda request: hosts.append(urlsplit(request.url).netloc))
            view.on("requestfailed", lambda request: blocked.append(
                f"{urlsplit(request.url).netloc} {request.failure}"))
            view.goto(f"{served.url}{page}", wait_until="networkidle", timeout=WAIT * 1000)
            # the operations are rendered from /openapi.json: the page works, not just loads
            view.get_by_text("/api/v1/devices/{device_id}/checkin").first.wait_for(
                timeout=WAIT * 1000)
        finally:
            browser.close()
    assert hosts and set(hosts) <= {here, ""}, f"{page} asked other hosts: {set(hosts)}"
    # ReDoc's footer names its maker's logo on a CDN: Content-Security-Policy stops it
    assert all(b.endswith((" csp", "ERR_BLOCKED_BY_CSP")) for b in blocked), blocked


class _Thing(BaseModel):
    name: str
    size: int


def test_the_contract_check_reports_what_contradicts_the_document(tmp_path: Path) -> None:
    router = APIRouter()

    @router.get("/api/v1/things/{name}", response_model=_Thing, responses={404: {}})
    async def thing(name: str) -> Response:
        if name == "good":
            return JSONResponse({"name": "good", "size": 1})
        if name == "bad":
            return JSONResponse({"name": "bad", "size": "big"})
        if name == "teapot":
            return Response(status_code=418)
        return JSONResponse({"error": "not a problem"}, status_code=404)

    log = tmp_path / "contract.jsonl"
    config, wiring = _config(tmp_path, routers=(router,), contract_log=log)
    try:
        with background.running_server(config) as url:
            for name in ("good", "bad", "teapot", "gone"):
                httpx.get(f"{url}/api/v1/things/{name}", timeout=WAIT)
    finally:
        wiring.close()
    found = {v["path"]: v for v in map(json.loads, log.read_text().splitlines())}
    assert set(found) == {"/api/v1/things/bad", "/api/v1/things/teapot",
                          "/api/v1/things/gone"}, found
    assert "size" in found["/api/v1/things/bad"]["problems"][0]
    assert any("status 418 is not documented" in p
               for p in found["/api/v1/things/teapot"]["problems"])
    assert found["/api/v1/things/gone"]["problems"][:1] == [
        f"an error that is not {PROBLEM_MEDIA_TYPE}: application/json"]


def test_the_typed_document_is_built_once(tmp_path: Path) -> None:
    config, wiring = _config(tmp_path)
    try:
        app = create_app(config)
        assert app.openapi() is app.openapi()
    finally:
        wiring.close()


def test_lists_and_the_device_api_are_documented(served: Served) -> None:
    """Every list documents its paging (limit, after, total) and filters, and answers ``next``
    and an optional ``total``; the device API under /device/v1 is typed as its deprecated twin
    under /api/v1/devices/{id} is (issue #17)."""
    spec = served.spec
    schemas = spec["components"]["schemas"]
    wrong = []
    for method, path, operation in _operations(spec):
        where = f"{method} {path}"
        ok = operation["responses"].get("200", {}).get("content", {}).get("application/json")
        ref = (ok or {}).get("schema", {}).get("$ref", "")
        answer = schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        if "next" in answer.get("properties", {}):
            names = {p["name"] for p in operation.get("parameters", ())}
            if not {"limit", "after"} <= names:
                wrong.append(f"{where}: a list without limit/after documented: {names}")
            if "next" not in answer.get("required", ()):
                wrong.append(f"{where}: next is not always in the answer")
            if "total" in answer.get("required", ()):
                wrong.append(f"{where}: total is in the answer without ?total=true")
            if "total" not in answer["properties"] and path != "/api/v1/classes":
                wrong.append(f"{where}: no total")
        if path.startswith("/device/v1/"):
            twin = spec["paths"].get(path.replace("/device/v1/", "/api/v1/devices/"), {})
            legacy = twin.get(method.lower())
            if legacy is None:
                wrong.append(f"{where}: no deprecated twin under /api/v1/devices")
                continue
            if not legacy.get("deprecated") or operation.get("deprecated"):
                wrong.append(f"{where}: the old path is not the deprecated one")
            if legacy["responses"] != operation["responses"]:
                wrong.append(f"{where}: answers otherwise than its twin")
            if not {"400", "401", "403"} <= set(operation["responses"]):
                wrong.append(f"{where}: 400, 401 and 403 are not declared")
    assert not wrong, "\n".join(wrong)
    paths = spec["paths"]
    filters = {p["name"]: p for p in paths["/api/v1/devices"]["get"]["parameters"]}
    assert {"state", "class", "tag", "version", "sort", "total"} <= set(filters), filters
    assert filters["state"]["schema"]["type"] == "array"
    assert {p["name"] for p in paths["/api/v1/campaigns/{campaign_id}/members"]["get"][
        "parameters"]} >= {"state", "total"}
    assert "/device/v1/{device_id}/checkin" in paths
    device = schemas["Device"]["properties"]
    assert {"class_name", "vendor_name", "version"} <= set(device)
    assert "release_version" in schemas["Campaign"]["properties"]
    assert {"version", "notes"} <= set(schemas["Release"]["properties"])
    upload = paths["/api/v1/releases"]["post"]["requestBody"]["content"]
    assert {"version", "notes"} <= set(upload["multipart/form-data"]["schema"]["properties"])
    for path, model in (("/api/v1/fleet", "Fleet"), ("/api/v1/classes", "ClassPage"),
                        ("/api/v1/campaigns/{campaign_id}/progress", "CampaignProgress")):
        assert paths[path]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"]["$ref"].endswith(f"/{model}"), path
    assert "requestBody" in paths["/api/v1/campaigns/preview"]["post"]
    assert "requestBody" in paths["/api/v1/classes/{class_id}"]["put"]
