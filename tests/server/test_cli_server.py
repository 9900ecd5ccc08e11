"""``suitkit serve`` and ``suitkit upload`` as a user runs them: two real processes on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from serve_kit import SUITKIT, free_port, serving

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
