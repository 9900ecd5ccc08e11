"""``suitkit serve`` and ``suitkit upload`` as a user runs them: two real processes on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

SUITKIT = [sys.executable, "-c", "from suitkit.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(argv: list[str], port: int, coap_port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([*argv, "--port", str(port), "--coap-port", str(coap_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Author, Path, int]]:
    author = Author.create(tmp_path / "author")
    token = tmp_path / "upload.token"
    token.write_text("cli-token-42\n")
    argv = [*SUITKIT, "serve", "--data", str(tmp_path / "data"), "--author-anchor",
            str(author.anchor), "--upload-token-file", str(token)]
    for attempt in range(5):  # a probed free port can be taken by another process meanwhile
        port, coap_port = free_port(), free_udp_port()
        process = start_serve(argv, port, coap_port)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while process.poll() is None:
            try:
                httpx.get(f"{url}/api/v1/releases", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "suitkit serve did not start within 15 s"
                time.sleep(0.05)
        if process.poll() is None:
            break
        error = process.communicate()[1]
        assert "address already in use" in error and attempt < 4, error
    try:
        yield url, author, token, coap_port
    finally:
        process.terminate()
        try:
            stdout, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    assert f"suitkit firmware server on {url}/" in stdout


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
    assert done.returncode == 1
    assert done.stderr.startswith("suitkit: error: cannot upload to ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_limit_concurrency_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_text("x")
    done = run("serve", "--data", str(tmp_path / "d"), "--author-anchor", str(tmp_path / "a.pub"),
               "--limit-concurrency", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "suitkit: error: --limit-concurrency must be at least 1")
