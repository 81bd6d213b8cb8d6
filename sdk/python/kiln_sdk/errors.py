"""The expected ways a plugin call fails, and the report of the unexpected ones.

- :class:`Rejected` and :class:`Invalid` are the WIT ``failure`` of an
  aggregate's ``handle`` (HTTP 422 ``rejected`` and 400 ``invalid_command``).
- :class:`ProjectionError` is the WIT error string of a projection's
  ``handle-batch``: the host stops that projection until an operator acts.
- Any other exception is a bug: the component logs it at ``error`` level
  (:func:`log_uncaught`) and lets it propagate, which makes the call trap. The
  host reports a trap as a plugin fault (HTTP 500 ``plugin_trap``) and puts the
  last error-level log line in its message, since a component built with
  ``--stub-wasi`` has no stderr.
"""

import functools
from typing import Any, Callable, List, Optional, Tuple, Type

from . import log


class Rejected(Exception):
    """A business rule refused the command (HTTP 422 ``rejected``).

    ``message`` is shown to the client as is; ``code`` (e.g.
    ``insufficient_funds``) lets a client react without parsing it. The
    message first, then the optional code, as in every SDK (JavaScript
    ``new Rejected(message, code)``, Rust
    ``Failure::rejected(message).with_code(code)``).
    """

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"Rejected({self.message!r}, code={self.code!r})"


class Invalid(Exception):
    """The command cannot be understood: unknown type, missing or mistyped
    field, out-of-range value (HTTP 400 ``invalid_command``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"Invalid({self.message!r})"


class ProjectionError(Exception):
    """A projection cannot process its batch: nothing of the batch is written
    and the host stops the projection. The message should say what is wrong
    with the event or the view; the SDK prefixes the event it was handling."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


#: How many of the innermost stack frames the trap report shows.
TRACEBACK_FRAMES = 6


def describe_uncaught(export: str, error: BaseException, skip_frames: int = 0) -> str:
    """The report of an exception that escaped export ``export``: its type and
    message first (the host keeps the first 2 KiB), then the innermost frames
    (less the ``skip_frames`` outermost ones, such as the SDK's own guard).

    Source lines are left out on purpose: reading them opens files, and in a
    component built with ``--stub-wasi`` any file access traps, which would
    cut the report short.
    """
    kind = type(error).__qualname__
    module = type(error).__module__
    if module not in ("builtins", "__main__"):
        kind = f"{module}.{kind}"
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not hide the report
        text = "<the exception's message cannot be shown>"
    lines: List[str] = [f"{kind} in {export}: {text}" if text else f"{kind} in {export}"]
    frames = []
    tb = error.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}')
        tb = tb.tb_next
    if frames:
        shown = frames[-TRACEBACK_FRAMES:]
        skipped = len(frames) - len(shown)
        lines.append(
            "Traceback (innermost last"
            + (f", {skipped} outer frames left out" if skipped else "")
            + "):"
        )
        lines.extend(shown)
    return "\n".join(lines)


def log_uncaught(export: str, error: BaseException, skip_frames: int = 0) -> None:
    """Log ``error`` at ``error`` level, right before the call traps."""
    log.error(describe_uncaught(export, error, skip_frames))


def trapping(
    export: str, passthrough: Tuple[Type[BaseException], ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate the function behind export ``export``: an exception that
    escapes it is logged (:func:`log_uncaught`) and re-raised, except the
    ``passthrough`` types (the WIT error the component returns on purpose)."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except passthrough:
                raise
            except BaseException as error:
                # The first frame is this wrapper's own: leave it out.
                log_uncaught(export, error, skip_frames=1)
                raise

        return call

    return wrap
