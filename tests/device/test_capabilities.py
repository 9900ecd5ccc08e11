"""The capability report a real device produces (draft-ietf-suit-report §6; issue #15).

Device folders of several shapes, opened as the CLI opens them, say what they really support:
their own components, the commands and parameters their processor runs (the custom ones they
register included: §6 says extension capabilities MUST be reported), the algorithms their
trust anchors and decryption keys accept. A manifest using something the report does not list
is one the device refuses.
"""

from __future__ import annotations

import base64
from pathlib import Path

from device.device_kit import CLASS, VENDOR, Author, install, new_device
from suitkit.core import codec, crypto
from suitkit.core.processor import CustomCommand, CustomParameter, Extensions
from suitkit.core.report import capability_gaps, decode_capability_report
from suitkit.device.agent import inventory_of
from suitkit.device.capabilities import capability_report
from suitkit.device.config import create_device
from suitkit.device.wiring import open_device


def test_an_mcu_device_reports_its_component_its_processor_and_its_anchor(
        tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author", "ES256")
    cap = capability_report(open_device(new_device(tmp_path / "dev", [author.anchor])))
    assert [c.parts for c in cap.components] == [(b"\x00",)]
    assert not cap.components[0].wildcard
    assert {1, 2, 3, 12, 14, 15, 19, 20, 21, 22, 23, 28, 29, 32, 34, 35} <= set(cap.commands)
    assert all(c > 0 for c in cap.commands)  # nothing custom registered
    assert 30 not in cap.parameters  # component metadata: no place for it on flash (§4.6)
    assert {3, 14, 21, 28, 29} <= set(cap.parameters)
    assert set(cap.algorithms) == {-7, -9, -16}  # the P-256 anchor's algorithms, SHA-256
    assert cap.envelope is not None and 1 not in cap.envelope and 2 in cap.envelope
    assert cap.manifest is not None and {2, 3, 20} <= set(cap.manifest)
    # the agent's inventory carries it, strictly decodable
    doc = inventory_of(open_device(tmp_path / "dev"))
    assert decode_capability_report(base64.b64decode(doc["capabilities"])) == cap


def test_a_linux_device_with_extensions_and_keys_reports_them(tmp_path: Path) -> None:
    author = Author.create(tmp_path / "author", "Ed25519")
    kek = tmp_path / "fleet.kek"
    kek.write_bytes(crypto.kek_to_pem(crypto.AesKwKey(bytes(16))))
    ecdh = tmp_path / "device.key"
    ecdh.write_bytes(crypto.recipient_to_pem(crypto.generate_recipient_key("X25519")))
    folder = tmp_path / "linux"
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, trust_anchors=[author.anchor],
                  shape="linux", decryption_keys=[kek, ecdh])
    extensions = Extensions(
        commands={-300: CustomCommand(name="blink-led", run=lambda call: True)},
        parameters={-301: CustomParameter(name="led-colour")})
    cap = capability_report(open_device(folder, extensions=extensions))
    assert -300 in cap.commands and -301 in cap.parameters
    assert 30 in cap.parameters  # a Linux-class device keeps component metadata
    assert {-8, -19} <= set(cap.algorithms)  # the Ed25519 anchor
    assert {-3, -29, 1, 24, -65534} <= set(cap.algorithms)  # A128KW, ECDH-ES, GCM, ChaCha, CTR
    assert -7 not in cap.algorithms  # no P-256 anchor: no ES256


def test_what_the_report_leaves_out_the_device_refuses(tmp_path: Path) -> None:
    """A manifest for a component or with a command the capability report does not list is
    refused by the same device: the report is not a list kept by hand."""
    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "dev", [author.anchor])
    cap = capability_report(open_device(folder))
    assert not cap.supports_component((b"\x07",))
    other = author.envelope(1, [author.component("x.bin", b"x" * 100, index=7)])
    outcome = install(folder, other)
    assert not outcome.installed
    assert -300 not in cap.commands
    custom = author.envelope(2, [author.component("c.bin", b"c" * 100)],
                             top={"install": [[-300, None]]})
    refused = install(folder, custom)
    assert not refused.installed and "command -300 is not supported" in refused.reason


def test_capability_gaps_name_what_an_envelope_uses_beyond_the_report(tmp_path: Path) -> None:
    """The author's check (``capability_gaps``): a device's own release has none; one for
    another component, with a custom command and parameter, or signed with an algorithm the
    device's anchor does not take, has one line per element."""
    author = Author.create(tmp_path / "author")
    folder = new_device(tmp_path / "dev", [author.anchor])
    cap = capability_report(open_device(folder))
    good, _ = author.release(1)
    assert capability_gaps(cap, codec.decode_envelope(good)) == ()
    bad = author.envelope(2, [author.component("x.bin", b"x" * 64, index=7)],
                          top={"install": [["override-parameters", {"custom(-301)": 1}],
                                           [-300, None]]})
    gaps = capability_gaps(cap, codec.decode_envelope(bad))
    assert gaps == ("component [07] is not one the device has",
                    "command custom(-300) is not one the device supports",
                    "parameter custom(-301) is not one the device supports")
    ed = Author.create(tmp_path / "ed", "Ed25519")
    signed, _ = ed.release(3)
    assert capability_gaps(cap, codec.decode_envelope(signed)) == (
        "algorithm ed25519 (-19) is not one the device supports",)


def test_an_mcu_device_with_a_stage0_reports_its_bootloader_too(tmp_path: Path) -> None:
    """issue #16 (docs/selfupdate.md): its stage-1 bootloader is a component it updates."""
    author = Author.create(tmp_path / "author", "ES256")
    folder = tmp_path / "dev"
    create_device(folder, vendor_id=VENDOR, class_id=CLASS, trust_anchors=[author.anchor],
                  stage1=True)
    cap = capability_report(open_device(folder))
    assert [c.parts for c in cap.components] == [(b"\x00",), (b"suitkit", b"bootloader")]
