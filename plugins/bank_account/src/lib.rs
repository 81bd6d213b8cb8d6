//! Example Kiln aggregate: a bank account with an overdraft limit.
//!
//! Commands (JSON data in parentheses):
//! - `Open` (`{"owner": string, "overdraft_limit"?: int >= 0}`): open a new
//!   account; the limit defaults to 0.
//! - `Deposit` (`{"amount": int > 0}`) and `Withdraw` (`{"amount": int > 0}`):
//!   move money on an open account. A withdrawal may take the balance down to
//!   `-overdraft_limit` and no further (rejected with code
//!   `insufficient_funds`).
//! - `Close` (`{}`, `null` or no data): close an open account whose balance is
//!   exactly 0.
//!
//! Events `Opened`, `Deposited`, `Withdrawn` and `Closed` carry the same
//! fields as their commands (`Opened` always carries `overdraft_limit`).
//!
//! State: `{"status": "new"|"open"|"closed", "owner": string|null,
//! "balance": int, "overdraft_limit": int}`.
//!
//! A malformed command (a missing field, an amount that is not positive, a
//! negative limit, a deposit that would overflow the balance) is invalid; a
//! command that breaks a rule of the account's life is rejected.

use kiln_sdk::{Aggregate, CommandContext, Failure};
use serde::{Deserialize, Serialize};

/// The state of one account, exactly as the host stores it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    /// Where the account is in its life.
    pub status: Status,
    /// The owner named when the account was opened; `None` before that.
    pub owner: Option<String>,
    /// The balance in the smallest currency unit; negative within the
    /// overdraft limit.
    pub balance: i64,
    /// How far below zero the balance may go, >= 0.
    pub overdraft_limit: i64,
}

/// The life of an account: `new` → `open` → `closed`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No event yet.
    #[default]
    New,
    /// Opened, not closed.
    Open,
    /// Closed for good.
    Closed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// The commands an account understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    /// Open the account for `owner`.
    Open {
        /// Who owns the account; must not be blank.
        owner: String,
        /// How far below zero the balance may go; >= 0, default 0.
        #[serde(default)]
        overdraft_limit: i64,
    },
    /// Put money in.
    Deposit {
        /// > 0.
        amount: i64,
    },
    /// Take money out.
    Withdraw {
        /// > 0.
        amount: i64,
    },
    /// Close the account; its balance must be 0.
    Close {},
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// The account was opened.
    Opened {
        /// The owner.
        owner: String,
        /// The overdraft limit, >= 0.
        #[serde(default)]
        overdraft_limit: i64,
    },
    /// Money was put in.
    Deposited {
        /// > 0.
        amount: i64,
    },
    /// Money was taken out.
    Withdrawn {
        /// > 0.
        amount: i64,
    },
    /// The account was closed.
    Closed {},
}

/// The machine-readable code of a withdrawal beyond the overdraft limit.
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";

impl Aggregate for BankAccount {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _ctx: &CommandContext) -> Result<Vec<Event>, Failure> {
        // The command is checked on its own first: a malformed command is
        // invalid whatever the account's state.
        validate(&command)?;
        match command {
            Command::Open {
                owner,
                overdraft_limit,
            } => {
                if self.status != Status::New {
                    return Err(Failure::rejected(format!(
                        "account is already {} (owner: {})",
                        self.status.as_str(),
                        self.owner.as_deref().unwrap_or("none")
                    )));
                }
                kiln_sdk::log::debug(&format!(
                    "opening account for {owner} with overdraft limit {overdraft_limit}"
                ));
                Ok(vec![Event::Opened {
                    owner,
                    overdraft_limit,
                }])
            }
            Command::Deposit { amount } => {
                self.ensure_open()?;
                if self.balance.checked_add(amount).is_none() {
                    return Err(Failure::invalid(format!(
                        "a deposit of {amount} would overflow the balance of {}",
                        self.balance
                    )));
                }
                Ok(vec![Event::Deposited { amount }])
            }
            Command::Withdraw { amount } => {
                self.ensure_open()?;
                // In i128 so that no withdrawal can overflow: the balance never
                // goes below -overdraft_limit, so an accepted one fits in i64.
                let after = i128::from(self.balance) - i128::from(amount);
                if after < -i128::from(self.overdraft_limit) {
                    return Err(Failure::rejected(format!(
                        "insufficient funds: cannot withdraw {amount} from a balance of {} \
                         with an overdraft limit of {}",
                        self.balance, self.overdraft_limit
                    ))
                    .with_code(INSUFFICIENT_FUNDS));
                }
                Ok(vec![Event::Withdrawn { amount }])
            }
            Command::Close {} => {
                self.ensure_open()?;
                if self.balance != 0 {
                    return Err(Failure::rejected(format!(
                        "cannot close an account with a balance of {} (it must be 0)",
                        self.balance
                    )));
                }
                Ok(vec![Event::Closed {}])
            }
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Opened {
                owner,
                overdraft_limit,
            } => {
                self.status = Status::Open;
                self.owner = Some(owner);
                self.overdraft_limit = overdraft_limit;
            }
            Event::Deposited { amount } => {
                self.balance = self
                    .balance
                    .checked_add(amount)
                    .expect("a committed deposit overflows the balance");
            }
            Event::Withdrawn { amount } => {
                self.balance = self
                    .balance
                    .checked_sub(amount)
                    .expect("a committed withdrawal overflows the balance");
            }
            Event::Closed {} => self.status = Status::Closed,
        }
    }
}

impl BankAccount {
    fn ensure_open(&self) -> Result<(), Failure> {
        if self.status == Status::Open {
            Ok(())
        } else {
            Err(Failure::rejected(format!(
                "account is not open (status: {})",
                self.status.as_str()
            )))
        }
    }
}

/// The rules a command must meet whatever the account's state.
fn validate(command: &Command) -> Result<(), Failure> {
    match command {
        Command::Open {
            owner,
            overdraft_limit,
        } => {
            if owner.trim().is_empty() {
                return Err(Failure::invalid("owner must not be blank"));
            }
            if *overdraft_limit < 0 {
                return Err(Failure::invalid(format!(
                    "overdraft_limit must be >= 0, got {overdraft_limit}"
                )));
            }
        }
        Command::Deposit { amount } | Command::Withdraw { amount } => {
            if *amount <= 0 {
                return Err(Failure::invalid(format!(
                    "amount must be > 0, got {amount}"
                )));
            }
        }
        Command::Close {} => {}
    }
    Ok(())
}

// Behind the default `export` feature: see Cargo.toml.
#[cfg(feature = "export")]
kiln_sdk::export_aggregate!(BankAccount);

#[cfg(test)]
mod tests {
    use kiln_sdk::testing::{AggregateTest, json};

    use super::*;

    type Test = AggregateTest<BankAccount>;

    fn opened(limit: i64) -> Event {
        Event::Opened {
            owner: "Ann".into(),
            overdraft_limit: limit,
        }
    }

    fn open_with(balance: i64, limit: i64) -> Test {
        let mut events = vec![opened(limit)];
        if balance > 0 {
            events.push(Event::Deposited { amount: balance });
        } else if balance < 0 {
            events.push(Event::Withdrawn { amount: -balance });
        }
        Test::given(events)
    }

    fn closed() -> Test {
        Test::given(vec![opened(0), Event::Closed {}])
    }

    #[test]
    fn initial_state_is_new() {
        Test::given_no_previous_events()
            .when_json("Close", "")
            .then_expect_rejection("account is not open (status: new)")
            .then_expect_state(|account| assert_eq!(*account, BankAccount::default()));
    }

    #[test]
    fn open_a_new_account() {
        Test::given_no_previous_events()
            .when(Command::Open {
                owner: "Ann".into(),
                overdraft_limit: 100,
            })
            .then_expect_events(vec![opened(100)])
            .then_expect_state_json(json!({
                "status": "open", "owner": "Ann", "balance": 0, "overdraft_limit": 100
            }));
    }

    #[test]
    fn open_without_limit_defaults_to_zero() {
        Test::given_no_previous_events()
            .when_json("Open", r#"{"owner": "Ann"}"#)
            .then_expect_events(vec![opened(0)]);
        let outcome = Test::given_no_previous_events().when_json("Open", r#"{"owner": "Ann"}"#);
        assert_eq!(
            outcome.encoded_events(),
            vec![(
                "Opened".to_owned(),
                1,
                r#"{"overdraft_limit":0,"owner":"Ann"}"#.to_owned()
            )]
        );
    }

    #[test]
    fn open_twice_is_rejected() {
        open_with(0, 0)
            .when_json("Open", r#"{"owner": "Bob"}"#)
            .then_expect_rejection("account is already open");
        closed()
            .when_json("Open", r#"{"owner": "Bob"}"#)
            .then_expect_rejection("account is already closed");
    }

    #[test]
    fn open_validation() {
        Test::given_no_previous_events()
            .when_json("Open", "{}")
            .then_expect_invalid_message("missing field `owner`");
        Test::given_no_previous_events()
            .when_json("Open", r#"{"owner": "  "}"#)
            .then_expect_invalid_message("owner must not be blank");
        Test::given_no_previous_events()
            .when_json("Open", r#"{"owner": "Ann", "overdraft_limit": -1}"#)
            .then_expect_invalid_message("overdraft_limit must be >= 0");
        Test::given_no_previous_events()
            .when_json("Open", r#"{"owner": 7}"#)
            .then_expect_invalid_message("invalid type: integer `7`, expected a string");
        // Invalid wins over rejected: the command is checked first.
        open_with(0, 0)
            .when_json("Open", r#"{"owner": "Ann", "overdraft_limit": -1}"#)
            .then_expect_invalid();
    }

    #[test]
    fn deposit() {
        open_with(10, 0)
            .when(Command::Deposit { amount: 5 })
            .then_expect_events(vec![Event::Deposited { amount: 5 }])
            .then_expect_state(|account| assert_eq!(account.balance, 15));
    }

    #[test]
    fn deposit_and_withdraw_need_an_open_account() {
        for command in [
            Command::Deposit { amount: 1 },
            Command::Withdraw { amount: 1 },
        ] {
            Test::given_no_previous_events()
                .when(command.clone())
                .then_expect_rejection("account is not open (status: new)");
            closed()
                .when(command)
                .then_expect_rejection("account is not open (status: closed)");
        }
    }

    #[test]
    fn amounts_must_be_positive_integers() {
        for command_type in ["Deposit", "Withdraw"] {
            for data in [r#"{"amount": 0}"#, r#"{"amount": -3}"#] {
                open_with(10, 0)
                    .when_json(command_type, data)
                    .then_expect_invalid_message("amount must be > 0");
            }
            open_with(10, 0)
                .when_json(command_type, "{}")
                .then_expect_invalid_message("missing field `amount`");
            open_with(10, 0)
                .when_json(command_type, r#"{"amount": 1.5}"#)
                .then_expect_invalid_message("invalid type: floating point");
            open_with(10, 0)
                .when_json(command_type, r#"{"amount": "5"}"#)
                .then_expect_invalid_message("invalid type: string");
            open_with(10, 0)
                .when_json(command_type, r#"{"amount": 9223372036854775808}"#)
                .then_expect_invalid();
            // The command's validity does not depend on the state.
            Test::given_no_previous_events()
                .when_json(command_type, r#"{"amount": 0}"#)
                .then_expect_invalid();
        }
    }

    #[test]
    fn deposit_overflow_is_invalid() {
        open_with(i64::MAX - 1, 0)
            .when(Command::Deposit { amount: 2 })
            .then_expect_invalid_message("would overflow");
        open_with(i64::MAX - 1, 0)
            .when(Command::Deposit { amount: 1 })
            .then_expect_events(vec![Event::Deposited { amount: 1 }]);
    }

    #[test]
    fn withdraw_within_balance_and_overdraft() {
        open_with(10, 0)
            .when(Command::Withdraw { amount: 10 })
            .then_expect_events(vec![Event::Withdrawn { amount: 10 }])
            .then_expect_state(|account| assert_eq!(account.balance, 0));
        open_with(10, 50)
            .when(Command::Withdraw { amount: 60 })
            .then_expect_events(vec![Event::Withdrawn { amount: 60 }])
            .then_expect_state_json(json!({
                "status": "open", "owner": "Ann", "balance": -50, "overdraft_limit": 50
            }));
    }

    #[test]
    fn withdraw_beyond_overdraft_is_insufficient_funds() {
        open_with(10, 0)
            .when(Command::Withdraw { amount: 11 })
            .then_expect_rejection("insufficient funds")
            .then_expect_rejection_code(INSUFFICIENT_FUNDS)
            .then_expect_state(|account| assert_eq!(account.balance, 10));
        open_with(-50, 50)
            .when(Command::Withdraw { amount: 1 })
            .then_expect_rejection_code(INSUFFICIENT_FUNDS);
        // The largest withdrawals cannot overflow: they are simply too large.
        open_with(-i64::MAX, i64::MAX)
            .when(Command::Withdraw { amount: i64::MAX })
            .then_expect_rejection_code(INSUFFICIENT_FUNDS);
    }

    #[test]
    fn close_an_empty_account() {
        open_with(0, 0)
            .when_json("Close", "{}")
            .then_expect_events(vec![Event::Closed {}])
            .then_expect_state_json(json!({
                "status": "closed", "owner": "Ann", "balance": 0, "overdraft_limit": 0
            }));
    }

    #[test]
    fn close_accepts_every_spelling_of_no_data() {
        for data in ["", "null", "{}"] {
            open_with(0, 0)
                .when_json("Close", data)
                .then_expect_events(vec![Event::Closed {}]);
        }
    }

    #[test]
    fn close_needs_a_zero_balance_and_an_open_account() {
        open_with(5, 0)
            .when(Command::Close {})
            .then_expect_rejection("balance of 5");
        open_with(-5, 10)
            .when(Command::Close {})
            .then_expect_rejection("balance of -5");
        closed()
            .when(Command::Close {})
            .then_expect_rejection("account is not open (status: closed)");
    }

    #[test]
    fn unknown_commands_are_invalid() {
        open_with(0, 0)
            .when_json("Transfer", r#"{"amount": 1}"#)
            .then_expect_invalid_message("unknown variant `Transfer`");
        open_with(0, 0)
            .when_json("Deposit", "not json")
            .then_expect_invalid_message("not valid JSON");
    }
}
