"""The Aggregate base: encoded handle/apply, failures, state."""

import dataclasses
from typing import Any, List

import pytest

from kiln_sdk import Aggregate, Command, Invalid, NewEvent, Rejected
from kiln_sdk.aggregate import prepare_aggregate
from kiln_sdk.testing import AggregateTest


@dataclasses.dataclass
class Add:
    amount: int


@dataclasses.dataclass
class Lock:
    pass


@dataclasses.dataclass
class Added:
    amount: int


@dataclasses.dataclass
class Locked:
    pass


@dataclasses.dataclass
class Total:
    total: int = 0
    locked: bool = False


class Counter(Aggregate):
    commands = (Add, Lock)
    events = (Added, Locked)
    state_type = Total

    def handle(self, state: Total, command: Any, ctx: Command) -> List[Any]:
        if isinstance(command, Add):
            if command.amount <= 0:
                raise Invalid("amount")
            if state.locked:
                raise Rejected("locked", code="is_locked")
            return [Added(command.amount)]
        if state.locked:
            raise Rejected("already locked")
        return [Locked()]

    def apply(self, state: Total, event: Any) -> Total:
        if isinstance(event, Added):
            state.total += event.amount
        else:
            state.locked = True
        return state


class JsonState(Aggregate):
    """State as plain JSON: no state_type, initial_state overridden."""

    commands = (Add,)
    events = (Added,)

    def initial_state(self) -> Any:
        return {"seen": []}

    def handle(self, state: Any, command: Any, ctx: Command) -> List[Any]:
        return [Added(command.amount)]

    def apply(self, state: Any, event: Any) -> Any:
        state["seen"].append(event.amount)
        return state


def cmd(command_type: str, data: bytes = b"") -> Command:
    return Command(command_type=command_type, data=data)


def test_handle_encodes_events_and_maps_failures() -> None:
    counter = Counter()
    assert counter.handle_encoded(b"", cmd("Add", b'{"amount":4}')) == [
        NewEvent(event_type="Added", data=b'{"amount":4}', schema=1)
    ]
    with pytest.raises(Invalid) as invalid:
        counter.handle_encoded(b"", cmd("Add", b'{"amount":0}'))
    assert invalid.value.message == "amount"
    locked = b'{"total":0,"locked":true}'
    with pytest.raises(Rejected) as rejected:
        counter.handle_encoded(locked, cmd("Add", b'{"amount":1}'))
    assert (rejected.value.code, rejected.value.message) == ("is_locked", "locked")
    with pytest.raises(Rejected) as rejected:
        counter.handle_encoded(locked, cmd("Lock"))
    assert rejected.value.code is None


def test_undecodable_commands_are_invalid_with_the_command_named() -> None:
    counter = Counter()
    cases = {
        ("Nope", b"{}"): "command `Nope`: unknown variant `Nope`, expected `Add` or `Lock`",
        ("Add", b"{}"): "command `Add`: missing field `amount`",
        ("Add", b'{"amount": "1"}'): 'command `Add`: invalid type: string "1", expected i64',
    }
    for (command_type, data), expected in cases.items():
        with pytest.raises(Invalid) as invalid:
            counter.handle_encoded(b"", cmd(command_type, data))
        assert invalid.value.message == expected
    with pytest.raises(Invalid, match="^command `Add`: data is not valid JSON"):
        counter.handle_encoded(b"", cmd("Add", b"not json"))


class LenientCounter(Counter):
    allow_unknown_command_fields = True


def test_unknown_command_fields_are_invalid_unless_the_aggregate_allows_them() -> None:
    data = b'{"amount": 4, "memo": "rent"}'
    with pytest.raises(Invalid) as invalid:
        Counter().handle_encoded(b"", cmd("Add", data))
    assert invalid.value.message == "command `Add`: unknown field `memo`"
    with pytest.raises(Invalid) as invalid:
        Counter().handle_encoded(b"", cmd("Add", b'{"amuont": 4}'))
    assert invalid.value.message == "command `Add`: unknown field `amuont`"
    with pytest.raises(Invalid) as invalid:
        Counter().handle_encoded(b"", cmd("Lock", b'{"reason": null}'))
    assert invalid.value.message == "command `Lock`: unknown field `reason`"
    assert LenientCounter().handle_encoded(b"", cmd("Add", data)) == [
        NewEvent(event_type="Added", data=b'{"amount":4}', schema=1)
    ]
    # Events are never checked for unknown fields.
    state = Counter().apply_encoded(b"", [("Added", b'{"amount": 2, "added_later": true}')])
    assert state == b'{"total":2,"locked":false}'


def test_the_command_is_decoded_before_the_state_is_read() -> None:
    # Invalid wins, even over a state that would not decode.
    with pytest.raises(Invalid):
        Counter().handle_encoded(b"[1]", cmd("Add", b"{}"))


def test_empty_state_is_the_initial_state_and_state_is_plain_json() -> None:
    counter = Counter()
    assert counter.decode_state(b"") == Total()
    state = counter.apply_encoded(b"", [("Added", b'{"amount":2}')])
    assert state == b'{"total":2,"locked":false}'
    state = counter.apply_encoded(state, [("Added", b'{"amount":3}'), ("Locked", b"")])
    assert counter.decode_state(state) == Total(total=5, locked=True)


def test_an_empty_batch_returns_the_state_unchanged() -> None:
    assert Counter().apply_encoded(b"", []) == b""
    assert Counter().apply_encoded(b'{"total":1 , "locked":false}', []) == b'{"total":1 , "locked":false}'


def test_plain_json_state() -> None:
    test = AggregateTest(JsonState()).given(Added(1), Added(2))
    assert test.state_bytes == b'{"seen":[1,2]}'
    assert test.when(Add(3)).state_json == {"seen": [1, 2, 3]}


def test_bugs_raise_plain_exceptions_which_trap() -> None:
    counter = Counter()
    with pytest.raises(ValueError, match="cannot decode the state of Counter"):
        counter.decode_state(b"[1]")
    with pytest.raises(ValueError, match="cannot decode event `Unknown` for Counter: unknown variant"):
        counter.apply_encoded(b"", [("Unknown", b"{}")])
    with pytest.raises(ValueError, match="missing field `amount`; data: {}"):
        counter.apply_encoded(b"", [("Added", b"{}")])

    class Forgetful(Counter):
        def handle(self, state: Total, command: Any, ctx: Command) -> List[Any]:
            return None  # type: ignore[return-value]

        def apply(self, state: Total, event: Any) -> Total:
            return None  # type: ignore[return-value]

    with pytest.raises(TypeError, match="returned None: return a list of events"):
        Forgetful().handle_encoded(b"", cmd("Lock"))
    with pytest.raises(TypeError, match="apply returned None: return the new state"):
        Forgetful().apply_encoded(b"", [("Locked", b"")])

    class WrongEvent(Counter):
        def handle(self, state: Total, command: Any, ctx: Command) -> List[Any]:
            return [command]

    with pytest.raises(TypeError, match="is not one of the events"):
        WrongEvent().handle_encoded(b"", cmd("Lock"))


def test_the_context_carries_the_command_record() -> None:
    seen = []

    class Spy(Counter):
        def handle(self, state: Total, command: Any, ctx: Command) -> List[Any]:
            seen.append(ctx)
            return []

    AggregateTest(Spy(), stream_id="counter-a-1").when(
        Lock(), metadata={"correlation_id": "c"}, issued_at_ms=42
    )
    (ctx,) = seen
    assert (ctx.command_type, ctx.stream_id, ctx.aggregate_id, ctx.issued_at_ms) == (
        "Lock", "counter-a-1", "a-1", 42,
    )
    assert ctx.metadata_json() == {"correlation_id": "c"}
    assert Command("X", metadata=b"not json").metadata_json() is None


def test_prepare_checks_the_declarations() -> None:
    prepare_aggregate(Counter())
    with pytest.raises(TypeError, match="takes an Aggregate instance"):
        prepare_aggregate(Counter)  # type: ignore[arg-type]

    class NoState(Aggregate):
        pass

    with pytest.raises(NotImplementedError, match="override initial_state"):
        prepare_aggregate(NoState())

    class NotDataclasses(Aggregate):
        state_type = Total
        events = (dict,)

    with pytest.raises(TypeError, match="must be dataclasses"):
        prepare_aggregate(NotDataclasses())

    class Unsure(Counter):
        allow_unknown_command_fields = "yes"  # type: ignore[assignment]

    with pytest.raises(TypeError, match="allow_unknown_command_fields must be True or False"):
        prepare_aggregate(Unsure())


def test_testing_outcome() -> None:
    outcome = AggregateTest(Counter()).given(Added(1)).when("Add", {"amount": 2})
    assert outcome.events == [Added(2)]
    assert outcome.encoded == [("Added", 1, '{"amount":2}')]
    assert outcome.state == Total(total=3)
    with pytest.raises(AssertionError, match="expected a rejection, got events"):
        outcome.rejection
    failed = AggregateTest(Counter()).given(Locked()).when(Add(1))
    assert failed.rejection.code == "is_locked"
    assert failed.events == [] and failed.state == Total(locked=True)
    with pytest.raises(AssertionError, match="expected an invalid command, got Rejected"):
        failed.invalid
