"""``suitkit serve`` killed with SIGKILL mid-upload (and mid-registration), then restarted on the
same data directory, loses and corrupts nothing (issue #4).

The server runs as a real process. A release of several MiB is uploaded with a request body that
the client sends in pieces and then holds back, so the kill lands at a chosen point: in the
middle of the body, right after its last byte, or while the server writes the blob. After the
restart: every release stored before is intact (exact bytes, digests match), the interrupted one
is either absent or complete and valid, a release whose upload was acknowledged is there, no
temporary file is left in the data directory or in the server's TMPDIR, every blob file is
named by the SHA-256 of its bytes, and the interrupted release uploads again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from serve_kit import READY, start_process, stop_process

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]
TOKEN = "sigkill-upload-token"
ADMIN = "sigkill-admin-token"
IMAGE_SIZE = 4 * 1024 * 1024
PIECE = 128 * 1024
WAIT = 30.0  # bound on every wait (start, kill, a request); generous for a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Server:
    """``suitkit serve`` as a process on ``data``; restartable, killable."""

    root: Path
    author: Author
    tracker: bool = False
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    starts: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tmpdir(self) -> Path:
        return self.root / "server-tmp"  # the server's TMPDIR (multipart spool files)

    def start(self) -> None:
        assert self.process is None
        self.tmpdir.mkdir(exist_ok=True)
        for attempt in range(5):  # a free port may be taken between the probe and the bind
            if self._start(free_port()):
                return
            log = self.log()
            self.stop()
            assert "address already in use" in log.lower() and attempt < 4, (
                f"suitkit serve exited: {log}")

    def _start(self, port: int) -> bool:
        """Start on ``port``; True once it answers, False if it exited first."""
        args = [*SUITKIT, "serve", "--data", str(self.data), "--author-anchor",
                str(self.author.anchor), "--port", str(port), "--upload-token-file",
                str(self.root / "upload.token")]
        if self.tracker:
            args += ["--admin-token-file", str(self.root / "admin.token")]
        self.starts += 1
        with (self.root / f"server-{self.starts}.log").open("wb") as log:
            self.process = start_process(args, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TMPDIR": str(self.tmpdir)})
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY  # the fixture stops it if this fails
        while self.process.poll() is None:
            try:
                httpx.get(f"{self.url}/api/v1/releases", timeout=5)
                return True  # it answers (200, or 401 where the tracker guards the listing)
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (
                f"suitkit serve did not answer GET {self.url}/api/v1/releases within "
                f"{READY} s: {self.log()}")
            time.sleep(0.05)
        return False

    def log(self) -> str:
        return (self.root / f"server-{self.starts}.log").read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=WAIT)
        assert self.process.returncode == -signal.SIGKILL
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, WAIT)  # by pid and process group, SIGKILL after WAIT
        self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "upload.token").write_text(TOKEN + "\n")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    running = Server(tmp_path, Author.create(tmp_path / "author"))
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Release:
    envelope: bytes
    image: bytes

    def request(self, url: str) -> tuple[bytes, dict[str, str]]:
        """The multipart upload as raw body bytes and headers (to send at our own pace)."""
        files = [("envelope", ("release.suit", self.envelope, "application/suit-envelope+cose")),
                 ("image-0", ("app.bin", self.image, "application/octet-stream"))]
        request = httpx.Request("POST", f"{url}/api/v1/releases", files=files)
        body = request.read()
        return body, {"Content-Type": request.headers["Content-Type"],
                      "Content-Length": str(len(body)), "Authorization": f"Bearer {TOKEN}"}


def make_release(author: Author, sequence: int, size: int = IMAGE_SIZE) -> Release:
    envelope, image = author.release(sequence, f"sigkill-{sequence}", size=size,
                                     uri=f"https://fw.example.com/{sequence}.bin")
    return Release(envelope, image)


def upload(url: str, release: Release) -> httpx.Response:
    body, headers = release.request(url)
    return httpx.post(f"{url}/api/v1/releases", content=body, headers=headers, timeout=WAIT)


@dataclass
class SlowUpload:
    """An upload on a thread whose body is sent in pieces and held back after ``hold_at``
    bytes until ``go`` is set (or the connection breaks)."""

    url: str
    release: Release
    hold_at: int | None
    sent: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    all_sent: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    response: httpx.Response | None = None
    error: BaseException | None = None

    def start(self) -> SlowUpload:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _body(self, body: bytes) -> Iterator[bytes]:
        for start in range(0, len(body), PIECE):
            if self.hold_at is not None and start >= self.hold_at and not self.go.is_set():
                self.held.set()
                self.go.wait(WAIT)
            piece = body[start:start + PIECE]
            yield piece
            self.sent += len(piece)
            time.sleep(0.001)  # slowly: the server reads each piece as it comes
        self.all_sent.set()

    def _run(self) -> None:
        body, headers = self.release.request(self.url)
        try:
            self.response = httpx.post(f"{self.url}/api/v1/releases",
                                       content=self._body(body), headers=headers, timeout=WAIT)
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.done.set()


def wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(WAIT), f"{what} did not happen within {WAIT} s"


def check_store(server: Server, intact: list[Release], interrupted: Release | None
                ) -> str | None:
    """Assert the data directory and what the restarted server serves are whole; return
    the state of ``interrupted``: None (absent) or its release id (complete)."""
    # Nothing half-written is left in the data directory or the server's TMPDIR.
    assert sorted(p.name for p in (server.data / "tmp").iterdir()) == []
    assert sorted(p.name for p in server.tmpdir.iterdir()) == []
    for blob in (server.data / "blobs").rglob("*"):
        if blob.is_file():
            assert sha(blob.read_bytes()) == blob.name, f"blob {blob} does not match its name"
    with httpx.Client(base_url=server.url, timeout=WAIT) as client:
        listed = client.get("/api/v1/releases")
        assert listed.status_code == 200
        releases = {r["envelope"]["sha256"]: r for r in listed.json()["releases"]}
        for doc in releases.values():  # every listed release is complete and valid
            assert sha(client.get(doc["envelope"]["url"]).content) == doc["envelope"]["sha256"]
            for component in doc["components"]:
                got = client.get(component["url"]).content
                assert len(got) == component["size"]
                assert sha(got) == component["blob"] == component["digest"]
        for release in intact:
            doc = releases.get(sha(release.envelope))
            assert doc is not None, "a release stored before the kill is gone"
            assert client.get(doc["envelope"]["url"]).content == release.envelope
            assert client.get(doc["components"][0]["url"]).content == release.image
        if interrupted is None:
            return None
        doc = releases.get(sha(interrupted.envelope))
        if doc is None:
            return None
        assert client.get(doc["components"][0]["url"]).content == interrupted.image
        return str(doc["id"])


def kill_and_check(server: Server, stored: list[Release], release: Release,
                   upload_thread: SlowUpload) -> None:
    server.kill()
    upload_thread.go.set()  # the held body goes on, into a closed connection
    wait_for(upload_thread.done, "the interrupted upload's end")
    acknowledged = upload_thread.response is not None and upload_thread.response.status_code in (
        200, 201)
    server.start()
    present = check_store(server, stored, release)
    if acknowledged:
        assert present is not None, "an acknowledged upload is gone after the restart"
    # The interrupted release uploads again (201 if it was lost, 200 if it made it).
    again = upload(server.url, release)
    assert again.status_code == (201 if present is None else 200), again.text
    blob = again.json()["components"][0]["url"]
    assert httpx.get(f"{server.url}{blob}", timeout=WAIT).content == release.image


KILL_POINTS = {"30% of the body": 0.3, "97% of the body": 0.97, "the last byte": None,
               "a blob write": None, "20 ms after the body": None}


@pytest.mark.parametrize("kill_at", list(KILL_POINTS))
def test_sigkill_during_an_upload(server: Server, kill_at: str) -> None:
    server.start()
    stored = [make_release(server.author, 1, size=1024 * 1024)]
    assert upload(server.url, stored[0]).status_code == 201
    release = make_release(server.author, 2)
    body_size = len(release.request(server.url)[0])
    fraction = KILL_POINTS[kill_at]
    slow = SlowUpload(server.url, release,
                      hold_at=None if fraction is None else int(body_size * fraction)).start()
    if fraction is not None:
        wait_for(slow.held, f"{kill_at} sent")
        assert slow.sent < body_size
    elif kill_at == "a blob write":
        # Poll the store's tmp/ so that the kill lands while put_blob writes (best effort:
        # if the upload finishes first, it must be complete after the restart).
        tmp = server.data / "tmp"
        deadline = time.monotonic() + WAIT
        while not any(tmp.iterdir()) and not slow.done.is_set():
            assert time.monotonic() < deadline, "the upload neither wrote a blob nor finished"
            time.sleep(0.0005)
    else:
        wait_for(slow.all_sent, "the whole body sent")
        if kill_at == "20 ms after the body":
            slow.done.wait(0.02)
    kill_and_check(server, stored, release, slow)


WRITER = """
import sys, time
from pathlib import Path
from suitkit.server.store import BlobStore

def chunks():
    yield b"x" * 65536
    Path(sys.argv[2]).write_text("writing")
    time.sleep(60)
    yield b"never"

BlobStore(Path(sys.argv[1])).put_blob(chunks())
"""


def test_a_killed_blob_writer_leaves_nothing_once_the_store_opens(tmp_path: Path) -> None:
    """put_blob killed mid-write leaves its temporary file; the next BlobStore removes it,
    but never the file of a writer that is still alive (it holds a lock on it)."""
    from suitkit.server.store import BlobStore

    data, ready = tmp_path / "data", tmp_path / "ready"
    writer = start_process([sys.executable, "-c", WRITER, str(data), str(ready)])
    try:
        deadline = time.monotonic() + WAIT
        while not ready.exists():
            assert writer.poll() is None, "the writer died before writing"
            assert time.monotonic() < deadline, "the writer did not start writing in time"
            time.sleep(0.01)
        [partial] = (data / "tmp").iterdir()
        assert partial.name.startswith("blob.")
        BlobStore(data)  # another process opens the store: the living writer's file stays
        assert partial.exists()
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=WAIT)
    finally:
        stop_process(writer, WAIT)
    assert partial.exists()  # what the crash left
    (data / "tmp" / "not-ours.txt").write_bytes(b"left alone")
    store = BlobStore(data)
    assert sorted(p.name for p in (data / "tmp").iterdir()) == ["not-ours.txt"]
    assert list((data / "blobs").rglob("*")) == []
    assert store.put_blob(b"x" * 65536) == sha(b"x" * 65536)


def test_sigkill_during_tracker_registrations(server: Server) -> None:
    """Devices are registered in a loop when the server is killed: after the restart the
    database opens and every acknowledged registration is there."""
    server.tracker = True
    admin = {"Authorization": f"Bearer {ADMIN}"}
    acknowledged: list[str] = []
    failed: list[str] = []
    stop = threading.Event()
    server.start()

    def register(url: str = server.url) -> None:
        with httpx.Client(base_url=url, timeout=WAIT, headers=admin) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/api/v1/devices",
                                         json={"name": f"dev-{len(acknowledged)}"})
                except httpx.TransportError:
                    failed.append("transport error")
                    return  # the server is gone: this one was not acknowledged
                if answer.status_code != 201:
                    failed.append(f"HTTP {answer.status_code}: {answer.text}")
                    return
                acknowledged.append(answer.json()["id"])

    worker = threading.Thread(target=register, daemon=True)
    worker.start()
    deadline = time.monotonic() + WAIT
    while len(acknowledged) < 10:
        assert worker.is_alive(), f"the registration loop stopped early: {failed}"
        assert time.monotonic() < deadline, "10 registrations did not finish in time"
        time.sleep(0.005)
    server.kill()  # while the loop goes on
    stop.set()
    worker.join(WAIT)
    assert not worker.is_alive()
    assert failed in ([], ["transport error"]), failed
    with contextlib.closing(sqlite3.connect(server.data / "tracker.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    server.start()
    listed = httpx.get(f"{server.url}/api/v1/devices", headers=admin, timeout=WAIT)
    assert listed.status_code == 200
    ids = {device["id"] for device in listed.json()["devices"]}
    assert set(acknowledged) <= ids
    assert len(ids) - len(acknowledged) <= 1  # at most the one in flight at the kill
    again = httpx.post(f"{server.url}/api/v1/devices", json={"name": "after"}, headers=admin,
                       timeout=WAIT)
    assert again.status_code == 201
