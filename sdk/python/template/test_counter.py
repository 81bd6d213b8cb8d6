"""The counter natively (`python -m pytest`)."""

from counter import Counter, Increment, Incremented, State
from kiln_sdk.testing import AggregateTest


def test_increments() -> None:
    outcome = AggregateTest(Counter()).given(Incremented(by=2)).when(Increment(by=3))
    assert outcome.events == [Incremented(by=3)]
    assert outcome.state == State(value=5)


def test_refuses_to_go_above_ten() -> None:
    rejection = AggregateTest(Counter()).given(Incremented(by=8)).when(Increment(by=3)).rejection
    assert (rejection.message, rejection.code) == ("the counter cannot exceed 10", "limit")
