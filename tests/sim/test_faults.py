"""The fault seams of the fleet simulator, against a real HTTP server on loopback."""

from __future__ import annotations

import httpx
import pytest

from device.device_kit import firmware_server, image_bytes
from suitkit.bootloader.flash import PowerCut
from suitkit.device.fetch import HttpFetcher
from suitkit.errors import FetchError
from suitkit.sim.faults import CuttingTransport, HostileMirror, PowerCutFetcher
from suitkit.sim.fleet import classify, short_reason

IMAGE = image_bytes("sim-faults", 20_000)


def test_a_network_cut_is_resumed_with_range_and_the_bytes_are_whole() -> None:
    transport = CuttingTransport(4096, times=1)
    with firmware_server() as (url, served), httpx.Client(transport=transport) as client:
        served.files["/firmware/x"] = IMAGE
        fetched = b"".join(HttpFetcher(client=client, backoff=0.01).fetch(
            f"{url}/firmware/x", max_bytes=len(IMAGE)))
    assert fetched == IMAGE
    assert transport.cuts == 1 and transport.resumed_at == [4096]
    assert served.requests == ["/firmware/x", "/firmware/x"]


def test_a_network_cut_that_never_ends_exhausts_the_retries() -> None:
    transport = CuttingTransport(1000, times=100)
    with firmware_server() as (url, served), httpx.Client(transport=transport) as client:
        served.files["/firmware/x"] = IMAGE
        with pytest.raises(FetchError, match="ReadError after 3 attempts"):
            b"".join(HttpFetcher(client=client, retries=2, backoff=0.01).fetch(
                f"{url}/firmware/x", max_bytes=len(IMAGE)))
    assert transport.resumed_at == [1000, 2000]


def test_the_hostile_mirror_changes_exactly_one_byte() -> None:
    with firmware_server() as (url, served):
        served.files["/firmware/x"] = IMAGE
        mirror = HostileMirror(HttpFetcher(), offset=100)
        fetched = b"".join(mirror.fetch(f"{url}/firmware/x", max_bytes=len(IMAGE)))
    assert len(fetched) == len(IMAGE) and mirror.served == 1
    assert [i for i in range(len(IMAGE)) if fetched[i] != IMAGE[i]] == [100]


def test_the_power_fails_once_in_the_middle_of_the_stream() -> None:
    with firmware_server() as (url, served):
        served.files["/firmware/x"] = IMAGE
        power = PowerCutFetcher(HttpFetcher(), cut_after=6000)
        got = bytearray()
        with pytest.raises(PowerCut):
            for chunk in power.fetch(f"{url}/firmware/x", max_bytes=len(IMAGE)):
                got += chunk
        assert bytes(got) == IMAGE[:6000]
        again = b"".join(power.fetch(f"{url}/firmware/x", max_bytes=len(IMAGE)))
    assert again == IMAGE and power.cuts == 1


@pytest.mark.parametrize(("outcome", "reason", "category", "short"), [
    ("succeeded", "running sequence number 2", "updated", "running sequence number 2"),
    ("rolled-back", "the new image did not start and was reverted", "rolled-back", None),
    ("failed", "failed: shared-sequence[2] condition-class-identifier on component [h'00']: "
               "class-identifier a does not match the component's (b)", "rejected",
     "class identifier mismatch"),
    ("failed", "failed: install[2] directive-fetch on component [h'00']: digest 12 of payload "
               "'u' does not match expected 34", "rejected", "image digest mismatch"),
    ("failed", "rejected: rollback: sequence number 1 is lower than the installed 2 of app",
     "rejected", "rollback refused"),
    ("failed", "failed: install[2] directive-fetch: FetchError: u: ReadError after 6 attempts",
     "failed", None),
    ("error", "GET /update: HTTP 503", "failed", None),
    (None, "", "pending", None),
])
def test_outcomes_are_classified(outcome: str | None, reason: str, category: str,
                                 short: str | None) -> None:
    assert classify(outcome, reason) == category
    assert short_reason(reason) == (short or reason)
