"""The Python account balances against the contract of plugins/account_balances
(the Rust projection's tests: same keys, same row JSON, same errors)."""

import pytest

from account_balances import (
    ACCOUNT_PREFIX,
    TOTALS,
    AccountBalances,
    Closed,
    Deposited,
    Opened,
    Withdrawn,
)
from kiln_sdk import ProjectionError, StoreCalls
from kiln_sdk.codec import I64_MAX
from kiln_sdk.testing import ProjectionTest


def new() -> ProjectionTest:
    return ProjectionTest(AccountBalances)


def opened(owner: str) -> Opened:
    return Opened(owner=owner)


def test_opening_creates_a_row_and_counts_it() -> None:
    test = new().given(("bank_account-42", opened("ann")))
    assert test.row("account-42") == {"owner": "ann", "balance": 0, "status": "open"}
    assert test.row("_totals") == {"open_accounts": 1, "total_balance": 0}
    # Byte for byte what the Rust projection writes.
    assert test.store.rows == {
        "account-42": b'{"owner":"ann","balance":0,"status":"open"}',
        "_totals": b'{"open_accounts":1,"total_balance":0}',
    }


def test_no_totals_before_the_first_account() -> None:
    test = new().given()
    assert test.row(TOTALS) is None
    assert test.rows() == []


def test_deposits_and_withdrawals_move_the_balance_and_the_total() -> None:
    test = new().given(
        ("bank_account-1", opened("ann")),
        ("bank_account-2", opened("bob")),
        ("bank_account-1", Deposited(amount=100)),
        ("bank_account-2", Deposited(amount=50)),
        ("bank_account-1", Withdrawn(amount=30)),
    )
    test.given(("bank_account-2", Withdrawn(amount=80)))
    assert test.rows(ACCOUNT_PREFIX) == [
        ("account-1", {"owner": "ann", "balance": 70, "status": "open"}),
        ("account-2", {"owner": "bob", "balance": -30, "status": "open"}),
    ]
    assert test.row("_totals") == {"open_accounts": 2, "total_balance": 40}


def test_closing_keeps_the_row_and_uncounts_the_account() -> None:
    test = new().given(
        ("bank_account-1", opened("ann")),
        ("bank_account-2", opened("bob")),
        ("bank_account-2", Deposited(amount=5)),
        ("bank_account-1", Deposited(amount=10)),
        ("bank_account-1", Withdrawn(amount=10)),
    )
    test.given(("bank_account-1", "Closed", "{}"))
    assert test.row("account-1") == {"owner": "ann", "balance": 0, "status": "closed"}
    assert test.store.rows["account-1"] == b'{"owner":"ann","balance":0,"status":"closed"}'
    assert test.row("_totals") == {"open_accounts": 1, "total_balance": 5}
    # Closing twice changes nothing.
    test.given(("bank_account-1", "Closed", ""))
    assert test.row("_totals") == {"open_accounts": 1, "total_balance": 5}
    assert test.last_calls.puts == 0


def test_events_decode_as_bank_account_writes_them() -> None:
    test = new().given(
        ("bank_account-7", "Opened", '{"overdraft_limit":100,"owner":"Ann"}'),
        ("bank_account-7", "Withdrawn", '{"amount":60}'),
    )
    assert test.row("account-7") == {"owner": "Ann", "balance": -60, "status": "open"}


def test_ids_may_contain_dashes_and_look_like_the_totals_key() -> None:
    test = new().given(("bank_account-a-b", opened("ann")), ("bank_account-_totals", opened("eve")))
    assert test.row("account-a-b") == {"owner": "ann", "balance": 0, "status": "open"}
    assert test.row("account-_totals") == {"owner": "eve", "balance": 0, "status": "open"}
    assert test.row("_totals") == {"open_accounts": 2, "total_balance": 0}


def test_other_streams_and_types_are_ignored() -> None:
    test = new().given(
        # Another aggregate's `Opened`, with other fields: not decoded.
        ("shop-1", "Opened", '{"hours": "9-5"}'),
        # Not subscribed: the host does not deliver it, and it is skipped.
        ("workflow_execution-1", "Started", "{}"),
        ("bank_account-1", opened("ann")),
    )
    assert test.rows() == [
        ("_totals", {"open_accounts": 1, "total_balance": 0}),
        ("account-1", {"owner": "ann", "balance": 0, "status": "open"}),
    ]


def sixty_events() -> list:
    events = []
    for i in range(60):
        stream = f"bank_account-{i % 4}"
        if i < 4:
            event: object = opened(f"owner{i}")
        elif i >= 56:
            event = Withdrawn(amount=1) if i % 4 != 0 else Closed()
        else:
            event = Deposited(amount=i)
        events.append((stream, event))
    return events


def test_batch_boundaries_do_not_change_the_rows() -> None:
    events = sixty_events()
    one_batch = new().given(*events)
    one_by_one = new()
    for item in events:
        one_by_one.given(item)
    assert one_batch.store.rows == one_by_one.store.rows
    totals = one_batch.row(TOTALS)
    balances = sum(row["balance"] for _, row in one_batch.rows(ACCOUNT_PREFIX))
    assert totals["total_balance"] == balances
    assert totals["open_accounts"] == 3


def test_a_batch_costs_one_read_and_one_write_per_account() -> None:
    test = new().given(("bank_account-1", opened("ann")), ("bank_account-2", opened("bob")))
    test.handle_batch([test.event(f"bank_account-{1 + i % 2}", Deposited(amount=1)) for i in range(1000)])
    # Two accounts and `_totals`.
    assert test.last_calls == StoreCalls(gets=3, puts=3, deletes=0, scans=0)
    assert test.row("_totals") == {"open_accounts": 2, "total_balance": 1000}
    # A batch that changes nothing writes nothing.
    test.handle_batch([test.event("other-1", "Opened", "{}")])
    assert test.last_calls.puts == 0


def test_a_log_bank_account_cannot_write_fails_the_batch() -> None:
    test = new().given(("bank_account-1", opened("ann")))

    def error(*items: tuple) -> str:
        with pytest.raises(ProjectionError) as caught:
            test.handle_batch([test.event(*item) for item in items])
        return caught.value.message

    assert error(("bank_account-2", Deposited(amount=1))) == (
        "event 2 (`Deposited` on `bank_account-2`): account `2` has no row: its `Opened` event never came"
    )
    assert error(("bank_account-1", opened("eve"))).endswith("account `1` is opened a second time")
    message = error(("bank_account-1", Deposited(amount=I64_MAX)), ("bank_account-1", Deposited(amount=1)))
    assert message == (
        "event 5 (`Deposited` on `bank_account-1`): the balance of account `1` "
        f"({I64_MAX}) overflows an i64 when adding 1"
    )
    assert "cannot decode its data" in error(("bank_account-1", "Deposited", '{"amount": "ten"}'))
    assert error(("bank_account-1", Withdrawn(amount=-(2**63)))).endswith(
        "a withdrawal of -9223372036854775808 overflows an i64"
    )
    # Nothing of the failed batches was written.
    assert test.row("account-1") == {"owner": "ann", "balance": 0, "status": "open"}
    assert test.row("_totals") == {"open_accounts": 1, "total_balance": 0}


def test_the_total_overflowing_fails_the_batch() -> None:
    test = new().given(
        ("bank_account-1", opened("ann")),
        ("bank_account-2", opened("bob")),
        ("bank_account-1", Deposited(amount=I64_MAX)),
    )
    with pytest.raises(ProjectionError) as caught:
        test.given(("bank_account-2", Deposited(amount=1)))
    assert caught.value.message.endswith(
        f"the total balance ({I64_MAX}) overflows an i64 when adding 1"
    )


def test_rows_written_by_the_rust_projection_are_read_back() -> None:
    # Including a `tier` written by the Rust fixture's "v2" logic: ignored, and
    # dropped when the row is next written, as the Rust projection does.
    test = ProjectionTest(
        AccountBalances,
        rows={
            "account-1": '{"owner":"ann","balance":5,"status":"open","tier":"gold"}',
            "_totals": '{"open_accounts":1,"total_balance":5}',
        },
    )
    test.given(("bank_account-1", Deposited(amount=1)))
    assert test.store.rows["account-1"] == b'{"owner":"ann","balance":6,"status":"open"}'
    assert test.row("_totals") == {"open_accounts": 1, "total_balance": 6}
