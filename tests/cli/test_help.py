"""Every command's --help reads as prose: no type tag on flags, no markup leaking, nothing
swallowed as HTML; the root command offers shell completion."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from suitkit.cli.main import app


def _commands() -> Iterator[list[str]]:
    def walk(command: object, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


COMMANDS = list(_commands())


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "suitkit")
def test_help_has_no_markup_leaks(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text
    assert "`" not in text, [line for line in text.splitlines() if "`" in line]
    # An angle-bracket placeholder written in a help string must survive the Markdown
    # rendering (an unquoted <KEY> is taken for an HTML tag and vanishes).
    assert not re.search(r"SUITKIT_ |SUITKIT_\)|devices//|PREFIX/", text), text


def test_the_root_command_offers_completion() -> None:
    text = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "--install-completion" in text and "--show-completion" in text


def test_completion_script_names_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    # typer detects the user's shell from the parent processes (shellingham); a test run
    # started by `timeout` or a CI runner has none, so the shell is given
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    result = CliRunner().invoke(app, ["--show-completion"], prog_name="suitkit")
    assert result.exit_code == 0, result.output
    assert "_SUITKIT_COMPLETE" in result.output
