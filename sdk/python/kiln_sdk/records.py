"""The WIT records a plugin sees, as plain dataclasses (snake_case fields, byte
payloads), so that plugin code and tests never touch the generated bindings."""

import dataclasses
from typing import Any, Optional

from . import codec


def _split_stream(stream_id: str) -> "tuple[str, str]":
    category, _, aggregate_id = stream_id.partition("-")
    return category, aggregate_id


def _json_or_none(data: bytes) -> Any:
    try:
        return codec.parse_json(data) if data else None
    except codec.DecodeError:
        return None


@dataclasses.dataclass
class Command:
    """A command addressed to one aggregate instance (the WIT ``command``).

    ``handle`` receives it as its context, beside the decoded payload."""

    command_type: str
    #: The payload, JSON bytes.
    data: bytes = b""
    #: JSON object with ``correlation_id``, ``causation_id`` and the caller's fields.
    metadata: bytes = b""
    #: ``{aggregate}-{id}``.
    stream_id: str = "test-1"
    #: The time the host stamped on the command, ms since the Unix epoch. Use
    #: it instead of a clock, so that decisions replay.
    issued_at_ms: int = 0

    @property
    def aggregate_id(self) -> str:
        """The id after the first ``-`` of the stream id (``42`` in ``bank_account-42``)."""
        return _split_stream(self.stream_id)[1]

    def metadata_json(self) -> Any:
        """The metadata parsed as JSON; ``None`` when empty or not JSON."""
        return _json_or_none(self.metadata)


@dataclasses.dataclass
class Event:
    """An event as it was committed to the store (the WIT ``event``)."""

    #: Position in the global order, 1-based, gap-free.
    position: int
    #: ``{category}-{id}``; for aggregates the category is the aggregate name.
    stream_id: str
    #: Version inside the stream, 1-based.
    version: int
    event_type: str
    #: The version of the payload's schema.
    schema: int
    #: The payload, JSON bytes.
    data: bytes
    #: JSON object: ``correlation_id``, ``causation_id`` and the caller's fields.
    metadata: bytes
    #: When the host recorded the event, ms since the Unix epoch.
    recorded_at_ms: int

    @property
    def category(self) -> str:
        """The stream's category, before the first ``-``: the aggregate's name."""
        return _split_stream(self.stream_id)[0]

    @property
    def aggregate_id(self) -> str:
        """The aggregate id, after the first ``-`` (ids may contain ``-``); empty
        when the stream id has none."""
        return _split_stream(self.stream_id)[1]

    def metadata_json(self) -> Any:
        """The metadata parsed as JSON; ``None`` when empty or not JSON."""
        return _json_or_none(self.metadata)

    def metadata_str(self, key: str) -> Optional[str]:
        """Metadata field ``key`` when it is a string."""
        metadata = self.metadata_json()
        value = metadata.get(key) if isinstance(metadata, dict) else None
        return value if isinstance(value, str) else None

    @property
    def correlation_id(self) -> Optional[str]:
        return self.metadata_str("correlation_id")

    @property
    def causation_id(self) -> Optional[str]:
        return self.metadata_str("causation_id")

    def describe(self) -> str:
        """How error messages name the event: ``event 7 (`Deposited` on `bank_account-42`)``."""
        return f"event {self.position} (`{self.event_type}` on `{self.stream_id}`)"


@dataclasses.dataclass
class NewEvent:
    """An event decided by an aggregate, not yet committed (the WIT ``new-event``)."""

    event_type: str
    #: The payload, JSON bytes.
    data: bytes
    #: The version of the payload's schema; the SDK always writes 1.
    schema: int = 1


#: The schema version the SDK writes on every event it encodes.
EVENT_SCHEMA = 1
