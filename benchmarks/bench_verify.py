"""Decode + verify of the spec's example 0 against the bare check done with cryptography.

Baseline (same run, same machine): SHA-256 over the bstr-wrapped manifest plus one ECDSA P-256
verification with a key loaded in advance and the signature already in DER: the least any
implementation must do. suitkit: ``verify_envelope(bytes, anchors)``, which also decodes the
envelope, the COSE block and the whole manifest into the model. Target: ratio <= 1.5.

Also: the size of a single-image envelope signed with ES256 (target <= 300 bytes, like the
spec's example 0 at 237 bytes).

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_verify.py``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from suitkit.author.describe import parse_description
from suitkit.core import cbor, codec, crypto
from suitkit.core.sign import sign_envelope
from suitkit.core.verify import TrustAnchors, verify_envelope

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parent / "tests" / "vectors"


def per_call(fns: dict[str, Callable[[], object]], *, rounds: int = 31,
             number: int = 1000) -> dict[str, tuple[float, float]]:
    """Median seconds per call over ``rounds`` batches of ``number`` calls, for each function:
    (wall clock, CPU time of this thread).

    The functions take turns batch by batch, so that a change in machine load during the run
    weighs on all of them alike (measured one after the other, a loaded machine could favour
    either side). The CPU time leaves out the time the thread waits for a core.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(number):
                fn()
            wall[name].append((time.perf_counter() - start) / number)
            cpu[name].append((time.thread_time() - start_cpu) / number)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]))
            for name in fns}


def bench_verify() -> float:
    data = bytes.fromhex((VECTORS / "example0.hex").read_text().strip())
    pem = (VECTORS / "example-key-public.pem").read_bytes()
    anchors = TrustAnchors.of(crypto.load_public_key(pem))

    # Baseline: the same check written directly against cryptography.
    envelope = codec.decode_envelope(data)
    manifest_wrapped = cbor.wrap(envelope.manifest_bytes)
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    block = cbor.decode(envelope.authentication.blocks[0], path="block").value
    protected, signature = block[0], block[3]
    tbs = cbor.encode(["Signature1", protected, b"", envelope.authentication.digest_bytes])
    der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                     int.from_bytes(signature[32:], "big"))
    expected = envelope.authentication.digest.value

    def bare() -> None:
        if hashlib.sha256(manifest_wrapped).digest() != expected:
            raise AssertionError("digest")
        key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))

    def ours() -> None:
        verify_envelope(data, anchors)

    bare(), ours()  # warm up, and prove both succeed
    times = per_call({"bare": bare, "ours": ours})
    (t_bare, c_bare), (t_ours, c_ours) = times["bare"], times["ours"]
    ratio = t_ours / t_bare
    print(f"verify example 0: suitkit {t_ours * 1e6:.1f} us, bare cryptography "
          f"{t_bare * 1e6:.1f} us, ratio {ratio:.2f}x (target <= 1.5x)")
    print(f"  CPU time: suitkit {c_ours * 1e6:.1f} us, bare {c_bare * 1e6:.1f} us, "
          f"ratio {c_ours / c_bare:.2f}x")
    return ratio


def bench_size() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "app.bin"
        image.write_bytes(os.urandom(64 * 1024))
        description = parse_description({
            "sequence-number": 1,
            "vendor-domain": "example.com",
            "class-name": "board",
            "components": [{"id": ["0x00"], "image": "app.bin",
                            "uri": "https://fw.example.com/app.bin"}],
        }, base=Path(tmp))
    envelope = codec.build_envelope(description.manifest)
    signed = sign_envelope(envelope, crypto.generate_private_key("ES256").signer())
    size = len(codec.encode_envelope(signed))
    print(f"single-image envelope signed with ES256: {size} bytes (manifest "
          f"{len(signed.manifest_bytes)} bytes; target <= 300; the spec's example 0: 237)")
    return size


if __name__ == "__main__":
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")
    bench_verify()
    bench_size()
