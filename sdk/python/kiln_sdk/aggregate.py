"""The :class:`Aggregate` base class and the encoded calls the host makes."""

from typing import Any, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import codec
from .errors import Invalid
from .records import EVENT_SCHEMA, Command, Event, NewEvent


class Aggregate:
    """An event-sourced aggregate: decides commands into events and folds
    events into its state.

    Subclass it and declare:

    - ``commands``: the payload dataclasses of the commands it understands;
      the class name is the command type (``Deposit``), the fields the JSON
      data. The SDK decodes a command into one of them before ``handle``
      sees it; a command that does not decode is :class:`~kiln_sdk.Invalid`
      with serde's message, prefixed with ``command `Type`: ``. A field the
      payload class does not have, at any depth, is such a failure
      (``command `Deposit`: unknown field `amuont```), so that a client's
      misspelled field is not silently dropped.
    - ``allow_unknown_command_fields`` (optional, default ``False``): set it
      to ``True`` to ignore a command's unknown fields instead, serde's
      default. Events are never checked for unknown fields: a stored event
      always decodes.
    - ``events``: the payload dataclasses of its events, named the same way.
      Event data is written as JSON with sorted keys, schema 1.
    - ``state_type``: a dataclass whose default instance is the initial
      state; the state is stored as its JSON, fields in order. Or leave it
      ``None``, override :meth:`initial_state`, and keep any JSON value
      (a ``dict``) as the state.

    The host keeps the state as bytes and never reads them; empty bytes are
    the initial state. Both methods must be deterministic: read the time
    from ``ctx.issued_at_ms``, never from a clock.
    """

    commands: ClassVar[Sequence[type]] = ()
    events: ClassVar[Sequence[type]] = ()
    state_type: ClassVar[Optional[type]] = None
    allow_unknown_command_fields: ClassVar[bool] = False

    # -- what a plugin implements ---------------------------------------

    def initial_state(self) -> Any:
        """The state of a stream without events."""
        if self.state_type is None:
            raise NotImplementedError(
                f"{type(self).__name__} sets no state_type: override initial_state()"
            )
        return self.state_type()

    def handle(self, state: Any, command: Any, ctx: Command) -> List[Any]:
        """Decide ``command`` (a decoded payload) against ``state``.

        Return the events to append (instances of the ``events`` classes; an
        empty list changes nothing), or raise :class:`~kiln_sdk.Rejected`
        when a business rule refuses it and :class:`~kiln_sdk.Invalid` when
        the command makes no sense. Anything else raised is a bug: the call
        traps. The events are applied later, by :meth:`apply`, once committed.
        """
        raise NotImplementedError

    def apply(self, state: Any, event: Any) -> Any:
        """Fold one committed event into ``state`` and return the new state
        (mutating and returning ``state`` is fine). It cannot fail: raise
        only for a bug, which makes the call trap."""
        raise NotImplementedError

    # -- the encoded calls (what the component's exports run) -----------

    def _command_classes(self) -> Dict[str, type]:
        return _registry(type(self), "commands")

    def _event_classes(self) -> Dict[str, type]:
        return _registry(type(self), "events")

    def decode_state(self, data: bytes) -> Any:
        """The state from the host's bytes; empty bytes are :meth:`initial_state`.

        Raises ``ValueError`` when the bytes are not this plugin's state: the
        host only passes back what :meth:`encode_state` made, so that is a bug.
        """
        if not data:
            return self.initial_state()
        try:
            value = codec.parse_json(data)
            if self.state_type is None:
                return value
            return codec.struct_from_json(self.state_type, value)
        except codec.DecodeError as error:
            raise ValueError(
                f"cannot decode the state of {type(self).__name__} from {len(data)} bytes "
                f"of JSON: {error.message}"
            ) from None

    def encode_state(self, state: Any) -> bytes:
        """The state as JSON bytes for the host to keep."""
        return codec.dumps(state)

    def decode_command(self, command_type: str, data: bytes) -> Any:
        """The payload of a command; :class:`~kiln_sdk.Invalid` when it does not decode."""
        try:
            return codec.decode_tagged(
                self._command_classes(),
                command_type,
                data,
                allow_unknown_fields=self.allow_unknown_command_fields,
            )
        except codec.DecodeError as error:
            raise Invalid(f"command `{command_type}`: {error.message}") from None

    def decode_event(self, event_type: str, data: bytes) -> Any:
        """The payload of a committed event; ``ValueError`` (a trap in a
        component) when it does not decode: the plugin has a bug, or the
        stream holds events it never wrote."""
        try:
            return codec.decode_tagged(self._event_classes(), event_type, data)
        except codec.DecodeError as error:
            shown = bytes(data[:200]).decode("utf-8", "replace")
            raise ValueError(
                f"cannot decode event `{event_type}` for {type(self).__name__}: "
                f"{error.message}; data: {shown}"
            ) from None

    def encode_event(self, event: Any) -> NewEvent:
        """An event ``handle`` decided, as the host receives it."""
        event_type, data = codec.encode_tagged(self._event_classes(), event, "events")
        return NewEvent(event_type=event_type, data=data, schema=EVENT_SCHEMA)

    def handle_encoded(self, state: bytes, command: Command) -> List[NewEvent]:
        """``handle`` as the host calls it. Raises Rejected or Invalid for the
        expected failures; anything else is a trap."""
        # The command is decoded first: a malformed command is invalid
        # whatever the state.
        payload = self.decode_command(command.command_type, command.data)
        decided = self.handle(self.decode_state(state), payload, command)
        if decided is None:
            raise TypeError(
                f"{type(self).__name__}.handle returned None: return a list of events "
                "([] when nothing changes)"
            )
        return [self.encode_event(event) for event in decided]

    def apply_encoded(
        self, state: bytes, events: Iterable[Union[Event, Tuple[str, bytes]]]
    ) -> bytes:
        """``apply`` as the host calls it: fold a batch of events (records or
        ``(event_type, data)`` pairs), in stream order, into the state bytes.
        An empty batch gives the state back unchanged."""
        pairs = [
            (event.event_type, event.data) if isinstance(event, Event) else event
            for event in events
        ]
        if not pairs:
            return bytes(state)
        current = self.decode_state(state)
        for event_type, data in pairs:
            current = self.apply(current, self.decode_event(event_type, data))
            if current is None:
                raise TypeError(
                    f"{type(self).__name__}.apply returned None: return the new state"
                )
        return self.encode_state(current)


_REGISTRIES: Dict[Tuple[type, str], Dict[str, type]] = {}


def _registry(owner: type, attribute: str) -> Dict[str, type]:
    """``owner.<attribute>`` (payload classes) by type name, built once."""
    key = (owner, attribute)
    found = _REGISTRIES.get(key)
    if found is None:
        found = codec.registry(getattr(owner, attribute), f"{owner.__name__}.{attribute}")
        _REGISTRIES[key] = found
    return found


def prepare_aggregate(aggregate: Aggregate) -> None:
    """Check ``aggregate``'s declarations and warm every cache once: its
    payload classes, its state type, and a round trip of its initial state.
    A mistake (a payload class that is not a dataclass, an initial state
    that is not JSON) fails the build instead of the first call."""
    if not isinstance(aggregate, Aggregate):
        raise TypeError(
            f"export_aggregate takes an Aggregate instance (e.g. BankAccount()), got {aggregate!r}"
        )
    if not isinstance(aggregate.allow_unknown_command_fields, bool):
        raise TypeError(
            f"{type(aggregate).__name__}.allow_unknown_command_fields must be True or False"
        )
    for attribute in ("commands", "events"):
        for cls in _registry(type(aggregate), attribute).values():
            codec.prepare(cls)
    if aggregate.state_type is not None:
        codec.prepare(aggregate.state_type)
    aggregate.decode_state(aggregate.encode_state(aggregate.initial_state()))
