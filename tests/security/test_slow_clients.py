"""Slow, idle and vanished clients against a real ``suitkit serve`` (issue #11 items 6, 11c, 11d).

- A thousand connections that send nothing, and connections that trickle a request head, no
  longer make the server answer 503 to everyone: check-ins, a download and an operator request
  succeed meanwhile, and the server closes those connections after its head timeout.
- Push connections (long-polls, SSE) are capped per device (429) and in total (503), both with
  ``Retry-After``, apart from ordinary requests: a push fleet at its cap blocks nobody else.
- A long-poll whose client went away gives its device's slot back at once.
- A client that disconnects in the middle of a request body is at most one quiet log line.

The server is a child process (its own file descriptors and GIL); every socket the test opens
is closed in a ``finally``; every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from device.device_kit import Author
from serve_kit import Served, serving

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

ADMIN = "slow-clients-admin-token"
HEAD_TIMEOUT = 3.0
LIMIT = 8  # --limit-concurrency: ordinary requests in progress (fewer than MAX_PUSH)
MAX_PUSH = 12  # --max-push: long-polls and streams of all devices
PER_DEVICE = 4  # the push router's default per-device cap
IDLE = 1100
EVENT_STREAM = "text/event-stream"
PROMPT = 10.0  # seconds within which a request counts as served "promptly" on a busy machine


@dataclass
class Site:
    served: Served
    port: int
    firmware: str
    devices: list[dict[str, Any]]

    @property
    def url(self) -> str:
        return self.served.url


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("slow-clients")
    author = Author.create(tmp / "author")
    (tmp / "admin.token").write_text(ADMIN + "\n")
    argv = ["--data", str(tmp / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp / "admin.token"), "--head-timeout", str(HEAD_TIMEOUT),
            "--limit-concurrency", str(LIMIT), "--max-push", str(MAX_PUSH)]
    with serving(argv, timeout=30) as served:
        with httpx.Client(base_url=served.url, timeout=30) as client:
            envelope, image = author.release(1, "slow", size=100_000,
                                             uri="https://fw.example/app.bin")
            stored = client.post("/api/v1/releases", headers=admin(), files=[
                ("envelope", ("e.suit", envelope)), ("image-0", ("app.bin", image))])
            assert stored.status_code == 201, stored.text
            devices = []
            for n in range(MAX_PUSH // PER_DEVICE + 2):
                made = client.post("/api/v1/devices", json={"name": f"d{n}"}, headers=admin())
                assert made.status_code == 201, made.text
                devices.append(made.json())
        yield Site(served, int(served.url.rsplit(":", 1)[1]),
                   stored.json()["components"][0]["url"], devices)


def device_auth(device: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {device['token']}"}


def everyone_is_served(site: Site) -> None:
    """A check-in of each device, a download and an operator request, each within PROMPT."""
    with httpx.Client(base_url=site.url, timeout=PROMPT) as client:
        for device in site.devices:
            started = time.monotonic()
            answer = client.get(f"/api/v1/devices/{device['id']}/update",
                                headers=device_auth(device))
            assert answer.status_code == 204, (answer.status_code, answer.text)
            assert time.monotonic() - started < PROMPT
        download = client.get(site.firmware)
        assert download.status_code == 200 and len(download.content) == 100_000
        operator = client.get("/api/v1/devices", headers=admin())
        assert operator.status_code == 200, operator.text


def open_sockets(site: Site, count: int) -> list[socket.socket]:
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", site.port), timeout=30))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (EOF or reset), without blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_closed(sockets: list[socket.socket], timeout: float, what: str,
                trickle: tuple[socket.socket, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    open_ = list(sockets)
    while open_:
        for sock in trickle:  # slow-header clients keep sending a byte now and then
            with contextlib.suppress(OSError):
                sock.send(b"a")
        open_ = [s for s in open_ if not closed_by_server(s)]
        assert time.monotonic() < deadline, \
            f"{len(open_)} of {len(sockets)} {what} still open after {timeout} s"
        time.sleep(0.5)


@pytest.fixture
def many_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < IDLE + 500:
        if hard != resource.RLIM_INFINITY and hard < IDLE + 500:
            pytest.skip(f"the hard limit of open files ({hard}) is below {IDLE + 500}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (IDLE + 500, hard))


def test_idle_and_slow_header_connections_starve_nobody_and_are_closed(
        site: Site, many_files: None) -> None:
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        idle = open_sockets(site, IDLE)
        slow = open_sockets(site, 50)
        for sock in slow:
            sock.sendall(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        everyone_is_served(site)
        assert time.monotonic() - started < HEAD_TIMEOUT + PROMPT
        # closed by the server after the head timeout, the trickling ones too
        wait_closed(idle, HEAD_TIMEOUT + 30, "idle connections")
        wait_closed(slow, HEAD_TIMEOUT + 30, "slow-header connections", trickle=tuple(slow))
        everyone_is_served(site)
    finally:
        for sock in idle + slow:
            sock.close()


def long_poll(site: Site, device: dict[str, Any], wait: int = 60,
              accept: str = "application/json") -> socket.socket:
    """A long-poll (or an event stream) sent on a raw socket and left waiting (no thread per
    request); sent again if the server answers at once (a burst may meet the bound on requests
    in progress while credentials are checked: 503 with Retry-After)."""
    deadline = time.monotonic() + 30
    while True:
        sock = socket.create_connection(("127.0.0.1", site.port), timeout=30)
        sock.sendall(f"GET /api/v1/devices/{device['id']}/notifications?wait={wait} "
                     f"HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n"
                     f"Authorization: Bearer {device['token']}\r\n\r\n".encode())
        answered, _, _ = select.select([sock], [], [], 0.5)
        if not answered or accept == EVENT_STREAM:  # held (a stream answers at once)
            return sock
        head = sock.recv(4096)
        sock.close()
        assert time.monotonic() < deadline, f"no long-poll held within 30 s: {head[:200]!r}"
        time.sleep(0.2)


def poll_now(site: Site, device: dict[str, Any]) -> httpx.Response:
    return httpx.get(f"{site.url}/api/v1/devices/{device['id']}/notifications",
                     params={"wait": 0}, headers=device_auth(device), timeout=PROMPT)


def wait_status(site: Site, device: dict[str, Any], status: int, what: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        answer = poll_now(site, device)
        if answer.status_code == status:
            return answer
        assert time.monotonic() < deadline, \
            f"no {status} within 30 s waiting for {what}; last {answer.status_code}"
        time.sleep(0.1)


def test_a_push_fleet_at_its_cap_blocks_no_check_in_download_or_operator(site: Site) -> None:
    held: list[socket.socket] = []
    pushers = site.devices[:MAX_PUSH // PER_DEVICE]
    try:
        for device in pushers:
            held += [long_poll(site, device) for _ in range(PER_DEVICE)]
        for device in pushers:
            busy = wait_status(site, device, 429, f"{PER_DEVICE} long-polls of a device held")
            assert busy.headers["retry-after"].isdigit()
            assert f"at most {PER_DEVICE} notification connections" in busy.json()["error"]
        # the total cap: another device's push is refused, with Retry-After
        outsider = site.devices[-1]
        full = poll_now(site, outsider)
        assert full.status_code == 503, full.text
        assert full.headers["retry-after"].isdigit()
        assert f"({MAX_PUSH})" in full.json()["error"]
        # MAX_PUSH push connections, more than the ordinary limit: nobody else waits
        assert MAX_PUSH > LIMIT
        everyone_is_served(site)
        with httpx.Client(base_url=site.url, timeout=PROMPT) as client:
            answers = [client.get("/api/v1/whoami", headers=admin()) for _ in range(LIMIT)]
        assert {a.status_code for a in answers} == {200}
    finally:
        for sock in held:
            sock.close()
    # the slots come back when the clients go (item 11c)
    for device in pushers:
        wait_status(site, device, 204, "the slots of closed long-polls to be given back")
    # a cap reached is not a fault: no error in the log (a client could flood it otherwise)
    assert " ERROR " not in site.served.log(), site.served.log()[-3000:]


def test_a_long_poll_whose_client_went_away_gives_its_slot_back_at_once(site: Site) -> None:
    device = site.devices[0]
    held = [long_poll(site, device, wait=60) for _ in range(PER_DEVICE)]
    try:
        wait_status(site, device, 429, "all the device's long-polls held")
    finally:
        for sock in held:
            sock.close()
    gone = time.monotonic()
    wait_status(site, device, 204, "the slots of long-polls whose clients went away")
    assert time.monotonic() - gone < 15  # not the 60 s of their wait


def test_a_client_that_disconnects_mid_body_is_one_quiet_line(site: Site) -> None:
    before = site.served.log()
    device = site.devices[0]
    requests = [
        ("POST", "/api/v1/releases", ADMIN, "multipart/form-data; boundary=b", 100_000,
         b"--b\r\nContent-Disposition: form-data; name=\"envelope\"; filename=\"e\"\r\n\r\n"),
        ("PUT", f"/api/v1/devices/{device['id']}/inventory", device["token"],
         "application/json", 50_000, b'{"components": ['),
    ]
    for method, path, token, media, length, start in requests:
        with socket.create_connection(("127.0.0.1", site.port), timeout=30) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
                         f"\r\nContent-Type: {media}\r\nContent-Length: {length}\r\n\r\n".encode()
                         + start)
            time.sleep(2.0)  # the route is reading the body
    deadline = time.monotonic() + 30
    while True:
        new = site.served.log()[len(before):]
        if new.count("went away") >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "Traceback" not in new, new
    assert "ERROR" not in new, new
    lines = [line for line in new.splitlines() if "went away" in line]
    assert len(lines) == 2, new
    assert all(line.split(" ", 3)[2] == "INFO" for line in lines), lines
    everyone_is_served(site)



def test_an_event_stream_whose_client_went_away_gives_its_slot_back(site: Site) -> None:
    device = site.devices[1]
    streams = []
    try:
        for _ in range(PER_DEVICE):
            streams.append(long_poll(site, device, accept=EVENT_STREAM))
        wait_status(site, device, 429, "all the device's event streams held")
    finally:
        for sock in streams:
            sock.close()
    gone = time.monotonic()
    wait_status(site, device, 204, "the slots of event streams whose clients went away")
    assert time.monotonic() - gone < 15
