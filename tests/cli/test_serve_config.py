"""``suitkit serve --config``: flag > SUITKIT_<KEY> > TOML file > default (issue #13 item 1)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import typer.main

from device.device_kit import Author
from serve_kit import SUITKIT, serving
from suitkit.cli.config import keys_of
from suitkit.cli.server import ServeOptions
from suitkit.cli.server import app as server_app


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUITKIT_")}
    return subprocess.run([*SUITKIT, *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**environ, **(env or {})})


def shown(text: str) -> dict[str, str]:
    """``key = value  # source`` lines of --print-config, as key -> 'value  # source'."""
    lines = {}
    for line in text.splitlines():
        key, sep, rest = line.lstrip("# ").partition(" = ")
        if sep:
            lines[key] = rest
    return lines


def test_every_serve_option_has_a_key() -> None:
    group = typer.main.get_command(server_app)
    command = group.commands["serve"]  # type: ignore[attr-defined]
    options = {p.name for p in command.params} - {"config", "print_config"}
    keys = keys_of(command, ServeOptions, skip=frozenset({"config", "print_config"}))
    assert {k.name for k in keys} == options
    assert set(ServeOptions.__dataclass_fields__) == options
    by_name = {k.name: k for k in keys}
    assert by_name["db"].env == "SUITKIT_DB"
    assert by_name["max_upload_mib"].key == "max_upload_mib"


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "suitkit.toml"
    config.write_text('port = 9001\nmax_push = 5\nhost = "127.0.0.2"\nhead_timeout = 3\n'
                      'author_anchor = ["a.pub", "b.pub"]\n'
                      'db = "postgresql+psycopg://suitkit:hunter2-secret@db/suitkit"\n')
    done = run("serve", "--config", str(config), "--print-config", "--port", "9002",
               env={"SUITKIT_PORT": "9003", "SUITKIT_MAX_PUSH": "7"})
    assert done.returncode == 0, done.stderr
    lines = shown(done.stdout)
    assert lines["port"] == "9002  # flag --port"
    assert lines["max_push"] == "7  # env SUITKIT_MAX_PUSH"
    assert lines["host"] == f'"127.0.0.2"  # file {config}'
    assert lines["head_timeout"] == f"3.0  # file {config}"
    assert lines["author_anchor"] == f'["a.pub", "b.pub"]  # file {config}'
    assert lines["max_connections"] == "(not set)  # default"  # planned from the open-file limit
    assert lines["coap_port"] == "(not set)  # default"
    # the database URL's password is a secret
    assert "hunter2-secret" not in done.stdout
    assert lines["db"] == f'"postgresql+psycopg://suitkit:***@db/suitkit"  # file {config}'
    # the same through `suitkit config show` and SUITKIT_CONFIG (no flags there)
    also = run("config", "show", env={"SUITKIT_CONFIG": str(config), "SUITKIT_PORT": "9003"})
    assert also.returncode == 0, also.stderr
    assert shown(also.stdout)["port"] == "9003  # env SUITKIT_PORT"
    assert "hunter2-secret" not in also.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("prot = 8080\n", 'unknown key "prot" (known keys: '),
    ('port = "8080"\n', "key port: expected an integer, got str '8080'"),
    ("max_upload_mib = true\n", "key max_upload_mib: expected an integer, got bool"),
    ("author_anchor = 1\n", "key author_anchor: expected a list of paths"),
    ("port = \n", "is not valid TOML"),
])
def test_a_bad_config_file_is_one_line_naming_key_and_file(tmp_path: Path, text: str,
                                                             expected: str) -> None:
    config = tmp_path / "suitkit.toml"
    config.write_text(text)
    done = run("serve", "--config", str(config), "--data", str(tmp_path / "d"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"suitkit: error: config file {config}"), done.stderr
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_a_bad_environment_value_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    done = run("serve", "--data", str(tmp_path / "d"), env={"SUITKIT_HEAD_TIMEOUT": "soon"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("suitkit: error: environment variable SUITKIT_HEAD_TIMEOUT: "
                                   "expected a number, got 'soon'")
    missing = run("config", "show", "--config", str(tmp_path / "none.toml"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"suitkit: error: cannot read config file "
                                      f"{tmp_path / 'none.toml'}: No such file or directory")
    required = run("serve")
    assert required.returncode == 2
    assert required.stderr.strip() == ("suitkit: error: --data is required (or SUITKIT_DATA, "
                                       "or the key data in the --config file)")


def test_serve_runs_from_a_config_file_and_the_environment(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text("admin-config-secret\n")
    config = tmp_path / "suitkit.toml"
    config.write_text(f'data = "{tmp_path / "data"}"\n'
                      f'author_anchor = ["{author.anchor}"]\n'
                      f'admin_token_file = "{tmp_path / "admin.token"}"\n'
                      'log_level = "info"\nmax_upload_mib = 1\n')
    monkeypatch.setenv("SUITKIT_LOG_LEVEL", "warning")  # env over the file
    with serving(["--config", str(config)], timeout=30) as server:
        admin = {"Authorization": "Bearer admin-config-secret"}  # the file's token file
        assert httpx.get(f"{server.url}/api/v1/devices", headers=admin,
                         timeout=30).status_code == 200
        big = httpx.post(f"{server.url}/api/v1/releases", headers=admin, timeout=30,
                         files=[("envelope", ("e.suit", b"x" * (2 * 1024 * 1024)))])
        assert big.status_code == 413, big.text  # max_upload_mib = 1 from the file
    assert (tmp_path / "data" / "tracker.db").is_file()
    assert "GET /api/v1/devices" not in server.stderr  # log level warning: no access log


def test_operations_doc_lists_every_key() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", doc, re.MULTILINE))
    group = typer.main.get_command(server_app)
    command = group.commands["serve"]  # type: ignore[attr-defined]
    keys = {k.key for k in keys_of(command, ServeOptions,
                                   skip=frozenset({"config", "print_config"}))}
    assert keys <= listed, f"not in docs/operations.md: {sorted(keys - listed)}"


def test_any_url_password_is_redacted(tmp_path: Path) -> None:
    done = run("serve", "--print-config", "--public-url", "https://user:pa55word-x@fw.example",
               "--mqtt", "broker:1883", env={"SUITKIT_DB": "postgresql://u:db-pass-y@h/d"})
    assert done.returncode == 0, done.stderr
    assert "pa55word-x" not in done.stdout and "db-pass-y" not in done.stdout
    assert shown(done.stdout)["public_url"] == '"https://user:***@fw.example"  # flag --public-url'


def test_db_upgrade_reads_the_database_url_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    done = run("db", "upgrade", env={"SUITKIT_DB": url})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tracker database upgraded from no revision to ")
