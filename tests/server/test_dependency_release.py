"""A release of several manifests on the firmware server (draft-ietf-suit-trust-domains): each
author uploads its component manifest with its image, then the operator's root that depends on
them; the server checks every dependency (integrated: it verifies and has the digest the root
gives it; fetched: it is a release here already), lists them in the root's release, and serves
their envelopes where the root says devices fetch them. A real device then installs the root
from the server. Real uvicorn on 127.0.0.1, httpx as the client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from device.device_kit import boot, install, running
from device.trust_kit import Domains
from suitkit.core import codec
from suitkit.core.verify import TrustAnchors
from suitkit.device.fetch import HttpFetcher

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install suitkit)")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install suitkit)")

from server.test_server import serve
from suitkit.server.app import ServerConfig, create_app

TOKEN = "test-upload-token-dep"


@dataclass
class Served:
    url: str
    domains: Domains
    client: httpx.Client

    def upload(self, envelope: bytes, *images: tuple[str, bytes]) -> httpx.Response:
        files = [("envelope", ("release.suit", envelope, "application/suit-envelope+cose"))]
        files += [(part, (f"{part}.bin", data, "application/octet-stream"))
                  for part, data in images]
        return self.client.post("/api/v1/releases", files=files,
                                headers={"Authorization": f"Bearer {TOKEN}"})

    def author_release(self, who: str, sequence: int, index: int, tag: str = ""
                       ) -> tuple[bytes, bytes]:
        """An author's manifest whose image the devices fetch from this server."""
        author = self.domains.a if who == "a" else self.domains.b
        return self.domains.component_manifest(author, sequence, index, tag=tag,
                                               uri=f"{self.url}/firmware/{{sha256}}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    domains = Domains(tmp_path)
    anchors = TrustAnchors.of(domains.operator.key.public_key(), domains.a.key.public_key(),
                              domains.b.key.public_key())
    config = ServerConfig(data_dir=tmp_path / "data", anchors=anchors, upload_token=TOKEN)
    for url in serve(create_app(config)):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield Served(url, domains, client)


def _fetched(served: Served, name: str, envelope: bytes) -> dict[str, Any]:
    """A dependency the device fetches from the server (its envelope, content-addressed)."""
    return {"envelope": name, "bytes": envelope, "id": [name],
            "uri": f"{served.url}/envelopes/{{sha256}}"}


def test_release_of_three_manifests_stored_served_and_installed(served: Served) -> None:
    env_a, image_a = served.author_release("a", 1, 0)
    env_b, image_b = served.author_release("b", 1, 1)
    assert served.upload(env_a, ("image-0", image_a)).status_code == 201
    assert served.upload(env_b, ("image-0", image_b)).status_code == 201
    root = served.domains.root_manifest(1, [_fetched(served, "a.suit", env_a),
                                            _fetched(served, "b.suit", env_b)])

    response = served.upload(root)

    assert response.status_code == 201, response.text
    doc = response.json()
    dependencies = [c for c in doc["components"] if c.get("dependency")]
    assert [d["blob"] for d in dependencies] == [hashlib.sha256(env_a).hexdigest(),
                                                 hashlib.sha256(env_b).hexdigest()]
    assert [d["size"] for d in dependencies] == [len(env_a), len(env_b)]
    for dependency, envelope in zip(dependencies, (env_a, env_b), strict=True):
        # the digest the root names is the id of the dependency's own release
        assert served.client.get(f"/api/v1/releases/{dependency['digest']}").status_code == 200
        assert served.client.get(f"/envelopes/{dependency['blob']}").content == envelope
    # A real device installs the root from the server: both authors' images, fetched.
    outcome = install(served.domains.device, root, HttpFetcher())
    assert outcome.installed, outcome.reason
    booted = running(boot(served.domains.device))
    assert {name: seq for name, (seq, _) in booted.items()} == {"app": 1, "data": 1}
    assert booted["app"][1] == hashlib.sha256(image_a).digest()
    assert booted["data"][1] == hashlib.sha256(image_b).digest()


def test_root_with_a_dependency_not_uploaded_refused(served: Served) -> None:
    env_a, image_a = served.author_release("a", 1, 0)
    env_b, _ = served.author_release("b", 1, 1)
    assert served.upload(env_a, ("image-0", image_a)).status_code == 201
    root = served.domains.root_manifest(1, [_fetched(served, "a.suit", env_a),
                                            _fetched(served, "b.suit", env_b)])
    response = served.upload(root)
    assert response.status_code == 422
    digest = codec.decode_envelope(env_b).authentication.digest.value.hex()
    assert response.json()["error"] == (
        f"dependency component 1 [{b'b.suit'.hex()}]: its manifest {digest} is not a release "
        "on this server and is not integrated; upload it (with its images) first")


def test_integrated_dependencies_checked_and_stored(served: Served) -> None:
    env_a, _image_a = served.author_release("a", 2, 0)
    env_b, _image_b = served.author_release("b", 2, 1)
    root = served.domains.root_manifest(2, [
        {"envelope": "a.suit", "bytes": env_a}, {"envelope": "b.suit", "bytes": env_b}])
    response = served.upload(root)
    assert response.status_code == 201, response.text
    blobs = {c["blob"] for c in response.json()["components"] if c.get("dependency")}
    assert blobs == {hashlib.sha256(env_a).hexdigest(), hashlib.sha256(env_b).hexdigest()}
    # Another author's validly signed manifest in the place of B's: the digest does not match.
    other, _ = served.author_release("b", 2, 1, tag="other")
    envelope = codec.decode_envelope(root)
    key = next(k for k, v in envelope.integrated.items() if v == env_b)
    forged = codec.encode_envelope(type(envelope).from_fields({
        **{f: getattr(envelope, f) for f in envelope.__dataclass_fields__},
        "integrated": {**envelope.integrated, key: other}}))
    refused = served.upload(forged)
    assert refused.status_code == 422
    assert "does not match the root's" in refused.json()["error"], refused.text
