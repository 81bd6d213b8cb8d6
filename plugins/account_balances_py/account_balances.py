"""Example Kiln projection in Python: the balance of every bank account, and
totals, from the ``bank_account`` aggregate's events.

The same rows as the Rust projection ``plugins/account_balances`` (logic in
``plugins/account_balances_core``), byte for byte:

- ``account-{id}`` for the stream ``bank_account-{id}``:
  ``{"owner": string, "balance": int, "status": "open"|"closed"}``;
- ``_totals``: ``{"open_accounts": int, "total_balance": int}``, the number
  of open accounts and the sum of the balances of all accounts (open and
  closed). No row until the first account is opened.

Subscribes to ``Opened``, ``Deposited``, ``Withdrawn`` and ``Closed`` and
reads only ``bank_account-*`` streams (another aggregate's ``Opened`` is
skipped without being decoded). It fails the batch when an account is opened
twice, when an event arrives for an account with no row, and when a balance
or the total would overflow an i64: each means the log is not what
``bank_account`` writes.

Cost per batch: one read and one write per distinct account (rows are kept
in ``self`` for the batch), plus one read of ``_totals`` and one write when
it changed.
"""

import dataclasses
from typing import Dict, Optional

from kiln_sdk import Envelope, Projection, ProjectionError, U64, View
from kiln_sdk.codec import I64_MAX, I64_MIN, U64_MAX

#: The category of the streams the view reads, with its ``-``.
STREAM_PREFIX = "bank_account-"
#: The prefix of the account rows' keys.
ACCOUNT_PREFIX = "account-"
#: The key of the totals row.
TOTALS = "_totals"


def account_key(account_id: str) -> str:
    """The key of the row of the account with aggregate id ``account_id``."""
    return ACCOUNT_PREFIX + account_id


# -- the bank_account events, with the fields the view reads ---------------


@dataclasses.dataclass
class Opened:
    owner: str


@dataclasses.dataclass
class Deposited:
    amount: int


@dataclasses.dataclass
class Withdrawn:
    amount: int


@dataclasses.dataclass
class Closed:
    pass


# -- rows -----------------------------------------------------------------


@dataclasses.dataclass
class AccountRow:
    owner: str
    #: Deposits minus withdrawals.
    balance: int
    #: ``open`` or ``closed``.
    status: str


@dataclasses.dataclass
class Totals:
    #: Accounts whose status is ``open``.
    open_accounts: U64 = U64(0)
    #: The sum of the balances of all accounts, open and closed.
    total_balance: int = 0


class AccountBalances(Projection):
    subscriptions = ("Opened", "Deposited", "Withdrawn", "Closed")
    events = (Opened, Deposited, Withdrawn, Closed)

    def __init__(self) -> None:
        # A fresh instance per batch: the totals as the batch found them and as
        # they are now, and the account rows the batch touched.
        self.loaded = Totals()
        self.totals = Totals()
        self.rows: Dict[str, AccountRow] = {}

    def accepts(self, stream_id: str, event_type: str) -> bool:
        return stream_id.startswith(STREAM_PREFIX)

    def begin(self, view: View) -> None:
        self.loaded = view.get(TOTALS, into=Totals) or Totals()
        self.totals = dataclasses.replace(self.loaded)

    def handle(self, view: View, event: Envelope) -> None:
        account_id = event.aggregate_id
        key = account_key(account_id)
        row: Optional[AccountRow] = self.rows.pop(key, None)
        if row is None:
            row = view.get(key, into=AccountRow)
        payload = event.event
        if isinstance(payload, Opened):
            if row is not None:
                raise ProjectionError(f"account `{account_id}` is opened a second time")
            if self.totals.open_accounts == U64_MAX:
                raise ProjectionError("the number of open accounts overflows")
            self.totals.open_accounts += 1
            row = AccountRow(owner=payload.owner, balance=0, status="open")
        elif row is None:
            raise ProjectionError(
                f"account `{account_id}` has no row: its `Opened` event never came"
            )
        elif isinstance(payload, Deposited):
            self.move_money(row, payload.amount, account_id)
        elif isinstance(payload, Withdrawn):
            if payload.amount == I64_MIN:
                raise ProjectionError(f"a withdrawal of {payload.amount} overflows an i64")
            self.move_money(row, -payload.amount, account_id)
        elif isinstance(payload, Closed):
            if row.status == "open":
                row.status = "closed"
                self.totals.open_accounts = max(self.totals.open_accounts - 1, 0)
        self.rows[key] = row

    def finish(self, view: View) -> None:
        for key in sorted(self.rows):
            view.put(key, self.rows[key])
        self.rows.clear()
        if self.totals != self.loaded:
            view.put(TOTALS, self.totals)

    def move_money(self, row: AccountRow, amount: int, account_id: str) -> None:
        """Add ``amount`` (negative for a withdrawal) to the balance of
        account ``account_id`` and to the total, within i64 as in Rust."""
        if not I64_MIN <= row.balance + amount <= I64_MAX:
            raise ProjectionError(
                f"the balance of account `{account_id}` ({row.balance}) overflows an i64 "
                f"when adding {amount}"
            )
        row.balance += amount
        total = self.totals.total_balance
        if not I64_MIN <= total + amount <= I64_MAX:
            raise ProjectionError(
                f"the total balance ({total}) overflows an i64 when adding {amount}"
            )
        self.totals.total_balance = total + amount
