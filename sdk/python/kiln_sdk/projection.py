"""The :class:`Projection` base class, the :class:`Envelope` its ``handle``
sees, and the batch loop the component's ``handle-batch`` export runs."""

import dataclasses
import json
from typing import Any, ClassVar, Dict, Sequence

from . import codec
from .errors import ProjectionError
from .records import Event
from .view import StoreCalls, Store, View


@dataclasses.dataclass
class Envelope(Event):
    """A committed event with its payload decoded into ``event``: an instance
    of one of the projection's ``events`` classes, or the plain JSON value
    when the projection declares none."""

    event: Any = None


class Projection:
    """A projection: turns committed events into rows of a key-value :class:`View`.

    The host calls ``handle-batch`` with batches of events in global order.
    For each batch the SDK makes a fresh instance (keep per-batch state in
    ``self``, such as running totals), calls :meth:`handle_batch`, and when
    it returns writes the rows the batch changed. The default
    :meth:`handle_batch` calls :meth:`begin`, then :meth:`handle` for each
    event that :meth:`accepts` and that decodes, then :meth:`finish`.

    Declare:

    - ``subscriptions``: the event types to receive; empty means every event.
    - ``events``: payload dataclasses, named like the event types. An event
      whose type has no class is skipped when ``subscriptions`` is empty,
      and fails the batch when the projection subscribed to it by name. With
      no ``events`` at all, ``envelope.event`` is the plain JSON value.

    Raise :class:`~kiln_sdk.ProjectionError` to fail the batch: nothing of it
    is written and the host stops this projection (and only it) until an
    operator acts. Any other exception makes the call trap, with the same
    effect. Like an aggregate, a projection must be deterministic: read times
    from ``envelope.recorded_at_ms``, never from a clock.
    """

    subscriptions: ClassVar[Sequence[str]] = ()
    events: ClassVar[Sequence[type]] = ()

    def accepts(self, stream_id: str, event_type: str) -> bool:
        """Whether to decode and handle an event; the others are skipped
        without being decoded. The default accepts every event."""
        return True

    def begin(self, view: View) -> None:
        """Called once per batch, before any event: load what the batch keeps in ``self``."""

    def handle(self, view: View, event: Envelope) -> None:
        """Project one event into the view."""
        raise NotImplementedError

    def finish(self, view: View) -> None:
        """Called once per batch, after its last event: write back what :meth:`begin` loaded."""

    def handle_batch(self, events: Sequence[Event], view: View) -> None:
        """Process one batch. Override it to take over the whole loop."""
        classes = _event_classes(type(self))
        self.begin(view)
        for raw in events:
            if not self.accepts(raw.stream_id, raw.event_type):
                continue
            envelope = self._decode(classes, raw)
            if envelope is None:
                continue
            try:
                self.handle(view, envelope)
            except ProjectionError as error:
                raise ProjectionError(f"{raw.describe()}: {error.message}") from None
        self.finish(view)

    def _decode(self, classes: Dict[str, type], raw: Event) -> "Envelope | None":
        """The event decoded, ``None`` to skip it; ProjectionError when it cannot be."""
        fields = {f.name: getattr(raw, f.name) for f in dataclasses.fields(Event)}
        if not classes:
            try:
                payload = codec.parse_json(raw.data) if raw.data else None
            except codec.DecodeError as error:
                raise ProjectionError(
                    f"{raw.describe()}: cannot decode its data: {error.message}"
                ) from None
            return Envelope(**fields, event=payload)
        if raw.event_type not in classes:
            if not self.subscriptions:
                return None
            raise ProjectionError(
                f"{raw.describe()}: the projection subscribes to "
                f"{json.dumps(list(self.subscriptions))} but has no event class "
                f"`{raw.event_type}` (it knows {json.dumps(list(classes))})"
            )
        try:
            payload = codec.decode_tagged(classes, raw.event_type, raw.data)
        except codec.DecodeError as error:
            raise ProjectionError(f"{raw.describe()}: cannot decode its data: {error.message}") from None
        return Envelope(**fields, event=payload)


_CLASSES: Dict[type, Dict[str, type]] = {}


def _event_classes(owner: type) -> Dict[str, type]:
    found = _CLASSES.get(owner)
    if found is None:
        found = codec.registry(owner.events, f"{owner.__name__}.events")
        _CLASSES[owner] = found
    return found


def run_batch(projection: type, events: Sequence[Event], store: Store) -> StoreCalls:
    """``handle-batch`` as the host calls it: run one batch through a fresh
    instance of ``projection`` and, when it succeeds, write the changed rows
    to ``store``. Returns the store calls the batch made."""
    view = View(store)
    projection().handle_batch(list(events), view)
    view.flush()
    return view.calls


def prepare_projection(projection: type) -> None:
    """Check ``projection``'s declarations and resolve its payload classes
    once (see :func:`kiln_sdk.aggregate.prepare_aggregate`)."""
    if not (isinstance(projection, type) and issubclass(projection, Projection)):
        raise TypeError(f"export_projection takes a Projection subclass, got {projection!r}")
    if isinstance(projection.subscriptions, str):
        raise TypeError(f"{projection.__name__}.subscriptions must be a list of event types, not a string")
    for cls in _event_classes(projection).values():
        codec.prepare(cls)
