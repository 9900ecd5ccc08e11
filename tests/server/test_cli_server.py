"""``suitkit serve`` and ``suitkit upload`` as a user runs them: two real processes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from serve_kit import SUITKIT, free_port, serving
from suitkit.server.coap import CoapServer
from suitkit.server.store import BlobStore

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Author, Path, int]]:
    author = Author.create(tmp_path / "author")
    token = tmp_path / "upload.token"
    token.write_text("cli-token-42\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--upload-token-file", str(token)]
    with serving(argv, coap=True, timeout=15) as server:
        assert server.coap_port is not None
        yield server.url, author, token, server.coap_port
    assert f"suitkit firmware server on {server.url}/" in server.stdout


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SUITKIT, *args], capture_output=True, text=True, timeout=30,
                          check=False)


def test_serve_and_upload(served: tuple[str, Author, Path, int], tmp_path: Path) -> None:
    url, author, token, coap_port = served
    envelope, image = author.release(1, "cli", size=4000, uri="https://fw.example.com/a.bin")
    (tmp_path / "release.suit").write_bytes(envelope)
    (tmp_path / "app.bin").write_bytes(image)
    done = run("upload", str(tmp_path / "release.suit"), f"0={tmp_path / 'app.bin'}",
               "--server", url, "--token-file", str(token))
    assert done.returncode == 0, done.stderr
    assert "(sequence number 1) stored" in done.stdout
    firmware = next(line.split(": ", 1)[1] for line in done.stdout.splitlines()
                    if line.strip().startswith("component 0:"))
    assert httpx.get(firmware, timeout=5).content == image
    again = run("upload", str(tmp_path / "release.suit"), "--server", url, "--token-file",
                str(token), "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["stored"] is False and doc["sequence_number"] == 1
    assert f"{url}{doc['components'][0]['url']}" == firmware
    # the same blob over CoAP, block-wise, from the same `suitkit serve`
    from suitkit.device.fetch import CoapFetcher

    coap = firmware.replace(url, f"coap://127.0.0.1:{coap_port}")
    assert b"".join(CoapFetcher().fetch(coap, max_bytes=len(image))) == image

    (tmp_path / "bad.bin").write_bytes(image[:-1])
    refused = run("upload", str(tmp_path / "release.suit"), f"0={tmp_path / 'bad.bin'}",
                  "--server", url, "--token-file", str(token))
    assert refused.returncode == 1
    assert refused.stderr.startswith("suitkit: error: upload refused (HTTP 422): ")
    assert "image size mismatch" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    (tmp_path / "wrong.token").write_text("nope")
    denied = run("upload", str(tmp_path / "release.suit"), "--server", url,
                 "--token-file", str(tmp_path / "wrong.token"))
    assert denied.returncode == 1
    assert "HTTP 403" in denied.stderr


def test_upload_to_nothing_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "e.suit").write_bytes(b"\xd8\x6b\xa0")
    (tmp_path / "t").write_text("x")
    done = run("upload", str(tmp_path / "e.suit"), "--server", f"http://127.0.0.1:{free_port()}",
               "--token-file", str(tmp_path / "t"), "--timeout", "2")
    assert done.returncode == 5  # could not reach the server: the same rule in every command
    assert done.stderr.startswith("suitkit: error: cannot reach ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_limit_concurrency_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_text("x")
    done = run("serve", "--data", str(tmp_path / "d"), "--author-anchor", str(tmp_path / "a.pub"),
               "--limit-concurrency", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "suitkit: error: --limit-concurrency must be at least 1")


# ---------------------------------------------------------------------------- start-up and log
# (issue #11 item 15): every start-up problem is one line and exit 2 before anything claims to
# run; the server logs each request and every 500 with its traceback, once, without secrets.


def refused_start(*args: str) -> str:
    """The one error line of a ``suitkit serve`` that must not start (nothing on stdout)."""
    done = run("serve", *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", done.stdout  # nothing claimed to run
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("suitkit: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_serve_port_out_of_range_is_one_line(tmp_path: Path, port: str) -> None:
    author = Author.create(tmp_path / "author")
    line = refused_start("--data", str(tmp_path / "d"), "--author-anchor", str(author.anchor),
                         "--port", port)
    assert line == f"suitkit: error: --port: expected a port number from 1 to 65535, got {port}"


def test_serve_on_a_port_in_use_exits_2_before_saying_it_runs(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused_start("--data", str(tmp_path / "d"), "--author-anchor",
                             str(author.anchor), "--port", str(port))
    assert line == f"suitkit: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_serve_with_a_coap_port_in_use_exits_2_before_saying_it_runs(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        line = refused_start("--data", str(tmp_path / "d"), "--author-anchor",
                             str(author.anchor), "--port", str(free_port()), "--coap-port",
                             str(port))
    assert line == (f"suitkit: error: --coap-port: cannot listen on 127.0.0.1:{port} (UDP): "
                    "Address already in use"), line


def test_serve_on_the_coap_port_of_a_running_coap_server_exits_2(tmp_path: Path) -> None:
    """aiocoap binds with SO_REUSEPORT: a second ``suitkit serve`` on the CoAP port of a running
    one started without an error, and the kernel shared the requests between the two."""
    author = Author.create(tmp_path / "author")
    running = CoapServer(BlobStore(tmp_path / "running"), "127.0.0.1", 0, timeout=30.0)
    running.start()
    try:
        line = refused_start("--data", str(tmp_path / "d"), "--author-anchor",
                             str(author.anchor), "--port", str(free_port()), "--coap-port",
                             str(running.port))
    finally:
        running.stop()
    assert line == (f"suitkit: error: --coap-port: cannot listen on 127.0.0.1:{running.port} "
                    "(UDP): Address already in use"), line


@contextmanager
def read_only(*folders: Path) -> Iterator[None]:
    """The folders made unwritable, even for root (``chattr +i``; ``chmod`` for others)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", *map(str, folders)], check=False).returncode != 0:
            pytest.skip("root, and chattr +i is not available here")
        undo = ["chattr", "-i", *map(str, folders)]
    else:
        for folder in folders:
            folder.chmod(0o555)
        undo = ["chmod", "755", *map(str, folders)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_serve_on_a_read_only_data_directory_exits_2(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    token = tmp_path / "upload.token"
    token.write_text("t0ken\n")
    data = tmp_path / "data"
    for folder in ("blobs", "releases", "tmp"):
        (data / folder).mkdir(parents=True)
    with read_only(data / "releases", data / "tmp"):
        line = refused_start("--data", str(data), "--author-anchor", str(author.anchor),
                             "--upload-token-file", str(token), "--port", str(free_port()))
    assert line.startswith(f"suitkit: error: the data directory {data} is not writable: "), line


def test_serve_with_an_unusable_database_exits_2(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    admin = tmp_path / "admin.token"
    admin.write_text("admin-t0ken\n")
    (tmp_path / "not-a-db").write_text("this is not an SQLite database " * 100)
    line = refused_start("--data", str(tmp_path / "data"), "--author-anchor",
                         str(author.anchor), "--admin-token-file", str(admin),
                         "--db", f"sqlite:///{tmp_path / 'not-a-db'}",
                         "--port", str(free_port()))
    assert "cannot open the tracker database" in line, line


def test_serve_logs_requests_and_each_500_once_without_secrets(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    admin_secret = "admin-secret-never-logged-5f1e"
    (tmp_path / "admin.token").write_text(admin_secret + "\n")
    data = tmp_path / "data"
    argv = ["--data", str(data), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token")]
    admin = {"Authorization": f"Bearer {admin_secret}"}
    with serving(argv, timeout=30) as server:
        device = httpx.post(f"{server.url}/api/v1/devices", json={"name": "d"}, headers=admin,
                            timeout=30).json()
        envelope, image = author.release(1, "log", size=3000, uri="https://fw.example/a.bin")
        with read_only(data / "blobs", data / "tmp"):  # the store fails: a 500
            failed = httpx.post(f"{server.url}/api/v1/releases", headers=admin, timeout=30,
                                files=[("envelope", ("e.suit", envelope)),
                                       ("image-0", ("a.bin", image))])
        assert failed.status_code == 500, failed.text
        assert failed.json()["error"] == "the server could not store the upload"
        checked_in = httpx.get(f"{server.url}/api/v1/devices/{device['id']}/update", timeout=30,
                               headers={"Authorization": f"Bearer {device['token']}"})
        assert checked_in.status_code == 204, checked_in.text  # nothing pending
    log = server.stderr
    assert '"POST /api/v1/devices HTTP/1.1" 201' in log, log
    assert '"POST /api/v1/releases HTTP/1.1" 500' in log, log
    assert f'"GET /api/v1/devices/{device["id"]}/update HTTP/1.1" 204' in log, log
    # the 500: one error line naming the request and the cause, with its traceback, once
    assert log.count("ERROR suitkit.server: POST /api/v1/releases -> 500 the server could not "
                     "store the upload") == 1, log
    assert log.count("Traceback (most recent call last)") == 2, log  # the cause and its wrapper
    assert "cannot store a blob" in log
    for secret in (admin_secret, device["token"], device["secret"]):
        assert secret not in log


def test_serve_log_level_warning_leaves_out_the_access_log(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--log-level", "warning"]
    with serving(argv, timeout=30) as server:
        assert httpx.get(f"{server.url}/api/v1/releases", timeout=30).status_code == 200
    assert "GET /api/v1/releases" not in server.stderr, server.stderr
    bad = refused_start("--data", str(tmp_path / "data"), "--author-anchor",
                        str(author.anchor), "--log-level", "loud")
    assert bad == ("suitkit: error: --log-level: expected one of debug, info, warning, error, "
                   "got 'loud'")


# ---------------------------------------------------------------------------- upload streaming


PEAK = """
import sys
import time
from suitkit.cli.main import main
sys.argv = ["suitkit", *sys.argv[1:]]
try:
    main()
finally:
    with open("/proc/self/status") as status:  # VmHWM: this process image's peak, unlike
        hwm = next(line for line in status if line.startswith("VmHWM:"))  # ru_maxrss
    print(f"peak-rss-kib {hwm.split()[1]}", file=sys.stderr)
"""


def test_upload_streams_the_image_from_disk(tmp_path: Path) -> None:
    """``suitkit upload`` of a 64 MiB image held it in memory several times over (a 150 MiB
    image made the client hold about 500 MB, issue #11 item 18). It is now streamed from the
    file: the client's peak RSS stays far below the image size above what Python itself
    takes, and so does the server's. Not on a terminal, no progress bar is drawn (stderr
    stays empty)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status (Linux) to read the peak RSS")
    author = Author.create(tmp_path / "author")
    size = 64 * 1024 * 1024
    envelope, image = author.release(1, "big", size=size, uri="https://fw.example/app.bin")
    (tmp_path / "release.suit").write_bytes(envelope)
    (tmp_path / "app.bin").write_bytes(image)
    del image
    token = tmp_path / "upload.token"
    token.write_text("stream-token\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--upload-token-file", str(token), "--log-level", "warning"]
    with serving(argv, timeout=30) as server:
        done = subprocess.run(
            [sys.executable, "-c", PEAK, "upload", str(tmp_path / "release.suit"),
             f"0={tmp_path / 'app.bin'}", "--server", server.url, "--token-file", str(token),
             "--timeout", "120"], capture_output=True, text=True, timeout=180, check=False)
        status = Path(f"/proc/{server.process.pid}/status").read_text()
    server_mib = int(next(line for line in status.splitlines()
                          if line.startswith("VmHWM:")).split()[1]) / 1024
    # the server spools file parts to temporary files: it never held the image either
    assert server_mib < 64 + 60, f"the server peaked at {server_mib:.0f} MiB for 64 MiB"
    assert done.returncode == 0, done.stderr
    assert "(sequence number 1) stored" in done.stdout
    *others, peak_line = done.stderr.strip().splitlines()
    assert others == [], done.stderr  # no progress bar off a terminal
    peak_mib = int(peak_line.split()[1]) / 1024
    assert peak_mib < 64 + 40, f"the client peaked at {peak_mib:.0f} MiB for a 64 MiB image"
    stored = (tmp_path / "data" / "blobs").rglob("*")
    assert any(p.is_file() and p.stat().st_size == size for p in stored)


def test_upload_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal (stderr a pseudo-terminal here) the upload draws a Rich progress bar."""
    author = Author.create(tmp_path / "author")
    envelope, image = author.release(1, "tty", size=4 * 1024 * 1024,
                                     uri="https://fw.example/app.bin")
    (tmp_path / "release.suit").write_bytes(envelope)
    (tmp_path / "app.bin").write_bytes(image)
    token = tmp_path / "upload.token"
    token.write_text("tty-token\n")
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--upload-token-file", str(token), "--log-level", "warning"]
    main_fd, terminal_fd = pty.openpty()
    try:
        with serving(argv, timeout=30) as server:
            done = subprocess.run(
                [*SUITKIT, "upload", str(tmp_path / "release.suit"),
                 f"0={tmp_path / 'app.bin'}", "--server", server.url, "--token-file",
                 str(token)], stdout=subprocess.PIPE, stderr=terminal_fd, text=True,
                timeout=120, check=False, env={**os.environ, "COLUMNS": "120"})
        os.close(terminal_fd)
        terminal_fd = -1
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once everything written is read
            while chunk := os.read(main_fd, 65536):
                drawn += chunk
    finally:
        os.close(main_fd)
        if terminal_fd >= 0:
            os.close(terminal_fd)
    assert done.returncode == 0, drawn.decode(errors="replace")
    assert "(sequence number 1) stored" in done.stdout
    assert b"uploading" in drawn, drawn[:500]


def test_malformed_datagrams_do_not_flood_the_log(tmp_path: Path) -> None:
    """aiocoap logs a WARNING for every malformed datagram, from any address (spoofed too):
    200 datagrams were about 200 log lines; uvicorn one for each malformed request. Now one a
    minute each, with the count of the others."""
    author = Author.create(tmp_path / "author")
    with serving(["--data", str(tmp_path / "d"), "--author-anchor", str(author.anchor)],
                 coap=True) as server:
        assert server.coap_port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):
                sender.sendto(b"\x00\x01\x02\x03", ("127.0.0.1", server.coap_port))
                time.sleep(0.002)  # not faster than the server reads: none dropped
        deadline = time.monotonic() + 30
        while "unparsable" not in server.log():
            assert time.monotonic() < deadline, "waited 30 s for the first datagram's line"
            time.sleep(0.1)
        port = int(server.url.rsplit(":", 1)[1])
        for _ in range(20):  # uvicorn's line for each malformed request: the same
            with socket.create_connection(("127.0.0.1", port), timeout=30) as bad:
                bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
                assert bad.recv(100).startswith(b"HTTP/1.1 400"), "a 400 for a bad request"
        time.sleep(2)  # the others are read meanwhile
        log = server.log().splitlines()
    lines = [line for line in log if "unparsable" in line]
    assert len(lines) == 1, "\n".join(lines[:5])
    invalid = [line for line in log if "Invalid HTTP request received" in line]
    assert len(invalid) == 1, "\n".join(invalid[:5])


def test_serve_mqtt_port_of_unicode_digits_is_named(tmp_path: Path) -> None:
    """``"²"`` is a digit to ``str.isdigit`` and ``int`` refuses it: the line said ``invalid
    literal for int()`` instead of what --mqtt expects."""
    author = Author.create(tmp_path / "author")
    admin = tmp_path / "admin.token"
    admin.write_text("admin-t0ken\n")
    line = refused_start("--data", str(tmp_path / "d"), "--author-anchor", str(author.anchor),
                         "--admin-token-file", str(admin), "--mqtt", "127.0.0.1:\u00b2",
                         "--port", str(free_port()))
    assert line == ("suitkit: error: --mqtt: expected HOST:PORT such as 127.0.0.1:1883, got "
                    "'127.0.0.1:\u00b2'"), line
