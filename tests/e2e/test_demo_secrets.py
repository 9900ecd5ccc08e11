"""No secret in the server's log of a whole demo run (issue #13 item 2).

The demo's own scenario (``suitkit demo``: every device shape and mode, a staged campaign,
injected faults) against a real ``suitkit serve`` with the most verbose log, in both formats;
then every secret issued during the run (the admin and upload tokens, an operator API token,
each device's credential and its secret half) is looked for in every line of that log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from suitkit.sim.control import Console
from suitkit.sim.firmware import make_keys
from suitkit.sim.fleet import Fleet
from suitkit.sim.local import local_server
from suitkit.sim.scenario import demo_plans, run_scenario


@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_no_secret_in_the_log_of_a_demo_run(tmp_path: Path, log_format: str) -> None:
    keys = make_keys(tmp_path / "keys")
    plans = demo_plans(9)
    holder: dict[str, Fleet] = {}
    with local_server(tmp_path / "server", keys.author_pub, start_timeout=60,
                      extra_args=("--log-format", log_format, "--log-level", "debug")
                      ) as server:
        summary = asyncio.run(run_scenario(
            tmp_path, server.url, server.admin_token, server.upload_token, plans, keys=keys,
            on_fleet=lambda fleet: holder.__setitem__("fleet", fleet)))
        with Console(server.url, server.admin_token) as control:
            operator = control.create_token("log-check", "operator")
            control.devices()  # the operator's token used too
        with Console(server.url, operator) as control:
            control.devices()
    assert summary.as_json(), summary
    log = server.log.read_text(errors="replace")
    lines = log.splitlines()
    assert len(lines) > 100, log  # the access log of the whole run is there
    if log_format == "json":
        requests = [json.loads(x) for x in lines if x.startswith("{")]
        assert sum("request_id" in d for d in requests) > 100
    secrets = {"admin token": server.admin_token, "upload token": server.upload_token,
               "operator token": operator}
    for device in holder["fleet"].devices:
        assert device.credential, device
        secrets[f"credential of {device.tracker_id}"] = device.credential
        secrets[f"secret of {device.tracker_id}"] = device.credential.rpartition(".")[2]
        operator_secret = operator.rpartition(".")[2]
        secrets["operator token's secret"] = operator_secret
    assert len(secrets) >= 3 + 2 * 9
    for what, secret in secrets.items():
        assert len(secret) >= 16, what
        leaked = [line for line in lines if secret in line]
        assert not leaked, f"{what} in the log: {leaked[:2]}"
