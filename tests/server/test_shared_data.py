"""Several ``suitkit serve`` processes on one data directory (issue #12 item 3, docs/server.md
"Scale out").

Two server processes share a data directory; releases that share an image and have images of
their own are uploaded to both at the same instant while a third process opens the directory
(which sweeps ``tmp/``): every upload is stored, each replica lists and serves every release
byte for byte, the shared image is one blob, and nothing is left in ``tmp/``. Uploads of one
release to two processes at once are tests/server/test_upload_race.py.

And the race a replica's start-up could lose against a writer: a sweep of ``tmp/`` falling
between the creation of a writer's temporary file and its lock removed the file, and the
writer's blob then failed ("cannot store a blob: No such file or directory", a 500 to an
upload that was fine).
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from device.device_kit import Author, image_bytes
from serve_kit import serving
from suitkit.server.store import BlobStore

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

TOKEN = "shared-upload-token"
RELEASES = 8


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_two_replicas_upload_different_releases_at_once(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "upload.token").write_text(TOKEN)
    data = tmp_path / "data"
    argv = ["--data", str(data), "--author-anchor", str(author.anchor),
            "--upload-token-file", str(tmp_path / "upload.token")]
    shared = image_bytes("shared bootloader", 300_000)
    releases = []
    for n in range(RELEASES):
        own = image_bytes(f"own {n}", 1_000_000 + n)
        envelope = author.envelope(n + 1, [
            author.component(f"shared-{n}.bin", shared, index=0, uri="https://fw.example/s"),
            author.component(f"own-{n}.bin", own, index=1, uri="https://fw.example/o")])
        releases.append((envelope, own))

    with serving(argv, timeout=60) as one, serving(argv, timeout=60) as two:
        urls = [one.url, two.url]
        barrier = threading.Barrier(RELEASES + 1)

        def upload(n: int) -> httpx.Response:
            envelope, own = releases[n]
            barrier.wait(timeout=60)
            return httpx.post(f"{urls[n % 2]}/api/v1/releases", timeout=120,
                              headers={"Authorization": f"Bearer {TOKEN}"},
                              files=[("envelope", ("r.suit", envelope)),
                                     ("image-0", ("s.bin", shared)),
                                     ("image-1", ("o.bin", own))])

        def third_replica() -> list[dict[str, object]]:
            barrier.wait(timeout=60)  # opens (and sweeps) the directory during the uploads
            with serving(argv, timeout=60) as three:
                listed: list[dict[str, object]] = httpx.get(
                    f"{three.url}/api/v1/releases", timeout=60).json()["releases"]
                return listed

        with ThreadPoolExecutor(RELEASES + 1) as pool:
            started = pool.submit(third_replica)
            answers = list(pool.map(upload, range(RELEASES)))
            started.result(timeout=180)
        assert [a.status_code for a in answers] == [201] * RELEASES, \
            [a.text[:200] for a in answers if a.status_code != 201]

        expected = sorted(a.json()["id"] for a in answers)
        with httpx.Client(timeout=60) as client:
            for url in urls:
                listed = client.get(f"{url}/api/v1/releases").json()["releases"]
                assert sorted(r["id"] for r in listed) == expected
                for release, (envelope, own) in zip(
                        sorted(listed, key=lambda r: r["sequence_number"]), releases,
                        strict=True):
                    wanted = {0: shared, 1: own}
                    for component in release["components"]:
                        got = client.get(f"{url}{component['url']}")
                        assert got.content == wanted[component["index"]], (url, component)
                    got = client.get(f"{url}{release['envelope']['url']}")
                    assert got.content == envelope
    blobs = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 2 * RELEASES + 1  # envelopes, own images, the shared image once
    assert sorted(p.name for p in (data / "tmp").iterdir()) == []


def test_a_sweep_between_a_temporary_file_and_its_lock_loses_no_blob(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "data")
    real_flock = fcntl.flock
    swept: list[bool] = []

    def flock_after_a_sweep(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX and not swept:  # the writer's lock of its new file
            swept.append(True)
            BlobStore(tmp_path / "data")  # another replica starts: it sweeps tmp/ now
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_sweep)
    blob = image_bytes("swept", 200_000)
    digest = store.put_blob(blob)
    assert swept == [True]  # the sweep did fall in the window
    assert digest == sha(blob)
    with store.open_blob(digest) as stored:
        assert stored.read() == blob
    assert list((tmp_path / "data" / "tmp").iterdir()) == []
