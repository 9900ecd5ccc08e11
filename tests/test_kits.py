"""The shared test kits hold their promises under load: a process a test starts is stopped
whatever happens (a failed start included), with every child it started; a database is made
even while a session lingers on its template."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import serve_kit
from pg import PostgresCluster
from serve_kit import serving, start_process, stop_process


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie no one reaped yet is gone too
        return stat.read().split()[2] == "Z"


def test_a_server_whose_readiness_wait_fails_is_stopped(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The readiness wait gives up (as on a loaded machine): the server it started is stopped
    by its pid before the failure propagates (it used to keep running after the test)."""
    started: list[Any] = []

    def gives_up(process: Any, url: str, timeout: float) -> bool:
        started.append(process)
        raise AssertionError(f"suitkit serve did not answer {url} within {timeout} s")

    monkeypatch.setattr(serve_kit, "_wait_ready", gives_up)
    (tmp_path / "a.pub").write_bytes(
        (Path(__file__).parent / "vectors" / "example-key-public.pem").read_bytes())
    with pytest.raises(AssertionError, match="did not answer"), serving(
            ["--data", str(tmp_path / "data"), "--author-anchor", str(tmp_path / "a.pub")]):
        pytest.fail("never reached")
    (process,) = started
    assert process.poll() is not None, "the server still runs"


def test_stop_process_stops_the_children_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
            f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(300)")
    process = start_process([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child's pid was not written within 60 s"
            time.sleep(0.02)
        child = int(pid_file.read_text())
    finally:
        stop_process(process)
    assert process.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 30
    while not _gone(child):
        assert time.monotonic() < deadline, f"the grandchild {child} still runs"
        time.sleep(0.02)


def test_a_database_is_made_while_a_session_lingers_on_its_template(
        postgres: PostgresCluster) -> None:
    """CREATE DATABASE ... TEMPLATE fails after 5 s while another session is connected to the
    template (a connection a test leaked, or a backend slow to exit on a loaded machine)."""
    template = postgres.database().rsplit("/", 1)[1]
    lingering = psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres "
                                f"dbname={template}", autocommit=True, connect_timeout=30)
    try:
        url = postgres.database(template)
        assert url.rsplit("/", 1)[1] != template
    finally:
        lingering.close()


def test_a_tracker_whose_probed_ports_were_taken_meanwhile_starts_on_others(
        tmp_path: Path) -> None:
    """Another test run took the UDP and TCP ports ``Tracker`` probed before it bound them (as
    when two ``make test`` share the machine): its first start takes new ports instead of
    failing the whole module."""
    from notice_kit import Tracker
    from suitkit.core import crypto
    from suitkit.core.verify import TrustAnchors

    anchors = TrustAnchors.of(crypto.generate_private_key("EdDSA").public_key())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        taken = (tcp.getsockname()[1], udp.getsockname()[1])
        tracker = Tracker(tmp_path / "data", anchors, port=taken[0], coap_port=taken[1])
        try:
            tracker.start()
            assert tracker.port != taken[0] and tracker.coap_port != taken[1]
            assert httpx.get(f"{tracker.url}/api/v1/releases", timeout=30).status_code == 200
        finally:
            tracker.stop()


def test_a_run_stopped_with_sigterm_still_stops_what_its_tests_started(tmp_path: Path) -> None:
    """SIGTERM to pytest (a CI time-out, ``kill PID``) runs the fixtures' finalizers as Ctrl-C
    does, so a server or PostgreSQL a fixture started is stopped (tests/conftest.py); with
    SIGTERM's default action the run died and left them running."""
    marker = tmp_path / "finalized"
    started = tmp_path / "started"
    case = tmp_path / "test_waits.py"  # outside tests/: no other run may collect it
    case.write_text(
        "import time\nfrom pathlib import Path\nimport pytest\n\n"
        "@pytest.fixture\ndef resource():\n"
        f"    Path({str(started)!r}).write_text('up')\n"
        "    try:\n        yield\n    finally:\n"
        f"        Path({str(marker)!r}).write_text('stopped')\n\n"
        "def test_waits(resource):\n    time.sleep(120)\n")
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(tests), os.environ.get("PYTHONPATH")]))}
    run = start_process([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "-p", "conftest", str(case)], cwd=tmp_path, env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert run.poll() is None, "the inner pytest run ended before its fixture started"
            assert time.monotonic() < deadline, "the inner pytest's fixture did not start in 60 s"
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        assert marker.read_text() == "stopped"
    finally:
        stop_process(run)
