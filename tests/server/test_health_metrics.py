"""``/healthz``, ``/readyz`` and ``/metrics`` of ``suitkit serve`` (issue #13 item 3), against a
real server process, a real PostgreSQL stopped and started again, and a real data directory
made read-only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from device.device_kit import Author
from pg import PostgresCluster, PostgresMissing
from serve_kit import free_port, serving
from server.test_cli_server import read_only

ADMIN = "admin-token-for-health-tests"
WAIT = 60.0


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.2)


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=30)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus-client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_readyz_is_false_while_the_database_is_down_and_true_after(tmp_path: Path) -> None:
    try:
        cluster = PostgresCluster()
    except PostgresMissing as e:
        pytest.skip(str(e))
    try:
        author = Author.create(tmp_path / "author")
        (tmp_path / "admin.token").write_text(ADMIN + "\n")
        metrics_port = free_port()
        argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
                "--admin-token-file", str(tmp_path / "admin.token"),
                "--db", cluster.tracker_database(), "--metrics-port", str(metrics_port)]

        def names() -> set[str]:
            scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30)
            assert scraped.status_code == 200, scraped.text
            return {name for name, _ in samples(scraped.text)}

        with serving(argv, timeout=60) as server:
            made = httpx.post(f"{server.url}/api/v1/devices", json={"name": "r"}, timeout=30,
                              headers={"Authorization": f"Bearer {ADMIN}"})
            assert made.status_code == 201, made.text
            assert {"suitkit_devices", "suitkit_notices_total"} <= names()
            assert httpx.get(f"{server.url}/healthz", timeout=30).json() == {"status": "ok"}
            first = ready(server.url)
            assert first.status_code == 200, first.text
            assert first.json() == {"status": "ready"}
            cluster.halt()
            wait_for("/readyz to say 503 with PostgreSQL stopped",
                     lambda: ready(server.url).status_code == 503)
            down = ready(server.url).json()
            assert down["status"] == "not ready"
            assert down["problems"][0].startswith("the tracker database does not answer: "), down
            # the process lives: /healthz is not /readyz
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
            # /metrics still answers: the fleet's families are left out, the others are there
            during = names()
            assert "suitkit_devices" not in during
            assert {"suitkit_notices_total", "suitkit_http_requests_total"} <= during
            cluster.start()
            wait_for("/readyz to say 200 again with PostgreSQL started",
                     lambda: ready(server.url).status_code == 200)
            assert ready(server.url).json() == {"status": "ready"}
            # (the test cluster runs without fsync: the device made before the crash may be
            # gone, so one more is made)
            again = httpx.post(f"{server.url}/api/v1/devices", json={"name": "r2"}, timeout=30,
                               headers={"Authorization": f"Bearer {ADMIN}"})
            assert again.status_code == 201, again.text
            assert "suitkit_devices" in names()
    finally:
        cluster.stop()


def test_readyz_is_false_on_an_old_schema_and_a_read_only_data_directory(
        tmp_path: Path) -> None:
    from suitkit.cli.notices import schema_problem
    from suitkit.tracker.store import downgrade_schema

    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    data = tmp_path / "data"
    argv = ["--data", str(data), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token")]
    with serving(argv, timeout=60) as server:
        assert ready(server.url).status_code == 200
        with read_only(data / "tmp", data / "releases"):
            wait_for("/readyz to say 503 with the data directory read-only",
                     lambda: ready(server.url).status_code == 503)
            problems = ready(server.url).json()["problems"]
            assert problems[0].startswith(f"the data directory {data} is not writable"), problems
        wait_for("/readyz to say 200 with the data directory writable again",
                 lambda: ready(server.url).status_code == 200)
        engine = create_engine(f"sqlite:///{data / 'tracker.db'}")
        try:
            downgrade_schema(engine, "-1")  # what an older replica's database would be
            problem = schema_problem(engine)
        finally:
            engine.dispose()
        assert problem is not None and problem.endswith(": run suitkit db upgrade"), problem
        wait_for("/readyz to say 503 on an old schema",
                 lambda: ready(server.url).status_code == 503)
        assert ready(server.url).json()["problems"] == [problem]


def test_metrics_on_their_own_listener_parsed_and_moving(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "upload.token").write_text("metrics-upload-token\n")
    metrics_port = free_port()
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--upload-token-file", str(tmp_path / "upload.token"),
            "--metrics-port", str(metrics_port)]
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    with serving(argv, timeout=60) as server:
        # /metrics is not public: only on its listener, which serves nothing else
        assert httpx.get(f"{server.url}/metrics", timeout=30).status_code == 404
        assert httpx.get(f"{metrics_url}/api/v1/releases", timeout=30).status_code == 404
        assert httpx.get(f"{metrics_url}/healthz", timeout=30).status_code == 200
        assert httpx.get(f"{metrics_url}/readyz", timeout=30).status_code == 200
        before = samples(httpx.get(f"{metrics_url}/metrics", timeout=30).text)
        envelope, image = author.release(1, "metrics", size=5000,
                                         uri="https://fw.example/m.bin")
        stored = httpx.post(f"{server.url}/api/v1/releases", timeout=30,
                            headers={"Authorization": "Bearer metrics-upload-token"},
                            files=[("envelope", ("e.suit", envelope)),
                                   ("image-0", ("m.bin", image))])
        assert stored.status_code == 201, stored.text
        firmware = stored.json()["components"][0]["url"]
        for _ in range(3):
            assert httpx.get(f"{server.url}{firmware}", timeout=30).content == image
        assert httpx.get(f"{server.url}/firmware/{'0' * 64}", timeout=30).status_code == 404
        answer = httpx.get(f"{metrics_url}/metrics", timeout=30)
        assert answer.headers["content-type"].startswith("text/plain")
        after = samples(answer.text)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = "/firmware/{digest}"
    assert moved("suitkit_http_requests_total", route=route, method="GET", status="200") == 3
    assert moved("suitkit_http_requests_total", route=route, method="GET", status="404") == 1
    assert moved("suitkit_http_requests_total", route="/api/v1/releases", method="POST",
                 status="201") == 1
    assert moved("suitkit_http_request_duration_seconds_count", route=route, method="GET") == 4
    assert moved("suitkit_downloads_total", kind="firmware") == 3
    assert moved("suitkit_download_bytes_total", kind="firmware") == 3 * len(image)
    assert moved("suitkit_upload_bytes_total") > len(image) + len(envelope)
    # the raw path of a request never becomes a label (a client cannot make series)
    assert not any("0" * 64 in str(labels) for _, labels in after)


def test_fleet_series_move_during_a_campaign(tmp_path: Path) -> None:
    """Devices by state, campaigns by status, campaign members by state, notices and push
    clients: present, and moving as a campaign runs (its devices report over HTTP)."""
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    metrics_port = free_port()
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token"),
            "--metrics-port", str(metrics_port)]
    admin = {"Authorization": f"Bearer {ADMIN}"}

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        answer = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30)
        assert answer.status_code == 200, answer.text
        return samples(answer.text)

    def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
              **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    with serving(argv, timeout=60) as server, httpx.Client(base_url=server.url,
                                                           timeout=30) as client:
        tokens = {}
        for name in ("alice", "bob"):
            made = client.post("/api/v1/tokens", headers=admin,
                               json={"name": name, "role": "operator"})
            assert made.status_code == 201, made.text
            tokens[name] = {"Authorization": f"Bearer {made.json()['token']}"}
        envelope, image = author.release(2, "fleet", size=3000, uri="https://fw.example/f.bin")
        stored = client.post("/api/v1/releases", headers=admin,
                             files=[("envelope", ("e.suit", envelope)),
                                    ("image-0", ("f.bin", image))])
        assert stored.status_code == 201, stored.text
        devices = []
        for _ in range(4):
            made = client.post("/api/v1/devices", json={"name": "m"}, headers=admin)
            assert made.status_code == 201, made.text
            doc = made.json()
            put = client.put(f"/api/v1/devices/{doc['id']}/tags", json={"tags": ["metrics"]},
                             headers=tokens["alice"])
            assert put.status_code == 200, put.text
            devices.append(doc)
        before = scrape()
        assert value(before, "suitkit_devices", state="registered") == 4
        made = client.post("/api/v1/campaigns", headers=tokens["alice"],
                           json={"name": "metrics rollout", "release": stored.json()["id"],
                                 "target": {"tags": ["metrics"]}})
        assert made.status_code == 201, made.text
        cid = made.json()["id"]
        assert client.post(f"/api/v1/campaigns/{cid}/approve",
                           headers=tokens["bob"]).status_code == 200
        started = client.post(f"/api/v1/campaigns/{cid}/start", headers=tokens["bob"])
        assert started.status_code == 200, started.text
        running = scrape()
        assert value(running, "suitkit_campaigns", status="running") == 1
        assert value(running, "suitkit_campaign_devices", campaign=cid, state="notified") == 4
        assert value(running, "suitkit_devices", state="notified") == 4
        assert (value(running, "suitkit_notices_total")
                >= value(before, "suitkit_notices_total") + 4)
        # a device waiting in a long-poll is a connected push client meanwhile
        # (after its current serial: a cursor above it is answered at once, not waited on)
        first = httpx.get(f"{server.url}/api/v1/devices/{devices[0]['id']}/notifications"
                          "?wait=10&after=0", timeout=60,
                          headers={"Authorization": f"Bearer {devices[0]['token']}"})
        assert first.status_code == 200, first.text
        serial = first.json()["serial"]
        polled: list[int] = []
        poll = threading.Thread(target=lambda: polled.append(httpx.get(
            f"{server.url}/api/v1/devices/{devices[0]['id']}/notifications?wait=10"
            f"&after={serial}", timeout=60,
            headers={"Authorization": f"Bearer {devices[0]['token']}"}).status_code))
        poll.start()
        try:
            wait_for("a push client counted",
                     lambda: value(scrape(), "suitkit_push_clients", transport="longpoll") == 1)
        finally:
            poll.join(60)
        assert polled == [204]
        assert value(scrape(), "suitkit_push_clients", transport="longpoll") == 0
        for device in devices:
            auth = {"Authorization": f"Bearer {device['token']}"}
            assert client.get(f"/api/v1/devices/{device['id']}/update",
                              headers=auth).status_code == 200
            for state in ("downloading", "downloaded", "installing", "rebooting", "succeeded"):
                sent = client.post(f"/api/v1/devices/{device['id']}/events", headers=auth,
                                   json={"state": state, "detail": ""})
                assert sent.status_code == 201, sent.text
        wait_for("the campaign to complete", lambda: client.get(
            f"/api/v1/campaigns/{cid}", headers=tokens["alice"]).json()["status"] == "completed")
        after = scrape()
    assert value(after, "suitkit_devices", state="succeeded") == 4
    assert value(after, "suitkit_devices", state="notified") == 0
    assert value(after, "suitkit_campaigns", status="completed") == 1
    assert value(after, "suitkit_campaign_devices", campaign=cid, state="succeeded") == 4
    assert value(after, "suitkit_push_clients", transport="longpoll") == 0
    assert ("suitkit_db_pool_connections", (("state", "checked_out"),)) in after
    assert ("suitkit_db_pool_connections", (("state", "idle"),)) in after
    checkins = ("suitkit_http_requests_total", (("method", "GET"),
                ("route", "/api/v1/devices/{device_id}/update"), ("status", "200")))
    assert after[checkins] - before.get(checkins, 0.0) == 4
