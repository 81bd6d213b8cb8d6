"""Example Kiln aggregate in Python: a bank account with an overdraft limit.

The same contract as the Rust plugin ``plugins/bank_account`` (same commands,
events, state JSON, rejection and invalid messages), so either build serves
the same streams.

Commands (JSON data in parentheses):

- ``Open`` (``{"owner": string, "overdraft_limit"?: int >= 0}``): open a new
  account; the limit defaults to 0.
- ``Deposit`` and ``Withdraw`` (``{"amount": int > 0}``): move money on an
  open account. A withdrawal may take the balance down to
  ``-overdraft_limit`` and no further (rejected with code
  ``insufficient_funds``).
- ``Close`` (``{}``, ``null`` or no data): close an open account whose
  balance is exactly 0.

Events ``Opened``, ``Deposited``, ``Withdrawn`` and ``Closed`` carry the
same fields as their commands (``Opened`` always carries
``overdraft_limit``).

State: ``{"status": "new"|"open"|"closed", "owner": string|null,
"balance": int, "overdraft_limit": int}``.

A malformed command (a missing field, an amount that is not positive, a
negative limit, a deposit that would overflow the balance) is invalid; a
command that breaks a rule of the account's life is rejected. Amounts and
balances are i64, as in the Rust plugin.
"""

import dataclasses
import enum
from typing import List, Optional

from kiln_sdk import Aggregate, Command, Invalid, Rejected, log
from kiln_sdk.codec import I64_MAX, I64_MIN

#: The machine-readable code of a withdrawal beyond the overdraft limit.
INSUFFICIENT_FUNDS = "insufficient_funds"

#: The characters Rust's `str::trim` strips (Unicode White_Space); Python's
#: `str.strip()` also strips U+001C..U+001F, which Rust keeps.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class Status(enum.Enum):
    """The life of an account: ``new`` -> ``open`` -> ``closed``."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclasses.dataclass
class Account:
    """The state of one account, exactly as the host stores it."""

    status: Status = Status.NEW
    #: The owner named when the account was opened; ``None`` before that.
    owner: Optional[str] = None
    #: In the smallest currency unit; negative within the overdraft limit.
    balance: int = 0
    #: How far below zero the balance may go, >= 0.
    overdraft_limit: int = 0


# -- commands ------------------------------------------------------------


@dataclasses.dataclass
class Open:
    owner: str
    overdraft_limit: int = 0


@dataclasses.dataclass
class Deposit:
    amount: int


@dataclasses.dataclass
class Withdraw:
    amount: int


@dataclasses.dataclass
class Close:
    pass


# -- events --------------------------------------------------------------


@dataclasses.dataclass
class Opened:
    owner: str
    overdraft_limit: int = 0


@dataclasses.dataclass
class Deposited:
    amount: int


@dataclasses.dataclass
class Withdrawn:
    amount: int


@dataclasses.dataclass
class Closed:
    pass


class BankAccount(Aggregate):
    commands = (Open, Deposit, Withdraw, Close)
    events = (Opened, Deposited, Withdrawn, Closed)
    state_type = Account

    def handle(self, state: Account, command: object, ctx: Command) -> List[object]:
        # The command is checked on its own first: a malformed command is
        # invalid whatever the account's state.
        validate(command)
        if isinstance(command, Open):
            if state.status is not Status.NEW:
                raise Rejected(
                    f"account is already {state.status.value} (owner: {state.owner or 'none'})"
                )
            log.debug(
                f"opening account for {command.owner} "
                f"with overdraft limit {command.overdraft_limit}"
            )
            return [Opened(owner=command.owner, overdraft_limit=command.overdraft_limit)]
        if isinstance(command, Deposit):
            ensure_open(state)
            if state.balance + command.amount > I64_MAX:
                raise Invalid(
                    f"a deposit of {command.amount} would overflow the balance of {state.balance}"
                )
            return [Deposited(amount=command.amount)]
        if isinstance(command, Withdraw):
            ensure_open(state)
            # Python integers do not overflow; an accepted withdrawal keeps the
            # balance >= -overdraft_limit, so it fits in an i64.
            if state.balance - command.amount < -state.overdraft_limit:
                raise Rejected(
                    f"insufficient funds: cannot withdraw {command.amount} from a balance of "
                    f"{state.balance} with an overdraft limit of {state.overdraft_limit}",
                    code=INSUFFICIENT_FUNDS,
                )
            return [Withdrawn(amount=command.amount)]
        if isinstance(command, Close):
            ensure_open(state)
            if state.balance != 0:
                raise Rejected(
                    f"cannot close an account with a balance of {state.balance} (it must be 0)"
                )
            return [Closed()]
        raise TypeError(f"unhandled command {command!r}")

    def apply(self, state: Account, event: object) -> Account:
        if isinstance(event, Opened):
            state.status = Status.OPEN
            state.owner = event.owner
            state.overdraft_limit = event.overdraft_limit
        elif isinstance(event, Deposited):
            state.balance = checked_i64(state.balance + event.amount, "deposit")
        elif isinstance(event, Withdrawn):
            state.balance = checked_i64(state.balance - event.amount, "withdrawal")
        elif isinstance(event, Closed):
            state.status = Status.CLOSED
        else:
            raise TypeError(f"unhandled event {event!r}")
        return state


def ensure_open(state: Account) -> None:
    if state.status is not Status.OPEN:
        raise Rejected(f"account is not open (status: {state.status.value})")


def validate(command: object) -> None:
    """The rules a command must meet whatever the account's state."""
    if isinstance(command, Open):
        if not command.owner.strip(WHITESPACE):
            raise Invalid("owner must not be blank")
        if command.overdraft_limit < 0:
            raise Invalid(f"overdraft_limit must be >= 0, got {command.overdraft_limit}")
    elif isinstance(command, (Deposit, Withdraw)):
        if command.amount <= 0:
            raise Invalid(f"amount must be > 0, got {command.amount}")


def checked_i64(value: int, what: str) -> int:
    """``value`` when it fits an i64; a committed event that overflows the
    balance is a bug (the call traps)."""
    if not I64_MIN <= value <= I64_MAX:
        raise OverflowError(f"a committed {what} overflows the balance")
    return value
