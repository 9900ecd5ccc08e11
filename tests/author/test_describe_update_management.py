"""The description format's update-management keys (docs/description.md): what each generates
(update-management §4-§5) and the one-line errors that name a bad value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from suitkit.author.describe import parse_description
from suitkit.core import cbor, codec
from suitkit.core.model import Command, VersionMatch
from suitkit.core.numbers import Command as Cmd
from suitkit.errors import DecodeError


def describe(tmp_path: Path, **component: Any) -> Any:
    (tmp_path / "fw.bin").write_bytes(b"\x01" * 100)
    data = {"sequence-number": 3, "vendor-domain": "example.com", "class-name": "board",
            "set-version": "2.0-rc.1",
            "components": [{"id": ["0x00"], "image": "fw.bin", **component}]}
    return parse_description(data, base=tmp_path)


def test_update_management_keys_generate_the_conditions_before_the_fetch(
        tmp_path: Path) -> None:
    description = describe(
        tmp_path, version=">=1.2.3-beta", **{"minimum-battery": 300, "update-priority": -2},
        wait={"power": 1, "day-of-week-utc": 6,
              "other-device-version": {"device": "0a0b", "version": ["<3", ">=2.1"]}},
        metadata={"default-permissions": 7, "file-type": "regular",
                  "modification-time": 1_700_000_000, "creator": "ota",
                  "group-permissions": {100: 5}})
    manifest = description.manifest
    assert manifest.set_version == (2, 0, -1, 1)
    assert manifest.install is not None
    commands: list[Command] = list(manifest.install.commands)
    assert [c.code for c in commands] == [
        Cmd.OVERRIDE_PARAMETERS, Cmd.VERSION, Cmd.UPDATE_AUTHORIZED, Cmd.WAIT,
        Cmd.MINIMUM_BATTERY, Cmd.FETCH, Cmd.IMAGE_MATCH]
    params = commands[0].argument
    assert params.version == VersionMatch(2, (1, 2, 3, -2))  # type: ignore[union-attr]
    assert params.minimum_battery == 300 and params.update_priority == -2  # type: ignore[union-attr]
    assert params.wait_info == {2: 1, 9: 6, 4: (bytes.fromhex("0a0b"),  # type: ignore[union-attr]
                                                ((5, (3,)), (2, (2, 1))))}
    metadata = params.component_metadata  # type: ignore[union-attr]
    assert metadata[6] == cbor.CBORTag(1, 1_700_000_000)
    assert metadata == {1: 7, 5: 1, 6: cbor.CBORTag(1, 1_700_000_000), 8: "ota",
                        3: {100: 5}}
    # the whole manifest encodes and decodes back to the same model (bstr-wrapped members)
    envelope = codec.build_envelope(manifest, integrated=description.integrated)
    again = codec.decode_envelope(codec.encode_envelope(envelope))
    assert again.manifest.install == manifest.install


def test_a_component_without_update_management_keys_is_generated_as_before(
        tmp_path: Path) -> None:
    manifest = describe(tmp_path).manifest
    assert manifest.install is not None
    assert [c.code for c in manifest.install.commands] == [
        Cmd.OVERRIDE_PARAMETERS, Cmd.FETCH, Cmd.IMAGE_MATCH]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("version", "~1.2", "expected a comparison and a version such as '>=1.2.0'"),
    ("version", ">=1.2.3.4", "expected a version such as 1.2.3 or 1.2-rc.3"),
    ("version", ">=1.2-gamma", "expected a version such as 1.2.3 or 1.2-rc.3"),
    ("minimum-battery", -1, "expected an integer >= 0"),
    ("update-priority", "high", "expected an integer"),
    ("wait", {"moon": 1}, "unknown wait event 'moon'"),
    ("wait", {"time": -5}, "expected an integer >= 0"),
    ("wait", {"other-device-version": {"device": "zz", "version": ">1"}},
     "expected hexadecimal bytes"),
    ("metadata", {"colour": 1}, "unknown metadata 'colour'"),
    ("metadata", {"file-type": "socket"}, "expected regular, directory or symlink"),
    ("metadata", {"default-permissions": 1 << 14}, "expected permission bits"),
])
def test_bad_update_management_values_are_named(tmp_path: Path, key: str, value: Any,
                                                message: str) -> None:
    with pytest.raises(DecodeError, match="components\\[0\\]") as raised:
        describe(tmp_path, **{key: value})
    assert message in str(raised.value)
    assert key in str(raised.value)
