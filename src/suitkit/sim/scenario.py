"""The demo's scenario: a mixed fleet, a staged campaign, the faults a real fleet meets.

``demo_plans(n)`` declares ``n`` devices (``n >= 9``) covering every shape (RFC 9019 §5: mcu,
secure-split, dual-cpu, Linux-class) in every operating mode (poll, push, hybrid), each with the
outcome it must end with. The first four (one per shape) carry no fault; the five faults go to
the last devices of the right shape:

- ``power-cut`` (mcu): the power fails in the middle of the install; the bootloader keeps the
  old image, the agent runs again when the power is back and the update completes: ``updated``;
- ``network-cut`` (dual-cpu): the connection drops 4 KiB into the image; the fetcher resumes
  with ``Range``: ``updated``;
- ``hostile-mirror`` (secure-split): the image comes from a mirror that altered one byte; the
  device refuses it: ``rejected`` (image digest mismatch), still running v1;
- ``wrong-class`` (any shape but secure-split, so that no campaign has two refusals): a device
  of another class (``<class>-rev-b``) tagged as the product; the manifest's class check refuses
  it: ``rejected`` (class identifier mismatch);
- ``bad-boot`` (linux): the beta channel's v2 build, whose application exits at start; the
  device does not confirm it and the bootloader reverts: ``rolled-back`` (and that campaign
  stops after its first wave).

``run_scenario`` does the whole demo against a server (``sim.local`` starts one): keys and
releases (author signs, operator approves), uploads, device registration and tags, provisioning,
the fleet, then one staged campaign per release through the tracker's campaigns API (waves of
60 % then 100 %, the next wave opening when half of the open waves' devices are updated;
created by one operator, approved by another), and a check of every device against its declared
outcome: the agent's outcome and reason, the sequence number the device runs (read from its
flash), and the state the tracker shows. ``Summary.ok`` is true only when every device ended
where it should. A server without the campaigns API gets plain deployments, wave by wave
(``DevicePlan.wave``: the four fault-free devices first).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suitkit.errors import SuitError
from suitkit.sim.control import Console, StoredRelease
from suitkit.sim.firmware import (
    CLASS_NAMES,
    Keys,
    Release,
    build_release,
    image_for,
    make_keys,
)
from suitkit.sim.fleet import (
    MODES,
    SHAPES,
    DevicePlan,
    Fleet,
    SimDevice,
    classify,
    provision,
    running_sequence,
    short_reason,
)

__all__ = ["CATEGORIES", "MIN_DEVICES", "Summary", "demo_plans", "run_scenario"]

CATEGORIES = ("updated", "rolled-back", "rejected", "failed")
MIN_DEVICES = 9
FAULT_FREE = 4
WRONG_SUFFIX = "-rev-b"
SETTLE_SECONDS = 3.0
_FAULTS: tuple[tuple[str, str | None, str, str | None], ...] = (
    # fault, shape it needs (None: any), expected outcome, phrase the reason must contain
    ("bad-boot", "linux", "rolled-back", "did not start"),
    ("network-cut", "dual-cpu", "updated", None),
    ("hostile-mirror", "secure-split", "rejected", "image digest mismatch"),
    ("power-cut", "mcu", "updated", None),
    ("wrong-class", "!secure-split", "rejected", "class identifier mismatch"),
)
TRACKER_STATE = {"updated": "succeeded", "rolled-back": "rolled-back", "rejected": "failed",
                 "failed": "failed"}


def demo_plans(n: int, *, protocols: bool = False) -> list[DevicePlan]:
    """``n`` devices: shape ``i % 4``, mode ``i % 3`` (the first twelve cover every pair), the
    first four fault-free, the five faults on the last devices of the right shape.
    ``protocols``: two more fault-free devices, suitkit's agent over the standard device
    protocols: an mcu over LwM2M (server-initiated: the server's LwM2M edge must run,
    ``run_scenario(lwm2m=...)``) and a Linux-class device over hawkBit DDI (poll)."""
    if n < MIN_DEVICES:
        raise SuitError(f"the demo needs at least {MIN_DEVICES} devices (one fault-free "
                        f"device per shape and five faults), got {n}")
    shapes = [SHAPES[i % len(SHAPES)] for i in range(n)]
    faults: dict[int, tuple[str | None, str, str | None]] = {}
    for name, needs, outcome, phrase in _FAULTS:
        index = next(i for i in range(n - 1, FAULT_FREE - 1, -1)
                     if i not in faults and _fits(shapes[i], needs))
        faults[index] = (name, outcome, phrase)
    plans = []
    for i, shape in enumerate(shapes):
        fault, expect, reason = faults.get(i, (None, "updated", None))
        klass = CLASS_NAMES[shape] + (WRONG_SUFFIX if fault == "wrong-class" else "")
        plans.append(DevicePlan(
            name=f"{i:03d}-{shape}", shape=shape, mode=MODES[i % len(MODES)], class_name=klass,
            fault=fault, expect=expect, expect_reason=reason, wave=1 if i < FAULT_FREE else 2,
            release="v2-broken" if fault == "bad-boot" else "v2"))
    if protocols:
        plans.append(DevicePlan(name=f"{n:03d}-mcu-lwm2m", shape="mcu", mode="push",
                                class_name=CLASS_NAMES["mcu"], protocol="lwm2m"))
        plans.append(DevicePlan(name=f"{n + 1:03d}-linux-ddi", shape="linux", mode="poll",
                                class_name=CLASS_NAMES["linux"], protocol="ddi"))
    return plans


def _fits(shape: str, needs: str | None) -> bool:
    if needs is None:
        return True
    if needs.startswith("!"):
        return shape != needs[1:]
    return shape == needs


@dataclass
class Summary:
    """The end of a run: per device outcome and reason, counts, and whether all is as declared."""

    devices: list[dict[str, Any]]
    counts: dict[str, int]
    expected: dict[str, int]
    ok: bool
    seconds: float
    server: str
    dashboard: str
    requests: dict[str, Any] = field(default_factory=dict)
    campaign: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        faults = {d["fault"]: {"device": d["name"], "outcome": d["outcome"],
                               "reason": d["reason"], "as_expected": d["as_expected"]}
                  for d in self.devices if d["fault"]}
        return {"ok": self.ok, "seconds": round(self.seconds, 2), "server": self.server,
                "dashboard": self.dashboard, "counts": self.counts,
                "expected_counts": self.expected, "faults": faults,
                "campaign": self.campaign, "requests": self.requests,
                "devices": self.devices}


@dataclass
class World:
    """What the scenario built: keys, releases, uploads, devices, the fleet."""

    root: Path
    url: str
    keys: Keys
    releases: dict[tuple[str, str], Release] = field(default_factory=dict)
    stored: dict[tuple[str, str], StoredRelease] = field(default_factory=dict)
    devices: list[SimDevice] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def build_releases(root: Path, keys: Keys, url: str, plans: list[DevicePlan]
                   ) -> dict[tuple[str, str], Release]:
    """``(class, label)`` -> release: v1 (integrated, the factory image) of every class in the
    plans; v2 (detached, on the server) of every product class; v2-broken for Linux-class."""
    firmware = root / "firmware"
    run = f"(run {secrets.token_hex(4)})"
    releases: dict[tuple[str, str], Release] = {}
    shapes = {p.class_name: p.shape for p in plans}
    for klass, shape in sorted(shapes.items()):
        count = 2 if shape in ("secure-split", "dual-cpu") else 1
        releases[klass, "v1"] = build_release(
            keys, firmware / klass, label="v1", class_name=klass, sequence=1,
            images=[image_for(shape, klass, "v1", i) for i in range(count)], run=run)
        if klass.endswith(WRONG_SUFFIX):
            continue
        releases[klass, "v2"] = build_release(
            keys, firmware / klass, label="v2", class_name=klass, sequence=2,
            images=[image_for(shape, klass, "v2", i) for i in range(count)], server_url=url,
            run=run)
        if shape == "linux":
            releases[klass, "v2-broken"] = build_release(
                keys, firmware / klass, label="v2-broken", class_name=klass, sequence=2,
                images=[image_for(shape, klass, "v2-broken", 0, starts=False)],
                server_url=url, run=run)
    return releases


def _target_class(plan: DevicePlan) -> str:
    """The class the operator believes the device has (the wrong-class one is mislabelled)."""
    return plan.class_name.removesuffix(WRONG_SUFFIX)


async def run_scenario(root: Path, url: str, admin_token: str, upload_token: str,
                       plans: list[DevicePlan], *, keys: Keys | None = None,
                       workers: int = 4, poll_interval: float = 0.5,
                       wave_timeout: float = 60.0,
                       on_fleet: Callable[[Fleet], None] | None = None,
                       say: Callable[[str], None] = lambda _: None,
                       dashboard: str = "", lwm2m: str | None = None) -> Summary:
    """Run the demo against the server at ``url`` (see the module docstring); ``lwm2m``:
    ``coap://HOST:PORT`` of its LwM2M edge, for the devices planned over LwM2M."""
    started = time.monotonic()
    keys = keys or make_keys(root / "keys")
    say("keys: author (ESP256) signs, operator (Ed25519) approves; devices require both")
    releases = build_releases(root, keys, url, plans)
    say(f"built and signed {len(releases)} releases for "
        f"{len({k for k, _ in releases})} device classes")
    console = Console(url, admin_token)
    try:
        stored = {}
        for key, release in releases.items():
            if release.detached:
                stored[key] = await asyncio.to_thread(console.upload, release,
                                                      token=upload_token)
        say(f"uploaded {len(stored)} releases (the server verified each signature)")
        factory = {k: r for (k, label), r in releases.items() if label == "v1"}
        devices = await asyncio.to_thread(provision, root, keys, plans, factory)
        for device in devices:
            registered = await asyncio.to_thread(console.register, device.plan.name)
            device.tracker_id, device.credential = registered.id, registered.credential
        say(f"provisioned and registered {len(devices)} devices running v1")
        fleet = Fleet(devices, url, workers=workers, poll_interval=poll_interval,
                      lwm2m=lwm2m)
        if on_fleet is not None:
            on_fleet(fleet)
        runner = asyncio.create_task(fleet.run())
        try:
            try:
                campaign, waves = await _run_campaigns(console, devices, stored, fleet,
                                                       timeout=wave_timeout * 2, say=say)
            except CampaignsMissing:
                say("the server has no campaigns API; deploying wave by wave instead")
                campaign, waves = await _run_deployments(console, devices, stored, fleet,
                                                         timeout=wave_timeout, say=say)
        finally:
            fleet.stop()
            await runner
            fleet.close()
        seconds = time.monotonic() - started
        summary = await asyncio.to_thread(lambda: _summarize(
            console, devices, plans, fleet, seconds=seconds, url=url, dashboard=dashboard))
        summary.campaign = campaign
        for row in summary.devices:
            row["wave"] = waves.get(row["id"], row["wave"])
        return summary
    finally:
        console.close()


class CampaignsMissing(SuitError):
    """The server answers 404 for /api/v1/campaigns."""


def campaign_tag(plan: DevicePlan) -> str:
    """The tag the operator gave the device: the product it is believed to be (the wrong-class
    device is mislabelled), ``-beta`` for the beta channel that gets the broken build."""
    return _target_class(plan) + ("-beta" if plan.release != "v2" else "")


async def _run_campaigns(console: Console, devices: list[SimDevice],
                         stored: dict[tuple[str, str], StoredRelease], fleet: Fleet, *,
                         timeout: float, say: Callable[[str], None]
                         ) -> tuple[list[str], dict[str, int]]:
    """One campaign per release, targeting a tag: waves of 60 % then 100 %, the next wave
    opening when half of the open waves' devices are updated; created by one operator and
    approved by another (four-eyes). Returns the campaign lines and each device's wave."""
    try:
        first = await asyncio.to_thread(console.create_token, "demo-operator-1", "operator")
        second = await asyncio.to_thread(console.create_token, "demo-operator-2", "operator")
    except SuitError as e:
        raise CampaignsMissing(str(e)) from None
    groups: dict[str, tuple[str, str]] = {}
    for device in devices:
        tag = campaign_tag(device.plan)
        groups[tag] = (_target_class(device.plan), device.plan.release)
        await asyncio.to_thread(console.call, "PUT", f"/api/v1/devices/{device.tracker_id}/tags",
                                (200,), token=first, json={"tags": [tag]})
    campaigns: dict[str, str] = {}
    for tag, (klass, label) in sorted(groups.items()):
        release = stored[klass, label]
        body = {"name": f"{klass} {label}", "release": release.id, "target": {"tags": [tag]},
                "waves": [60, 100], "success_threshold": 0.5, "failure_threshold": 1.0}
        try:
            doc = await asyncio.to_thread(console.call, "POST", "/api/v1/campaigns", (201,),
                                          token=first, json=body)
        except SuitError as e:
            if "HTTP 404" in str(e) or "HTTP 405" in str(e):
                raise CampaignsMissing(str(e)) from None
            raise
        campaign_id = str(doc["id"])
        await asyncio.to_thread(console.call, "POST", f"/api/v1/campaigns/{campaign_id}/approve",
                                (200,), token=second)
        await asyncio.to_thread(console.call, "POST", f"/api/v1/campaigns/{campaign_id}/start",
                                (200,), token=first)
        campaigns[campaign_id] = f"{klass} {label} (tag {tag})"
        say(f"campaign {klass} {label}: tag {tag!r}, waves 60% then 100%, created by "
            "operator 1, approved by operator 2, started")
    await fleet.wait_done(devices, timeout)
    lines: list[str] = []
    waves: dict[str, int] = {}
    for campaign_id, title in campaigns.items():
        path = f"/api/v1/campaigns/{campaign_id}"
        settles = time.monotonic() + SETTLE_SECONDS
        while True:  # the engine ticks every second: let it see the last final states
            doc = await asyncio.to_thread(console.call, "GET", path, (200,),
                                          params={"limit": 1000})
            if doc.get("status") != "running" or time.monotonic() > settles:
                break
            await asyncio.sleep(0.25)
        for member in doc.get("members", []):
            waves[str(member["device_id"])] = int(member["wave"])
        opened = [e["detail"] for e in doc.get("log", []) if e.get("action") == "wave"]
        status = str(doc.get("status"))
        if status == "paused" and doc.get("pause_reason"):
            status += f" ({doc['pause_reason']})"
        lines.append(f"{title}: {doc.get('devices')} devices; " + "; ".join(opened)
                     + ("; " if opened else "") + status)
    for line in lines:
        say(f"campaign {line}")
    return lines, waves


async def _run_deployments(console: Console, devices: list[SimDevice],
                           stored: dict[tuple[str, str], StoredRelease], fleet: Fleet, *,
                           timeout: float, say: Callable[[str], None]
                           ) -> tuple[list[str], dict[str, int]]:
    """Without a campaigns API: deployments wave by wave (the plans' waves), the next wave only
    when the previous one ended as declared."""
    lines: list[str] = []
    for wave in sorted({d.plan.wave for d in devices}):
        members = [d for d in devices if d.plan.wave == wave]
        groups: dict[tuple[str, str], list[str]] = {}
        for d in members:
            groups.setdefault((_target_class(d.plan), d.plan.release), []).append(d.tracker_id)
        for (klass, label), ids in sorted(groups.items()):
            await asyncio.to_thread(console.deploy, stored[klass, label], ids)
        line = (f"wave {wave}: {len(members)} devices, "
                + ", ".join(f"{k} {lbl} x{len(ids)}" for (k, lbl), ids in sorted(groups.items())))
        lines.append(line)
        say(line)
        finished = await fleet.wait_done(members, timeout)
        unexpected = [d.plan.name for d in members
                      if classify(d.outcome, d.reason) != d.plan.expect]
        if not finished or unexpected:
            halt = (f"wave {wave} halted the rollout: "
                    f"{'timed out' if not finished else 'unexpected outcomes'} "
                    f"({', '.join(unexpected) or 'none final'})")
            lines.append(halt)
            say(halt)
            break
    return lines, {d.tracker_id: d.plan.wave for d in devices}


def _summarize(console: Console, devices: list[SimDevice], plans: list[DevicePlan],
               fleet: Fleet, *, seconds: float, url: str, dashboard: str) -> Summary:
    rows: list[dict[str, Any]] = []
    for device in devices:
        plan = device.plan
        category = classify(device.outcome, device.reason)
        reason = short_reason(device.reason) if category in ("rejected", "failed") else \
            device.reason
        version = None
        try:
            shown = console.device(device.tracker_id)
            tracker_state, version = shown.get("state"), shown.get("version")
        except SuitError as e:
            tracker_state = f"unknown ({e})"
        sequence = running_sequence(device.folder)
        want_sequence = 2 if plan.expect == "updated" else 1
        as_expected = (category == plan.expect
                       and (plan.expect_reason is None
                            or plan.expect_reason in reason or plan.expect_reason in
                            device.reason)
                       and sequence == want_sequence
                       and tracker_state == TRACKER_STATE[plan.expect])
        faults_met = []
        if device.transport is not None and device.transport.cuts:
            faults_met.append(f"network cut x{device.transport.cuts}, resumed at byte "
                              + ", ".join(str(b) for b in device.transport.resumed_at))
        if device.power is not None and device.power.cuts:
            faults_met.append(f"power cut x{device.power.cuts}, the agent resumed after "
                              "the reboot")
        if device.mirror is not None and device.mirror.served:
            faults_met.append("served by the hostile mirror")
        rows.append({
            "name": plan.name, "id": device.tracker_id, "shape": plan.shape,
            "mode": plan.mode, "protocol": plan.protocol, "class": plan.class_name,
            "wave": plan.wave,
            "release": plan.release, "fault": plan.fault, "outcome": category,
            "reason": reason, "detail": device.reason, "expected": plan.expect,
            "expected_reason": plan.expect_reason, "as_expected": as_expected,
            "running_sequence": sequence, "tracker_state": tracker_state,
            "tracker_version": version,
            "attempts": device.attempts, "faults_met": faults_met,
            "notes": device.notes[-5:]})
    counts = Counter(r["outcome"] for r in rows)
    expected = Counter(p.expect for p in plans)
    keys = list(CATEGORIES) + sorted(str(k) for k in set(counts) - set(CATEGORIES))
    return Summary(rows, {k: counts.get(k, 0) for k in keys},
                   {k: expected.get(k, 0) for k in CATEGORIES},
                   all(r["as_expected"] for r in rows) and len(rows) == len(plans),
                   seconds, url, dashboard, fleet.stats.as_json(seconds))
