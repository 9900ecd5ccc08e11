"""The README's "A first update, by hand", run exactly as written (issue #11 item 17).

The section's three ``sh`` blocks are taken from README.md itself: the author's block, the
server's block (run in the background, as in its second terminal) and the operator's and device's
block. Only the port is changed (8080 to a free one, so that two runs can share the machine).
Then the device must run the release the README built, confirmed, and the tracker must say so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from hashlib import sha256
from pathlib import Path

import httpx
import pytest

from serve_kit import READY, free_port, start_process, stop_process

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## A first update, by hand"
_START_TIMEOUT = READY
_STEP_TIMEOUT = 180.0


def walk_blocks() -> list[str]:
    """The ``sh`` code blocks of the README's walk, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end >= 0 else len(text)]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def _env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SUITKIT_") or key == "SUITKIT_NO_EXTENSION"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    env["COLUMNS"] = "100"
    return env


def _run(script: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=_STEP_TIMEOUT, check=False)
    assert done.returncode == 0, (
        f"README step exited {done.returncode}\n--- script\n{script}\n--- stdout\n"
        f"{done.stdout}\n--- stderr\n{done.stderr}")
    return done.stdout


def _wait_ready(server: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        assert server.poll() is None, (
            f"the README's suitkit serve exited {server.returncode}: {log.read_text()}")
        try:
            httpx.get(f"{url}/api/v1/releases", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"the README's suitkit serve did not answer HTTP at {url} within "
                f"{_START_TIMEOUT:.0f} s: {log.read_text()}")


def test_readme_walk_updates_a_device(tmp_path: Path) -> None:
    blocks = walk_blocks()
    assert len(blocks) == 3, f"expected the author's, the server's and the device's blocks, " \
        f"found {len(blocks)}"
    author, serve, operate = blocks
    assert serve.strip().startswith("suitkit serve"), serve
    port = free_port()
    serve, operate = (block.replace("8080", str(port)) for block in (serve, operate))
    env = _env(tmp_path)
    work = tmp_path / "walk"
    work.mkdir()

    _run(author, work, env)
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = start_process(["bash", "-euo", "pipefail", "-c", serve], cwd=work, env=env,
                               stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_ready(server, f"http://127.0.0.1:{port}", log)
        printed = _run(operate, work, env)
    finally:
        stop_process(server)  # the server and its bash, by pid and process group

    # The device runs the image the README made, confirmed, and counts its sequence number.
    status = subprocess.run(["suitkit", "device", "status", "my-device", "--json"], cwd=work,
                            env=env, capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(status.stdout)
    image_digest = sha256((work / "app.bin").read_bytes()).hexdigest()
    assert doc["phase"] == "confirmed" and not doc["pending"] and not doc["trial"], doc
    (app,) = doc["components"]
    assert app["running"] == {"sequence-number": 1, "digest": image_digest}, app
    assert app["counter"] == 1, app
    # What the README's commands printed: the agent's last step and the tracker's record.
    assert "succeeded: running sequence number 1" in printed, printed
    assert "state: succeeded" in printed, printed
