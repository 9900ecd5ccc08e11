"""nginx in front of ``suitkit serve --accel-redirect`` (issue #12): suitkit checks, nginx sends.

A real nginx configured from suitkit's template (``nginx_kit``) in front of a real
``suitkit serve`` process: a release is uploaded through nginx, its image and envelope are
downloaded through nginx whole, by ranges, with If-Range and HEAD, byte for byte and with
suitkit's headers (the ETag is the digest, immutable caching); the internal location nginx
sends blobs from cannot be reached from outside, however it is spelled; an unknown digest is
suitkit's 404, which nginx does not keep (the blob uploaded afterwards is served); nginx keeps
suitkit's answer for a blob, so a second download does not reach suitkit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author
from nginx_kit import PREFIX, have_nginx, nginx_in_front
from serve_kit import Served, serving
from suitkit.server.app import ENVELOPE_MEDIA_TYPE, IMMUTABLE

pytestmark = pytest.mark.skipif(not have_nginx(), reason="nginx is not installed "
                                "(apt-get install nginx)")

TOKEN = "accel-upload-token"
SIZE = 3 * 1024 * 1024 + 123


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Front:
    url: str          # nginx
    suitkit: Served   # the replica behind it
    author: Author
    data: Path


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    author = Author.create(tmp_path / "author")
    (tmp_path / "upload.token").write_text(TOKEN)
    data = tmp_path / "data"
    argv = ["--data", str(data), "--author-anchor", str(author.anchor), "--upload-token-file",
            str(tmp_path / "upload.token"), "--accel-redirect", PREFIX]
    with serving(argv, timeout=60) as suitkit, \
            nginx_in_front(tmp_path / "nginx", (suitkit.url,), data / "blobs") as url:
        yield Front(url, suitkit, author, data)


def upload(url: str, envelope: bytes, image: bytes) -> dict[str, object]:
    answer = httpx.post(f"{url}/api/v1/releases", timeout=60,
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        files=[("envelope", ("r.suit", envelope)), ("image-0", ("a", image))])
    assert answer.status_code == 201, answer.text
    doc: dict[str, object] = answer.json()
    return doc


def downloads_seen_by_suitkit(served: Served, digest: str) -> int:
    return sum(f"/{digest} HTTP/1.1\" " in line for line in served.log().splitlines())


def test_release_image_through_nginx_whole_by_ranges_and_if_range(front: Front) -> None:
    envelope, image = front.author.release(1, "accel", size=SIZE, uri="https://fw.example/a")
    release = upload(front.url, envelope, image)  # uploads pass through nginx
    digest = sha(image)
    firmware = f"{front.url}/firmware/{digest}"
    assert release["components"] == [  # type: ignore[comparison-overlap]
        {**release["components"][0], "url": f"/firmware/{digest}"}]  # type: ignore[index]

    with httpx.Client(timeout=60) as client:
        whole = client.get(firmware)
        assert whole.status_code == 200
        assert whole.content == image
        assert whole.headers["server"].startswith("nginx")  # nginx sent the bytes
        assert whole.headers["etag"] == f'"{digest}"'
        assert whole.headers["cache-control"] == IMMUTABLE
        assert whole.headers["content-type"] == "application/octet-stream"
        assert whole.headers["content-length"] == str(SIZE)
        assert "x-accel-redirect" not in whole.headers

        part = client.get(firmware, headers={"Range": "bytes=1048570-2097160"})
        assert part.status_code == 206
        assert part.content == image[1048570:2097161]
        assert part.headers["content-range"] == f"bytes 1048570-2097160/{SIZE}"
        assert part.headers["etag"] == f'"{digest}"'

        tail = client.get(firmware, headers={"Range": "bytes=-100"})
        assert (tail.status_code, tail.content) == (206, image[-100:])
        resumed = client.get(firmware, headers={"Range": "bytes=3000000-",
                                                "If-Range": f'"{digest}"'})
        assert (resumed.status_code, resumed.content) == (206, image[3000000:])
        # a resume against another version gets the whole file, never a splice
        other = client.get(firmware, headers={"Range": "bytes=3000000-",
                                              "If-Range": '"' + "0" * 64 + '"'})
        assert (other.status_code, other.content) == (200, image)
        beyond = client.get(firmware, headers={"Range": f"bytes={SIZE}-"})
        assert beyond.status_code == 416

        head = client.head(firmware)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(SIZE)
        assert head.headers["etag"] == f'"{digest}"'

        envelope_url = release["envelope"]["url"]  # type: ignore[index]
        got = client.get(f"{front.url}{envelope_url}")
        assert (got.status_code, got.content) == (200, envelope)
        assert got.headers["content-type"] == ENVELOPE_MEDIA_TYPE
        assert got.headers["etag"] == f'"{sha(envelope)}"'


def test_suitkit_answers_x_accel_redirect_and_nginx_keeps_the_answer(front: Front) -> None:
    envelope, image = front.author.release(2, "kept", size=100_000, uri="https://fw.example/a")
    upload(front.suitkit.url, envelope, image)
    digest = sha(image)
    direct = httpx.get(f"{front.suitkit.url}/firmware/{digest}", timeout=30)
    assert direct.status_code == 200 and direct.content == b""
    assert direct.headers["x-accel-redirect"] == f"{PREFIX}{digest[:2]}/{digest}"
    assert direct.headers["etag"] == f'"{digest}"'
    assert direct.headers["cache-control"] == IMMUTABLE
    before = downloads_seen_by_suitkit(front.suitkit, digest)
    for _ in range(3):
        assert httpx.get(f"{front.url}/firmware/{digest}", timeout=30).content == image
    # the first download through nginx asks suitkit; nginx follows its kept answer after that
    assert downloads_seen_by_suitkit(front.suitkit, digest) == before + 1


def test_an_unknown_digest_is_suitkits_404_and_not_kept(front: Front) -> None:
    envelope, image = front.author.release(3, "later", size=50_000, uri="https://fw.example/a")
    digest = sha(image)
    missing = httpx.get(f"{front.url}/firmware/{digest}", timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"] == f"no such blob {digest}"
    malformed = httpx.get(f"{front.url}/firmware/{digest.upper()}", timeout=30)
    assert malformed.status_code == 400
    assert "not a SHA-256 digest" in malformed.json()["error"]
    upload(front.url, envelope, image)
    assert httpx.get(f"{front.url}/firmware/{digest}", timeout=30).content == image


def test_the_blob_location_cannot_be_reached_from_outside(front: Front) -> None:
    envelope, image = front.author.release(4, "inside", size=10_000, uri="https://fw.example/a")
    upload(front.url, envelope, image)
    digest = sha(image)
    assert httpx.get(f"{front.url}/firmware/{digest}", timeout=30).content == image
    inside = f"{PREFIX}{digest[:2]}/{digest}"
    spellings = [inside, inside.replace("_", "%5F"), inside.replace("/", "//"),
                 f"/firmware/..{inside}", f"/firmware/%2E%2E{inside}",
                 f"{PREFIX}{digest[:2]}/../{digest[:2]}/{digest}", f"{PREFIX}../blobs/x"]
    with httpx.Client(timeout=30) as client:
        for path in spellings:
            answer = client.get(f"{front.url}{path}")
            assert answer.status_code in (400, 404), (path, answer.status_code)
            assert image not in answer.content, path
            # and with the header nginx acts on, sent by a client instead of suitkit
            answer = client.get(f"{front.url}/api/v1/releases",
                                headers={"X-Accel-Redirect": inside})
            assert answer.status_code == 200 and image not in answer.content


def test_two_replicas_behind_one_nginx_share_the_data_directory(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "upload.token").write_text(TOKEN)
    data = tmp_path / "data"
    argv = ["--data", str(data), "--author-anchor", str(author.anchor), "--upload-token-file",
            str(tmp_path / "upload.token"), "--accel-redirect", PREFIX]
    with serving(argv, timeout=60) as one, serving(argv, timeout=60) as two, \
            nginx_in_front(tmp_path / "nginx", (one.url, two.url), data / "blobs") as url:
        stored = []
        for n in range(4):  # nginx sends them to the two replicas in turn
            envelope, image = author.release(10 + n, "two", size=70_000 + n,
                                             uri="https://fw.example/a")
            stored.append((upload(url, envelope, image), image))
        with httpx.Client(timeout=30) as client:
            for release, image in stored:
                got = client.get(f"{url}{release['components'][0]['url']}")  # type: ignore[index]
                assert got.content == image
                listed = client.get(f"{url}/api/v1/releases/{release['id']}")
                assert listed.json()["id"] == release["id"]
        uploads = [served.log().count('"POST /api/v1/releases HTTP/1.1" 201')
                   for served in (one, two)]
        assert sorted(uploads) == [2, 2], uploads  # both replicas took uploads


def test_many_ranges_get_the_whole_file_as_from_suitkit(front: Front) -> None:
    envelope, image = front.author.release(5, "ranges", size=20_000, uri="https://fw.example/a")
    upload(front.url, envelope, image)
    firmware = f"{front.url}/firmware/{sha(image)}"
    few = httpx.get(firmware, timeout=30, headers={"Range": "bytes=0-9,100-109"})
    assert few.status_code == 206
    assert few.headers["content-type"].startswith("multipart/byteranges")
    many = ",".join(f"{n * 100}-{n * 100 + 9}" for n in range(101))  # one more than allowed
    whole = httpx.get(firmware, timeout=30, headers={"Range": f"bytes={many}"})
    assert (whole.status_code, whole.content) == (200, image)
