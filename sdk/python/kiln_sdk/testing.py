"""Given/when/then helpers that run a plugin natively through the very
encoding the component uses (payloads and state go through bytes).

::

    test = AggregateTest(BankAccount()).given(Opened(owner="Ann"))
    outcome = test.when(Deposit(amount=5))
    assert outcome.events == [Deposited(amount=5)]
    assert outcome.state_json["balance"] == 5
    assert "not open" in AggregateTest(BankAccount()).when("Close").rejection.message

    test = ProjectionTest(AccountBalances).given(("bank_account-1", Opened(owner="ann")))
    assert test.row("account-1") == {"owner": "ann", "balance": 0, "status": "open"}
"""

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import codec
from .aggregate import Aggregate
from .errors import Invalid, Rejected
from .projection import run_batch
from .records import Command, Event, NewEvent
from .view import MemoryStore, StoreCalls

Data = Union[None, str, bytes, dict, list]


def as_bytes(data: Data) -> bytes:
    """Test data as payload bytes: text and bytes as they are, ``None`` as
    no data, anything else as JSON."""
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    return codec.dumps(data)


def encode_payload(payload: Any) -> Tuple[str, bytes]:
    """A payload dataclass instance as a type and JSON data (sorted keys, as
    the SDK writes events)."""
    return codec.type_name(type(payload)), codec.dumps(payload, sort_keys=True)


@dataclasses.dataclass
class Outcome:
    """What ``handle`` made of one command."""

    aggregate: Aggregate
    #: The state bytes the command was handled against.
    state_before: bytes
    #: The events as the host receives them; empty when the command failed.
    new_events: List[NewEvent]
    #: ``Rejected`` or ``Invalid``; ``None`` on success.
    failure: Optional[Exception]

    @property
    def events(self) -> List[Any]:
        """The decided events, decoded back into payload instances."""
        return [self.aggregate.decode_event(e.event_type, e.data) for e in self.new_events]

    @property
    def encoded(self) -> List[Tuple[str, int, str]]:
        """The decided events as ``(event_type, schema, data as text)``."""
        return [(e.event_type, e.schema, e.data.decode("utf-8")) for e in self.new_events]

    @property
    def state_bytes(self) -> bytes:
        """The state after applying the decided events (the state before
        when there are none)."""
        return self.aggregate.apply_encoded(
            self.state_before, [(e.event_type, e.data) for e in self.new_events]
        )

    @property
    def state(self) -> Any:
        return self.aggregate.decode_state(self.state_bytes)

    @property
    def state_json(self) -> Any:
        """The state after the events as plain JSON (the initial state's JSON
        when the stream has no event yet)."""
        data = self.state_bytes
        return codec.parse_json(data if data else self.aggregate.encode_state(self.state))

    @property
    def rejection(self) -> Rejected:
        """The rejection; ``AssertionError`` when the command was not rejected."""
        if not isinstance(self.failure, Rejected):
            raise AssertionError(f"expected a rejection, got {self._got()}")
        return self.failure

    @property
    def invalid(self) -> Invalid:
        """The invalid failure; ``AssertionError`` when the command was not invalid."""
        if not isinstance(self.failure, Invalid):
            raise AssertionError(f"expected an invalid command, got {self._got()}")
        return self.failure

    def _got(self) -> str:
        return repr(self.failure) if self.failure is not None else f"events {self.encoded}"


class AggregateTest:
    """One stream of ``aggregate``: given events, when a command, then check
    the :class:`Outcome`."""

    def __init__(self, aggregate: Aggregate, stream_id: str = "test-1") -> None:
        self.aggregate = aggregate
        self.stream_id = stream_id
        #: The stream's state as the host would keep it.
        self.state_bytes = b""

    def given(self, *events: Any) -> "AggregateTest":
        """Apply events (payload instances, or ``(event_type, data)``) in one batch."""
        pairs = [
            (e[0], as_bytes(e[1])) if isinstance(e, tuple) else encode_payload(e) for e in events
        ]
        self.state_bytes = self.aggregate.apply_encoded(self.state_bytes, pairs)
        return self

    @property
    def state(self) -> Any:
        return self.aggregate.decode_state(self.state_bytes)

    def when(
        self,
        command: Any,
        data: Data = None,
        *,
        metadata: Data = None,
        issued_at_ms: int = 0,
    ) -> Outcome:
        """Handle a command: a payload instance, or a command type with its
        data (JSON text, bytes, or a value to write as JSON)."""
        if isinstance(command, str):
            command_type, payload = command, as_bytes(data)
        else:
            command_type, payload = codec.type_name(type(command)), codec.dumps(command)
        record = Command(
            command_type=command_type,
            data=payload,
            metadata=as_bytes(metadata),
            stream_id=self.stream_id,
            issued_at_ms=issued_at_ms,
        )
        try:
            events = self.aggregate.handle_encoded(self.state_bytes, record)
        except (Rejected, Invalid) as failure:
            return Outcome(self.aggregate, self.state_bytes, [], failure)
        return Outcome(self.aggregate, self.state_bytes, events, None)


class ProjectionTest:
    """A projection over an in-memory view; each :meth:`given` is one batch."""

    def __init__(self, projection: type, rows: Optional[Dict[str, Any]] = None) -> None:
        self.projection = projection
        self.store = MemoryStore({key: as_bytes(value) for key, value in (rows or {}).items()})
        self._position = 0
        self._versions: Dict[str, int] = {}
        #: The store calls of the last batch.
        self.last_calls = StoreCalls()

    def event(
        self,
        stream_id: str,
        event: Any,
        data: Data = None,
        *,
        metadata: Data = None,
        recorded_at_ms: int = 0,
    ) -> Event:
        """The next committed event of the log: a payload instance, or an
        event type with its data."""
        if isinstance(event, str):
            event_type, payload = event, as_bytes(data)
        else:
            event_type, payload = encode_payload(event)
        self._position += 1
        version = self._versions.get(stream_id, 0) + 1
        self._versions[stream_id] = version
        return Event(
            position=self._position,
            stream_id=stream_id,
            version=version,
            event_type=event_type,
            schema=1,
            data=payload,
            metadata=as_bytes(metadata) or b"{}",
            recorded_at_ms=recorded_at_ms,
        )

    def handle_batch(self, events: Sequence[Event]) -> None:
        """Run one batch; a failure (ProjectionError, or any exception) propagates
        and writes nothing."""
        self.last_calls = run_batch(self.projection, events, self.store)

    def given(self, *items: Tuple[Any, ...]) -> "ProjectionTest":
        """One batch of ``(stream_id, payload)`` or ``(stream_id, event_type, data)``."""
        self.handle_batch([self.event(*item) for item in items])
        return self

    def row(self, key: str) -> Any:
        """The row under ``key`` as plain JSON; ``None`` when there is none."""
        data = self.store.rows.get(key)
        return None if data is None else json.loads(data)

    def rows(self, prefix: str = "") -> List[Tuple[str, Any]]:
        """The rows whose key starts with ``prefix``, in key order, as plain JSON."""
        return [
            (key, json.loads(value))
            for key, value in sorted(self.store.rows.items())
            if key.startswith(prefix)
        ]
