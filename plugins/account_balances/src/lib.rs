//! Example Kiln projection: the balance of every bank account, and totals,
//! from the `bank_account` aggregate's events.
//!
//! Rows (see [`account_balances_core`] for the precise rules):
//!
//! - `account-{id}` for the stream `bank_account-{id}`:
//!   `{"owner": string, "balance": int, "status": "open"|"closed"}`;
//! - `_totals`: `{"open_accounts": int, "total_balance": int}`, the number of
//!   open accounts and the sum of the balances of all accounts (open and
//!   closed).
//!
//! Subscribes to `Opened`, `Deposited`, `Withdrawn` and `Closed`, and reads
//! only `bank_account-*` streams. Each batch costs the host one read and one
//! write per distinct account, plus one read and one write of `_totals`.
//!
//! The logic lives in the library crate `account_balances_core`, generic over
//! a tier hook, because the `fixture_balances_v2` test fixture (the "new
//! logic" of this view) shares it; this crate picks [`NoTiers`] and exports
//! the component.

pub use account_balances_core::{
    ACCOUNT_PREFIX, AccountRow, Balances, Event, NoTiers, STREAM_PREFIX, Status, TOTALS, Totals,
    account_key,
};

/// The projection: [`Balances`] without tiers.
pub type AccountBalances = Balances<NoTiers>;

kiln_sdk::export_projection!(AccountBalances);

#[cfg(test)]
mod tests {
    use kiln_sdk::StoreCalls;
    use kiln_sdk::testing::{ProjectionTest, TestEvent, json};

    use super::*;

    type Test = ProjectionTest<AccountBalances>;

    fn opened(owner: &str) -> Event {
        Event::Opened {
            owner: owner.into(),
        }
    }

    #[test]
    fn opening_creates_a_row_and_counts_it() {
        Test::new()
            .given(vec![("bank_account-42", opened("ann"))])
            .then_expect_row(
                "account-42",
                json!({"owner": "ann", "balance": 0, "status": "open"}),
            )
            .then_expect_row("_totals", json!({"open_accounts": 1, "total_balance": 0}));
    }

    #[test]
    fn no_totals_before_the_first_account() {
        Test::new()
            .given(vec![])
            .then_expect_no_row("_totals")
            .then_expect_rows("", vec![]);
    }

    #[test]
    fn deposits_and_withdrawals_move_the_balance_and_the_total() {
        Test::new()
            .given(vec![
                ("bank_account-1", opened("ann")),
                ("bank_account-2", opened("bob")),
                ("bank_account-1", Event::Deposited { amount: 100 }),
                ("bank_account-2", Event::Deposited { amount: 50 }),
                ("bank_account-1", Event::Withdrawn { amount: 30 }),
            ])
            .given(vec![("bank_account-2", Event::Withdrawn { amount: 80 })])
            .then_expect_rows(
                ACCOUNT_PREFIX,
                vec![
                    (
                        "account-1",
                        json!({"owner": "ann", "balance": 70, "status": "open"}),
                    ),
                    (
                        "account-2",
                        json!({"owner": "bob", "balance": -30, "status": "open"}),
                    ),
                ],
            )
            .then_expect_row("_totals", json!({"open_accounts": 2, "total_balance": 40}));
    }

    #[test]
    fn closing_keeps_the_row_and_uncounts_the_account() {
        Test::new()
            .given(vec![
                ("bank_account-1", opened("ann")),
                ("bank_account-2", opened("bob")),
                ("bank_account-2", Event::Deposited { amount: 5 }),
                ("bank_account-1", Event::Deposited { amount: 10 }),
                ("bank_account-1", Event::Withdrawn { amount: 10 }),
            ])
            .given_json(vec![("bank_account-1", "Closed", "{}")])
            .then_expect_row(
                "account-1",
                json!({"owner": "ann", "balance": 0, "status": "closed"}),
            )
            .then_expect_row("_totals", json!({"open_accounts": 1, "total_balance": 5}))
            // Closing twice changes nothing.
            .given_json(vec![("bank_account-1", "Closed", "")])
            .then_expect_row("_totals", json!({"open_accounts": 1, "total_balance": 5}));
    }

    #[test]
    fn events_decode_as_bank_account_writes_them() {
        Test::new()
            .given_json(vec![
                (
                    "bank_account-7",
                    "Opened",
                    r#"{"overdraft_limit":100,"owner":"Ann"}"#,
                ),
                ("bank_account-7", "Withdrawn", r#"{"amount":60}"#),
            ])
            .then_expect_row(
                "account-7",
                json!({"owner": "Ann", "balance": -60, "status": "open"}),
            );
    }

    #[test]
    fn ids_may_contain_dashes_and_look_like_the_totals_key() {
        Test::new()
            .given(vec![
                ("bank_account-a-b", opened("ann")),
                ("bank_account-_totals", opened("eve")),
            ])
            .then_expect_row(
                "account-a-b",
                json!({"owner": "ann", "balance": 0, "status": "open"}),
            )
            .then_expect_row(
                "account-_totals",
                json!({"owner": "eve", "balance": 0, "status": "open"}),
            )
            .then_expect_row("_totals", json!({"open_accounts": 2, "total_balance": 0}));
    }

    #[test]
    fn other_streams_and_types_are_ignored() {
        Test::new()
            .given_events(vec![
                // Another aggregate's `Opened`, with other fields: not decoded.
                TestEvent::json("shop-1", "Opened", r#"{"hours": "9-5"}"#),
                // Not subscribed: the host does not deliver it.
                TestEvent::json("workflow_execution-1", "Started", "{}"),
                TestEvent::new("bank_account-1", &opened("ann")),
            ])
            .then_expect_rows(
                "",
                vec![
                    ("_totals", json!({"open_accounts": 1, "total_balance": 0})),
                    (
                        "account-1",
                        json!({"owner": "ann", "balance": 0, "status": "open"}),
                    ),
                ],
            );
    }

    #[test]
    fn batch_boundaries_do_not_change_the_rows() {
        let events: Vec<(String, Event)> = (0..60)
            .map(|i| {
                let stream = format!("bank_account-{}", i % 4);
                let event = match i {
                    0..4 => opened(&format!("owner{i}")),
                    56..60 if i % 4 != 0 => Event::Withdrawn { amount: 1 },
                    56..60 => Event::Closed {},
                    _ => Event::Deposited { amount: i },
                };
                (stream, event)
            })
            .collect();
        let one_batch = Test::new().given(
            events
                .iter()
                .map(|(stream, event)| (stream.as_str(), event.clone()))
                .collect(),
        );
        let mut one_by_one = Test::new();
        for (stream, event) in &events {
            one_by_one = one_by_one.given(vec![(stream.as_str(), event.clone())]);
        }
        assert_eq!(one_batch.rows(""), one_by_one.rows(""));
        let totals: Totals = one_batch.row(TOTALS).unwrap_or_default();
        let sum: i64 = one_batch
            .rows(ACCOUNT_PREFIX)
            .iter()
            .map(|(key, _)| {
                one_batch
                    .row::<AccountRow>(key)
                    .map_or(0, |row| row.balance)
            })
            .sum();
        assert_eq!(totals.total_balance, sum);
        assert_eq!(totals.open_accounts, 3);
    }

    #[test]
    fn a_batch_costs_one_read_and_one_write_per_account() {
        let mut test = Test::new().given(vec![
            ("bank_account-1", opened("ann")),
            ("bank_account-2", opened("bob")),
        ]);
        let events = (0..1000)
            .map(|i| {
                TestEvent::new(
                    format!("bank_account-{}", 1 + i % 2),
                    &Event::Deposited { amount: 1 },
                )
            })
            .collect();
        assert_eq!(test.handle_batch(events), Ok(()));
        // Two accounts and `_totals`.
        assert_eq!(
            test.last_batch_calls(),
            StoreCalls {
                gets: 3,
                puts: 3,
                deletes: 0,
                scans: 0
            }
        );
        let test = test.then_expect_row(
            "_totals",
            json!({"open_accounts": 2, "total_balance": 1000}),
        );
        // A batch that changes nothing writes nothing.
        let mut test = test;
        assert_eq!(
            test.handle_batch(vec![TestEvent::json("other-1", "Opened", "{}")]),
            Ok(())
        );
        assert_eq!(test.last_batch_calls().puts, 0);
    }

    #[test]
    fn a_log_bank_account_cannot_write_fails_the_batch() {
        let mut test = Test::new().given(vec![("bank_account-1", opened("ann"))]);
        let error = test
            .handle_batch(vec![TestEvent::new(
                "bank_account-2",
                &Event::Deposited { amount: 1 },
            )])
            .unwrap_err();
        assert_eq!(
            error,
            "event 2 (`Deposited` on `bank_account-2`): account `2` has no row: its `Opened` event never came"
        );
        let error = test
            .handle_batch(vec![TestEvent::new("bank_account-1", &opened("eve"))])
            .unwrap_err();
        assert!(
            error.ends_with("account `1` is opened a second time"),
            "{error}"
        );
        let error = test
            .handle_batch(vec![
                TestEvent::new("bank_account-1", &Event::Deposited { amount: i64::MAX }),
                TestEvent::new("bank_account-1", &Event::Deposited { amount: 1 }),
            ])
            .unwrap_err();
        assert!(error.contains("overflows an i64"), "{error}");
        let error = test
            .handle_batch(vec![TestEvent::json(
                "bank_account-1",
                "Deposited",
                r#"{"amount": "ten"}"#,
            )])
            .unwrap_err();
        assert!(error.contains("cannot decode its data"), "{error}");
        // Nothing of the failed batches was written.
        test.then_expect_row(
            "account-1",
            json!({"owner": "ann", "balance": 0, "status": "open"}),
        )
        .then_expect_row("_totals", json!({"open_accounts": 1, "total_balance": 0}));
    }
}
