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
