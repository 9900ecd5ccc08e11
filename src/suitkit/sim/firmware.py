"""The author's and the operator's side of the simulated fleet: keys and signed releases.

``make_keys`` writes an author key (ESP256) and an operator key (Ed25519) with their public halves,
the devices' trust anchors. ``build_release`` turns images into a signed envelope through the
real author path (``describe.parse_description`` -> ``codec.build_envelope`` ->
``sign.sign_envelope``): the author signs first, then the operator adds the approval signature
(RFC 9019 §3.9: two authorities, both required by the devices). Factory releases carry their
images inside the envelope; releases for the firmware server are detached, their URI the
server's content address ``/firmware/<sha256>``.

Images are small on purpose (a fleet of a thousand devices fits in a few hundred MB): random
bytes for the flash shapes, and a shell script for Linux-class devices, whose application is
started by ``/bin/sh`` at every boot (``exit 0`` starts, ``exit 3`` fails at start).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suitkit.author import keys as keyfiles
from suitkit.author.describe import parse_description
from suitkit.core import codec, crypto
from suitkit.core.sign import sign_envelope

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SIZE",
    "LINUX_APP_COMMAND",
    "VENDOR_DOMAIN",
    "Keys",
    "Release",
    "build_release",
    "class_id",
    "image_for",
    "make_keys",
    "vendor_id",
]

VENDOR_DOMAIN = "example.com"
CLASS_NAMES: dict[str, str] = {
    "mcu": "thermostat",
    "secure-split": "smart-lock",
    "dual-cpu": "camera",
    "linux": "gateway",
}
"""One product (device class) per device shape; ``thermostat-rev-b`` is the wrong class."""
IMAGE_SIZE = 12 * 1024
"""Bytes per image of the flash shapes (slots are 16 KiB: four 4 KiB sectors)."""
LINUX_APP_COMMAND = "/bin/sh {image}"


def vendor_id() -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)


def class_id(class_name: str) -> uuid.UUID:
    """UUID5(vendor id, class name), as ``class-name`` in a description derives it."""
    return uuid.uuid5(vendor_id(), class_name)


@dataclass(frozen=True, slots=True)
class Keys:
    """The author's and the operator's keys and their public key files (trust anchors)."""

    author: crypto.PrivateKey
    operator: crypto.PrivateKey
    author_key: Path
    operator_key: Path
    author_pub: Path
    operator_pub: Path

    def anchors(self) -> list[tuple[str, Path]]:
        """``(role, public key file)`` pairs for ``config.create_device``."""
        return [("author", self.author_pub), ("operator", self.operator_pub)]


def make_keys(folder: Path) -> Keys:
    """New author (ESP256) and operator (Ed25519) keys in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    author = crypto.generate_private_key("ESP256")
    operator = crypto.generate_private_key("Ed25519")
    paths = {}
    for name, key in (("author", author), ("operator", operator)):
        keyfiles.write_private_key(folder / f"{name}.pem", key)
        keyfiles.write_public_key(folder / f"{name}.pub", key)
        paths[name] = (folder / f"{name}.pem", folder / f"{name}.pub")
    return Keys(author, operator, paths["author"][0], paths["operator"][0],
                paths["author"][1], paths["operator"][1])


def image_for(shape: str, class_name: str, version: str, index: int, *,
              starts: bool = True) -> bytes:
    """A deterministic image: random bytes for flash shapes; for ``linux`` a shell script that
    exits 0 (starts) or 3 (``starts=False``: fails at start)."""
    tag = f"{class_name}/{version}/{index}"
    if shape == "linux":
        status = 0 if starts else 3
        body = (f"#!/bin/sh\n# {tag}: the {class_name} application\nexit {status}\n").encode()
        return body + b"#" * (2048 - len(body)) + b"\n"
    return random.Random(tag).randbytes(IMAGE_SIZE)  # noqa: S311 - test data, not secrets


@dataclass(frozen=True, slots=True)
class Release:
    """A signed envelope and its images (component index -> bytes)."""

    label: str
    class_name: str
    sequence: int
    envelope: bytes
    images: dict[int, bytes]
    detached: bool

    def digest_of(self, index: int) -> str:
        return hashlib.sha256(self.images[index]).hexdigest()


def build_release(keys: Keys, folder: Path, *, label: str, class_name: str, sequence: int,
                  images: list[bytes], server_url: str | None = None, run: str = "") -> Release:
    """Sign a release of ``images`` (component ``[h'0i']`` each) for ``class_name``: author,
    then operator. With ``server_url`` the images are detached and fetched from
    ``server_url/firmware/<sha256>``; without it they are integrated. ``run`` goes into the
    manifest's description, so that each run's manifests (and release ids) are its own."""
    folder.mkdir(parents=True, exist_ok=True)
    components: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        name = f"{label}-{i}.bin"
        (folder / name).write_bytes(image)
        component: dict[str, Any] = {"id": [f"0x{i:02x}"], "image": name}
        if server_url is not None:
            component["uri"] = f"{server_url}/firmware/{hashlib.sha256(image).hexdigest()}"
        components.append(component)
    description = parse_description(
        {"sequence-number": sequence, "vendor-domain": VENDOR_DOMAIN, "class-name": class_name,
         "text": {"manifest-description": f"{class_name} firmware {label} {run}".rstrip()},
         "components": components}, base=folder, source=label)
    envelope = codec.build_envelope(description.manifest, sever_members=description.sever,
                                    integrated=description.integrated)
    envelope = sign_envelope(envelope, keys.author.signer())
    envelope = sign_envelope(envelope, keys.operator.signer())
    data = codec.encode_envelope(envelope)
    (folder / f"{label}.suit").write_bytes(data)
    return Release(label, class_name, sequence, data, dict(enumerate(images)),
                   server_url is not None)
