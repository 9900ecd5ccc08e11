"""Updating the updater on Linux-class devices: the agent as a component, and its launcher.

The device agent (``device.agent``) is one more component of a Linux-class device made with
``create_device(..., agent=True)``: SUIT component ``['suitkit', 'agent']`` (``AGENT_ID``), the
image ``agent`` in each A/B slot directory of :class:`~suitkit.bootloader.fsslots.FsBootloader`,
beside the application. Its image is a Python zip application (``python -m zipapp``, run as
``python agent.image``; ``build_agent_pyz``) whose ``__main__`` runs the suitkit command line.
An update of it is an ordinary SUIT update of that component, so everything the device does
for an image holds for the agent too: verified before anything is written, streamed into the
inactive slot beside the running one (the download journal resumes it), checked as the next
boot will, marked pending in one atomic write, switched by one ``rename`` of ``current``,
tried once, confirmed or reverted; the security counter of ``agent`` refuses older agents.

Who owns the switch: the **launcher** (``supervise``, ``suitkit device launch``), a small loop
that the installed suitkit runs and that no update replaces (the equivalent of stage 0 on MCU
shapes: ``bootloader.stage0``). It

1. boots the slots (``FsBootloader.boot``: a pending update goes on trial; a trial that was
   never confirmed is reverted), starts the application's Invocation Procedure when the device
   has one, and starts the agent from the active slot (the factory agent, the launcher's own
   suitkit, when no slot holds a verified agent: the recovery path of a fresh or damaged
   device);
2. when the slots are on trial, waits at most ``confirm_deadline`` seconds for the new agent to
   confirm. The **confirm step** is the new agent's first successful check-in with the tracker
   (``device.agent.run_once``): only then does it call ``confirm``, so an agent that does not
   start, crashes, or cannot reach the tracker is never confirmed. If the agent exits first, or
   the deadline passes (it is stopped by its pid and process group), the launcher writes the
   reason (``agent/selfupdate.json``) and boots again: the slots revert, the previous agent
   starts, reads the reason and reports the release ``rolled-back`` with it;
3. otherwise supervises the agent: exit status ``HANDOVER_EXIT`` (75) means "an update is
   pending, boot it" (every update of such a device, the agent's or the application's, is
   booted by the launcher and confirmed by the agent's check-in, so the agent always runs from
   the active slot, never from the slot the next update overwrites); any other exit restarts
   the agent after a bounded backoff.

One launcher runs a device (``DIR/agent/launch.lock``, an advisory lock the kernel drops with
its holder), and the agent dies with its launcher (``PR_SET_PDEATHSIG`` on Linux).

A power cut or ``kill -9`` at any moment leaves a working agent: before ``mark_pending`` the old
slot is untouched and the next launch runs it (the agent resumes the install); after it, the
next launch tries the new agent; during the trial (before the confirm), the next launch
reverts; after the confirm, the new agent runs. The state is the bootloader's (``state.json``,
written atomically); the launcher keeps none of its own except the failure note.

Not here: installing Python itself or the agent's dependencies (the zip holds suitkit only; the
interpreter and its site-packages are the platform's, like a RAUC rootfs's), and service
management (run ``suitkit device launch`` from systemd or an init script with restart on exit).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suitkit.device.config import AGENT_ID, AGENT_IMAGE
from suitkit.device.invoke import (
    Launcher,
    ProcessLauncher,
    RecordingLauncher,
    invoke_running,
)
from suitkit.device.wiring import OpenDevice, open_device
from suitkit.errors import PolicyError, StorageError, SuitError
from suitkit.fileio import atomic_write

__all__ = [
    "AGENT_ID",
    "AGENT_IMAGE",
    "HANDOVER_EXIT",
    "LaunchOptions",
    "agent_on_trial",
    "build_agent_pyz",
    "clear_note",
    "has_agent",
    "read_note",
    "slot_phase",
    "supervise",
]

HANDOVER_EXIT = 75
"""The agent's exit status when it has staged a new agent: the launcher boots it (EX_TEMPFAIL)."""
NOTE = "selfupdate.json"
"""``DIR/agent/selfupdate.json``: why the launcher reverted a new agent (for the old one to
report)."""
_MAX_NOTE = 4096


def has_agent(opened: OpenDevice) -> bool:
    """Whether the agent is a component of this device (``create_device(agent=True)``)."""
    return opened.config.component(AGENT_ID) is not None


def slot_phase(opened: OpenDevice) -> str | None:
    """The phase of a Linux-class device's slots (``trial``, ``tried``, ``confirmed``,
    ``reverted``, ``none``; ``bootloader.decide.Phase``), or ``None`` on other shapes."""
    if opened.config.shape != "linux":
        return None
    return str(opened.bootloader.read_state().phase.value)  # type: ignore[attr-defined]


def agent_on_trial(opened: OpenDevice) -> bool:
    """Whether this device's agent runs on trial: it has an agent component and its slots are
    on trial (the launcher booted a new set and nobody confirmed it yet)."""
    return has_agent(opened) and slot_phase(opened) in ("trial", "tried")


def _note_path(folder: Path) -> Path:
    return folder / "agent" / NOTE


def write_note(folder: Path, reason: str) -> None:
    """Record why a new agent was reverted (atomically)."""
    path = _note_path(folder)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, json.dumps({"reason": reason[:1024], "time": time.time()}).encode())


def read_note(folder: Path) -> str | None:
    """The reason the launcher reverted a new agent, or ``None`` (an unreadable note is a
    reason of its own: the launcher wrote it, then something damaged it)."""
    path = _note_path(folder)
    try:
        if path.stat().st_size > _MAX_NOTE:
            return "the launcher's note is too large to read"
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "the launcher's note is unreadable"
    reason = doc.get("reason") if isinstance(doc, dict) else None
    return str(reason)[:1024] if reason else "the launcher gave no reason"


def clear_note(folder: Path) -> None:
    _note_path(folder).unlink(missing_ok=True)


def build_agent_pyz(source: Path, out: Path, *, version: str | None = None,
                    main: str | None = None) -> bytes:
    """Build an agent image: a zip application of the suitkit package at ``source`` (the
    ``suitkit`` directory), its ``__main__`` running the command line; ``version`` replaces
    ``__version__``, ``main`` replaces the ``__main__`` (for tests: a broken agent). The zip is
    deterministic (fixed times, sorted names); returns its bytes (also written to ``out``).

    Raises:
        StorageError: ``source`` is not the suitkit package, or ``out`` cannot be written.
    """
    if not (source / "__init__.py").is_file():
        raise StorageError(f"{source}: not the suitkit package (no __init__.py)")
    entry = main if main is not None else (
        "from suitkit.cli.main import main\nmain()\n")
    stamp = (2020, 1, 1, 0, 0, 0)
    with tempfile.SpooledTemporaryFile() as buffer:
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(zipfile.ZipInfo("__main__.py", stamp), entry)
            for path in sorted(source.rglob("*")):
                if not path.is_file() or "__pycache__" in path.parts \
                        or path.suffix in (".so", ".pyc", ".c"):
                    continue  # the C fast path is optional: the pure decoder runs from a zip
                name = "suitkit/" + path.relative_to(source).as_posix()
                data = path.read_bytes()
                if version is not None and name == "suitkit/__init__.py":
                    data = b"\n".join(
                        f'__version__ = "{version}"'.encode() if line.startswith(b"__version__")
                        else line for line in data.split(b"\n"))
                zf.writestr(zipfile.ZipInfo(name, stamp), data)
        buffer.seek(0)
        content = buffer.read()
    atomic_write(out, content)
    return content


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """How ``supervise`` runs the agent.

    ``agent_args``: what follows ``device run DIR`` (``--server``, ``--credential-file``, the
    mode...). ``confirm_deadline``: seconds a new agent has to confirm (check in).
    ``backoff``/``max_backoff``: the wait before restarting an agent that exited.
    ``python``: the interpreter that runs the agent images.
    """

    agent_args: tuple[str, ...] = ()
    confirm_deadline: float = 120.0
    backoff: float = 1.0
    max_backoff: float = 30.0
    python: str = sys.executable
    poll: float = 0.2

    def check(self) -> None:
        """Raises: ValueError: an inconsistent option (one line)."""
        if not 0 < self.confirm_deadline <= 86400:
            raise ValueError(f"the confirm deadline must be in (0, 86400] seconds, got "
                             f"{self.confirm_deadline}")
        if not 0 < self.backoff <= self.max_backoff:
            raise ValueError("backoff must be > 0 and at most the max backoff")


FACTORY = ("-c", "from suitkit.cli.main import main; main()")
"""The factory agent: the launcher's own suitkit (when no slot holds a verified agent)."""


def _agent_argv(opened: OpenDevice, options: LaunchOptions) -> tuple[list[str], str]:
    """The agent's command line and what it runs: the verified agent image of the active slot,
    or the factory agent."""
    folder = str(opened.config.directory)
    run = ["device", "run", folder, *options.agent_args]
    bootloader: Any = opened.bootloader  # an FsBootloader (linux shape: has_agent)
    if has_agent(opened) and opened.config.shape == "linux":
        observation = bootloader.observe()  # verifies the slots, as the boot did
        names = bootloader.components
        check = observation.primary[names.index(AGENT_IMAGE)]
        if check.info is not None and check.verdict.name == "GOOD":
            image = bootloader.slot_dir(observation.state.active) / f"{AGENT_IMAGE}.image"
            return ([options.python, str(image.resolve()), *run],
                    f"agent #{check.info.sequence_number} from slot "
                    f"{observation.state.active}")
    return [options.python, *FACTORY, *run], "the factory agent"


class _AppLauncher:
    """The Invocation Procedure at the launcher's boot: the application is started as
    ``device.agent`` would; the agent image is started by the launcher itself."""

    def __init__(self, inner: Launcher) -> None:
        self._inner = inner

    def launch(self, image: str, reader: Any, arguments: bytes | None) -> str:
        if image == AGENT_IMAGE:
            return "agent: started by the launcher"
        return self._inner.launch(image, reader, arguments)


class _AppDidNotStart(Exception):
    """The Invocation Procedure of a booted set failed (the trial fails)."""


def _boot(opened: OpenDevice) -> tuple[bool, str]:
    """One boot of the slots and the application's start: ``(on trial, what happened)``.

    Raises:
        SuitError: no slot can boot (``NoBootableImage``) or a slot is unreadable.
        _AppDidNotStart: the application did not start.
    """
    result = opened.bootloader.boot()
    config = opened.config
    if config.app_command is not None:
        inner: Launcher = ProcessLauncher(config.app_command, config.directory / "app.pid")
    else:
        inner = RecordingLauncher()
    images = ", ".join(f"{i.name} #{i.sequence_number}" for i in result.images)
    try:
        invoked = invoke_running(config, opened.bootloader, _AppLauncher(inner),
                                 extensions=opened.extensions)
    except SuitError as e:
        raise _AppDidNotStart(f"booted {images}, but its manifests do not verify: {e}"
                              ) from None
    failures = [r.reason for r in invoked.results if not r.succeeded]
    if failures:
        raise _AppDidNotStart(f"booted {images}, but the application did not start: "
                              f"{failures[0]}")
    return result.trial, f"booted {images}" + (" (on trial)" if result.trial else "")


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop the agent by its pid: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _confirmed(folder: Path) -> bool:
    try:
        return slot_phase(open_device(folder)) == "confirmed"
    except SuitError:
        return False


def supervise(folder: Path, options: LaunchOptions, *, say: Callable[[str], None],
              stop: threading.Event | None = None, max_starts: int | None = None) -> int:
    """Boot, start the agent, watch a new one until it confirms or revert it; forever (until
    ``stop`` is set, or ``max_starts`` agents were started). Returns the number of agents
    started.

    Raises:
        ValueError: inconsistent options.
        SuitError: the device folder cannot be opened (PolicyError: its agent is not a
            component).
    """
    options.check()
    stop = stop or threading.Event()
    if not has_agent(open_device(folder)):  # a clear error now for any other folder
        raise PolicyError(f"{folder}: the launcher runs a Linux-class device whose agent is a "
                          "component (suitkit device init --shape linux --agent); run this "
                          "one with suitkit device run")
    with _only_launcher(folder):
        return _supervise(folder, options, say, stop, max_starts)


@contextlib.contextmanager
def _only_launcher(folder: Path) -> Iterator[None]:
    """Hold ``DIR/agent/launch.lock`` (an advisory lock the kernel drops when the launcher
    dies, however it dies): two launchers never run one device.

    Raises:
        PolicyError: another launcher holds it.
    """
    path = folder / "agent" / "launch.lock"
    try:
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StorageError(f"{path}: cannot open the launcher's lock: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PolicyError(f"{folder}: another launcher runs this device (it holds "
                              f"{path})") from None
        yield
    finally:
        os.close(fd)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the agent gets SIGKILL when the launcher dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _supervise(folder: Path, options: LaunchOptions, say: Callable[[str], None],
               stop: threading.Event, max_starts: int | None) -> int:
    starts = failures = 0
    while not stop.is_set() and (max_starts is None or starts < max_starts):
        opened = open_device(folder)
        try:
            trial, line = _boot(opened)
        except OSError as e:  # a full or failing disk: try again later, never a traceback
            say(f"boot: {e.strerror or e}; trying again in {options.max_backoff:g} s")
            stop.wait(options.max_backoff)
            continue
        except SuitError as e:  # NoBootableImage: a fresh or damaged device
            trial, line = False, f"no bootable slot ({e}): the factory agent runs"
        except _AppDidNotStart as e:
            say(str(e))
            if agent_on_trial(opened):  # the new set's trial has failed
                write_note(folder, str(e))
                continue  # the next boot reverts
            trial, line = False, str(e)
        say(line)
        argv, what = _agent_argv(opened, options)
        # argv: this interpreter, and an image the bootloader verified (or our own suitkit).
        # The agent stays in the launcher's process group and dies with the launcher (a kill -9
        # of the launcher alone included): a launcher started again never finds a second agent
        # working on the same folder.
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # noqa: S603
                                   preexec_fn=_die_with_parent)  # noqa: PLW1509
        say(f"starting {what} (pid {process.pid})")
        starts += 1
        try:
            code = _watch(folder, process, options, say, stop, trial=trial)
        finally:
            if process.poll() is None:
                _stop(process)
        if code is None:
            continue  # a failed trial: the next boot reverts
        if code == HANDOVER_EXIT:
            failures = 0
            say("the agent staged a new agent: booting it")
            continue
        failures += 1
        delay = min(options.max_backoff, options.backoff * 2 ** (failures - 1))
        say(f"the agent exited with status {code}; restarting it in {delay:.1f} s")
        stop.wait(delay)
    return starts


def _watch(folder: Path, process: subprocess.Popen[bytes], options: LaunchOptions,
           say: Callable[[str], None], stop: threading.Event, *, trial: bool) -> int | None:
    """Wait for the agent: its exit status, or ``None`` when it was on trial and did not
    confirm in time (it is stopped, the reason noted)."""
    if trial:
        deadline = time.monotonic() + options.confirm_deadline
        while not stop.is_set():
            if _confirmed(folder):
                say("the new agent checked in and confirmed itself")
                clear_note(folder)
                break
            code = process.poll()
            if code is not None:
                reason = (f"the new agent exited with status {code} before it checked in")
                say(reason)
                write_note(folder, reason)
                return None
            if time.monotonic() >= deadline:
                reason = (f"the new agent did not check in within "
                          f"{options.confirm_deadline:g} s; stopped")
                say(reason)
                _stop(process)
                write_note(folder, reason)
                return None
            stop.wait(options.poll)
    while not stop.is_set():
        code = process.poll()
        if code is not None:
            return code
        stop.wait(options.poll)
    return 0
