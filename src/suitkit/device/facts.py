"""What a device knows about its surroundings, for update management
(draft-ietf-suit-update-management-14 §4.2-§4.5, §5.1-§5.6; RFC 9019 §3 user consent).

``DIR/facts.json`` holds the facts the agent (or the simulator, ``suitkit device facts``)
supplies: the battery's energy, the power and network states, the local time zone, a simulated
clock, the versions of other devices, and the consent policy. The consumer reads them at every
install, so a change takes effect at the next attempt (a waiting update resumes by itself).

- ``battery-mwh``: remaining energy for suit-condition-minimum-battery (§5.3); absent: the
  device cannot measure it and the condition fails.
- ``power``, ``network``: device-defined levels for the wait events (§4.5). An event is
  satisfied when the fact is at least the manifest's value (suitkit's convention: power 0
  battery only, 1 external power; network 0 none, 1 metered, 2 unmetered). Absent: the device
  cannot tell, so a manifest waiting on it fails as unsupported rather than waiting forever.
- ``timezone``: the IANA name of the local time zone (with its daylight-saving rules) for the
  local time-of-day and day-of-week events; absent: those events are unsupported (§4.5 MUST).
- ``time``: a simulated clock (seconds since 1970) used instead of the system clock for
  use-before and the time events; for the simulator and tests.
- ``other-devices``: ``{hex id: [version integers]}``, the deployment's namespace for
  other-device-version (§4.5: unsupported without one).
- ``consent``: the update-authorized hook (§5.4, RFC 9019 §3): ``{"policy": "allow"}`` (the
  default: a device with nobody to ask authorizes; ``max-priority`` limits that to priorities
  at most that value, smaller being more urgent), ``{"policy": "deny"}``, or
  ``{"policy": "command", "command": [argv...]}``: the command (no shell; ``{priority}`` in an
  argument is replaced) answers by its exit status: 0 yes, 75 (EX_TEMPFAIL) later, anything
  else (or no answer within ``timeout`` seconds) no. A library caller may pass a callback
  instead (``ConsentHook``).

Wait events are evaluated here, not waited on: a device whose events do not hold reports
"waiting" and the agent processes the manifest again at its next run (§4.5: "aborting the update
entirely, then restarting when a notification is received"). Time of day is satisfied from that
second of the day until midnight, day of week for that whole day; a skipped local time (a
daylight-saving jump) is therefore satisfied at the first time after it, a repeated one at its
first occurrence, as §4.5 asks.

Every malformed file or field is one ``DecodeError`` naming the file and the field.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from suitkit.core.model import VersionMatch
from suitkit.core.numbers import WaitEvent, name_of
from suitkit.core.processor import version_matches
from suitkit.errors import DecodeError
from suitkit.fileio import atomic_write

__all__ = [
    "FACTS",
    "Consent",
    "ConsentHook",
    "DeviceFacts",
    "WaitVerdict",
    "ask_consent",
    "evaluate_wait",
    "load_facts",
    "save_facts",
]

FACTS = "facts.json"
MAX_FACTS_BYTES = 64 * 1024
_MAX_OTHER_DEVICES = 64
_MAX_VERSION_LENGTH = 16
_MAX_COMMAND_ARGS = 32
_SECONDS_PER_DAY = 86_400
_MAX_TIME = 253_402_214_400
"""9999-12-31 00:00 UTC: a later clock is no calendar date in every time zone (datetime ends
with year 9999)."""
EX_TEMPFAIL = 75
"""A consent command's exit status for "ask again later" (sysexits.h)."""

Answer = Literal["yes", "no", "later"]
ConsentHook = Callable[[int], Answer]
"""Asked with suit-parameter-update-priority (smaller is more urgent): yes, no or later."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Consent:
    """The device's answer to suit-condition-update-authorized (see the module docstring)."""

    policy: Literal["allow", "deny", "command"] = "allow"
    max_priority: int | None = None
    command: tuple[str, ...] = ()
    timeout: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFacts:
    """The contents of ``facts.json`` (all optional)."""

    battery_mwh: int | None = None
    power: int | None = None
    network: int | None = None
    timezone: str | None = None
    time: int | None = None
    other_devices: Mapping[bytes, tuple[int, ...]] | None = None
    consent: Consent = field(default_factory=Consent)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {}
        for key, value in (("battery-mwh", self.battery_mwh), ("power", self.power),
                           ("network", self.network), ("timezone", self.timezone),
                           ("time", self.time)):
            if value is not None:
                doc[key] = value
        if self.other_devices is not None:
            doc["other-devices"] = {k.hex(): list(v) for k, v in self.other_devices.items()}
        consent: dict[str, Any] = {"policy": self.consent.policy}
        if self.consent.max_priority is not None:
            consent["max-priority"] = self.consent.max_priority
        if self.consent.command:
            consent["command"] = list(self.consent.command)
            consent["timeout"] = self.consent.timeout
        doc["consent"] = consent
        return json.dumps(doc, indent=2).encode() + b"\n"


def _int(value: object, where: str, *, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (
            minimum is not None and value < minimum) or abs(value) >= 1 << 64:
        bound = "a non-negative integer" if minimum == 0 else "an integer"
        raise DecodeError(where, f"expected {bound}, got {str(value)[:40]!r}")
    return value


def parse_facts(doc: object, where: str) -> DeviceFacts:
    """The facts of a ``facts.json`` document.

    Raises:
        DecodeError: a field is malformed, naming it.
    """
    if not isinstance(doc, dict):
        raise DecodeError(where, "expected a JSON object")
    known = {"battery-mwh", "power", "network", "timezone", "time", "other-devices", "consent"}
    for key in doc:
        if key not in known:
            raise DecodeError(where, f"unknown fact {str(key)[:40]!r}; expected one of "
                              f"{', '.join(sorted(known))}")

    def optional(key: str) -> int | None:
        value = doc.get(key)
        return None if value is None else _int(value, f"{where}: {key}")

    timezone = doc.get("timezone")
    if timezone is not None:
        if not isinstance(timezone, str) or not timezone or len(timezone) > 64:
            raise DecodeError(f"{where}: timezone", "expected an IANA time zone name such as "
                              "Europe/Paris")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise DecodeError(f"{where}: timezone", f"unknown time zone {timezone[:64]!r}"
                              ) from None
    others = doc.get("other-devices")
    other_devices: dict[bytes, tuple[int, ...]] | None = None
    if others is not None:
        if not isinstance(others, dict) or len(others) > _MAX_OTHER_DEVICES:
            raise DecodeError(f"{where}: other-devices", "expected an object of at most "
                              f"{_MAX_OTHER_DEVICES} {{hex id: [version integers]}}")
        other_devices = {}
        for key, version in others.items():
            sub = f"{where}: other-devices.{str(key)[:40]}"
            try:
                ident = bytes.fromhex(key)
            except ValueError:
                raise DecodeError(sub, "the device id must be hexadecimal bytes") from None
            if (not isinstance(version, list) or not version
                    or len(version) > _MAX_VERSION_LENGTH):
                raise DecodeError(sub, "expected a version as a list of 1 to "
                                  f"{_MAX_VERSION_LENGTH} integers such as [1, 2, 3]")
            other_devices[ident] = tuple(_int(v, sub, minimum=None) for v in version)
    time = optional("time")
    if time is not None and time >= _MAX_TIME:
        raise DecodeError(f"{where}: time", f"expected seconds since 1970 before 9999-12-31 "
                          f"(below {_MAX_TIME}), got {time}")
    return DeviceFacts(battery_mwh=optional("battery-mwh"), power=optional("power"),
                       network=optional("network"), timezone=timezone, time=time,
                       other_devices=other_devices,
                       consent=_consent(doc.get("consent"), f"{where}: consent"))


def _consent(raw: object, where: str) -> Consent:
    if raw is None:
        return Consent()
    if not isinstance(raw, dict):
        raise DecodeError(where, "expected an object with a policy")
    unknown = set(raw) - {"policy", "max-priority", "command", "timeout"}
    if unknown:
        raise DecodeError(where, f"unknown member {sorted(unknown)[0][:40]!r}; expected policy, "
                          "max-priority, command, timeout")
    policy = raw.get("policy", "allow")
    if policy not in ("allow", "deny", "command"):
        raise DecodeError(f"{where}.policy", f"expected allow, deny or command, got "
                          f"{str(policy)[:40]!r}")
    max_priority = raw.get("max-priority")
    if max_priority is not None:
        max_priority = _int(max_priority, f"{where}.max-priority", minimum=None)
    command = raw.get("command", [])
    if (not isinstance(command, list) or len(command) > _MAX_COMMAND_ARGS
            or not all(isinstance(a, str) and "\x00" not in a for a in command)):
        raise DecodeError(f"{where}.command", f"expected a list of at most {_MAX_COMMAND_ARGS} "
                          "argument strings (the program first; no shell)")
    if policy == "command" and not command:
        raise DecodeError(f"{where}.command", "the command policy needs a command")
    timeout = raw.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout <= 3600:
        raise DecodeError(f"{where}.timeout", "expected seconds between 0 and 3600")
    return Consent(policy=policy, max_priority=max_priority, command=tuple(command),
                   timeout=float(timeout))


def load_facts(directory: Path) -> DeviceFacts:
    """The facts in ``DIR/facts.json`` (none when the file does not exist).

    Raises:
        DecodeError: unreadable or malformed, naming the file and the field.
    """
    path = directory / FACTS
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FACTS_BYTES + 1)
    except FileNotFoundError:
        return DeviceFacts()
    except OSError as e:
        raise DecodeError(str(path), f"unreadable: {e.strerror}") from None
    if len(data) > MAX_FACTS_BYTES:
        raise DecodeError(str(path), f"over {MAX_FACTS_BYTES} bytes")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise DecodeError(str(path), f"not JSON: {e}") from None
    except RecursionError:
        raise DecodeError(str(path), "not JSON: nested too deeply") from None
    return parse_facts(doc, str(path))


def save_facts(directory: Path, facts: DeviceFacts) -> None:
    """Write ``DIR/facts.json`` atomically.

    Raises:
        StorageError: it cannot be written.
    """
    atomic_write(directory / FACTS, facts.to_json())


# ---------------------------------------------------------------------------- consent


def ask_consent(consent: Consent, priority: int) -> Answer:
    """The consent policy's answer for an update of ``priority`` (never raises)."""
    if consent.policy == "deny":
        return "no"
    if consent.policy == "allow":
        if consent.max_priority is not None and priority > consent.max_priority:
            return "no"
        return "yes"
    argv = [a.replace("{priority}", str(priority)) for a in consent.command]
    try:
        # the device owner configured this program in facts.json; no shell, no manifest text
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                              stderr=subprocess.DEVNULL, timeout=consent.timeout, check=False)
    except subprocess.TimeoutExpired:
        return "later"
    except OSError:
        return "no"
    if done.returncode == 0:
        return "yes"
    return "later" if done.returncode == EX_TEMPFAIL else "no"


# ---------------------------------------------------------------------------- wait events


@dataclass(frozen=True, slots=True)
class WaitVerdict:
    """The wait events' state now: all ``satisfied``, or what is ``pending`` (not yet) and
    ``unsupported`` (never on this device), one phrase each."""

    pending: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()

    @property
    def satisfied(self) -> bool:
        return not self.pending and not self.unsupported


def evaluate_wait(events: Mapping[int, object], facts: DeviceFacts, now: int | None,
                  consent: ConsentHook) -> WaitVerdict:
    """Which of suit-parameter-wait-info's events (update-management §4.5) hold now."""
    pending: list[str] = []
    unsupported: list[str] = []
    for key, value in events.items():
        name = name_of(WaitEvent, key)
        problem = _bad_value(key, value)
        if problem is not None:
            unsupported.append(f"{name}: {problem}")
            continue
        assert isinstance(value, int) or key == WaitEvent.OTHER_DEVICE_VERSION
        if key == WaitEvent.AUTHORIZATION:
            assert isinstance(value, int)
            answer = consent(value)
            if answer != "yes":
                pending.append(f"authorization of priority {value} (consent said {answer})")
        elif key in (WaitEvent.POWER, WaitEvent.NETWORK):
            have = facts.power if key == WaitEvent.POWER else facts.network
            if have is None:
                unsupported.append(f"{name}: the device reports no {name} state")
            elif have < int(value):  # type: ignore[call-overload]
                pending.append(f"{name} {value} (now {have})")
        elif key == WaitEvent.OTHER_DEVICE_VERSION:
            _other_device(value, facts, name, pending, unsupported)
        elif now is None:
            unsupported.append(f"{name}: the device has no trusted time")
        elif key == WaitEvent.TIME:
            if now < int(value):  # type: ignore[call-overload]
                pending.append(f"time {value} (now {now})")
        else:
            _clock_event(key, int(value), now, facts,  # type: ignore[call-overload]
                         name=name, pending=pending, unsupported=unsupported)
    return WaitVerdict(tuple(pending), tuple(unsupported))


def _bad_value(key: int, value: object) -> str | None:
    if key not in set(WaitEvent):
        return "unknown wait event"
    if key == WaitEvent.OTHER_DEVICE_VERSION:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {type(value).__name__}"
    if key in (WaitEvent.AUTHORIZATION, WaitEvent.POWER, WaitEvent.NETWORK):
        return None
    if value < 0:
        return f"expected an unsigned integer, got {value}"
    if key in (WaitEvent.TIME_OF_DAY, WaitEvent.TIME_OF_DAY_UTC) and value >= _SECONDS_PER_DAY:
        return f"{value} is not a second of the day (0 to {_SECONDS_PER_DAY - 1})"
    if key in (WaitEvent.DAY_OF_WEEK, WaitEvent.DAY_OF_WEEK_UTC) and value > 6:
        return f"{value} is not a day of the week (0 Sunday to 6 Saturday)"
    return None


def _clock_event(key: int, value: int, now: int, facts: DeviceFacts, *, name: str,
                 pending: list[str], unsupported: list[str]) -> None:
    local = key in (WaitEvent.TIME_OF_DAY, WaitEvent.DAY_OF_WEEK)
    if local and facts.timezone is None:
        # §4.5: without configured local time the local events MUST be unsupported.
        unsupported.append(f"{name}: the device has no local time zone configured")
        return
    zone = ZoneInfo(facts.timezone) if local and facts.timezone is not None else UTC
    moment = datetime.fromtimestamp(now, zone)
    if key in (WaitEvent.TIME_OF_DAY, WaitEvent.TIME_OF_DAY_UTC):
        second = moment.hour * 3600 + moment.minute * 60 + moment.second
        if second < value:
            pending.append(f"{name} {value} (now {second})")
    else:
        day = (moment.weekday() + 1) % 7  # days since Sunday
        if day != value:
            pending.append(f"{name} {value} (today {day})")


def _other_device(value: object, facts: DeviceFacts, name: str, pending: list[str],
                  unsupported: list[str]) -> None:
    # §4.5: [other-device: bstr, [+ SUIT_Parameter_Version_Match]]
    if (not isinstance(value, tuple | list) or len(value) != 2
            or not isinstance(value[0], bytes) or not isinstance(value[1], tuple | list)
            or not value[1]):
        unsupported.append(f"{name}: expected [device id, [version matches]]")
        return
    ident, matches = value[0], value[1]
    parsed: list[VersionMatch] = []
    for match in matches:
        if (not isinstance(match, tuple | list) or len(match) != 2
                or isinstance(match[0], bool) or match[0] not in range(1, 6)
                or not isinstance(match[1], tuple | list) or not match[1]
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in match[1])):
            unsupported.append(f"{name}: expected version matches [1..5, [integers]]")
            return
        parsed.append(VersionMatch(int(match[0]), tuple(match[1])))
    if facts.other_devices is None:
        unsupported.append(f"{name}: this deployment defines no other devices")
        return
    have = facts.other_devices.get(ident)
    if have is None:
        unsupported.append(f"{name}: device {ident.hex()[:32]} is unknown here")
    elif not all(version_matches(have, m) for m in parsed):
        pending.append(f"{name} of {ident.hex()[:32]} (now "
                       f"{'.'.join(str(v) for v in have)})")
