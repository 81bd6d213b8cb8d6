"""The trap path: an unexpected exception is logged at error level, then re-raised."""

from typing import Iterator, List, Tuple

import pytest

from kiln_sdk import Invalid, Rejected, log
from kiln_sdk.errors import describe_uncaught, trapping


class Passthrough(Exception):
    pass


@pytest.fixture
def logged() -> Iterator[List[Tuple[log.Level, str]]]:
    lines: List[Tuple[log.Level, str]] = []
    previous = log.set_sink(lambda level, message: lines.append((level, message)))
    try:
        yield lines
    finally:
        log.set_sink(previous)


def explode(reason: str) -> None:
    raise RuntimeError("boom from python: " + reason)


def test_an_uncaught_exception_is_logged_then_re_raised(logged: List[Tuple[log.Level, str]]) -> None:
    guarded = trapping("handle")(explode)
    with pytest.raises(RuntimeError, match="boom from python: kaboom"):
        guarded("kaboom")
    ((level, message),) = logged
    assert level is log.Level.ERROR
    lines = message.splitlines()
    assert lines[0] == "RuntimeError in handle: boom from python: kaboom"
    assert lines[1] == "Traceback (innermost last):"
    # The guard's own frame is left out; the innermost frame is the raise.
    assert "in call" not in message
    assert lines[-1].endswith("in explode") and "test_errors.py" in lines[-1]


def test_every_kind_of_exception_is_reported(logged: List[Tuple[log.Level, str]]) -> None:
    def lookup() -> None:
        {}["missing"]

    with pytest.raises(KeyError):
        trapping("apply")(lookup)()
    assert logged[-1][1].startswith("KeyError in apply: 'missing'\n")

    def exit_() -> None:
        raise SystemExit()

    with pytest.raises(SystemExit):
        trapping("apply")(exit_)()
    assert logged[-1][1].startswith("SystemExit in apply\n")


def test_the_wit_error_passes_through_unlogged(logged: List[Tuple[log.Level, str]]) -> None:
    def fail() -> None:
        raise Passthrough("the WIT error")

    with pytest.raises(Passthrough):
        trapping("handle", passthrough=(Passthrough,))(fail)()
    assert logged == []
    assert trapping("handle")(lambda x: x * 2)(21) == 42


def test_deep_tracebacks_keep_the_innermost_frames() -> None:
    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("deep")
        recurse(n - 1)

    try:
        recurse(20)
    except ValueError as error:
        report = describe_uncaught("handle-batch", error)
    lines = report.splitlines()
    assert lines[0] == "ValueError in handle-batch: deep"
    assert lines[1] == "Traceback (innermost last, 16 outer frames left out):"
    assert len(lines) == 2 + 6


def test_module_qualified_names_for_non_builtin_exceptions() -> None:
    assert describe_uncaught("x", Passthrough("m")).startswith(f"{__name__}.Passthrough in x: m")


def test_failures_carry_their_fields() -> None:
    rejected = Rejected("insufficient funds", code="insufficient_funds")
    assert (rejected.message, rejected.code, str(rejected)) == (
        "insufficient funds", "insufficient_funds", "insufficient funds",
    )
    assert Rejected("no").code is None
    assert repr(Invalid("bad")) == "Invalid('bad')"


def test_log_writer_logs_complete_lines(logged: List[Tuple[log.Level, str]]) -> None:
    writer = log.LogWriter(log.Level.INFO)
    print("one", "two", file=writer)
    writer.write("par")
    writer.write("tial\nnext")
    assert logged == [(log.Level.INFO, "one two"), (log.Level.INFO, "partial")]
    writer.flush()
    assert logged[-1] == (log.Level.INFO, "next")
    writer.flush()
    assert len(logged) == 3


def test_log_levels(logged: List[Tuple[log.Level, str]]) -> None:
    log.trace("t")
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    assert [level.value for level, _ in logged] == [0, 1, 2, 3, 4]
