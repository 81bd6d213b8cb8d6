//! Example Kiln saga `transfer_saga`: moves the money of a `transfer`
//! between two `bank_account`s, with a timeout and a refund.
//!
//! One instance per transfer, named by the transfer's id. It receives
//! `TransferRequested`, `Withdrawn` and `Deposited`:
//!
//! 1. `TransferRequested` on `transfer-{id}` starts the instance `{id}`: it
//!    dispatches `Withdraw {"amount"}` to `bank_account`/`{from}` and sets
//!    the timer `timeout` at the event's time + `timeout_ms` (step
//!    `withdrawing`).
//! 2. `Withdrawn` (from that `Withdraw`): `Deposit {"amount"}` to
//!    `bank_account`/`{to}` (step `depositing`).
//! 3. `Deposited` (from that `Deposit`): `Complete {}` to `transfer`/`{id}`,
//!    and the instance is done (step `completed`).
//!
//! `Withdrawn` and `Deposited` belong to an instance only when they were
//! produced by a command of this saga (their metadata names `transfer_saga`
//! and the instance): the same events from anyone else are ignored.
//!
//! When a command is refused:
//! - the `Withdraw`: `Fail {"reason": <the rejection's message>}` to the
//!   transfer; done (step `failed`);
//! - the `Deposit` to `{to}`: compensate with a refund, `Deposit` back to
//!   `bank_account`/`{from}` (step `refunding`, reason `deposit to {to}
//!   rejected: <message>`); once the refund's `Deposited` arrives, `Fail`
//!   the transfer with that reason; done;
//! - the refund: `Fail` the transfer with `<reason>; the refund to {from}
//!   failed: <message>`; done (the money is stuck: an operator must act);
//! - `Complete` or `Fail` to the transfer: done, nothing more to do.
//!
//! When the timer `timeout` fires:
//! - step `withdrawing` (the `Withdraw` is still pending, e.g. retried):
//!   cancel it, `Fail {"reason": "timed out"}` the transfer; done;
//! - step `depositing`: cancel the pending `Deposit`, refund `{from}` (step
//!   `refunding`, reason `timed out`), then `Fail` as above;
//! - any other step: nothing (the outcome is already on its way).
//!
//! State: `{"transfer": string, "from": string, "to": string, "amount": int,
//! "step": "new"|"withdrawing"|"depositing"|"refunding"|"completed"|"failed",
//! "reason": string|null}`.

use kiln_sdk::{Envelope, FailedCommand, Saga, SagaContext, Timer};
use serde::{Deserialize, Serialize};

/// The saga's plugin name: the `saga` metadata field of the events its
/// commands produce.
pub const NAME: &str = "transfer_saga";

/// The aggregate the transfers are (plugin name).
pub const TRANSFER: &str = "transfer";

/// The aggregate the accounts are (plugin name).
pub const BANK_ACCOUNT: &str = "bank_account";

/// The name of the timer that gives a transfer up.
pub const TIMEOUT: &str = "timeout";

/// The state of one transfer's instance, exactly as the host stores it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSaga {
    /// The transfer's id (the instance's id).
    pub transfer: String,
    /// The account the money comes from.
    pub from: String,
    /// The account it goes to.
    pub to: String,
    /// How much, > 0.
    pub amount: i64,
    /// Where the instance is.
    pub step: Step,
    /// Why the transfer is failing; `None` unless it is.
    pub reason: Option<String>,
}

/// The steps of a transfer's instance.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Nothing seen yet.
    #[default]
    New,
    /// `Withdraw` from `from` dispatched.
    Withdrawing,
    /// Withdrawn; `Deposit` to `to` dispatched.
    Depositing,
    /// Compensating: the refund `Deposit` to `from` dispatched.
    Refunding,
    /// `Complete` dispatched: done.
    Completed,
    /// `Fail` dispatched: done.
    Failed,
}

/// The events the saga receives: the transfer's request and the accounts'
/// movements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// A transfer was requested (on `transfer-{id}`).
    TransferRequested {
        /// The account the money comes from.
        from: String,
        /// The account it goes to.
        to: String,
        /// > 0.
        amount: i64,
        /// How long the transfer may take, in milliseconds.
        timeout_ms: i64,
    },
    /// Money was taken out of an account.
    Withdrawn {
        /// > 0.
        amount: i64,
    },
    /// Money was put into an account.
    Deposited {
        /// > 0.
        amount: i64,
    },
}

/// The commands the saga sends to the accounts (`bank_account`'s own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountCommand {
    /// Take money out.
    Withdraw {
        /// > 0.
        amount: i64,
    },
    /// Put money in.
    Deposit {
        /// > 0.
        amount: i64,
    },
}

/// The commands the saga sends to the transfer (`transfer`'s own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TransferCommand {
    /// The money has moved.
    Complete {},
    /// The transfer was given up.
    Fail {
        /// Why.
        reason: String,
    },
}

impl Saga for TransferSaga {
    type Event = Event;
    const SUBSCRIPTIONS: &'static [&'static str] = &["TransferRequested", "Withdrawn", "Deposited"];

    fn correlate(event: &Envelope<Event>) -> Option<String> {
        match event.event {
            Event::TransferRequested { .. } if event.category() == TRANSFER => {
                Some(event.aggregate_id().to_owned())
            }
            Event::TransferRequested { .. } => None,
            Event::Withdrawn { .. } | Event::Deposited { .. } => event.saga_instance(NAME),
        }
    }

    fn react(&mut self, event: &Envelope<Event>, ctx: &mut SagaContext) -> Result<(), String> {
        match (&event.event, self.step) {
            (
                Event::TransferRequested {
                    from,
                    to,
                    amount,
                    timeout_ms,
                },
                Step::New,
            ) => {
                self.transfer = event.aggregate_id().to_owned();
                self.from.clone_from(from);
                self.to.clone_from(to);
                self.amount = *amount;
                self.step = Step::Withdrawing;
                ctx.dispatch(
                    BANK_ACCOUNT,
                    from,
                    &AccountCommand::Withdraw { amount: *amount },
                );
                ctx.set_timer(TIMEOUT, event.recorded_at_ms.saturating_add(*timeout_ms));
            }
            (Event::Withdrawn { .. }, Step::Withdrawing) => {
                self.step = Step::Depositing;
                ctx.dispatch(
                    BANK_ACCOUNT,
                    &self.to,
                    &AccountCommand::Deposit {
                        amount: self.amount,
                    },
                );
            }
            (Event::Deposited { .. }, Step::Depositing) => {
                self.step = Step::Completed;
                ctx.dispatch(TRANSFER, &self.transfer, &TransferCommand::Complete {});
                ctx.complete();
            }
            (Event::Deposited { .. }, Step::Refunding) => {
                let reason = self.reason.clone().unwrap_or_default();
                self.fail(ctx, reason);
            }
            // Anything else is late or repeated news: nothing to do.
            _ => {}
        }
        Ok(())
    }

    fn on_failure(&mut self, failed: &FailedCommand, ctx: &mut SagaContext) -> Result<(), String> {
        let message = failed.message();
        match (
            failed.aggregate.as_str(),
            failed.command_type.as_str(),
            self.step,
        ) {
            (BANK_ACCOUNT, "Withdraw", Step::Withdrawing) => {
                self.fail(ctx, message.to_owned());
            }
            (BANK_ACCOUNT, "Deposit", Step::Depositing) => {
                let reason = format!("deposit to {} rejected: {message}", self.to);
                self.refund(ctx, reason);
            }
            (BANK_ACCOUNT, "Deposit", Step::Refunding) => {
                let reason = format!(
                    "{}; the refund to {} failed: {message}",
                    self.reason.as_deref().unwrap_or("refunding"),
                    self.from
                );
                self.fail(ctx, reason);
            }
            (TRANSFER, "Complete" | "Fail", _) => {
                kiln_sdk::log::warn(&format!(
                    "transfer {}: {} refused: {message}",
                    self.transfer, failed.command_type
                ));
                ctx.complete();
            }
            (aggregate, command_type, step) => {
                return Err(format!(
                    "unexpected failure of {command_type} to {aggregate}-{} in step {step:?}: \
                     {message}",
                    failed.id
                ));
            }
        }
        Ok(())
    }

    fn on_timer(&mut self, timer: &Timer, ctx: &mut SagaContext) -> Result<(), String> {
        if timer.name != TIMEOUT {
            return Ok(());
        }
        match self.step {
            Step::Withdrawing => {
                ctx.cancel_pending();
                self.fail(ctx, "timed out".to_owned());
            }
            Step::Depositing => {
                ctx.cancel_pending();
                self.refund(ctx, "timed out".to_owned());
            }
            Step::New | Step::Refunding | Step::Completed | Step::Failed => {}
        }
        Ok(())
    }
}

impl TransferSaga {
    /// Give the transfer up with `reason`; done.
    fn fail(&mut self, ctx: &mut SagaContext, reason: String) {
        self.step = Step::Failed;
        self.reason = Some(reason.clone());
        ctx.dispatch(TRANSFER, &self.transfer, &TransferCommand::Fail { reason });
        ctx.complete();
    }

    /// Put the withdrawn money back into `from`; the transfer fails with
    /// `reason` once it is back.
    fn refund(&mut self, ctx: &mut SagaContext, reason: String) {
        self.step = Step::Refunding;
        self.reason = Some(reason);
        ctx.compensating();
        ctx.dispatch(
            BANK_ACCOUNT,
            &self.from,
            &AccountCommand::Deposit {
                amount: self.amount,
            },
        );
    }
}

kiln_sdk::export_saga!(TransferSaga);

#[cfg(test)]
mod tests {
    use kiln_sdk::Failure;
    use kiln_sdk::serde_json::Value;
    use kiln_sdk::testing::{SagaTest, TestEvent, json};

    use super::*;

    type Expected = (&'static str, &'static str, &'static str, Value);

    /// Requested at 1000 (the harness's first step), so the timeout fires
    /// at 6000.
    fn requested() -> SagaTest<TransferSaga> {
        SagaTest::new(NAME).given_event(
            "transfer-t1",
            Event::TransferRequested {
                from: "a".into(),
                to: "b".into(),
                amount: 10,
                timeout_ms: 5_000,
            },
        )
    }

    fn withdrawn() -> SagaTest<TransferSaga> {
        requested().when_applied(vec![Event::Withdrawn { amount: 10 }])
    }

    fn refunding() -> SagaTest<TransferSaga> {
        withdrawn().when_rejected("account is not open (status: closed)", None)
    }

    fn withdraw_from_a() -> Expected {
        ("bank_account", "a", "Withdraw", json!({"amount": 10}))
    }

    fn deposit_to(account: &'static str) -> Expected {
        ("bank_account", account, "Deposit", json!({"amount": 10}))
    }

    fn fail(reason: &str) -> Expected {
        ("transfer", "t1", "Fail", json!({ "reason": reason }))
    }

    #[test]
    fn a_request_withdraws_and_sets_the_timeout() {
        requested()
            .then_expect_instance("t1")
            .then_expect_commands(vec![withdraw_from_a()])
            .then_expect_timer("timeout", 6_000)
            .then_expect_not_done()
            .then_expect_state_json(json!({
                "transfer": "t1", "from": "a", "to": "b", "amount": 10,
                "step": "withdrawing", "reason": null
            }));
    }

    #[test]
    fn the_happy_path_withdraws_deposits_and_completes() {
        withdrawn()
            .then_expect_instance("t1")
            .then_expect_commands(vec![deposit_to("b")])
            .then_expect_state(|saga| assert_eq!(saga.step, Step::Depositing))
            .when_applied(vec![Event::Deposited { amount: 10 }])
            .then_expect_instance("t1")
            .then_expect_commands(vec![("transfer", "t1", "Complete", json!({}))])
            .then_expect_done()
            .then_expect_not_compensating()
            .then_expect_state(|saga| assert_eq!(saga.step, Step::Completed));
        // Once the Complete is applied, the instance has finished: its timer
        // is gone.
        let test = withdrawn().when_applied(vec![Event::Deposited { amount: 10 }]);
        assert!(test.timers().contains_key(TIMEOUT));
        let test = test
            .when_applied(vec![json!({"type": "TransferCompleted", "data": {}})])
            .then_expect_ignored();
        assert!(test.timers().is_empty());
        assert!(test.pending().is_empty());
    }

    #[test]
    fn other_movements_are_ignored() {
        requested()
            // A withdrawal nobody's saga asked for.
            .given_event("bank_account-a", Event::Withdrawn { amount: 10 })
            .then_expect_ignored()
            // One of another saga.
            .given(
                TestEvent::new("bank_account-a", &Event::Withdrawn { amount: 10 })
                    .with_metadata(&json!({"saga": "other", "saga_instance": "t1"})),
            )
            .then_expect_ignored()
            // A TransferRequested on another aggregate's stream.
            .given_json(
                "audit-t1",
                "TransferRequested",
                r#"{"from": "a", "to": "b", "amount": 1, "timeout_ms": 1}"#,
            )
            .then_expect_ignored()
            .then_expect_state(|saga| assert_eq!(saga.step, Step::Withdrawing));
    }

    #[test]
    fn a_repeated_event_changes_nothing() {
        withdrawn()
            .given(
                TestEvent::new("bank_account-a", &Event::Withdrawn { amount: 10 })
                    .with_metadata(&json!({"saga": NAME, "saga_instance": "t1", "saga_step": 1})),
            )
            .then_expect_instance("t1")
            .then_expect_no_commands()
            .then_expect_pending(vec![deposit_to("b")]);
    }

    #[test]
    fn a_refused_withdrawal_fails_the_transfer_with_its_message() {
        requested()
            .when_rejected(
                "insufficient funds: cannot withdraw 10 from a balance of 0 with an overdraft \
                 limit of 0",
                Some("insufficient_funds"),
            )
            .then_expect_commands(vec![fail(
                "insufficient funds: cannot withdraw 10 from a balance of 0 with an overdraft \
                 limit of 0",
            )])
            .then_expect_done()
            .then_expect_not_compensating()
            .then_expect_state(|saga| assert_eq!(saga.step, Step::Failed));
        // An invalid withdrawal too.
        requested()
            .when_failed(Failure::invalid("amount must be > 0, got 0"))
            .then_expect_commands(vec![fail("amount must be > 0, got 0")])
            .then_expect_done();
    }

    #[test]
    fn a_refused_deposit_refunds_then_fails() {
        refunding()
            .then_expect_compensating()
            .then_expect_not_done()
            .then_expect_commands(vec![deposit_to("a")])
            .then_expect_state(|saga| {
                assert_eq!(saga.step, Step::Refunding);
                assert_eq!(
                    saga.reason.as_deref(),
                    Some("deposit to b rejected: account is not open (status: closed)")
                );
            })
            .when_applied(vec![Event::Deposited { amount: 10 }])
            .then_expect_instance("t1")
            .then_expect_commands(vec![fail(
                "deposit to b rejected: account is not open (status: closed)",
            )])
            .then_expect_done()
            .then_expect_state(|saga| assert_eq!(saga.step, Step::Failed));
    }

    #[test]
    fn a_refused_refund_fails_the_transfer_saying_so() {
        refunding()
            .when_rejected("account is not open (status: closed)", None)
            .then_expect_commands(vec![fail(
                "deposit to b rejected: account is not open (status: closed); the refund to a \
                 failed: account is not open (status: closed)",
            )])
            .then_expect_done()
            .then_expect_state(|saga| assert_eq!(saga.step, Step::Failed));
    }

    #[test]
    fn a_refused_complete_or_fail_ends_the_instance() {
        withdrawn()
            .when_applied(vec![Event::Deposited { amount: 10 }])
            .when_rejected("transfer is not requested (status: failed)", None)
            .then_expect_no_commands()
            .then_expect_done();
        requested()
            .when_rejected("no", None)
            .when_rejected("transfer is not requested (status: completed)", None)
            .then_expect_no_commands()
            .then_expect_done();
    }

    #[test]
    fn a_timeout_while_withdrawing_cancels_and_fails() {
        requested()
            .when_timer("timeout")
            .then_expect_cancel_pending()
            .then_expect_commands(vec![fail("timed out")])
            // The pending Withdraw is gone.
            .then_expect_pending(vec![fail("timed out")])
            .then_expect_done()
            .then_expect_not_compensating()
            .then_expect_state(|saga| {
                assert_eq!(saga.step, Step::Failed);
                assert_eq!(saga.reason.as_deref(), Some("timed out"));
            });
    }

    #[test]
    fn a_timeout_while_depositing_cancels_and_refunds() {
        withdrawn()
            .when_timer("timeout")
            .then_expect_cancel_pending()
            .then_expect_compensating()
            .then_expect_not_done()
            .then_expect_commands(vec![deposit_to("a")])
            .then_expect_pending(vec![deposit_to("a")])
            .when_applied(vec![Event::Deposited { amount: 10 }])
            .then_expect_commands(vec![fail("timed out")])
            .then_expect_done();
    }

    #[test]
    fn a_timeout_in_other_steps_does_nothing() {
        // Refunding.
        refunding()
            .when_timer("timeout")
            .then_expect_no_commands()
            .then_expect_not_done()
            .then_expect_reaction(|reaction| assert!(!reaction.cancel_pending))
            .then_expect_pending(vec![deposit_to("a")]);
        // Completed, the Complete still pending.
        withdrawn()
            .when_applied(vec![Event::Deposited { amount: 10 }])
            .when_timer("timeout")
            .then_expect_no_commands()
            .then_expect_not_done()
            .then_expect_pending(vec![("transfer", "t1", "Complete", json!({}))]);
    }

    #[test]
    fn the_instance_ignores_a_second_request() {
        requested()
            .given_event(
                "transfer-t1",
                Event::TransferRequested {
                    from: "x".into(),
                    to: "y".into(),
                    amount: 1,
                    timeout_ms: 1,
                },
            )
            .then_expect_instance("t1")
            .then_expect_no_commands()
            .then_expect_no_timer()
            .then_expect_state(|saga| assert_eq!(saga.from, "a"));
    }
}
