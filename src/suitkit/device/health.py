"""The health window after an update (issue #13, health-gated rollouts): the agent watches the
application it just started before the bootloader confirms it.

With a ``HealthConfig`` in ``device.json`` the agent does not confirm a new image as soon as it
started: it reports ``succeeded`` (the update is installed and runs) and opens a *watch*,
kept in ``DIR/agent/health.json`` (written atomically, so an agent restart resumes it), for
``window`` seconds. At every check (``check``) it looks at

- the application's process (Linux-class devices, ``app.pid``): one that died is a crash; up
  to ``max_crashes`` crashes the application is started again (the Invocation Procedure on
  the running images), one more is unhealthy;
- the health ``command`` (exit status 0) and the health ``url`` (a 2xx answer), each within
  ``timeout`` seconds;
- the SUIT report of the install (its result), recorded once when the watch opens.

A failed check makes the watch ``unhealthy`` for good (a flapping application is not
healthy). The agent sends each result to the tracker (``POST .../health``); the tracker may
answer (or say at the next check-in) that the device must roll back: the agent then boots
without confirming and the bootloader reverts to the previous image (its ordinary revert of an
unconfirmed image), and reports ``rolled-back``. When the window ends the image is confirmed
(also an unhealthy one the tracker did not order back: a device is never left on trial).

Deliberately not here: talking to the tracker (``device.agent``), booting (the bootloader).
Every record is bounded: at most ``MAX_RECORDS`` records of ``MAX_TEXT`` characters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from suitkit.device.config import HealthConfig
from suitkit.errors import DecodeError
from suitkit.fileio import atomic_write

__all__ = ["MAX_RECORDS", "MAX_TEXT", "Watch", "check", "close_watch", "load_watch",
           "open_watch", "watch_path"]

MAX_RECORDS = 16
MAX_TEXT = 256
WATCH_FILE = "health.json"


@dataclass(frozen=True, slots=True)
class Watch:
    """An open health window: the release, when it started (wall clock, seconds since the
    epoch: it must survive an agent restart), its length, and what the checks found."""

    release: str
    started: float
    window: float
    status: str = "watching"
    checks: int = 0
    failures: int = 0
    crashes: int = 0
    records: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    sequence: int | None = None
    """The sequence number the update runs (of the boot set's first image): a device found
    running another one inside the window was reverted by a reboot."""

    def over(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.started + self.window

    def left(self, now: float | None = None) -> float:
        return max(0.0, self.started + self.window - (time.time() if now is None else now))

    def record(self, check: str, ok: bool, detail: str = "") -> Watch:
        """One more check's result (the newest ``MAX_RECORDS`` kept)."""
        entry = {"check": check[:32], "ok": ok, "detail": detail[:MAX_TEXT]}
        return replace(self, checks=self.checks + 1, failures=self.failures + (not ok),
                       status=self.status if ok else "unhealthy",
                       records=(*self.records, entry)[-MAX_RECORDS:])

    def report(self, status: str | None = None, detail: str = "") -> dict[str, Any]:
        """The body of ``POST .../health``."""
        return {"release": self.release, "status": status or self.status,
                "window": self.window, "checks": self.checks, "failures": self.failures,
                "crashes": self.crashes, "records": list(self.records),
                "detail": detail[:MAX_TEXT]}

    def to_json(self) -> bytes:
        return json.dumps({"release": self.release, "started": self.started,
                           "window": self.window, "status": self.status,
                           "checks": self.checks, "failures": self.failures,
                           "crashes": self.crashes, "records": list(self.records),
                           "sequence": self.sequence}).encode()


def watch_path(folder: Path) -> Path:
    return folder / "agent" / WATCH_FILE


def load_watch(folder: Path) -> Watch | None:
    """The open watch of the device in ``folder``, ``None`` when there is none.

    Raises:
        DecodeError: ``health.json`` is unreadable (naming the file).
    """
    path = watch_path(folder)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DecodeError(str(path), f"unreadable: {e}") from None
    try:
        records = tuple(dict(r) for r in doc.get("records", ())[-MAX_RECORDS:])
        sequence = doc.get("sequence")
        return Watch(str(doc["release"])[:128], float(doc["started"]), float(doc["window"]),
                     str(doc.get("status", "watching")), int(doc.get("checks", 0)),
                     int(doc.get("failures", 0)), int(doc.get("crashes", 0)), records,
                     int(sequence) if sequence is not None else None)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DecodeError(str(path), f"malformed: {e}") from None


def save_watch(folder: Path, watch: Watch) -> None:
    path = watch_path(folder)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, watch.to_json())


def open_watch(folder: Path, release: str, config: HealthConfig, *,
               report_ok: bool | None = None, records: int = 0,
               sequence: int | None = None) -> Watch:
    """Open the health window of ``release`` now; ``report_ok``: the install's SUIT report
    succeeded (``None``: no report); ``sequence``: what the device runs now."""
    watch = Watch(release, time.time(), config.window, sequence=sequence)
    if report_ok is not None:
        watch = watch.record("suit-report", report_ok,
                             f"the install's SUIT report: {'success' if report_ok else 'failure'}"
                             f", {records} records")
    save_watch(folder, watch)
    return watch


def close_watch(folder: Path) -> None:
    watch_path(folder).unlink(missing_ok=True)


def check(folder: Path, watch: Watch, config: HealthConfig, *,
          pid_file: Path | None, restart: Callable[[], str]) -> Watch:
    """One round of checks (saved before it returns). ``pid_file``: the application's
    (``None``: nothing runs as a process, e.g. a microcontroller); ``restart``: start the
    application again after a crash (a line saying what ran; raises on failure)."""
    pid = _pid(pid_file) if pid_file is not None else None
    if pid_file is not None:
        if pid is not None and _alive(pid):
            watch = watch.record("process", True, f"pid {pid} runs")
        else:
            watch = replace(watch, crashes=watch.crashes + 1)
            if watch.crashes > config.max_crashes:
                watch = watch.record("process", False, f"the application is not running "
                                     f"(crash {watch.crashes}; at most {config.max_crashes})")
            else:
                try:
                    line = restart()
                    watch = watch.record("process", True, f"crash {watch.crashes} of at most "
                                         f"{config.max_crashes}; restarted: {line}")
                    pid = _pid(pid_file)
                except Exception as e:  # noqa: BLE001 - any failure to start is unhealthy
                    watch = watch.record("process", False, f"restart failed: {e}")
    if config.command is not None:
        watch = watch.record("command", *_command(config.command, pid, config.timeout))
    if config.url is not None:
        watch = watch.record("url", *_url(config.url, config.timeout))
    save_watch(folder, watch)
    return watch


def _pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie child of this process is reaped: not alive)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command(command: str, pid: int | None, timeout: float) -> tuple[bool, str]:
    argv = [p.replace("{pid}", str(pid) if pid is not None else "") for p in shlex.split(command)]
    if not argv:
        return False, "the health command is empty"
    try:
        # the command is the device owner's (device.json), not the network's
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                              stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{argv[0]} did not finish within {timeout:g} s"
    except OSError as e:
        return False, f"cannot run {argv[0]!r}: {e.strerror or e}"
    if done.returncode != 0:
        return False, f"{argv[0]} exited with status {done.returncode}"
    return True, f"{argv[0]} exited 0"


def _url(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with httpx.stream("GET", url, timeout=timeout) as response:
            status = response.status_code  # the body is not read: a status is enough
    except httpx.HTTPError as e:
        return False, f"GET {url[:100]}: {type(e).__name__}: {str(e)[:100]}"
    if not 200 <= status < 300:
        return False, f"GET {url[:100]}: HTTP {status}"
    return True, f"GET {url[:100]}: HTTP {status}"
