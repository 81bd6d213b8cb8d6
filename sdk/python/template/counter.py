"""The counter's rules: plain Python that imports only the SDK, so pytest
runs them natively."""

import dataclasses
from typing import List

from kiln_sdk import Aggregate, Command, Invalid, Rejected


@dataclasses.dataclass
class State:
    value: int = 0


@dataclasses.dataclass
class Increment:
    by: int


@dataclasses.dataclass
class Incremented:
    by: int


class Counter(Aggregate):
    commands = (Increment,)
    events = (Incremented,)
    state_type = State

    def handle(self, state: State, command: object, ctx: Command) -> List[object]:
        assert isinstance(command, Increment)
        if command.by <= 0:
            raise Invalid("`by` must be positive")  # HTTP 400
        if state.value + command.by > 10:
            raise Rejected("the counter cannot exceed 10", code="limit")  # HTTP 422
        return [Incremented(by=command.by)]

    def apply(self, state: State, event: object) -> State:
        assert isinstance(event, Incremented)
        state.value += event.by
        return state
