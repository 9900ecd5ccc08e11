"""The top-level Python API (suitkit.build/sign/verify/process, docs/python.md, docs/api.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import suitkit

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python.md"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_the_first_recipe_is_under_15_lines_of_top_level_imports_only() -> None:
    first = _examples()[0]
    lines = [line for line in first.splitlines() if line.strip()]
    assert len(lines) < 15, f"the recipe has {len(lines)} lines"
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert imports == ["from pathlib import Path", "import suitkit"]


@pytest.mark.parametrize("index", range(3))
def test_every_example_of_the_page_runs(index: int, tmp_path: Path) -> None:
    code = _examples()[index]
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    if "refused:" in code:
        assert run.stdout.startswith("refused: "), run.stdout


def test_the_reference_is_current() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "docs" / "apiref.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr


def _release(tmp_path: Path, image: bytes = b"firmware") -> tuple[object, bytes]:
    (tmp_path / "fw.bin").write_bytes(image)
    key = suitkit.generate_key()
    unsigned = suitkit.build({"sequence-number": 5, "vendor-domain": "example.com",
                              "class-name": "sensor", "components": [{"image": "fw.bin"}]},
                             base=tmp_path)
    return key, suitkit.sign(unsigned, key)


def test_process_refuses_a_device_of_another_class_and_writes_nothing(tmp_path: Path) -> None:
    key, envelope = _release(tmp_path)
    device = suitkit.MemoryDevice("example.com", "another-class")
    result = suitkit.process(envelope, key.public_key(), device)  # type: ignore[attr-defined]
    assert not result.succeeded
    assert "class" in result.reason
    assert device.image() == b""


def test_process_verifies_first_and_raises_on_an_untrusted_key(tmp_path: Path) -> None:
    _key, envelope = _release(tmp_path)
    device = suitkit.MemoryDevice("example.com", "sensor")
    with pytest.raises(suitkit.AuthenticationError):
        suitkit.process(envelope, suitkit.generate_key().public_key(), device)
    assert device.image() == b""


def test_a_tampered_integrated_image_is_never_installed(tmp_path: Path) -> None:
    key, envelope = _release(tmp_path, b"A" * 64)
    tampered = envelope.replace(b"A" * 64, b"B" * 64)
    assert tampered != envelope
    # The signature covers the manifest, which holds the image's digest: the envelope still
    # verifies, and the image fails image-match before anything is committed.
    suitkit.verify(tampered, key.public_key())  # type: ignore[attr-defined]
    device = suitkit.MemoryDevice("example.com", "sensor")
    result = suitkit.process(tampered, key.public_key(), device)  # type: ignore[attr-defined]
    assert not result.succeeded
    assert "digest" in result.reason
    assert device.image() == b""


def test_a_tampered_manifest_is_refused(tmp_path: Path) -> None:
    key, envelope = _release(tmp_path)
    position = envelope.index(b"fw.bin")  # first inside the manifest: its "#fw.bin" uri
    tampered = envelope[:position] + b"fX" + envelope[position + 2:]
    with pytest.raises(suitkit.SuitError):
        suitkit.verify(tampered, key.public_key())  # type: ignore[attr-defined]


def test_two_signers_and_a_policy_that_requires_both(tmp_path: Path) -> None:
    from suitkit.core.verify import TrustAnchor, TrustAnchors

    author, _ = _release(tmp_path)
    operator = suitkit.generate_key("Ed25519")
    unsigned = suitkit.build({"sequence-number": 1, "vendor-domain": "example.com",
                              "class-name": "sensor", "components": [{"image": "fw.bin"}]},
                             base=tmp_path)
    policy = TrustAnchors((TrustAnchor(author.public_key(), role="author"),  # type: ignore[attr-defined]
                           TrustAnchor(operator.public_key(), role="operator")),
                          ("author", "operator"))
    once = suitkit.sign(unsigned, author)  # type: ignore[arg-type]
    with pytest.raises(suitkit.PolicyError):
        suitkit.verify(once, policy)
    twice = suitkit.sign(once, operator)
    assert suitkit.verify(twice, policy).manifest.sequence_number == 1


def test_a_detached_payload_longer_than_declared_is_refused(tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(b"1234")
    key = suitkit.generate_key()
    uri = "https://fw.example/app.bin"
    envelope = suitkit.sign(suitkit.build(
        {"sequence-number": 1, "vendor-domain": "example.com", "class-name": "sensor",
         "components": [{"image": "app.bin", "uri": uri}]}, base=tmp_path), key)
    device = suitkit.MemoryDevice("example.com", "sensor", payloads={uri: b"12345"})
    result = suitkit.process(envelope, key.public_key(), device)
    assert not result.succeeded
    assert device.image() == b""


def test_import_suitkit_stays_cheap() -> None:
    code = "import sys, suitkit; assert 'suitkit.core.processor' not in sys.modules; " \
           "suitkit.build; assert 'suitkit.core.processor' in sys.modules"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr


def test_an_unknown_top_level_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        suitkit.nothing_here  # type: ignore[attr-defined]  # noqa: B018
