"""``suitkit serve --lwm2m-port``: the LwM2M server edge in the real CLI process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import aiocoap  # type: ignore[import-untyped]
import httpx
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from device.device_kit import Author
from serve_kit import SUITKIT, free_port, serving


def _serve(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    author = Author.create(tmp_path / "author")
    return subprocess.run(
        [*SUITKIT, "serve", "--data", str(tmp_path / "data"), "--author-anchor",
         str(author.anchor), *extra], capture_output=True, text=True, timeout=60, check=False)


def test_lwm2m_port_without_nosec_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("t" * 32)
    done = _serve(tmp_path, "--admin-token-file", str(tmp_path / "admin.token"),
                  "--lwm2m-port", "5999")
    assert done.returncode == 2, done.stderr
    assert "add --lwm2m-nosec" in done.stderr and "Traceback" not in done.stderr


def test_lwm2m_port_without_the_tracker_is_a_usage_error(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--lwm2m-port", "5999", "--lwm2m-nosec")
    assert done.returncode == 2, done.stderr
    assert "--lwm2m-port needs --admin-token-file" in done.stderr


def test_serve_runs_the_lwm2m_server_on_its_port(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author")
    (tmp_path / "admin.token").write_text("cli-admin-token\n")
    port = free_port(socket.SOCK_DGRAM)
    argv = ["--data", str(tmp_path / "data"), "--author-anchor", str(author.anchor),
            "--admin-token-file", str(tmp_path / "admin.token"), "--lwm2m-port", str(port),
            "--lwm2m-nosec"]
    with serving(argv) as server:
        admin = {"Authorization": "Bearer cli-admin-token"}
        device = httpx.post(f"{server.url}/api/v1/devices", json={"name": "d"}, headers=admin,
                            timeout=15).json()

        async def register() -> object:
            ctx = await aiocoap.Context.create_client_context()
            try:
                message = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/rd",
                                          payload=b"</5/0>")
                message.opt.uri_query = (f"ep={device['id']}", "lt=60")
                return await asyncio.wait_for(ctx.request(message).response, 30)
            finally:
                await ctx.shutdown()

        response = asyncio.run(register())
        assert response.code == Code.CREATED  # type: ignore[attr-defined]
    assert f"LwM2M on coap://127.0.0.1:{port}/rd (NoSec)" in server.stdout


def _device_run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``suitkit device run`` of a new device folder with ``extra`` options."""
    from device.device_kit import new_device
    from suitkit.device.config import load_config

    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "device", [author.anchor])
    credential = tmp_path / "device.cred"
    credential.write_text(f"{load_config(folder).device_id}.secret\n")
    return subprocess.run(
        [*SUITKIT, "device", "run", str(folder), "--server", "http://127.0.0.1:9",
         "--credential-file", str(credential), "--duration", "1", *extra],
        capture_output=True, text=True, timeout=60, check=False)


def test_device_run_lwm2m_option_errors_are_one_line_usage_errors(tmp_path: Path) -> None:
    cases = [
        (("--protocol", "lwm2m"), "--protocol lwm2m needs the LwM2M server: --lwm2m"),
        (("--protocol", "lwm2m", "--lwm2m", "http://127.0.0.1:5683"),
         "must be coap://HOST:PORT, got 'http://127.0.0.1:5683'"),
        (("--protocol", "lwm2m", "--lwm2m", "coap://127.0.0.1"), "must be coap://HOST:PORT"),
        (("--protocol", "lwm2m", "--lwm2m", "coap://127.0.0.1:5683/rd"),
         "must be coap://HOST:PORT"),
        (("--protocol", "lwm2m", "--lwm2m", "coap://127.0.0.1:5683", "--lwm2m-lifetime", "0"),
         "lifetime must be 1 to 604800 seconds, got 0"),
        (("--protocol", "lwm2m", "--lwm2m", "coap://127.0.0.1:5683", "--lwm2m-delivery",
          "sideways"), "delivery must be one of pull, push, both, got 'sideways'"),
        (("--lwm2m", "coap://127.0.0.1:5683"), "--lwm2m needs --protocol lwm2m"),
        (("--protocol", "lwm2m", "--lwm2m", "coap://127.0.0.1:5683", "--lwm2m-bind",
          "203.0.113.7"), "--lwm2m-bind 203.0.113.7: cannot serve the LwM2M objects"),
    ]
    for i, (options, message) in enumerate(cases):
        done = _device_run(tmp_path / str(i), *options)
        assert done.returncode == 2, (options, done.stdout, done.stderr)
        assert message in done.stderr, (options, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
            done.stderr


def test_device_run_lwm2m_without_a_server_retries_and_ends_at_its_duration(
        tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)  # nothing listens there
    done = _device_run(tmp_path, "--protocol", "lwm2m", "--lwm2m", f"coap://127.0.0.1:{port}")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
