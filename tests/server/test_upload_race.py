"""Concurrent uploads of one release (issue #11 item 9): the 409 check and the release record
are one atomic step across threads and processes.

Before the fix two uploads of the same manifest in two different envelopes could both see "no
release yet", both answer 201, and the record silently switched envelope; an upload of the
envelope alone could overwrite the record an upload with its image had just written (the image
reference was lost). Each pair here is sent at the same instant, to one server from two threads
and to two ``suitkit serve`` processes sharing one data directory.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from serve_kit import serving
from suitkit.core import codec
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchors

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from suitkit.server.app import ServerConfig
from suitkit.server.background import running_server

TOKEN = "race-upload-token"
PAIRS = 12


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def post(url: str, envelope: bytes, image: bytes | None) -> httpx.Response:
    files = [("envelope", ("release.suit", envelope, "application/suit-envelope+cose"))]
    if image is not None:
        files.append(("image-0", ("app.bin", image, "application/octet-stream")))
    return httpx.post(f"{url}/api/v1/releases", files=files, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"})


Upload = tuple[str, bytes, bytes | None]


def at_once(*uploads: Upload) -> list[httpx.Response]:
    """Post the uploads (url, envelope, image) from threads released by one barrier; their
    answers in order."""
    barrier = threading.Barrier(len(uploads))

    def run(upload: Upload) -> httpx.Response:
        barrier.wait(timeout=30)
        return post(*upload)

    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(run, uploads))


def resigned(author: Author, envelope: bytes) -> bytes:
    """The same manifest in another envelope (ES256 signatures differ on every signing)."""
    other = codec.encode_envelope(sign_envelope(codec.decode_envelope(envelope),
                                                author.key.signer()))
    assert other != envelope
    return other


def check_conflicting_pairs(urls: tuple[str, str], author: Author, first_sequence: int) -> None:
    for n in range(PAIRS):
        envelope, image = author.release(first_sequence + n, "race", size=200_000,
                                         uri="https://fw.example/app.bin")
        other = resigned(author, envelope)
        answers = at_once((urls[0], envelope, image), (urls[1], other, image))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201, 409], (n, [a.text[:200] for a in answers])
        winner = next(a for a in answers if a.status_code == 201).json()
        stored = httpx.get(f"{urls[0]}/api/v1/releases/{winner['id']}", timeout=30).json()
        assert stored["envelope"] == winner["envelope"], n  # the record did not switch
        assert stored["components"][0]["blob"] == sha(image), n


def check_image_kept(urls: tuple[str, str], author: Author, first_sequence: int) -> None:
    """The envelope alone and the envelope with its image at once: the image stays."""
    for n in range(PAIRS):
        envelope, image = author.release(first_sequence + n, "keep", size=200_000,
                                         uri="https://fw.example/app.bin")
        answers = at_once((urls[0], envelope, image), (urls[1], envelope, None))
        assert sorted(a.status_code for a in answers) == [200, 201], \
            (n, [a.text[:200] for a in answers])
        release_id = answers[0].json()["id"]
        stored = httpx.get(f"{urls[1]}/api/v1/releases/{release_id}", timeout=30).json()
        assert stored["components"][0]["blob"] == sha(image), (n, stored["components"])


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


@pytest.fixture
def threaded(tmp_path: Path, author: Author) -> Iterator[str]:
    config = ServerConfig(data_dir=tmp_path / "data", upload_token=TOKEN,
                          anchors=TrustAnchors.of(author.key.public_key()))
    with running_server(config, start_timeout=30) as url:
        yield url


def test_concurrent_uploads_of_one_release_in_two_envelopes_one_wins(
        threaded: str, author: Author) -> None:
    check_conflicting_pairs((threaded, threaded), author, 1)


def test_concurrent_uploads_with_and_without_the_image_keep_it(
        threaded: str, author: Author) -> None:
    check_image_kept((threaded, threaded), author, 100)


def test_two_server_processes_on_one_data_directory(tmp_path: Path, author: Author) -> None:
    token = tmp_path / "upload.token"
    token.write_text(TOKEN)
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--upload-token-file", str(token)]
    with serving(argv, timeout=30) as one, serving(argv, timeout=30) as two:
        check_conflicting_pairs((one.url, two.url), author, 1)
        check_image_kept((one.url, two.url), author, 100)
