"""A description file with a syntax error is named by file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from suitkit.author.describe import load_description
from suitkit.errors import DecodeError

from helpers import run_cli


@pytest.mark.parametrize(("name", "text", "where", "what"), [
    ("flow.yaml", "sequence-number: 1\ncomponents:\n  - id: [0x00\n    image: a\n", ":4:10:",
     "expected ',' or ']'"),
    ("tab.yaml", "a: b\n\tc: d\n", ":2:1:", "'\\t' that cannot start any token"),
    ("open.yaml", "a: [\n", ":2:1:", "found '<stream end>'"),
    ("comma.json", '{"sequence-number": 1,\n "components": [,]}', ":2:17:", "Expecting value"),
    ("trailing.json", '{"a": 1,}\n', ":1:9:", "Expecting property name"),
])
def test_syntax_errors_name_file_line_and_column(tmp_path: Path, name: str, text: str,
                                                 where: str, what: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DecodeError) as raised:
        load_description(path)
    message = str(raised.value)
    assert message.startswith(f"{path}{where} not valid "), message
    assert what in message
    assert "\n" not in message


def test_the_cli_prints_it_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("sequence-number: 1\ncomponents: [\n")
    code, _out, err = run_cli(capsys, "create", path, "--out", tmp_path / "x.suit")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert f"{path}:3:1: not valid YAML" in err
