"""``server.guard``: what a slow client can hold, on a real uvicorn with short timeouts.

Siblings of the idle-connection attack (issue #11 item 6): a body that stops arriving, a
response nobody reads, more connections than the cap (the ones idle before their request
head are evicted first; a request in progress never is), more uploads at once than the
server spools (``ServerConfig.max_uploads``), and downloads read slowly on purpose, which are
counted apart from ordinary requests (``max_downloads``), so they starve no check-in.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from device.device_kit import Author

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from suitkit.core.verify import TrustAnchors  # noqa: E402
from suitkit.server.app import ServerConfig, create_app  # noqa: E402
from suitkit.server.background import UVICORN_OPTIONS, listening_socket  # noqa: E402
from suitkit.server.guard import Guards, guarded_protocol  # noqa: E402

TOKEN = "guard-upload-token"
CAP = 24
MAX_DOWNLOADS = 3
BIG = 16 * 1024 * 1024
GUARDS = Guards(head_timeout=120.0, body_timeout=2.0, send_timeout=2.0, max_connections=CAP)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, str]]:
    """(URL, port, URL of a 16 MiB firmware blob)."""
    tmp = tmp_path_factory.mktemp("guard")
    author = Author.create(tmp / "author")
    config = ServerConfig(data_dir=tmp / "data", upload_token=TOKEN, max_uploads=1,
                          max_requests=2, max_downloads=MAX_DOWNLOADS,
                          anchors=TrustAnchors.of(author.key.public_key()))
    sock = listening_socket()
    port = sock.getsockname()[1]
    options = {**UVICORN_OPTIONS, "http": guarded_protocol(GUARDS)}
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning",
                                           lifespan="off", **options))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        envelope, image = author.release(1, "big", size=BIG, uri="https://fw.example/a.bin")
        stored = httpx.post(f"{url}/api/v1/releases", timeout=60,
                            headers={"Authorization": f"Bearer {TOKEN}"},
                            files=[("envelope", ("e", envelope)), ("image-0", ("a", image))])
        assert stored.status_code == 201, stored.text
        yield url, port, url + stored.json()["components"][0]["url"]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def closed_within(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sent before it closed the connection; fails after ``timeout``."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"the server kept the connection over {timeout} s"
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"the server kept the connection over {timeout} s") from None
        if not chunk:
            return received
        received += chunk


def test_a_body_that_stops_arriving_is_cut_off(served: tuple[str, int, str]) -> None:
    url, port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/releases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + TOKEN.encode() + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\n")
        started = time.monotonic()
        closed_within(sock, GUARDS.body_timeout + 20)
        assert time.monotonic() - started >= GUARDS.body_timeout - 0.5
    assert httpx.get(f"{url}/api/v1/releases", timeout=30).status_code == 200


def test_a_response_nobody_reads_is_aborted(served: tuple[str, int, str]) -> None:
    url, port, firmware = served
    path = firmware.removeprefix(url)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(GUARDS.send_timeout + 4)  # not reading: the server's buffer stays full
        received = closed_within(sock, 30)
    assert len(received) < BIG, "the whole 16 MiB arrived: the response was not aborted"
    assert httpx.get(f"{url}/api/v1/releases", timeout=30).status_code == 200


def test_beyond_the_cap_idle_connections_are_evicted_first(served: tuple[str, int, str]
                                                           ) -> None:
    url, port, firmware = served
    idle: list[socket.socket] = []
    try:
        for _ in range(CAP + 8):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        time.sleep(0.5)
        # a real request still gets through at once: it evicts the oldest idle connection
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{url}/api/v1/releases").status_code == 200
            assert client.head(firmware).status_code == 200
        oldest = idle[0]
        oldest.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert oldest.recv(1) == b"", "the oldest idle connection was not evicted"
    finally:
        for sock in idle:
            sock.close()


def test_uploads_beyond_the_cap_wait_their_turn(served: tuple[str, int, str]) -> None:
    """Each upload may spool its whole body to a temporary file: at most ``max_uploads`` (1
    here) at once, a 503 with Retry-After for the next one, which then goes through."""
    url, port, firmware = served
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall(b"POST /api/v1/releases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + TOKEN.encode() + b"\r\nContent-Type: multipart/form-data; boundary=b"
                     b"\r\nContent-Length: 100000\r\n\r\n--b\r\n")
        deadline = time.monotonic() + 30
        while True:  # until the slow upload holds the one place
            busy = httpx.post(f"{url}/api/v1/releases", headers=headers, timeout=30,
                              files=[("envelope", ("e", b"x"))])
            if busy.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"] == "5"
        assert busy.json()["error"] == ("too many uploads at once (at most 1); try again "
                                       "shortly")
    deadline = time.monotonic() + 30
    while True:  # the place is given back once that client is gone
        after = httpx.post(f"{url}/api/v1/releases", headers=headers, timeout=30,
                           files=[("envelope", ("e", b"x"))])
        if after.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after.status_code == 400, after.text  # read and refused: not a SUIT envelope
    assert httpx.head(firmware, timeout=30).status_code == 200


def test_downloads_read_slowly_starve_no_other_request(served: tuple[str, int, str]) -> None:
    """Downloads nobody reads (until the send timeout aborts them) fill the download places,
    more than the two ordinary request places of this server, and other requests are still
    served; one more download is a 503 with Retry-After."""
    url, port, firmware = served
    path = firmware.removeprefix(url)
    stalled: list[socket.socket] = []
    try:
        for _ in range(MAX_DOWNLOADS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stalled.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        deadline = time.monotonic() + 30
        while True:  # until the stalled downloads hold every download place
            extra = httpx.get(firmware, timeout=30, headers={"Range": "bytes=0-9"})
            if extra.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert extra.status_code == 503, extra.status_code
        assert extra.headers["retry-after"] == "5"
        assert "too many downloads at once (at most 3)" in extra.json()["error"]
        with httpx.Client(timeout=10) as client:
            for _ in range(5):
                assert client.get(f"{url}/api/v1/releases").status_code == 200
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 30
    while httpx.head(firmware, timeout=30).status_code == 503:  # the places come back
        assert time.monotonic() < deadline, "download places not given back within 30 s"
        time.sleep(0.1)
