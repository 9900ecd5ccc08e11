"""``ServerConfig.accel_redirect`` / ``suitkit serve --accel-redirect`` (issue #12 item 2): the
download routes check, then hand the bytes to the HTTP server in front.

Without nginx: what suitkit answers (the e2e test with a real nginx in front is
tests/e2e/test_nginx_accel.py), and how a bad prefix is refused.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from serve_kit import SUITKIT

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from suitkit.core.verify import TrustAnchors
from suitkit.server.app import (
    ENVELOPE_MEDIA_TYPE,
    IMMUTABLE,
    ServerConfig,
    accel_prefix_problem,
    nginx_accel_config,
)
from suitkit.server.background import running_server
from suitkit.server.store import BlobStore

PREFIX = "/_suitkit_blobs/"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, a stored blob's digest) of a server run with accel_redirect, one download place."""
    digest = BlobStore(tmp_path / "data").put_blob(b"accel" * 1000)
    author = Author.create(tmp_path / "author")
    config = ServerConfig(data_dir=tmp_path / "data", accel_redirect=PREFIX, max_downloads=1,
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config, start_timeout=60) as url:
        yield url, digest


def test_a_download_is_an_empty_answer_naming_the_blob(served: tuple[str, str]) -> None:
    url, digest = served
    with httpx.Client(timeout=30) as client:
        for method, path, media in (("GET", "firmware", "application/octet-stream"),
                                    ("HEAD", "firmware", "application/octet-stream"),
                                    ("GET", "envelopes", ENVELOPE_MEDIA_TYPE)):
            # a Range is the proxy's to apply to the file: suitkit's answer is the same
            for headers in ({}, {"Range": "bytes=10-19"}, {"If-Range": '"x"'}):
                answer = client.request(method, f"{url}/{path}/{digest}", headers=headers)
                assert answer.status_code == 200, (method, path, headers)
                assert answer.content == b""
                assert answer.headers["x-accel-redirect"] == f"{PREFIX}{digest[:2]}/{digest}"
                assert answer.headers["etag"] == f'"{digest}"'
                assert answer.headers["cache-control"] == IMMUTABLE
                assert answer.headers["content-type"] == media
                assert answer.headers["content-length"] == "0"
        # nothing held once answered: the one download place never runs out
        for _ in range(20):
            assert client.get(f"{url}/firmware/{digest}").status_code == 200


def test_the_checks_come_first(served: tuple[str, str]) -> None:
    url, digest = served
    unknown = hashlib.sha256(b"not stored").hexdigest()
    missing = httpx.get(f"{url}/firmware/{unknown}", timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"] == f"no such blob {unknown}"
    assert "x-accel-redirect" not in missing.headers
    for bad in (digest.upper(), digest[:-1], "..", "%2e%2e%2fetc%2fpasswd"):
        answer = httpx.get(f"{url}/firmware/{bad}", timeout=30)
        assert answer.status_code in (400, 404), bad
        assert "x-accel-redirect" not in answer.headers


@pytest.mark.parametrize("prefix", ["", "/", "_suitkit_blobs/", "/_suitkit_blobs",
                                    "/a b/", "/../", "/a/./", "/x\r\nSet-Cookie: a/",
                                    "/" + "a" * 200 + "/", "/é/"])
def test_a_bad_prefix_is_refused(prefix: str) -> None:
    problem = accel_prefix_problem(prefix)
    if prefix == "/":
        assert problem is None  # the root is a path too (a dedicated server block)
        return
    assert problem is not None and "expected a URL path such as /_suitkit_blobs/" in problem
    with pytest.raises(ValueError, match="expected a URL path"):
        ServerConfig(data_dir=Path("unused"), anchors=TrustAnchors(()), accel_redirect=prefix)


def test_serve_with_a_bad_prefix_is_one_line(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    done = subprocess.run([*SUITKIT, "serve", "--data", str(tmp_path / "d"), "--author-anchor",
                           str(author.anchor), "--accel-redirect", "blobs"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, ""), (done.returncode, done.stdout)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    line = lines[0]
    assert line.startswith("suitkit: error: --accel-redirect: expected a URL path such as "
                           "/_suitkit_blobs/")
    assert line.endswith("got 'blobs'")


def test_the_nginx_template_is_filled_in(tmp_path: Path) -> None:
    text = nginx_accel_config(listen="127.0.0.1:8080", upstreams=("10.0.0.1:8081",
                                                                  "10.0.0.2:8081"),
                              blobs=Path("/srv/suitkit/blobs"), state=Path("/var/cache/x"),
                              prefix=PREFIX, max_upload_mib=64)
    assert re.search(r"@[A-Z_]+@", text) is None  # every placeholder filled in
    # the replicas in the upstream block, one a line (and nowhere else: not in a comment)
    assert text.count("server 10.0.0.1:8081;") == 1
    assert ("upstream suitkit_replicas {\n    server 10.0.0.1:8081;\n"
            "    server 10.0.0.2:8081;\n") in text
    assert "alias /srv/suitkit/blobs/$suitkit_dir/$suitkit_blob;" in text
    assert "listen 127.0.0.1:8080;" in text and "client_max_body_size 64m;" in text
    assert "internal;" in text
    with pytest.raises(ValueError, match="absolute path"):
        nginx_accel_config(listen="8080", upstreams=("a:1",), blobs=Path("blobs"),
                           state=Path("/s"))
    with pytest.raises(ValueError, match="replica"):
        nginx_accel_config(listen="8080", upstreams=(), blobs=Path("/b"), state=Path("/s"))
