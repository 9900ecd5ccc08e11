"""Two tracker replicas on one PostgreSQL behind nginx (issue #12, design.md §5): the done-when
test of "many replicas".

Two real ``suitkit serve`` processes (``serve_kit.serving``) share one data directory (the
blobs), one PostgreSQL database (``pg.postgres``) and one mosquitto (``notice_kit``); an nginx
balances them round robin. The test shows, in this order:

- a release uploaded through one replica downloads through the other;
- a notice made on replica A (a deployment) reaches devices held by replica B over SSE,
  long-poll and CoAP (B's own) and over MQTT, each within 2 s; a cursor (``after=<serial>``)
  handed out by B means the same on A;
- a staged campaign (two waves) with push (SSE) and poll devices, every request through the
  balancer, completes, while replica A is SIGKILLed mid-campaign: nothing is left stuck.

Every process is stopped by its pid in a ``finally``; every wait is bounded and says what it
waited for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from device.device_kit import Author, boot, confirm, install, new_device
from e2e.test_modes import FINAL
from notice_kit import MOSQUITTO, mosquitto, wait_until
from pg import PostgresCluster
from serve_kit import Served, serving, start_process, stop_process
from suitkit.device.agent import AgentOptions, AgentResult, run_agent
from suitkit.device.fetch import HttpFetcher
from suitkit.device.listen import CoapSource, LongPollSource, MqttSource, NoticeSource, SseSource

NGINX = "/usr/sbin/nginx"
ADMIN = "admin-token-for-the-replica-test"
UPLOAD = "upload-token-for-the-replica-test"
NOTICE_WITHIN = 2.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def nginx(tmp: Path, upstreams: list[str]) -> Iterator[str]:
    """nginx on a free loopback port, round robin over ``upstreams`` (``http://host:port``),
    unbuffered (SSE), a failed upstream skipped for a while; its URL."""
    if shutil.which(NGINX) is None:
        pytest.skip("install nginx (apt-get install nginx)")
    tmp.mkdir(parents=True, exist_ok=True)
    servers = "".join(f"    server {u.removeprefix('http://')} max_fails=1 fail_timeout=10s;\n"
                      for u in upstreams)
    conf, log = tmp / "nginx.conf", tmp / "error.log"
    for attempt in range(5):
        port = free_port()
        conf.write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\nerror_log {log};\n"
            "events { worker_connections 1024; }\n"
            "http {\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {tmp}/{kind};\n"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  upstream replicas {{\n{servers}  }}\n"
            f"  server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 64m;\n"
            "    location / {\n      proxy_pass http://replicas;\n"
            "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
            "      proxy_set_header Host $http_host;\n      proxy_buffering off;\n"
            "      proxy_request_buffering off;\n      proxy_read_timeout 120s;\n"
            "      proxy_connect_timeout 2s;\n      proxy_next_upstream error timeout;\n"
            "    }\n  }\n}\n")
        with (tmp / "stderr").open("wb") as err:
            proc = start_process([NGINX, "-p", str(tmp), "-c", str(conf)], stdout=err,
                                 stderr=err)
        try:
            def up(port: int = port, proc: Any = proc) -> bool:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                            1):
                    return True
                return proc.poll() is not None
            wait_until(up, 60.0, f"nginx to accept connections on 127.0.0.1:{port}")
        except BaseException:
            stop_process(proc)
            raise
        if proc.poll() is None:
            break
        stop_process(proc)
        text = log.read_text(errors="replace") if log.exists() else ""
        assert "Address already in use" in text and attempt < 4, text
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def first_release(source: NoticeSource, release: str, within: float,
                  since: float | None = None) -> float | None:
    """Seconds from ``since`` (default: now; ``time.monotonic``) until ``source`` hands a
    notice naming ``release``, at most ``within`` from ``since`` (``None``: not within)."""
    started = time.monotonic() if since is None else since
    ends = started + within
    while (left := ends - time.monotonic()) > 0:
        notice = source.get(left)
        if notice is not None and notice.get("release") == release:
            return time.monotonic() - started
    return None


def device_folder(author: Author, folder: Path) -> Path:
    """An mcu device running (confirmed) base release 1."""
    new_device(folder, [author.anchor])
    envelope, _ = author.release(1, "base")
    assert install(folder, envelope).installed
    boot(folder)
    confirm(folder)
    return folder


class Agents:
    """Real device agents in threads, each until a final outcome."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: dict[str, AgentResult] = {}
        self.lines: dict[str, list[str]] = {}
        self.stop = threading.Event()

    def start(self, name: str, folder: Path, url: str, token: str,
              options: AgentOptions) -> None:
        lines = self.lines.setdefault(name, [])

        def run() -> None:
            self.results[name] = run_agent(
                folder, url, token, fetcher=HttpFetcher(timeout=5, deadline=30),
                options=options, say=lines.append, stop=self.stop,
                until=lambda r: r.outcome in FINAL)
        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def saw(self, name: str, text: str) -> bool:
        return any(text in line for line in list(self.lines[name]))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self.threads), "an agent did not stop"


def test_two_replicas_behind_nginx_share_releases_notices_and_campaigns(
        tmp_path: Path, postgres: PostgresCluster) -> None:
    if shutil.which(MOSQUITTO) is None:
        pytest.skip("install mosquitto (apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="install paho-mqtt")
    begun = time.monotonic()
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin").write_text(ADMIN)
    (tmp_path / "upload").write_text(UPLOAD)
    db = postgres.tracker_database()
    with ExitStack() as stack:
        broker = stack.enter_context(mosquitto(tmp_path))
        argv = ["--data", str(tmp_path / "shared"), "--author-anchor", str(author.anchor),
                "--admin-token-file", str(tmp_path / "admin"),
                "--upload-token-file", str(tmp_path / "upload"), "--db", db,
                "--mqtt", f"{broker[0]}:{broker[1]}", "--db-pool-size", "3",
                "--db-max-overflow", "4", "--log-level", "warning"]
        a: Served = stack.enter_context(serving(argv, coap=True))
        b: Served = stack.enter_context(serving(argv, coap=True))
        lb = stack.enter_context(nginx(tmp_path / "nginx", [a.url, b.url]))
        client = stack.enter_context(httpx.Client(timeout=15))

        # ---- a release uploaded through A downloads through B
        envelope, _ = author.release(2, "replicas")
        up = client.post(f"{a.url}/api/v1/releases", headers=auth(UPLOAD), files=[
            ("envelope", ("e.suit", envelope, "application/suit-envelope+cose"))])
        assert up.status_code == 201, up.text
        release = up.json()
        got = client.get(b.url + release["envelope"]["url"])
        assert got.status_code == 200 and got.content == envelope
        # the database is the record of which releases exist (not a replica's disk)
        shown = client.get(f"{b.url}/api/v1/releases/{release['id']}", headers=auth(ADMIN))
        assert shown.status_code == 200 and shown.json()["id"] == release["id"], shown.text
        assert not (tmp_path / "shared" / "releases" / f"{release['id']}.json").exists()
        with psycopg.connect(db.replace("postgresql+psycopg://", "postgresql://")) as pgc:
            assert pgc.execute("SELECT id FROM releases").fetchall() == [(release["id"],)]

        # ---- a notice made on A reaches devices held by B, over each transport
        def register(url: str) -> dict[str, Any]:
            made = client.post(f"{url}/api/v1/devices", json={"name": "r"}, headers=auth(ADMIN))
            assert made.status_code == 201, made.text
            return dict(made.json())

        devs = {kind: register(b.url) for kind in ("probe", "sse", "longpoll", "coap", "mqtt")}
        assert b.coap_port is not None
        sources: dict[str, NoticeSource] = {
            kind: SseSource(b.url, devs[kind]["token"], devs[kind]["id"], backoff=0.1,
                            max_backoff=1.0) for kind in ("probe", "sse")}
        sources["longpoll"] = LongPollSource(b.url, devs["longpoll"]["token"],
                                             devs["longpoll"]["id"], wait=20.0, backoff=0.1,
                                             max_backoff=1.0)
        sources["coap"] = CoapSource(f"coap://127.0.0.1:{b.coap_port}", devs["coap"]["id"],
                                     backoff=0.1, max_backoff=1.0)
        sources["mqtt"] = MqttSource(*broker, devs["mqtt"]["id"], backoff=0.1, max_backoff=1.0)
        for source in sources.values():
            stack.callback(source.close)
            source.start()

        def deploy(url: str, *kinds: str) -> None:
            done = client.post(f"{url}/api/v1/deployments", headers=auth(ADMIN), json={
                "release": release["id"], "devices": [devs[k]["id"] for k in kinds]})
            assert done.status_code == 201, done.text

        # B listens for A's changes: the probe's notice comes through once it does (start-up)
        for kind in ("probe", "sse", "coap"):  # the current notice first: each is connected
            notice = sources[kind].get(60.0)
            assert notice is not None and notice["release"] is None, \
                f"{kind}: no first notice from replica B within 60 s"
        deploy(a.url, "probe")
        assert first_release(sources["probe"], release["id"], 60.0) is not None, \
            "replica B never heard replica A's deployment (60 s)"
        time.sleep(0.5)  # the MQTT subscription and the long-poll are in place
        made = time.monotonic()  # each delay is from before the request to its arrival
        deploy(a.url, "sse", "longpoll", "coap", "mqtt")
        delays = {kind: first_release(sources[kind], release["id"], NOTICE_WITHIN + 1.0, made)
                  for kind in ("sse", "longpoll", "coap", "mqtt")}
        late = {k: d for k, d in delays.items() if d is None or d > NOTICE_WITHIN}
        assert not late, f"notices made on A that B's devices did not get within 2 s: {delays}"

        # the serial B gave is A's too: nothing newer on A (204), and an older cursor is
        # answered at once
        mine = devs["sse"]
        serial = client.get(f"{b.url}/api/v1/devices/{mine['id']}/notifications",
                            params={"wait": 0, "after": 0}, headers=auth(mine["token"]))
        assert serial.status_code == 200, serial.text
        path = f"{a.url}/api/v1/devices/{mine['id']}/notifications"
        assert client.get(path, params={"wait": 0, "after": serial.json()["serial"]},
                          headers=auth(mine["token"])).status_code == 204
        # a cursor of a server before serials were the database's (milliseconds): at once
        old = client.get(path, params={"wait": 20, "after": 1_733_000_000_000},
                         headers=auth(mine["token"]))
        assert old.status_code == 200 and old.json()["serial"] == serial.json()["serial"]

        # ---- a staged campaign through the balancer, replica A SIGKILLed in the middle
        ops = {}
        for name in ("alice", "bob"):
            made = client.post(f"{lb}/api/v1/tokens", headers=auth(ADMIN),
                               json={"name": name, "role": "operator"})
            assert made.status_code == 201, made.text
            ops[name] = made.json()["token"]
        envelope3, _ = author.release(3, "campaign")
        up = client.post(f"{lb}/api/v1/releases", headers=auth(UPLOAD), files=[
            ("envelope", ("e.suit", envelope3, "application/suit-envelope+cose"))])
        assert up.status_code == 201, up.text
        release3 = up.json()
        agents = Agents()
        stack.callback(agents.close)
        fleet: list[str] = []
        for i, mode in enumerate(("push", "poll", "push", "poll")):
            dev = register(lb)
            tagged = client.put(f"{lb}/api/v1/devices/{dev['id']}/tags",
                                json={"tags": ["replicas"]}, headers=auth(ops["alice"]))
            assert tagged.status_code == 200, tagged.text
            folder = device_folder(author, tmp_path / f"dev-{i}")
            agents.start(dev["id"], folder, lb, dev["token"], AgentOptions(
                mode=mode, transport="sse", interval=0.5 if mode == "poll" else 3600.0,
                duration=90.0, backoff=0.1, max_backoff=1.0))
            fleet.append(dev["id"])
        for name in fleet:
            wait_until(lambda n=name: agents.saw(n, "up-to-date: no update assigned"), 60,
                       f"agent {name}'s first run")
        made = client.post(f"{lb}/api/v1/campaigns", headers=auth(ops["alice"]), json={
            "name": "replicas", "release": release3["id"], "target": {"tags": ["replicas"]},
            "waves": [50, 100], "envelope_url": lb + release3["envelope"]["url"]})
        assert made.status_code == 201, made.text
        cid = made.json()["id"]
        for step in ("approve", "start"):
            done = client.post(f"{lb}/api/v1/campaigns/{cid}/{step}", headers=auth(ops["bob"]))
            assert done.status_code == 200, done.text

        def campaign() -> dict[str, Any]:
            got = client.get(f"{lb}/api/v1/campaigns/{cid}", headers=auth(ops["alice"]))
            assert got.status_code == 200, got.text
            return dict(got.json())

        wait_until(lambda: any(s != "pending" for s in
                               (m["state"] for m in campaign()["members"])), 30,
                   "the campaign's first wave to be assigned")
        stop_process_now(a)  # SIGKILL, mid-campaign
        wait_until(lambda: campaign()["status"] == "completed", 60,
                   "the campaign to complete on replica B after replica A was killed")
        doc = campaign()
        assert {m["state"] for m in doc["members"]} == {"succeeded"}, doc
        for name in fleet:
            wait_until(lambda n=name: n in agents.results, 30, f"agent {name} to finish")
            assert agents.results[name].outcome == "succeeded", agents.lines[name][-10:]
        assert b.process.poll() is None, "replica B stopped"
    assert time.monotonic() - begun < 120, "the replica test took over 2 minutes"


def stop_process_now(served: Served) -> None:
    """SIGKILL the replica (no shutdown of any kind)."""
    with contextlib.suppress(ProcessLookupError):
        served.process.kill()
    served.process.wait(30)
