//! Example Kiln aggregate: a money transfer between two bank accounts.
//!
//! The transfer only records the request and its outcome; the saga
//! `transfer_saga` moves the money (a `Withdraw` from one `bank_account`,
//! a `Deposit` to the other) and then completes or fails the transfer.
//!
//! Commands (JSON data in parentheses):
//! - `Request` (`{"from": string, "to": string, "amount": int > 0,
//!   "timeout_ms"?: int > 0}`): request a new transfer of `amount` from the
//!   account `from` to the account `to`, to be given up after `timeout_ms`
//!   (default 60000). Invalid when `from` or `to` is blank, when they are the
//!   same account, or when `amount` or `timeout_ms` is not positive;
//!   rejected when the transfer was already requested.
//! - `Complete` (`{}`, `null` or no data): the money has moved. Rejected
//!   unless the transfer is `requested`.
//! - `Fail` (`{"reason": string}`): the transfer was given up. Rejected
//!   unless the transfer is `requested`.
//!
//! Events: `TransferRequested` (`{"from", "to", "amount", "timeout_ms"}`,
//! `timeout_ms` always present), `TransferCompleted` (`{}`) and
//! `TransferFailed` (`{"reason"}`).
//!
//! State: `{"status": "new"|"requested"|"completed"|"failed", "from":
//! string|null, "to": string|null, "amount": int, "timeout_ms": int,
//! "reason": string|null}`.

use kiln_sdk::{Aggregate, CommandContext, Failure};
use serde::{Deserialize, Serialize};

/// How long a transfer may take when the request does not say, in
/// milliseconds.
pub const DEFAULT_TIMEOUT_MS: i64 = 60_000;

/// The state of one transfer, exactly as the host stores it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Where the transfer is in its life.
    pub status: Status,
    /// The account the money comes from; `None` before the request.
    pub from: Option<String>,
    /// The account the money goes to; `None` before the request.
    pub to: Option<String>,
    /// The amount in the smallest currency unit, > 0 once requested.
    pub amount: i64,
    /// How long the transfer may take, in milliseconds, > 0 once requested.
    pub timeout_ms: i64,
    /// Why the transfer failed; `None` unless it did.
    pub reason: Option<String>,
}

/// The life of a transfer: `new` → `requested` → `completed` or `failed`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No event yet.
    #[default]
    New,
    /// Requested; the money is on its way.
    Requested,
    /// The money has moved.
    Completed,
    /// Given up.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Requested => "requested",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// The commands a transfer understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    /// Request the transfer.
    Request {
        /// The account (`bank_account` id) to take the money from.
        from: String,
        /// The account to put it in; not `from`.
        to: String,
        /// > 0.
        amount: i64,
        /// > 0; default [`DEFAULT_TIMEOUT_MS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<i64>,
    },
    /// The money has moved.
    Complete {},
    /// Give the transfer up.
    Fail {
        /// Why.
        reason: String,
    },
}

/// What happened to a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// The transfer was requested.
    TransferRequested {
        /// The account the money comes from.
        from: String,
        /// The account it goes to.
        to: String,
        /// > 0.
        amount: i64,
        /// > 0.
        timeout_ms: i64,
    },
    /// The money has moved.
    TransferCompleted {},
    /// The transfer was given up.
    TransferFailed {
        /// Why.
        reason: String,
    },
}

impl Aggregate for Transfer {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _ctx: &CommandContext) -> Result<Vec<Event>, Failure> {
        // The command is checked on its own first: a malformed command is
        // invalid whatever the transfer's state.
        validate(&command)?;
        match command {
            Command::Request {
                from,
                to,
                amount,
                timeout_ms,
            } => {
                if self.status != Status::New {
                    return Err(Failure::rejected(format!(
                        "transfer is already {}",
                        self.status.as_str()
                    )));
                }
                Ok(vec![Event::TransferRequested {
                    from,
                    to,
                    amount,
                    timeout_ms: timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
                }])
            }
            Command::Complete {} => {
                self.ensure_requested()?;
                Ok(vec![Event::TransferCompleted {}])
            }
            Command::Fail { reason } => {
                self.ensure_requested()?;
                Ok(vec![Event::TransferFailed { reason }])
            }
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::TransferRequested {
                from,
                to,
                amount,
                timeout_ms,
            } => {
                self.status = Status::Requested;
                self.from = Some(from);
                self.to = Some(to);
                self.amount = amount;
                self.timeout_ms = timeout_ms;
            }
            Event::TransferCompleted {} => self.status = Status::Completed,
            Event::TransferFailed { reason } => {
                self.status = Status::Failed;
                self.reason = Some(reason);
            }
        }
    }
}

impl Transfer {
    fn ensure_requested(&self) -> Result<(), Failure> {
        if self.status == Status::Requested {
            Ok(())
        } else {
            Err(Failure::rejected(format!(
                "transfer is not requested (status: {})",
                self.status.as_str()
            )))
        }
    }
}

/// The rules a command must meet whatever the transfer's state.
fn validate(command: &Command) -> Result<(), Failure> {
    if let Command::Request {
        from,
        to,
        amount,
        timeout_ms,
    } = command
    {
        if from.trim().is_empty() || to.trim().is_empty() {
            return Err(Failure::invalid("from and to must not be blank"));
        }
        if from == to {
            return Err(Failure::invalid(format!(
                "from and to must be different accounts, both are {from}"
            )));
        }
        if *amount <= 0 {
            return Err(Failure::invalid(format!(
                "amount must be > 0, got {amount}"
            )));
        }
        if let Some(timeout_ms) = timeout_ms
            && *timeout_ms <= 0
        {
            return Err(Failure::invalid(format!(
                "timeout_ms must be > 0, got {timeout_ms}"
            )));
        }
    }
    Ok(())
}

kiln_sdk::export_aggregate!(Transfer);

#[cfg(test)]
mod tests {
    use kiln_sdk::testing::{AggregateTest, json};

    use super::*;

    type Test = AggregateTest<Transfer>;

    fn requested() -> Event {
        Event::TransferRequested {
            from: "a".into(),
            to: "b".into(),
            amount: 10,
            timeout_ms: 5_000,
        }
    }

    fn request(from: &str, to: &str, amount: i64) -> Command {
        Command::Request {
            from: from.into(),
            to: to.into(),
            amount,
            timeout_ms: None,
        }
    }

    #[test]
    fn request_a_new_transfer() {
        Test::given_no_previous_events()
            .when_json(
                "Request",
                r#"{"from": "a", "to": "b", "amount": 10, "timeout_ms": 5000}"#,
            )
            .then_expect_events(vec![requested()])
            .then_expect_state_json(json!({
                "status": "requested", "from": "a", "to": "b", "amount": 10,
                "timeout_ms": 5000, "reason": null
            }));
    }

    #[test]
    fn the_timeout_defaults_to_a_minute() {
        let outcome = Test::given_no_previous_events().when(request("a", "b", 3));
        assert_eq!(
            outcome.encoded_events(),
            vec![(
                "TransferRequested".to_owned(),
                1,
                r#"{"amount":3,"from":"a","timeout_ms":60000,"to":"b"}"#.to_owned()
            )]
        );
    }

    #[test]
    fn request_validation() {
        for (data, message) in [
            (
                r#"{"from": "", "to": "b", "amount": 1}"#,
                "must not be blank",
            ),
            (
                r#"{"from": "a", "to": " ", "amount": 1}"#,
                "must not be blank",
            ),
            (
                r#"{"from": "a", "to": "a", "amount": 1}"#,
                "must be different accounts, both are a",
            ),
            (
                r#"{"from": "a", "to": "b", "amount": 0}"#,
                "amount must be > 0, got 0",
            ),
            (
                r#"{"from": "a", "to": "b", "amount": -5}"#,
                "amount must be > 0",
            ),
            (
                r#"{"from": "a", "to": "b", "amount": 1, "timeout_ms": 0}"#,
                "timeout_ms must be > 0, got 0",
            ),
            (r#"{"from": "a", "to": "b"}"#, "missing field `amount`"),
            (r#"{"to": "b", "amount": 1}"#, "missing field `from`"),
            (
                r#"{"from": "a", "to": "b", "amount": "1"}"#,
                "invalid type: string",
            ),
        ] {
            Test::given_no_previous_events()
                .when_json("Request", data)
                .then_expect_invalid_message(message);
        }
        // Invalid wins over rejected: the command is checked first.
        Test::given(vec![requested()])
            .when(request("a", "a", 1))
            .then_expect_invalid();
    }

    #[test]
    fn request_twice_is_rejected() {
        Test::given(vec![requested()])
            .when(request("a", "b", 10))
            .then_expect_rejection("transfer is already requested");
        Test::given(vec![requested(), Event::TransferCompleted {}])
            .when(request("a", "b", 10))
            .then_expect_rejection("transfer is already completed");
    }

    #[test]
    fn complete_a_requested_transfer() {
        for data in ["", "null", "{}"] {
            Test::given(vec![requested()])
                .when_json("Complete", data)
                .then_expect_events(vec![Event::TransferCompleted {}])
                .then_expect_state(|transfer| assert_eq!(transfer.status, Status::Completed));
        }
    }

    #[test]
    fn fail_a_requested_transfer() {
        Test::given(vec![requested()])
            .when(Command::Fail {
                reason: "timed out".into(),
            })
            .then_expect_events(vec![Event::TransferFailed {
                reason: "timed out".into(),
            }])
            .then_expect_state_json(json!({
                "status": "failed", "from": "a", "to": "b", "amount": 10,
                "timeout_ms": 5000, "reason": "timed out"
            }));
        Test::given(vec![requested()])
            .when_json("Fail", "{}")
            .then_expect_invalid_message("missing field `reason`");
    }

    #[test]
    fn complete_and_fail_need_a_requested_transfer() {
        let fail = Command::Fail { reason: "x".into() };
        for command in [Command::Complete {}, fail] {
            Test::given_no_previous_events()
                .when(command.clone())
                .then_expect_rejection("transfer is not requested (status: new)");
            Test::given(vec![requested(), Event::TransferCompleted {}])
                .when(command.clone())
                .then_expect_rejection("transfer is not requested (status: completed)");
            Test::given(vec![
                requested(),
                Event::TransferFailed { reason: "x".into() },
            ])
            .when(command)
            .then_expect_rejection("transfer is not requested (status: failed)");
        }
    }

    #[test]
    fn unknown_commands_are_invalid() {
        Test::given_no_previous_events()
            .when_json("Cancel", "{}")
            .then_expect_invalid_message("unknown variant `Cancel`");
    }
}
