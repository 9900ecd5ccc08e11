"""Test helpers: the spec's test vectors (copied from the SUIT drafts into tests/vectors)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"

SIGNED_EXAMPLES = ["example0", "example1", "example2", "example2-severed", "example3",
                   "example4", "example5"]
UNSIGNED_EXAMPLES = ["example0-unsigned", "example1-unsigned", "example2-severed-unsigned",
                     "example3-unsigned", "example4-unsigned", "example5-unsigned"]
TRUST_DOMAIN_EXAMPLES = ["trust-domains-example0_dependent", "trust-domains-example1_process",
                         "trust-domains-example2_integrated"]
ENCRYPTION_MANIFESTS = ["encryption-suit-manifest-aes-kw-content",
                        "encryption-suit-manifest-aes-kw",
                        "encryption-suit-manifest-aes-kw-slot",
                        "encryption-suit-manifest-es-ecdh-content",
                        "encryption-suit-manifest-es-ecdh-dependency"]
ALL_ENVELOPES = SIGNED_EXAMPLES + UNSIGNED_EXAMPLES + TRUST_DOMAIN_EXAMPLES + ENCRYPTION_MANIFESTS


def vector(name: str) -> bytes:
    """The bytes of ``tests/vectors/NAME.hex``."""
    return bytes.fromhex((VECTORS / f"{name}.hex").read_text().strip())


def example_public_pem() -> bytes:
    return (VECTORS / "example-key-public.pem").read_bytes()


def example_private_pem() -> bytes:
    return (VECTORS / "example-key-private.pem").read_bytes()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``suitkit ARGS`` in-process through the real entry point: (exit code, out, err)."""
    from suitkit.cli.main import main

    argv = sys.argv
    sys.argv = ["suitkit", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err
