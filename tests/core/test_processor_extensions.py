"""Custom commands and parameters (manifest §8.4.11, §8.4.8.16) through the processor's
``Extensions`` registry, and the ``waiting`` result of an unsatisfied wait
(update-management §5.6). The registry is a parameter of ``process``: nothing is registered
by default, and a manifest using an unregistered custom number is refused before any side
effect (manifest §6.1)."""

from __future__ import annotations

import pytest

from core.processor_fakes import c, manifest, override, rig, seq, try_each, verified
from suitkit.core.model import Command, FrozenDict, Parameters
from suitkit.core.numbers import Command as Cmd
from suitkit.core.numbers import ReportReason
from suitkit.core.processor import CustomCall, CustomCommand, CustomParameter, Extensions
from suitkit.errors import StorageError

LED = -300
LED_COLOUR = -301


def _led(calls: list[CustomCall], *, ok: bool = True) -> CustomCommand:
    def run(call: CustomCall) -> bool:
        calls.append(call)
        return ok

    def check(argument: object) -> None:
        if not isinstance(argument, str):
            raise ValueError(f"expected a text pattern, got {type(argument).__name__}")

    return CustomCommand(name="blink-led", run=run, check=check)


def _colour() -> CustomParameter:
    def check(value: object) -> None:
        if value not in ("red", "green"):
            raise ValueError(f"expected red or green, got {value!r}")

    return CustomParameter(name="led-colour", check=check)


def _custom_manifest(argument: object = "..--", colour: object = "green") -> object:
    return verified(manifest(install=seq(
        Command(Cmd.OVERRIDE_PARAMETERS, Parameters(
            content=b"x", extra=FrozenDict({LED_COLOUR: colour}))),
        Command(LED, argument), c(Cmd.WRITE))))


def test_unregistered_custom_commands_are_refused_before_any_side_effect() -> None:
    device = rig()
    result = device.run(_custom_manifest())  # type: ignore[arg-type]
    assert not result.succeeded
    assert result.report.result is not True
    assert result.report.result.reason == ReportReason.PARAMETER_UNSUPPORTED
    assert "no custom parameter of that number is registered" in result.reason
    only_parameter = Extensions(parameters={LED_COLOUR: _colour()})
    result = device.run(_custom_manifest(), extensions=only_parameter)  # type: ignore[arg-type]
    assert "command -300 is not supported (no custom command" in result.reason
    assert device.store.untouched


def test_a_registered_custom_command_runs_with_its_argument_and_parameters() -> None:
    calls: list[CustomCall] = []
    extensions = Extensions(commands={LED: _led(calls)}, parameters={LED_COLOUR: _colour()})
    device = rig()
    result = device.run(_custom_manifest(), extensions=extensions)  # type: ignore[arg-type]
    assert result.succeeded, result.reason
    (call,) = calls
    assert (call.code, call.identifier, call.argument) == (LED, (b"\x00",), "..--")
    assert call.parameters.extra == {LED_COLOUR: "green"}
    assert call.parameters.content == b"x"
    assert device[(b"\x00",)].content == b"x"


def test_custom_arguments_and_values_are_checked_before_any_side_effect() -> None:
    calls: list[CustomCall] = []
    extensions = Extensions(commands={LED: _led(calls)}, parameters={LED_COLOUR: _colour()})
    for m, expected in ((_custom_manifest(argument=5), "bad argument: expected a text"),
                        (_custom_manifest(colour="blue"), "expected red or green")):
        device = rig()
        result = device.run(m, extensions=extensions)  # type: ignore[arg-type]
        assert expected in result.reason
        assert result.report.result is not True
        assert result.report.result.reason == ReportReason.PARAMETER_UNSUPPORTED
        assert device.store.untouched and not calls


def test_a_custom_condition_honours_soft_failure_and_a_directive_aborts() -> None:
    calls: list[CustomCall] = []
    failing = CustomCommand(name="check-temperature", run=lambda call: False, condition=True)
    m = verified(manifest(install=seq(
        try_each(seq(Command(LED, None), override(content=b"a"), c(Cmd.WRITE)),
                 seq(override(content=b"b"), c(Cmd.WRITE))))))
    device = rig()
    result = device.run(m, extensions=Extensions(commands={LED: failing}))
    assert result.succeeded and device[(b"\x00",)].content == b"b"
    directive = Extensions(commands={LED: _led(calls, ok=False)})
    m = verified(manifest(install=seq(Command(LED, "x"))))
    result = rig().run(m, extensions=directive)
    assert "custom directive blink-led (-300) failed" in result.reason

    def broken(call: CustomCall) -> bool:
        raise StorageError("the LED driver is gone")

    result = rig().run(m, extensions=Extensions(commands={
        LED: CustomCommand(name="blink-led", run=broken)}))
    assert "the LED driver is gone" in result.reason


def test_only_custom_conditions_may_sit_in_the_shared_sequence() -> None:
    calls: list[CustomCall] = []
    in_shared = verified(manifest(shared=seq(Command(LED, "x"))))
    result = rig().run(in_shared, extensions=Extensions(commands={LED: _led(calls)}))
    assert "custom directive blink-led (-300) is not allowed in the shared sequence" \
        in result.reason
    condition = CustomCommand(name="ok", run=lambda call: True, condition=True)
    assert rig().run(in_shared, extensions=Extensions(commands={LED: condition})).succeeded


def test_the_registry_takes_negative_numbers_only() -> None:
    with pytest.raises(ValueError, match="must be a negative integer"):
        Extensions(commands={3: CustomCommand(name="x", run=lambda call: True)})
    with pytest.raises(ValueError, match="must be a negative integer"):
        Extensions(parameters={0: CustomParameter(name="x")})


def test_copy_params_may_copy_a_registered_custom_parameter() -> None:
    m = verified(manifest(((b"\x00",), (b"\x01",)), install=seq(
        c(Cmd.SET_COMPONENT_INDEX, 0),
        Command(Cmd.OVERRIDE_PARAMETERS, Parameters(extra=FrozenDict({LED_COLOUR: "red"}))),
        c(Cmd.SET_COMPONENT_INDEX, 1),
        Command(Cmd.COPY_PARAMS, FrozenDict({0: (LED_COLOUR,)})))))
    from core.processor_fakes import MemoryComponent

    components = {(b"\x00",): MemoryComponent(), (b"\x01",): MemoryComponent()}
    assert "parameter custom(-301) is not supported" in rig(components).run(m).reason
    registered = Extensions(parameters={LED_COLOUR: _colour()})
    assert rig(components).run(m, extensions=registered).succeeded


def test_an_unsatisfied_wait_is_waiting_not_a_failure_for_good() -> None:
    m = verified(manifest(install=seq(
        override(wait_info=FrozenDict({2: 1}), content=b"x"), c(Cmd.WAIT, 0), c(Cmd.WRITE))))
    device = rig(wait_result=False)
    not_now = device.run(m)
    assert not not_now.succeeded and not_now.waiting
    assert "waiting: the wait events (power) do not hold yet" in not_now.reason
    assert device.store.untouched
    unsupported = rig(wait_result=None).run(m)
    assert not unsupported.waiting
    assert rig(wait_result=True).run(m).succeeded
