"""Small helpers for the device tests: keys, descriptions, signed envelopes, a firmware server.

Everything goes through the real library: ``parse_description`` -> ``codec.build_envelope`` ->
``sign_envelope`` -> ``codec.encode_envelope`` on the author side, and ``open_device`` (reopened
for every step, as the CLI does) -> ``Consumer.install`` / ``boot`` / ``confirm`` -> ``save`` on
the device side. The HTTP server is a real one on 127.0.0.1 serving whatever bytes a test puts
under a path (the pattern of tests/device/test_fetch.py).
"""

from __future__ import annotations

import http.server
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from suitkit.author.describe import parse_description
from suitkit.bootloader.api import BootResult
from suitkit.cli.device import device_status
from suitkit.core import codec, crypto
from suitkit.core.sign import sign_envelope
from suitkit.device.config import create_device
from suitkit.device.consumer import InstallOutcome, PayloadFetcher
from suitkit.device.wiring import open_device

VENDOR_DOMAIN = "example.com"
CLASS_NAME = "thermostat"
VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)
CLASS = uuid.uuid5(VENDOR, CLASS_NAME)


def image_bytes(tag: str, size: int) -> bytes:
    """A deterministic stand-in for a firmware image."""
    return random.Random(tag).randbytes(size)


# ---------------------------------------------------------------------------- author side


@dataclass
class Author:
    """A signing key, its public half as a file, and a folder for images and descriptions."""

    folder: Path
    key: crypto.PrivateKey
    anchor: Path

    @classmethod
    def create(cls, folder: Path, algorithm: str = "ES256", name: str = "author") -> Author:
        folder.mkdir(parents=True, exist_ok=True)
        key = crypto.generate_private_key(algorithm)
        anchor = folder / f"{name}.pub"
        anchor.write_bytes(crypto.public_key_to_pem(key.public_key()))
        return cls(folder, key, anchor)

    def component(self, name: str, image: bytes, *, index: int = 0,
                  uri: str | None = None) -> dict[str, Any]:
        """A description component for ``image`` (written to the folder as ``name``);
        integrated unless ``uri`` is given."""
        (self.folder / name).write_bytes(image)
        comp: dict[str, Any] = {"id": [f"0x{index:02x}"], "image": name}
        if uri is not None:
            comp["uri"] = uri
        return comp

    def envelope(self, sequence: int, components: list[dict[str, Any]], *,
                 signer: crypto.Signer | bool | None = True,
                 payloads: dict[str, bytes] | None = None,
                 top: dict[str, Any] | None = None) -> bytes:
        """A signed envelope (``signer=None`` or ``False``: unsigned; ``True``: this key).

        ``payloads`` replaces integrated payloads (``{"#name": bytes}``) after the manifest was
        built from the real images: what an attacker can do, since they are outside the
        signature and bound only by the image digest. ``top``: more (or overriding) top-level
        description keys, such as ``use-before`` or ``vendor-domain``.
        """
        data: dict[str, Any] = {"sequence-number": sequence, "vendor-domain": VENDOR_DOMAIN,
                                "class-name": CLASS_NAME, "components": components, **(top or {})}
        description = parse_description(data, base=self.folder)
        envelope = codec.build_envelope(description.manifest, sever_members=description.sever,
                                        integrated={**description.integrated,
                                                    **(payloads or {})})
        if signer is True:
            signer = self.key.signer()
        if signer:
            assert not isinstance(signer, bool)
            envelope = sign_envelope(envelope, signer)
        return codec.encode_envelope(envelope)

    def release(self, sequence: int, tag: str = "", *, size: int = 2000,
                uri: str | None = None) -> tuple[bytes, bytes]:
        """(envelope, image) of a one-component release for component [h'00']."""
        image = image_bytes(f"app-{sequence}-{tag}", size)
        return self.envelope(sequence, [self.component(f"app-{sequence}{tag}.bin", image,
                                                       uri=uri)]), image


# ---------------------------------------------------------------------------- device side


def new_device(folder: Path, anchors: list[Path], shape: str = "mcu", *,
               vendor: uuid.UUID = VENDOR, klass: uuid.UUID = CLASS) -> Path:
    """``suitkit device init``: create the folder, open it once and save the blank flash."""
    create_device(folder, vendor_id=vendor, class_id=klass, trust_anchors=anchors, shape=shape)
    open_device(folder).save()
    return folder


def install(folder: Path, envelope: bytes, fetcher: PayloadFetcher | None = None, *,
            clock: Callable[[], float] | None = None) -> InstallOutcome:
    """``suitkit device install``: open, install, save (``clock``: the consumer's trusted time,
    default the system clock)."""
    device = open_device(folder)
    consumer = device.consumer(fetcher)
    if clock is not None:
        consumer = replace(consumer, clock=clock)
    try:
        return consumer.install(envelope)
    finally:
        device.save()


def boot(folder: Path) -> BootResult:
    """``suitkit device boot``: open, boot, save."""
    device = open_device(folder)
    try:
        return device.bootloader.boot()
    finally:
        device.save()


def confirm(folder: Path) -> dict[str, int]:
    """``suitkit device confirm``: open, confirm, save; the counters after."""
    device = open_device(folder)
    try:
        device.bootloader.confirm()
    finally:
        device.save()
    return open_device(folder).bootloader.read_counters()


def counters(folder: Path) -> dict[str, int]:
    return open_device(folder).bootloader.read_counters()


def status(folder: Path) -> dict[str, Any]:
    """The ``suitkit device status --json`` document."""
    return device_status(open_device(folder))


def flash_bytes(folder: Path) -> bytes:
    """Every byte of the simulated flash kept in the folder (flash shapes)."""
    flashes = open_device(folder).flashes
    return b"".join(flashes[name].snapshot() for name in sorted(flashes))


def running(result: BootResult) -> dict[str, tuple[int, bytes]]:
    """{image: (sequence number, digest)} of a boot."""
    return {i.name: (i.sequence_number, i.digest) for i in result.images}


# ---------------------------------------------------------------------------- firmware server


@dataclass
class Served:
    """What the server holds (path -> bytes) and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    announce_length: bool = True
    """False: no Content-Length, the body ends when the connection closes."""
    requests: list[str] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        s = self.served
        s.requests.append(self.path)
        body = s.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        wanted = self.headers.get("Range")
        self.send_response(206 if wanted else 200)
        if wanted:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if s.announce_length:
            self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", '"1"')
        self.end_headers()
        for i in range(start, len(body), 16 * 1024):
            self.wfile.write(body[i:i + 16 * 1024])


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that refuse a body hang up on purpose


@contextmanager
def firmware_server() -> Iterator[tuple[str, Served]]:
    """A real HTTP server on 127.0.0.1: (base URL, what it serves)."""
    served = Served()
    httpd = _QuietServer(("127.0.0.1", 0), type("H", (_Handler,), {"served": served}))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
