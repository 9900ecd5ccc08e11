"""``suitkit sim fleet`` piped (not a terminal): progress comes as lines of their own, never
run together with the summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import suitkit.cli.sim
from suitkit.cli.main import app


def test_piped_progress_is_lines_of_their_own(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suitkit.cli.sim, "PIPED_PROGRESS", 0.2, raising=False)
    result = CliRunner().invoke(app, ["sim", "fleet", "--devices", "3", "--mode", "poll",
                                      "--poll-interval", "0.5", "--dir", str(tmp_path),
                                      "--timeout", "120"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    progress = [line for line in lines if " | " in line and "server errors" in line]
    assert progress, result.output  # at least one progress line was printed
    for line in progress:
        assert re.match(r"\[\s*\d+\.\d s\] ", line), line  # timestamped, alone on its line
        assert "fleet of" not in line
    assert any(line.startswith("fleet of 3 ") for line in lines), result.output
