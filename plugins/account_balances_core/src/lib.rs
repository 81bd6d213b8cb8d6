//! The logic of the `account_balances` view over the `bank_account`
//! aggregate's events, generic over one hook, [`Tiers`], so that two
//! components share it: the `account_balances` example projection
//! ([`NoTiers`]) and the `fixture_balances_v2` test fixture (a gold tier).
//!
//! This crate exports no component: a plugin crate cannot be a dependency of
//! another plugin, because its export would be linked into the other
//! component as well.
//!
//! # Rows
//!
//! - **`account-{id}`**, one per account, `{id}` being the aggregate id
//!   (stream `bank_account-42` → key `account-42`):
//!   `{"owner": string, "balance": int, "status": "open"|"closed"}`, plus
//!   `"tier": string` when [`Tiers::tier`] gives one for the balance. The
//!   prefix keeps every id apart from `_totals`, and lists the accounts with
//!   a scan of `account-`.
//! - **`_totals`**: `{"open_accounts": int, "total_balance": int}`, where
//!   `open_accounts` is the number of account rows whose status is `open`
//!   and `total_balance` the sum of the `balance` of every account row, open
//!   or closed (a closed account's balance is 0, so it adds nothing). No row
//!   until the first account is opened.
//!
//! # Events
//!
//! Subscribes to `Opened`, `Deposited`, `Withdrawn` and `Closed` and reads
//! only the streams of the `bank_account` category (another aggregate's
//! `Opened` is skipped without being decoded). `Opened` creates the row
//! (balance 0, `open`), `Deposited`/`Withdrawn` add/subtract the amount,
//! `Closed` sets `closed`. It fails the batch (the host stops the
//! projection) when an account is opened twice, when an event arrives for an
//! account with no row, and when a balance or the total would overflow an
//! i64: each means the log is not what `bank_account` writes.
//!
//! # Cost
//!
//! Per event: one `get` and one `put` of the account row, which the
//! [`View`]'s per-batch cache turns into one host read and one host write
//! per distinct account per batch. `_totals` is read once when the batch
//! begins, kept in the projection value, and written once when it ends (not
//! at all when it did not change).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use kiln_sdk::{Envelope, Projection, View};
use serde::{Deserialize, Serialize};

/// The category of the streams the view reads, with its `-`.
pub const STREAM_PREFIX: &str = "bank_account-";
/// The prefix of the account rows' keys.
pub const ACCOUNT_PREFIX: &str = "account-";
/// The key of the totals row.
pub const TOTALS: &str = "_totals";

/// The key of the row of the account with aggregate id `id`.
pub fn account_key(id: &str) -> String {
    format!("{ACCOUNT_PREFIX}{id}")
}

/// The `bank_account` events, with the fields the view reads (the others,
/// such as `Opened`'s `overdraft_limit`, are ignored when decoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// The account was opened.
    Opened {
        /// The owner.
        owner: String,
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

/// The row of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    /// The owner named when the account was opened.
    pub owner: String,
    /// Deposits minus withdrawals.
    pub balance: i64,
    /// Open or closed.
    pub status: Status,
    /// What [`Tiers::tier`] makes of the balance; absent when nothing. Rows
    /// written by a version without tiers have none until their account's
    /// next event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// An account's status in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Opened, not closed.
    Open,
    /// Closed.
    Closed,
}

/// The `_totals` row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Accounts whose status is `open`.
    pub open_accounts: u64,
    /// The sum of the balances of all accounts, open and closed.
    pub total_balance: i64,
}

/// The hook that tells the versions of the view apart: the tier an account
/// row shows for its balance.
pub trait Tiers {
    /// The `tier` field of a row with this balance; `None` leaves it out.
    fn tier(balance: i64) -> Option<&'static str>;
}

/// No tiers: the rows of the `account_balances` example.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTiers;

impl Tiers for NoTiers {
    fn tier(_balance: i64) -> Option<&'static str> {
        None
    }
}

/// The projection, for one batch: the totals as they were when the batch
/// began and as they are now.
pub struct Balances<T> {
    loaded: Totals,
    totals: Totals,
    /// Account rows touched in this batch, decoded once and written once
    /// at its end.
    rows: BTreeMap<String, AccountRow>,
    tiers: PhantomData<fn() -> T>,
}

impl<T> Default for Balances<T> {
    fn default() -> Self {
        Self {
            loaded: Totals::default(),
            totals: Totals::default(),
            rows: BTreeMap::new(),
            tiers: PhantomData,
        }
    }
}

impl<T: Tiers> Projection for Balances<T> {
    type Event = Event;
    const SUBSCRIPTIONS: &'static [&'static str] = &["Opened", "Deposited", "Withdrawn", "Closed"];

    fn accepts(stream_id: &str, _event_type: &str) -> bool {
        stream_id.starts_with(STREAM_PREFIX)
    }

    fn begin(&mut self, view: &mut View) -> Result<(), String> {
        self.loaded = view.get(TOTALS)?.unwrap_or_default();
        self.totals = self.loaded;
        Ok(())
    }

    fn handle(&mut self, view: &mut View, event: &Envelope<Event>) -> Result<(), String> {
        let id = event.aggregate_id();
        let key = account_key(id);
        let row: Option<AccountRow> = match self.rows.remove(&key) {
            Some(row) => Some(row),
            None => view.get(&key)?,
        };
        let totals = &mut self.totals;
        let mut row = match (row, &event.event) {
            (None, Event::Opened { owner }) => {
                totals.open_accounts = inc(totals.open_accounts)?;
                AccountRow {
                    owner: owner.clone(),
                    balance: 0,
                    status: Status::Open,
                    tier: None,
                }
            }
            (Some(_), Event::Opened { .. }) => {
                return Err(format!("account `{id}` is opened a second time"));
            }
            (None, _) => {
                return Err(format!(
                    "account `{id}` has no row: its `Opened` event never came"
                ));
            }
            (Some(mut row), Event::Deposited { amount }) => {
                move_money(&mut row, totals, *amount, id)?;
                row
            }
            (Some(mut row), Event::Withdrawn { amount }) => {
                let minus = amount
                    .checked_neg()
                    .ok_or_else(|| format!("a withdrawal of {amount} overflows an i64"))?;
                move_money(&mut row, totals, minus, id)?;
                row
            }
            (Some(mut row), Event::Closed {}) => {
                if row.status == Status::Open {
                    row.status = Status::Closed;
                    totals.open_accounts = totals.open_accounts.saturating_sub(1);
                }
                row
            }
        };
        row.tier = T::tier(row.balance).map(str::to_owned);
        self.rows.insert(key, row);
        Ok(())
    }

    fn finish(&mut self, view: &mut View) -> Result<(), String> {
        for (key, row) in std::mem::take(&mut self.rows) {
            view.put(&key, &row)?;
        }
        if self.totals == self.loaded {
            return Ok(());
        }
        view.put(TOTALS, &self.totals)
    }
}

fn inc(count: u64) -> Result<u64, String> {
    count
        .checked_add(1)
        .ok_or_else(|| "the number of open accounts overflows".to_owned())
}

/// Add `amount` (negative for a withdrawal) to the balance of account `id`
/// and to the total.
fn move_money(
    row: &mut AccountRow,
    totals: &mut Totals,
    amount: i64,
    id: &str,
) -> Result<(), String> {
    row.balance = row.balance.checked_add(amount).ok_or_else(|| {
        format!(
            "the balance of account `{id}` ({}) overflows an i64 when adding {amount}",
            row.balance
        )
    })?;
    totals.total_balance = totals.total_balance.checked_add(amount).ok_or_else(|| {
        format!(
            "the total balance ({}) overflows an i64 when adding {amount}",
            totals.total_balance
        )
    })?;
    Ok(())
}
