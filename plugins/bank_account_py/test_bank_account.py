"""The Python bank account against the contract of plugins/bank_account
(the Rust plugin's tests, with the exact messages)."""

from typing import List

import pytest

from bank_account import (
    INSUFFICIENT_FUNDS,
    Account,
    BankAccount,
    Close,
    Closed,
    Deposit,
    Deposited,
    Open,
    Opened,
    Status,
    Withdraw,
    Withdrawn,
)
from kiln_sdk.codec import I64_MAX
from kiln_sdk.testing import AggregateTest

COMMAND_TYPES = ["Deposit", "Withdraw"]


def new() -> AggregateTest:
    return AggregateTest(BankAccount(), stream_id="bank_account-42")


def opened(limit: int) -> Opened:
    return Opened(owner="Ann", overdraft_limit=limit)


def open_with(balance: int, limit: int) -> AggregateTest:
    events: List[object] = [opened(limit)]
    if balance > 0:
        events.append(Deposited(amount=balance))
    elif balance < 0:
        events.append(Withdrawn(amount=-balance))
    return new().given(*events)


def closed() -> AggregateTest:
    return new().given(opened(0), Closed())


def test_initial_state_is_new() -> None:
    outcome = new().when("Close", "")
    assert outcome.rejection.message == "account is not open (status: new)"
    assert outcome.rejection.code is None
    assert outcome.state == Account()
    assert outcome.state_json == {"status": "new", "owner": None, "balance": 0, "overdraft_limit": 0}


def test_open_a_new_account() -> None:
    outcome = new().when(Open(owner="Ann", overdraft_limit=100))
    assert outcome.events == [opened(100)]
    assert outcome.state_json == {"status": "open", "owner": "Ann", "balance": 0, "overdraft_limit": 100}


def test_open_without_limit_defaults_to_zero_and_encodes_like_rust() -> None:
    outcome = new().when("Open", '{"owner": "Ann"}')
    assert outcome.events == [opened(0)]
    # Exactly the bytes the Rust SDK writes (sorted keys, compact).
    assert outcome.encoded == [("Opened", 1, '{"overdraft_limit":0,"owner":"Ann"}')]


def test_state_bytes_are_the_rust_plugins() -> None:
    test = open_with(50, 100)
    assert test.state_bytes == b'{"status":"open","owner":"Ann","balance":50,"overdraft_limit":100}'
    # And the Rust plugin's event bytes apply as they are.
    test = new().given(("Opened", '{"overdraft_limit":100,"owner":"Ann"}'), ("Withdrawn", '{"amount":60}'))
    assert test.state == Account(Status.OPEN, "Ann", -60, 100)


def test_open_twice_is_rejected() -> None:
    assert open_with(0, 0).when("Open", '{"owner": "Bob"}').rejection.message == (
        "account is already open (owner: Ann)"
    )
    assert closed().when("Open", '{"owner": "Bob"}').rejection.message == (
        "account is already closed (owner: Ann)"
    )


@pytest.mark.parametrize(
    "data, message",
    [
        ("{}", "command `Open`: missing field `owner`"),
        ('{"owner": "  "}', "owner must not be blank"),
        ('{"owner": "\\t\\u3000\\n"}', "owner must not be blank"),
        ('{"owner": "Ann", "overdraft_limit": -1}', "overdraft_limit must be >= 0, got -1"),
        ('{"owner": 7}', "command `Open`: invalid type: integer `7`, expected a string"),
        ('{"owner": "Ann", "overdraft_limit": null}', "command `Open`: invalid type: null, expected i64"),
    ],
)
def test_open_validation(data: str, message: str) -> None:
    assert new().when("Open", data).invalid.message == message


def test_rust_keeps_information_separators_in_a_name() -> None:
    # `str::trim` keeps U+001F, which Python's `str.strip()` would remove.
    assert new().when("Open", '{"owner": "\\u001f"}').events == [Opened(owner="\x1f")]


def test_invalid_wins_over_rejected() -> None:
    open_with(0, 0).when("Open", '{"owner": "Ann", "overdraft_limit": -1}').invalid


def test_deposit() -> None:
    outcome = open_with(10, 0).when(Deposit(amount=5))
    assert outcome.events == [Deposited(amount=5)]
    assert outcome.state.balance == 15


@pytest.mark.parametrize("command", [Deposit(amount=1), Withdraw(amount=1)])
def test_deposit_and_withdraw_need_an_open_account(command: object) -> None:
    assert new().when(command).rejection.message == "account is not open (status: new)"
    assert closed().when(command).rejection.message == "account is not open (status: closed)"


@pytest.mark.parametrize("command_type", COMMAND_TYPES)
def test_amounts_must_be_positive_integers(command_type: str) -> None:
    def invalid(data: str) -> str:
        return open_with(10, 0).when(command_type, data).invalid.message

    prefix = f"command `{command_type}`: "
    assert invalid('{"amount": 0}') == "amount must be > 0, got 0"
    assert invalid('{"amount": -3}') == "amount must be > 0, got -3"
    assert invalid("{}") == prefix + "missing field `amount`"
    assert invalid("") == prefix + "missing field `amount`"
    assert invalid('{"amount": 1.5}') == prefix + "invalid type: floating point `1.5`, expected i64"
    assert invalid('{"amount": "5"}') == prefix + 'invalid type: string "5", expected i64'
    assert invalid('{"amount": 9223372036854775808}') == (
        prefix + "invalid value: integer `9223372036854775808`, expected i64"
    )
    # The command's validity does not depend on the state.
    new().when(command_type, '{"amount": 0}').invalid


def test_deposit_overflow_is_invalid() -> None:
    assert open_with(I64_MAX - 1, 0).when(Deposit(amount=2)).invalid.message == (
        f"a deposit of 2 would overflow the balance of {I64_MAX - 1}"
    )
    assert open_with(I64_MAX - 1, 0).when(Deposit(amount=1)).events == [Deposited(amount=1)]


def test_withdraw_within_balance_and_overdraft() -> None:
    outcome = open_with(10, 0).when(Withdraw(amount=10))
    assert outcome.events == [Withdrawn(amount=10)]
    assert outcome.state.balance == 0
    outcome = open_with(10, 50).when(Withdraw(amount=60))
    assert outcome.events == [Withdrawn(amount=60)]
    assert outcome.state_json == {"status": "open", "owner": "Ann", "balance": -50, "overdraft_limit": 50}


def test_withdraw_beyond_overdraft_is_insufficient_funds() -> None:
    outcome = open_with(10, 0).when(Withdraw(amount=11))
    assert outcome.rejection.message == (
        "insufficient funds: cannot withdraw 11 from a balance of 10 with an overdraft limit of 0"
    )
    assert outcome.rejection.code == INSUFFICIENT_FUNDS
    assert outcome.state.balance == 10
    assert open_with(-50, 50).when(Withdraw(amount=1)).rejection.code == INSUFFICIENT_FUNDS
    # The largest withdrawals cannot overflow: they are simply too large.
    assert open_with(-I64_MAX, I64_MAX).when(Withdraw(amount=I64_MAX)).rejection.code == INSUFFICIENT_FUNDS


def test_close_an_empty_account() -> None:
    outcome = open_with(0, 0).when("Close", "{}")
    assert outcome.events == [Closed()]
    assert outcome.encoded == [("Closed", 1, "{}")]
    assert outcome.state_json == {"status": "closed", "owner": "Ann", "balance": 0, "overdraft_limit": 0}


@pytest.mark.parametrize("data", ["", "null", "{}"])
def test_close_accepts_every_spelling_of_no_data(data: str) -> None:
    assert open_with(0, 0).when("Close", data).events == [Closed()]


def test_close_needs_a_zero_balance_and_an_open_account() -> None:
    assert open_with(5, 0).when(Close()).rejection.message == (
        "cannot close an account with a balance of 5 (it must be 0)"
    )
    assert open_with(-5, 10).when(Close()).rejection.message == (
        "cannot close an account with a balance of -5 (it must be 0)"
    )
    assert closed().when(Close()).rejection.message == "account is not open (status: closed)"


def test_unknown_commands_are_invalid() -> None:
    assert open_with(0, 0).when("Transfer", '{"amount": 1}').invalid.message == (
        "command `Transfer`: unknown variant `Transfer`, "
        "expected one of `Open`, `Deposit`, `Withdraw`, `Close`"
    )
    # The wording after the prefix is Python's, not serde_json's.
    assert open_with(0, 0).when("Deposit", "not json").invalid.message.startswith(
        "command `Deposit`: data is not valid JSON: "
    )


def test_apply_folds_every_event() -> None:
    account = BankAccount()
    state = account.apply_encoded(
        b"",
        [
            ("Opened", b'{"overdraft_limit":5,"owner":"Bo"}'),
            ("Deposited", b'{"amount":10}'),
            ("Withdrawn", b'{"amount":12}'),
        ],
    )
    assert state == b'{"status":"open","owner":"Bo","balance":-2,"overdraft_limit":5}'
    state = account.apply_encoded(state, [("Deposited", b'{"amount":2}'), ("Closed", b"{}")])
    assert account.decode_state(state) == Account(Status.CLOSED, "Bo", 0, 5)
    assert account.apply_encoded(state, []) == state


def test_a_committed_event_that_cannot_apply_is_a_bug() -> None:
    account = BankAccount()
    with pytest.raises(OverflowError, match="a committed deposit overflows the balance"):
        open_with(I64_MAX, 0).given(Deposited(amount=1))
    with pytest.raises(ValueError, match="cannot decode event `Frozen`"):
        account.apply_encoded(b"", [("Frozen", b"{}")])
    with pytest.raises(ValueError, match="cannot decode the state"):
        account.apply_encoded(b'{"status":"frozen"}', [("Closed", b"{}")])
