"""``suitkit deploy``: how it names a release (the end-to-end path is tests/test_readme.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.test_cli import one_error_line, run
from suitkit.cli.deploy import release_id_of
from suitkit.core.codec import decode_envelope

from helpers import vector


def test_an_envelope_file_names_the_release_by_its_manifest_digest(tmp_path: Path) -> None:
    data = vector("example0")
    envelope = tmp_path / "release.suit"
    envelope.write_bytes(data)
    expected = decode_envelope(data).authentication.digest.value.hex()
    assert release_id_of(str(envelope)) == expected
    assert release_id_of(expected) == expected


@pytest.mark.parametrize(("argument", "says"), [
    ("not-a-digest", "expected a release id"),
    ("ABCDEF" * 11, "expected a release id"),
])
def test_a_release_that_is_neither_an_id_nor_a_file_is_bad_usage(
        capsys: pytest.CaptureFixture[str], argument: str, says: str) -> None:
    code, _, err = run(capsys, "deploy", argument, "--device", "d", "--server",
                       "http://127.0.0.1:9", "--token-file", "/nonexistent")
    assert code == 2
    assert says in one_error_line(err)


def test_a_file_that_is_not_an_envelope_is_bad_usage(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    junk = tmp_path / "junk.suit"
    junk.write_bytes(b"\xa1\x01")
    code, _, err = run(capsys, "deploy", str(junk), "--device", "d", "--server",
                       "http://127.0.0.1:9", "--token-file", "/nonexistent")
    assert code == 2
    assert "not a SUIT envelope" in one_error_line(err)
