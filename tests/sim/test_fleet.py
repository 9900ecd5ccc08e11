"""``suitkit sim fleet``: many devices in one process against a running server, in the three
operating modes at once; every device is updated and the figures are reported."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from suitkit.cli.main import app as cli
from suitkit.sim.firmware import make_keys
from suitkit.sim.local import local_server

PER_MODE = 10


def test_a_fleet_in_every_mode_is_updated_against_a_running_server(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    out = tmp_path / "fleet.json"
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=60) as server:
        result = CliRunner().invoke(cli, [
            "sim", "fleet", "--devices", str(3 * PER_MODE), "--mode", "mixed",
            "--server", server.url,
            "--admin-token-file", str(tmp_path / "server" / "admin.token"),
            "--upload-token-file", str(tmp_path / "server" / "upload.token"),
            "--author-key", str(keys.author_key), "--dir", str(tmp_path / "fleet"),
            "--poll-interval", "0.5", "--json", str(out), "--no-live"])
    assert result.exit_code == 0, result.output
    assert f"updated {3 * PER_MODE}" in result.output
    figures = json.loads(out.read_text())
    assert figures["ok"] is True and figures["outcomes"] == {"updated": 3 * PER_MODE}
    assert figures["by_mode"] == {mode: {"updated": PER_MODE}
                                  for mode in ("poll", "push", "hybrid")}
    window = figures["window"]
    assert window["server_errors"] == 0 and window["transport_errors"] == 0
    # every device told the tracker each step and sent its SUIT report
    assert window["by_kind"]["events"] >= 5 * 3 * PER_MODE
    assert window["by_kind"]["reports"] == 3 * PER_MODE
    assert window["by_kind"]["firmware"] >= 3 * PER_MODE
    total = figures["total"]["by_kind"]
    assert total["update"] >= 2 * PER_MODE  # poll devices poll, hybrid devices ask after a notice
    assert total["notifications"] >= 2 * PER_MODE  # push streams and hybrid long-polls
    assert window["requests_per_second"] > 0 and figures["update_seconds"] > 0


def test_sim_fleet_against_a_server_needs_its_credentials(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["sim", "fleet", "--server", "http://127.0.0.1:9",
                                      "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--admin-token-file" in result.output


def test_sim_fleet_starts_its_own_server_when_none_is_given(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    result = CliRunner().invoke(cli, ["sim", "fleet", "--devices", "4", "--mode", "push",
                                      "--dir", str(tmp_path / "fleet"), "--json", str(out),
                                      "--no-live"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["outcomes"] == {"updated": 4} and figures["by_mode"] == {
        "push": {"updated": 4}}
    assert (tmp_path / "fleet" / "server" / "data" / "tracker.db").is_file()
