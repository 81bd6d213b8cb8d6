"""The component adapter, natively, over stand-ins for the bindings
componentize-py generates (``wit_world``, ``componentize_py_types``): the
same module and type names as componentize-py 0.25.1 generates from wit/."""

import dataclasses
import enum
import importlib
import sys
import types
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import kiln_sdk
from kiln_sdk import Aggregate, Command, Envelope, Invalid, Projection, ProjectionError, Rejected, View, log


@dataclasses.dataclass(frozen=True)
class Err(Exception):
    value: Any


@dataclasses.dataclass
class WitEvent:
    position: int
    stream_id: str
    version: int
    event_type: str
    schema: int
    data: bytes
    metadata: bytes
    recorded_at_ms: int


@dataclasses.dataclass
class WitNewEvent:
    event_type: str
    schema: int
    data: bytes


@dataclasses.dataclass
class WitCommand:
    command_type: str
    data: bytes
    metadata: bytes
    stream_id: str
    issued_at_ms: int


@dataclasses.dataclass
class Rejection:
    code: Optional[str]
    message: str


@dataclasses.dataclass
class FailureRejected:
    value: Rejection


@dataclasses.dataclass
class FailureInvalid:
    value: str


class WitLevel(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class Host:
    """What the fake imports recorded."""

    def __init__(self) -> None:
        self.logs: List[Tuple[WitLevel, str]] = []
        self.rows: Dict[str, bytes] = {}


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    recorded = Host()

    def module(name: str, **attributes: Any) -> types.ModuleType:
        made = types.ModuleType(name)
        made.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, made)
        return made

    def scan(prefix: str, after: Optional[str], limit: int) -> List[Tuple[str, bytes]]:
        keys = sorted(k for k in recorded.rows if k.startswith(prefix) and (after is None or k > after))
        return [(k, recorded.rows[k]) for k in keys[:limit]]

    module("componentize_py_types", Err=Err)
    world = module("wit_world", WitWorld=type("WitWorld", (), {}))
    imports = module("wit_world.imports")
    world.imports = imports
    imports.types = module(
        "wit_world.imports.types",
        NewEvent=WitNewEvent,
        Rejection=Rejection,
        Failure_Rejected=FailureRejected,
        Failure_Invalid=FailureInvalid,
    )
    imports.log = module(
        "wit_world.imports.log",
        Level=WitLevel,
        log=lambda level, message: recorded.logs.append((level, message)),
    )
    imports.view = module(
        "wit_world.imports.view",
        get=recorded.rows.get,
        put=recorded.rows.__setitem__,
        delete=lambda key: recorded.rows.pop(key, None),
        scan=scan,
    )
    # The adapter replaces stdout/stderr and the log sink: put them back after.
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    previous_sink = log.set_sink(log._stderr_sink)
    try:
        yield recorded
    finally:
        log.set_sink(previous_sink)
        sys.modules.pop("kiln_sdk.component", None)
        if hasattr(kiln_sdk, "component"):
            delattr(kiln_sdk, "component")


def component() -> Any:
    sys.modules.pop("kiln_sdk.component", None)
    return importlib.import_module("kiln_sdk.component")


@dataclasses.dataclass
class Go:
    by: int = 1


@dataclasses.dataclass
class Went:
    by: int


@dataclasses.dataclass
class Steps:
    steps: int = 0


class Walker(Aggregate):
    commands = (Go,)
    events = (Went,)
    state_type = Steps

    def handle(self, state: Steps, command: Any, ctx: Command) -> List[Any]:
        print(f"go {command.by} on {ctx.stream_id}")
        if command.by == 0:
            raise Invalid("by must not be 0")
        if command.by > 10:
            raise Rejected("too far", code="too_far")
        if command.by == 7:
            raise RuntimeError("boom from python: seven")
        return [Went(command.by)]

    def apply(self, state: Steps, event: Any) -> Steps:
        state.steps += event.by
        return state


def wit_command(data: bytes) -> WitCommand:
    return WitCommand("Go", data, b"{}", "walker-1", 5)


def wit_event(position: int, stream_id: str, event_type: str, data: bytes) -> WitEvent:
    return WitEvent(position, stream_id, 1, event_type, 1, data, b"{}", 0)


def test_aggregate_exports(host: Host) -> None:
    world = component().export_aggregate(Walker())()
    assert world.handle(b"", wit_command(b'{"by": 2}')) == [WitNewEvent("Went", 1, b'{"by":2}')]
    # `print` went to the host's log, not to a stdout the component lacks.
    assert host.logs == [(WitLevel.INFO, "go 2 on walker-1")]
    assert world.apply(b"", [wit_event(1, "walker-1", "Went", b'{"by":2}')]) == b'{"steps":2}'

    with pytest.raises(Err) as err:
        world.handle(b"", wit_command(b'{"by": 11}'))
    assert err.value.value == FailureRejected(Rejection(code="too_far", message="too far"))
    with pytest.raises(Err) as err:
        world.handle(b"", wit_command(b'{"by": 0}'))
    assert err.value.value == FailureInvalid("by must not be 0")
    with pytest.raises(Err) as err:
        world.handle(b"", wit_command(b'{"by": "x"}'))
    assert err.value.value == FailureInvalid('command `Go`: invalid type: string "x", expected i64')
    assert not [line for line in host.logs if line[0] is WitLevel.ERROR]


def test_an_exception_is_logged_at_error_level_then_traps(host: Host) -> None:
    world = component().export_aggregate(Walker())()
    with pytest.raises(RuntimeError, match="boom from python: seven"):
        world.handle(b"", wit_command(b'{"by": 7}'))
    level, message = host.logs[-1]
    assert level is WitLevel.ERROR
    assert message.startswith("RuntimeError in handle: boom from python: seven\nTraceback")
    assert message.splitlines()[-1].endswith(", in handle")
    with pytest.raises(ValueError):
        world.apply(b"", [wit_event(1, "walker-1", "Flew", b"{}")])
    assert host.logs[-1][1].startswith("ValueError in apply: cannot decode event `Flew`")


@dataclasses.dataclass
class Opened:
    owner: str


class Owners(Projection):
    subscriptions = ("Opened",)
    events = (Opened,)

    def handle(self, view: View, event: Envelope) -> None:
        if event.event.owner == "bug":
            raise KeyError("bug")
        if view.get(event.aggregate_id) is not None:
            raise ProjectionError("opened twice")
        view.put(event.aggregate_id, {"owner": event.event.owner})


def test_projection_exports(host: Host) -> None:
    world = component().export_projection(Owners)()
    assert world.subscriptions() == ["Opened"]
    assert world.handle_batch([wit_event(1, "o-1", "Opened", b'{"owner":"ann"}')]) is None
    assert host.rows == {"1": b'{"owner":"ann"}'}
    with pytest.raises(Err) as err:
        world.handle_batch(
            [
                wit_event(2, "o-2", "Opened", b'{"owner":"bob"}'),
                wit_event(3, "o-1", "Opened", b'{"owner":"x"}'),
            ]
        )
    assert err.value.value == "event 3 (`Opened` on `o-1`): opened twice"
    assert host.rows == {"1": b'{"owner":"ann"}'}
    with pytest.raises(KeyError):
        world.handle_batch([wit_event(4, "o-9", "Opened", b'{"owner":"bug"}')])
    assert host.logs[-1][0] is WitLevel.ERROR
    assert host.logs[-1][1].startswith("KeyError in handle-batch: 'bug'")
