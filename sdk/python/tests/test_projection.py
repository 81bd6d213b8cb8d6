"""The Projection base: the batch loop, decoding, errors."""

import dataclasses
import pytest

from kiln_sdk import Envelope, Event, Projection, ProjectionError, View
from kiln_sdk.projection import prepare_projection
from kiln_sdk.testing import ProjectionTest


@dataclasses.dataclass
class Incremented:
    by: int


@dataclasses.dataclass
class Reset:
    pass


class Counters(Projection):
    """One row per counter, and the number of increments under `_increments`."""

    subscriptions = ("Incremented", "Reset")
    events = (Incremented, Reset)

    def __init__(self) -> None:
        self.increments = 0

    def accepts(self, stream_id: str, event_type: str) -> bool:
        return stream_id.startswith("counter-")

    def begin(self, view: View) -> None:
        self.increments = view.get("_increments") or 0

    def handle(self, view: View, event: Envelope) -> None:
        key = event.aggregate_id
        row = view.get(key) or {"value": 0}
        if isinstance(event.event, Incremented):
            if event.event.by < 0:
                raise ProjectionError("negative increment")
            row["value"] += event.event.by
            self.increments += 1
        else:
            row["value"] = 0
        view.put(key, row)

    def finish(self, view: View) -> None:
        view.put("_increments", self.increments)


class Everything(Projection):
    """Subscribes to every event, knows one type."""

    events = (Reset,)

    def handle(self, view: View, event: Envelope) -> None:
        view.put(str(event.position), event.event_type)


class Raw(Projection):
    """No event classes: payloads as plain JSON."""

    def handle(self, view: View, event: Envelope) -> None:
        view.put(event.stream_id, {"data": event.event, "meta": event.correlation_id})


def test_a_batch_runs_begin_handle_finish_and_writes_at_the_end() -> None:
    test = ProjectionTest(Counters).given(
        ("counter-a", Incremented(2)),
        ("counter-b", Incremented(5)),
        ("counter-a", Incremented(1)),
        ("other-1", Incremented(100)),
    )
    assert test.rows() == [("_increments", 3), ("a", {"value": 3}), ("b", {"value": 5})]
    test.given(("counter-b", "Reset", ""), ("other-1", "Reset", "{}"))
    assert test.row("b") == {"value": 0}
    assert test.row("1") is None


def test_errors_name_the_event_and_write_nothing() -> None:
    test = ProjectionTest(Counters).given(("counter-a", Incremented(1)))
    with pytest.raises(ProjectionError) as caught:
        test.given(("counter-a", Incremented(1)), ("counter-a", Incremented(-1)))
    assert caught.value.message == "event 3 (`Incremented` on `counter-a`): negative increment"
    with pytest.raises(ProjectionError) as caught:
        test.given(("counter-a", "Incremented", '{"by": "x"}'))
    assert caught.value.message == (
        "event 4 (`Incremented` on `counter-a`): cannot decode its data: "
        'invalid type: string "x", expected i64'
    )
    with pytest.raises(ProjectionError) as caught:
        test.given(("counter-a", "Decremented", "{}"))
    assert caught.value.message == (
        'event 5 (`Decremented` on `counter-a`): the projection subscribes to ["Incremented", "Reset"] '
        'but has no event class `Decremented` (it knows ["Incremented", "Reset"])'
    )
    assert test.rows() == [("_increments", 1), ("a", {"value": 1})]


def test_unknown_types_are_skipped_when_subscribed_to_everything() -> None:
    test = ProjectionTest(Everything).given(("x-1", "Reset", ""), ("x-1", "Other", "not even json"))
    assert test.rows() == [("1", "Reset")]


def test_without_event_classes_payloads_are_plain_json() -> None:
    test = ProjectionTest(Raw).given(
        ("s-1", "Any", '{"a": [1]}'),
        ("s-2", "Any", ""),
    )
    assert test.row("s-1") == {"data": {"a": [1]}, "meta": None}
    assert test.row("s-2") == {"data": None, "meta": None}
    event = test.event("s-3", "Any", "{", metadata={"correlation_id": "c"})
    with pytest.raises(ProjectionError, match=r"^event 3 \(`Any` on `s-3`\): cannot decode its data"):
        test.handle_batch([event])


def test_other_exceptions_propagate_as_they_are() -> None:
    class Broken(Counters):
        def handle(self, view: View, event: Envelope) -> None:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        ProjectionTest(Broken).given(("counter-a", Incremented(1)))


def test_envelope_helpers() -> None:
    event = Event(
        position=1, stream_id="bank_account-a-1", version=1, event_type="X", schema=1,
        data=b"{}", metadata=b'{"correlation_id":"t1","causation_id":"17","n":5}', recorded_at_ms=0,
    )
    assert (event.category, event.aggregate_id) == ("bank_account", "a-1")
    assert (event.correlation_id, event.causation_id) == ("t1", "17")
    assert event.metadata_str("n") is None
    assert dataclasses.replace(event, stream_id="plain").aggregate_id == ""
    assert dataclasses.replace(event, metadata=b"").correlation_id is None


def test_prepare_checks_the_declarations() -> None:
    prepare_projection(Counters)
    with pytest.raises(TypeError, match="takes a Projection subclass"):
        prepare_projection(Counters())  # type: ignore[arg-type]

    class OneString(Projection):
        subscriptions = "Opened"  # type: ignore[assignment]

    with pytest.raises(TypeError, match="must be a list of event types"):
        prepare_projection(OneString)
