"""Update management on real device folders (draft-ietf-suit-update-management-14 §4-§5).

Manifests come from the author's description format (``version``, ``minimum-battery``,
``update-priority``, ``wait``, ``metadata``; docs/description.md) or from hand-written CBOR;
devices are folders of every relevant shape opened as the CLI opens them, their facts in
``facts.json`` (``suitkit.device.facts``; docs/device.md "Update management").
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cbor2
import pytest

from device.device_kit import (
    CLASS,
    VENDOR,
    Author,
    boot,
    confirm,
    image_bytes,
    install,
    new_device,
    status,
)
from suitkit.bootloader.fsslots import FsBootloader
from suitkit.cli.device import device_status
from suitkit.core import codec
from suitkit.core.numbers import WaitEvent
from suitkit.core.processor import CustomCall, CustomCommand, CustomParameter, Extensions
from suitkit.device.facts import (
    Consent,
    DeviceFacts,
    evaluate_wait,
    load_facts,
    save_facts,
)
from suitkit.device.wiring import SlotMetadata, open_device
from suitkit.errors import DecodeError, StorageError

SUNDAY_0800_UTC = int(datetime(2026, 12, 6, 8, 0, tzinfo=UTC).timestamp())


def facts(folder: Path, **doc: Any) -> None:
    (folder / "facts.json").write_text(json.dumps(doc))


def installed(folder: Path) -> tuple[int, bool]:
    """(running sequence number, pending update)."""
    doc = status(folder)
    running = doc["components"][0]["running"]
    return (running["sequence-number"] if running else 0), doc["pending"]


def release(author: Author, sequence: int, *, set_version: str | None = None,
            **component: Any) -> bytes:
    """A one-component release built from a description (``component``: more keys of it)."""
    comp = author.component(f"app-{sequence}.bin", image_bytes(f"um-{sequence}", 1500))
    comp.update(component)
    top = {"set-version": set_version} if set_version is not None else None
    return author.envelope(sequence, [comp], top=top)


def up(folder: Path, envelope: bytes) -> None:
    outcome = install(folder, envelope)
    assert outcome.installed, outcome.reason
    boot(folder)
    confirm(folder)


@pytest.fixture
def author(tmp_path: Path) -> Author:
    return Author.create(tmp_path / "author")


# ---------------------------------------------------------------------------- version


@pytest.mark.parametrize("shape", ["mcu", "linux"])
def test_version_condition_compares_the_running_images_set_version(
        tmp_path: Path, author: Author, shape: str) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    up(device, release(author, 1, set_version="1.2.0"))
    # update-management §4.4: the manifest's integers are compared, so ">=1.2" holds for 1.2.0
    up(device, release(author, 2, set_version="1.3.0", version=">=1.2"))
    assert installed(device) == (2, False)
    assert status(device)["components"][0]["running"]["version"] == [1, 3, 0]
    refused = install(device, release(author, 3, set_version="2.0.0", version="<1.3"))
    assert not refused.installed and not refused.waiting
    assert "condition-version" in refused.reason
    assert "version [1,3,0] is not lesser than [1,3]" in refused.reason
    assert installed(device) == (2, False)


def test_version_condition_fails_when_the_running_image_has_no_version(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))  # no set-version
    refused = install(device, release(author, 2, version=">=1.0"))
    assert not refused.installed
    assert "does not know the component's version" in refused.reason


# ---------------------------------------------------------------------------- battery


def test_minimum_battery_reads_the_devices_battery_fact(tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    envelope = release(author, 2, **{"minimum-battery": 1000})
    unknown = install(device, envelope)
    assert not unknown.installed and "cannot measure its battery" in unknown.reason
    facts(device, **{"battery-mwh": 400})
    low = install(device, envelope)
    assert not low.installed and not low.waiting
    assert "battery 400 mWh is below the required 1000 mWh" in low.reason
    assert installed(device) == (1, False)
    facts(device, **{"battery-mwh": 1000})
    assert install(device, envelope).installed


# ---------------------------------------------------------------------------- wait


@pytest.mark.parametrize("shape", ["mcu", "dual-cpu", "linux"])
def test_wait_for_power_leaves_the_update_waiting_then_installs_it(
        tmp_path: Path, author: Author, shape: str) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], shape)
    names = ("main", "coproc") if shape == "dual-cpu" else ("app",)
    comps = [author.component(f"{n}-1.bin", image_bytes(f"{n}-1", 1200), index=i)
             for i, n in enumerate(names)]
    up(device, author.envelope(1, comps))
    comps = [author.component(f"{n}-2.bin", image_bytes(f"{n}-2", 1200), index=i)
             for i, n in enumerate(names)]
    comps[0]["wait"] = {"power": 1, "network": 2}
    envelope = author.envelope(2, comps)
    facts(device, power=0, network=2)
    waiting = install(device, envelope)
    assert waiting.waiting and not waiting.installed, waiting.reason
    assert waiting.reason.startswith("waiting for power 1 (now 0)")
    assert status(device)["pending"] is False  # nothing staged, nothing marked
    facts(device, power=1, network=2)
    resumed = install(device, envelope)
    assert resumed.installed, resumed.reason
    boot(device)
    confirm(device)
    assert {c["running"]["sequence-number"] for c in status(device)["components"]} == {2}


def test_a_wait_on_a_fact_the_device_does_not_report_fails_instead_of_waiting_forever(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    outcome = install(device, release(author, 2, wait={"network": 1}))
    assert not outcome.waiting and not outcome.installed
    assert "the device reports no network state" in outcome.reason


def test_wait_for_utc_time_of_day_and_day_of_week_uses_the_device_clock(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], "linux")
    up(device, release(author, 1))
    envelope = release(author, 2, wait={"time-of-day-utc": 2 * 3600, "day-of-week-utc": 1})
    facts(device, time=SUNDAY_0800_UTC)  # Sunday 08:00 UTC
    sunday = install(device, envelope)
    assert sunday.waiting and "day-of-week-utc 1 (today 0)" in sunday.reason
    facts(device, time=SUNDAY_0800_UTC + 86_400)  # Monday 08:00 UTC
    assert install(device, envelope).installed


def test_local_time_events_need_a_time_zone(tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    envelope = release(author, 2, wait={"time-of-day": 10 * 3600})
    facts(device, time=SUNDAY_0800_UTC)
    unsupported = install(device, envelope)
    assert not unsupported.waiting and "no local time zone configured" in unsupported.reason
    facts(device, time=SUNDAY_0800_UTC, timezone="Asia/Tokyo")  # 17:00 there: after 10:00
    assert install(device, envelope).installed


def test_wait_for_use_before_and_time_follow_the_simulated_clock(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    comp = author.component("app-2.bin", image_bytes("um-2", 1500))
    comp["wait"] = {"time": SUNDAY_0800_UTC}
    envelope = author.envelope(2, [comp], top={"use-before": SUNDAY_0800_UTC + 3600})
    facts(device, time=SUNDAY_0800_UTC - 60)
    assert install(device, envelope).waiting
    facts(device, time=SUNDAY_0800_UTC + 7200)
    expired = install(device, envelope)
    assert not expired.installed and "manifest expired" in expired.reason
    facts(device, time=SUNDAY_0800_UTC + 60)
    assert install(device, envelope).installed


def test_wait_for_another_devices_version(tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    envelope = release(author, 2, wait={"other-device-version": {"device": "0a0b",
                                                                 "version": ">=2.0"}})
    assert "defines no other devices" in install(device, envelope).reason
    facts(device, **{"other-devices": {"0a0b": [1, 9]}})
    assert install(device, envelope).waiting
    facts(device, **{"other-devices": {"0a0b": [2, 0, 1]}})
    assert install(device, envelope).installed


def test_every_wait_event_of_the_draft_is_evaluated() -> None:
    now = SUNDAY_0800_UTC
    full = DeviceFacts(power=1, network=2, timezone="UTC", time=now,
                       other_devices={b"\x01": (3,)})

    def verdict(events: dict[int, object], f: DeviceFacts = full) -> tuple[bool, str]:
        v = evaluate_wait(events, f, now, lambda priority: "yes" if priority < 0 else "later")
        return v.satisfied, "; ".join(v.pending + v.unsupported)

    assert verdict({WaitEvent.AUTHORIZATION: -1})[0]
    assert "consent said later" in verdict({WaitEvent.AUTHORIZATION: 5})[1]
    assert verdict({WaitEvent.POWER: 1, WaitEvent.NETWORK: 2})[0]
    assert "network 3 (now 2)" in verdict({WaitEvent.NETWORK: 3})[1]
    assert verdict({WaitEvent.OTHER_DEVICE_VERSION: (b"\x01", ((2, (3,)),))})[0]
    assert verdict({WaitEvent.TIME: now})[0]
    assert not verdict({WaitEvent.TIME: now + 1})[0]
    assert verdict({WaitEvent.TIME_OF_DAY: 8 * 3600, WaitEvent.DAY_OF_WEEK: 0})[0]
    assert verdict({WaitEvent.TIME_OF_DAY_UTC: 8 * 3600, WaitEvent.DAY_OF_WEEK_UTC: 0})[0]
    assert "(now 28800)" in verdict({WaitEvent.TIME_OF_DAY_UTC: 8 * 3600 + 1})[1]
    assert "not a second of the day" in verdict({WaitEvent.TIME_OF_DAY_UTC: 86_400})[1]
    assert "not a day of the week" in verdict({WaitEvent.DAY_OF_WEEK_UTC: 7})[1]
    assert "unknown wait event" in verdict({10: 1})[1]
    assert "no trusted time" in "; ".join(
        evaluate_wait({WaitEvent.TIME: 1}, full, None, lambda p: "yes").unsupported)


# ---------------------------------------------------------------------------- consent


def test_update_authorized_asks_the_consent_policy(tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    urgent = release(author, 2, **{"update-priority": -1})
    feature = release(author, 3, **{"update-priority": 10})
    facts(device, consent={"policy": "deny"})
    denied = install(device, urgent)
    assert not denied.installed and "did not authorize an update of priority -1" in denied.reason
    facts(device, consent={"policy": "allow", "max-priority": 0})
    assert not install(device, feature).installed
    assert install(device, urgent).installed
    boot(device)
    confirm(device)
    # A program asks the user: exit 0 yes (priorities below 5 here), anything else no.
    facts(device, consent={"policy": "command", "command": [
        sys.executable, "-c", "import sys; sys.exit(0 if int(sys.argv[1]) < 5 else 1)",
        "{priority}"]})
    assert not install(device, feature).installed
    facts(device, consent={"policy": "command", "command": [
        sys.executable, "-c", "import sys; sys.exit(0 if int(sys.argv[1]) < 50 else 1)",
        "{priority}"]})
    assert install(device, feature).installed


def test_a_consent_callback_and_a_deferral_through_the_authorization_wait_event(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    envelope = release(author, 2, wait={"authorization": 3})
    asked: list[int] = []

    def later(priority: int) -> str:
        asked.append(priority)
        return "later"

    opened = open_device(device)
    waiting = opened.consumer(consent=later).install(envelope)  # type: ignore[arg-type]
    opened.save()
    assert waiting.waiting and asked == [3]
    # asked once per priority and install, however many commands ask
    comps = [author.component(f"{n}.bin", image_bytes(n, 900), index=i)
             for i, n in enumerate(("main", "coproc"))]
    for comp in comps:
        comp["update-priority"] = 3
    two = new_device(tmp_path / "two", [author.anchor], "dual-cpu")
    opened = open_device(two)
    granted: list[int] = []

    def yes(priority: int) -> Literal["yes"]:
        granted.append(priority)
        return "yes"

    outcome = opened.consumer(consent=yes).install(author.envelope(1, comps))
    assert outcome.installed, outcome.reason
    assert granted == [3]
    assert "authorization of priority 3 (consent said later)" in waiting.reason
    # the default policy allows (a device with nobody to ask): the same envelope installs
    assert install(device, envelope).installed


# ---------------------------------------------------------------------------- metadata


def test_component_metadata_is_kept_beside_the_image_on_a_linux_device(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], "linux")
    up(device, release(author, 1))
    metadata = {"default-permissions": 0b101, "modification-time": 1_700_000_000,
                "creator": "ota", "user-permissions": {"app": 0b111}}
    up(device, release(author, 2, metadata=metadata))
    active = open_device(device).bootloader.read_state().active  # type: ignore[attr-defined]
    kept = json.loads((device / "slots" / "slots" / active / "app.metadata.json").read_text())
    assert kept == {"default-permissions": 5, "modification-time": 1_700_000_000,
                    "creator": "ota", "user-permissions": [["app", 7]]}
    up(device, release(author, 3))  # no metadata: none is left from release 2
    active = open_device(device).bootloader.read_state().active  # type: ignore[attr-defined]
    assert not (device / "slots" / "slots" / active / "app.metadata.json").exists()


def test_an_image_restaged_as_it_runs_carries_its_metadata(tmp_path: Path,
                                                           author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor], "linux")
    up(device, release(author, 1, metadata={"creator": 1000}))
    opened = open_device(device)
    bootloader = opened.bootloader
    assert isinstance(bootloader, FsBootloader)
    state = bootloader.read_state()
    SlotMetadata(bootloader).carry("app")
    inactive = bootloader.slot_dir(state.inactive) / "app.metadata.json"
    assert json.loads(inactive.read_text()) == {"creator": 1000}
    (bootloader.slot_dir(state.active) / "app.metadata.json").write_text("{damaged")
    with pytest.raises(StorageError, match="damaged"):
        SlotMetadata(bootloader).carry("app")


def test_a_deeply_nested_metadata_file_in_the_active_slot_is_damaged_not_a_traceback(
        tmp_path: Path, author: Author) -> None:
    """Carrying the running image's metadata raised RecursionError on 20,000 nested brackets."""
    device = new_device(tmp_path / "dev", [author.anchor], "linux")
    up(device, release(author, 1, metadata={"creator": 1000}))
    bootloader = open_device(device).bootloader
    assert isinstance(bootloader, FsBootloader)
    active = bootloader.slot_dir(bootloader.read_state().active) / "app.metadata.json"
    active.write_text("[" * 20_000 + "]" * 20_000)
    with pytest.raises(StorageError, match="damaged"):
        SlotMetadata(bootloader).carry("app")


def test_component_metadata_is_refused_where_the_shape_cannot_keep_it(
        tmp_path: Path, author: Author) -> None:
    mcu = new_device(tmp_path / "mcu", [author.anchor])
    up(mcu, release(author, 1))
    refused = install(mcu, release(author, 2, metadata={"default-permissions": 4}))
    assert not refused.installed
    assert "shape (mcu) has no file system to keep component metadata" in refused.reason
    linux = new_device(tmp_path / "linux", [author.anchor], "linux")
    up(linux, release(author, 1))
    directory = install(linux, release(author, 2, metadata={"file-type": "directory"}))
    assert not directory.installed and "file-type directory" in directory.reason
    assert installed(linux) == (1, False)


# ---------------------------------------------------------------------------- facts file


def test_facts_file_round_trips_and_names_what_is_wrong(tmp_path: Path) -> None:
    written = DeviceFacts(battery_mwh=5, power=1, network=0, timezone="Europe/Paris",
                          time=3, other_devices={b"\xab": (1, -1, 2)},
                          consent=Consent(policy="command", command=("ask", "{priority}")))
    save_facts(tmp_path, written)
    assert load_facts(tmp_path) == written
    for doc, where in (({"power": "high"}, "power"), ({"timezone": "Mars/Olympus"}, "timezone"),
                       ({"consent": {"policy": "maybe"}}, "consent.policy"),
                       ({"consent": {"policy": "command"}}, "consent.command"),
                       ({"other-devices": {"zz": [1]}}, "other-devices.zz"),
                       ({"battery": 1}, "unknown fact 'battery'")):
        facts(tmp_path, **doc)
        with pytest.raises(DecodeError, match=where):
            load_facts(tmp_path)
    (tmp_path / "facts.json").write_text("{")
    with pytest.raises(DecodeError, match="not JSON"):
        load_facts(tmp_path)


def test_a_malformed_facts_file_rejects_the_install_with_one_line(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    facts(device, power=-1)
    outcome = install(device, release(author, 1))
    assert not outcome.installed
    assert outcome.reason.startswith("rejected: ") and "facts.json: power" in outcome.reason


# ---------------------------------------------------------------------------- hand-written CBOR


def _hand_written(author: Author, image: bytes, sequence: int) -> bytes:
    """An envelope whose manifest is written key by key with cbor2 (not suitkit's encoder):
    set-version 2.1, a version condition (lesser [2]) in the shared sequence, a wait for power
    1 and a battery of at least 10 mWh in install; the integrated payload under "#app"."""
    import hashlib

    digest = cbor2.dumps([-16, hashlib.sha256(image).digest()])
    shared = cbor2.dumps([
        20, {1: VENDOR.bytes, 2: CLASS.bytes, 3: digest, 14: len(image),
             28: cbor2.dumps([5, [2]])},   # version lesser [2]
        1, 15, 2, 15,
        28, 15])           # suit-condition-version: checked at every boot too
    install_seq = cbor2.dumps([
        20, {21: "#app", 29: cbor2.dumps({2: 1}), 26: 10},
        29, 15,            # suit-directive-wait
        26, 15,            # suit-condition-minimum-battery
        21, 2,             # fetch
        3, 15])            # image-match
    validate = cbor2.dumps([3, 15])
    manifest = cbor2.dumps({1: 1, 2: sequence, 3: cbor2.dumps({2: [[b"\x00"]], 4: shared}),
                            6: cbor2.dumps([2, 1]), 7: validate, 20: install_seq})
    unsigned = cbor2.dumps(cbor2.CBORTag(107, {
        2: cbor2.dumps([cbor2.dumps([-16, hashlib.sha256(cbor2.dumps(manifest)).digest()])]),
        3: manifest, "#app": image}))
    from suitkit.core.sign import sign_envelope
    return codec.encode_envelope(sign_envelope(codec.decode_envelope(unsigned),
                                               author.key.signer()))


def test_hand_written_cbor_manifest_with_version_wait_and_battery(
        tmp_path: Path, author: Author) -> None:
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1, set_version="1.4"))
    envelope = _hand_written(author, image_bytes("hand", 900), 2)
    facts(device, power=0, **{"battery-mwh": 50})
    assert install(device, envelope).waiting
    facts(device, power=1, **{"battery-mwh": 5})
    low = install(device, envelope)
    assert not low.installed and "battery 5 mWh" in low.reason
    facts(device, power=1, **{"battery-mwh": 50})
    # the shared sequence's version condition guarded the install (1.4 < 2); the image itself
    # is 2.1, and it still boots: the condition is not checked against it at boot
    up(device, envelope)
    assert installed(device) == (2, False)
    assert open_device(device).bootloader.boot().images[0].sequence_number == 2
    # and the next update sees version 2.1 running: the same condition now fails
    refused = install(device, _hand_written(author, image_bytes("hand-3", 900), 3))
    assert not refused.installed and "version [2,1] is not lesser than [2]" in refused.reason


# ---------------------------------------------------------------------------- custom commands


def test_custom_commands_are_refused_by_default_and_run_where_the_device_registers_them(
        tmp_path: Path, author: Author) -> None:
    blinked: list[tuple[object, object]] = []

    def blink(call: CustomCall) -> bool:
        blinked.append((call.argument, call.parameters.extra.get(-301)))
        return True

    def warm_enough(call: CustomCall) -> bool:
        return True

    extensions = Extensions(
        commands={-300: CustomCommand(name="blink-led", run=blink),
                  -302: CustomCommand(name="warm-enough", run=warm_enough, condition=True)},
        parameters={-301: CustomParameter(name="led-colour")})
    device = new_device(tmp_path / "dev", [author.anchor], "linux")
    up(device, release(author, 1))
    image = image_bytes("custom", 1200)
    comp = author.component("custom.bin", image)
    envelope = author.envelope(2, [comp], top={"install": [
        ["override-parameters", {"uri": "#custom.bin", "custom(-301)": "green"}],
        [-302, None],
        [-300, "..--"],
        ["fetch", 2],
        ["image-match", 15]]})
    refused = install(device, envelope)
    assert not refused.installed
    assert "parameter custom(-301) is not supported (no custom parameter" in refused.reason

    opened = open_device(device, extensions=extensions)
    outcome = opened.consumer().install(envelope)
    opened.save()
    assert outcome.installed, outcome.reason
    assert blinked == [("..--", "green")]
    opened = open_device(device, extensions=extensions)
    assert opened.bootloader.boot().images[0].sequence_number == 2
    opened.bootloader.confirm()
    opened.save()
    shown = device_status(open_device(device, extensions=extensions))
    assert shown["components"][0]["running"]["sequence-number"] == 2
    # the extensions are part of the device: opened without them, its bootloader refuses the
    # image whose manifest uses commands it does not know (manifest §6.1)
    assert status(device)["components"][0]["running"] is None


# ---------------------------------------------------------------------------- hostile facts.json


def test_a_facts_clock_beyond_the_calendar_is_refused_not_a_crash(
        tmp_path: Path, author: Author) -> None:
    """A ``time`` past year 9999 (datetime cannot hold it) was accepted, then crashed the
    install with an OverflowError traceback at the first time-of-day or day-of-week event."""
    device = new_device(tmp_path / "dev", [author.anchor])
    up(device, release(author, 1))
    facts(device, time=253_402_214_400, timezone="Pacific/Kiritimati")  # UTC+14
    with pytest.raises(DecodeError, match=r"facts\.json: time"):
        load_facts(device)
    outcome = install(device, release(author, 2, wait={"time-of-day-utc": 3600}))
    assert not outcome.installed and outcome.reason.startswith("rejected: ")
    assert "facts.json: time" in outcome.reason
    assert installed(device) == (1, False)


def test_a_deeply_nested_facts_file_is_one_line_not_a_traceback(
        tmp_path: Path, author: Author) -> None:
    """facts.json of 20,000 nested brackets (within the 64 KiB bound) raised RecursionError."""
    device = new_device(tmp_path / "dev", [author.anchor])
    (device / "facts.json").write_text("[" * 20_000 + "]" * 20_000)
    with pytest.raises(DecodeError, match="not JSON"):
        load_facts(device)
    outcome = install(device, release(author, 1))
    assert not outcome.installed and outcome.reason.startswith("rejected: ")
