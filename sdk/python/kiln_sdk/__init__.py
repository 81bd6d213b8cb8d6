"""Write Kiln plugins in Python.

A Kiln plugin is a WebAssembly component written against one world of the
WIT contract in ``wit/``; componentize-py turns a Python module into one.
This package is the plain-Python part of the SDK (no dependencies, runs
natively under pytest):

- :class:`Aggregate` decides commands into events and folds events into
  state (the ``aggregate`` world), failing with :class:`Rejected` (HTTP 422)
  or :class:`Invalid` (HTTP 400).
- :class:`Projection` turns committed events into the rows of a key-value
  :class:`View` (the ``projection`` world), failing with
  :class:`ProjectionError`.
- :mod:`kiln_sdk.log` logs through the host; :mod:`kiln_sdk.testing` runs
  plugins natively through the same encoding as the component.

:mod:`kiln_sdk.component` wires a plugin into the generated bindings; only
the component's entry module imports it. See ``sdk/python/README.md``.
"""

from . import log
from .aggregate import Aggregate
from .codec import I32, I64, U32, U64, DecodeError
from .errors import Invalid, ProjectionError, Rejected
from .projection import Envelope, Projection
from .records import EVENT_SCHEMA, Command, Event, NewEvent
from .view import MemoryStore, StoreCalls, View

__all__ = [
    "Aggregate",
    "Command",
    "DecodeError",
    "EVENT_SCHEMA",
    "Envelope",
    "Event",
    "I32",
    "I64",
    "Invalid",
    "MemoryStore",
    "NewEvent",
    "Projection",
    "ProjectionError",
    "Rejected",
    "StoreCalls",
    "U32",
    "U64",
    "View",
    "log",
]
