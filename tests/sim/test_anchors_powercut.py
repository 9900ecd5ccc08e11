"""Power cuts around a trust-anchor rotation (docs/keys.md; issue #16): the harness of
tests/sim/test_real_powercut.py with ``real-SHAPE-anchors``, a rotation that revokes the key
of the running release, then two updates signed by the new key. After every cut the device
boots (0 bricks), its anchors are the old ones or exactly the new ones (never a mix), the
rotation tried again installs, and a release of the revoked key is refused."""

from __future__ import annotations

import pytest

from suitkit.bootloader.api import NoBootableImage
from suitkit.device import consumer
from suitkit.sim.powercut import REAL_SCENARIOS, run_real_scenario

ROTATION_EVENTS = range(1, 16)
"""The rotation's install (its anchors file step, the folder's save) and the boot after it,
with margin: every event of them is cut."""


@pytest.mark.parametrize("shape", ["mcu", "linux", "dual-cpu"])
def test_every_cut_around_the_rotation_recovers(shape: str) -> None:
    name = f"real-{shape}-anchors"
    assert REAL_SCENARIOS[name].anchors
    result = run_real_scenario(name, points=ROTATION_EVENTS, seed=3)
    assert result.failures == []
    assert result.cut_points_tried == len(ROTATION_EVENTS)
    assert result.outcomes.get("old", 0) >= 1  # cuts in the rotation leave the old release


def test_the_harness_catches_a_rotation_that_forgets_the_running_image(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without recording the running image's manifest, the revoked key's release no longer
    boots: the device bricks, and the harness says so."""

    def forget(self: consumer.Consumer, name: str, *, running: bool) -> bytes | None:
        return None

    monkeypatch.setattr(consumer.Consumer, "_slot_manifest", forget)
    with pytest.raises(NoBootableImage, match="signed by a revoked key"):
        run_real_scenario("real-mcu-anchors", points=[1, 2])
