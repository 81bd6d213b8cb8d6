//! The event store: the contract every backend implements.
//!
//! The store is append-only. Each event has a 1-based `version` inside its
//! stream and a gap-free `position` in the global order, plus a hash chained
//! to the previous event in that order (see [`hash_chain`]). Appends carry an
//! [`ExpectedVersion`]; a mismatch is a [`StoreError::WrongExpectedVersion`],
//! never a silent overwrite. An acknowledged append is durable (fsynced);
//! backends batch concurrent appends into one transaction (group commit).
//!
//! The store is split by role, one trait each: [`EventLog`] (appends, reads,
//! snapshots, idempotency, commit watches), [`ViewStore`] (projection views
//! and checkpoints), [`SagaStore`], [`PluginCatalog`] and [`LeaseStore`].
//! Each caller takes the narrowest one it needs; [`EventStore`] is all of
//! them together, plus what concerns the store as a whole (its health and
//! shutdown), and is what a backend is opened as.

mod catalog;
pub mod db_error;
mod error;
pub mod hash_chain;
mod jobs;
mod leases;
mod log;
pub mod postgres;
mod queries;
mod rows;
mod sagas;
mod sql_roles;
pub mod sqlite;
mod views;

use std::sync::Arc;

use async_trait::async_trait;

pub use catalog::*;
pub use error::StoreError;
pub use leases::*;
pub use log::*;
pub use sagas::*;
pub use views::*;

/// A whole store: every role, and the store's own health and shutdown. One
/// implementation per backend; the logic above it (the command pipeline,
/// the runners, the API) is shared and takes the roles it needs.
#[async_trait]
pub trait EventStore: EventLog + ViewStore + SagaStore + PluginCatalog + LeaseStore {
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stop accepting writes, finish the ones queued, and close.
    async fn close(&self);
}

/// Whether a `--db` URL names a PostgreSQL database (else it is SQLite).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Open the store a `--db` URL names: `postgres://…` or `postgresql://…`
/// (several hosts may share it), else a SQLite file (`sqlite://path` or a
/// path). Migrations are applied.
pub async fn open(
    url: &str,
    sqlite_options: sqlite::SqliteOptions,
    postgres_options: postgres::PostgresOptions,
) -> Result<Arc<dyn EventStore>, StoreError> {
    if is_postgres_url(url) {
        let store = postgres::PostgresStore::open(url, postgres_options).await?;
        Ok(Arc::new(store))
    } else {
        let store = sqlite::SqliteStore::open(url, sqlite_options).await?;
        Ok(Arc::new(store))
    }
}

/// A queued write's answer once its batch is over: its own outcome if the
/// batch committed (`outcome` is `None` when the write never ran), else
/// why the batch did not.
pub(crate) fn write_answer<T>(
    outcome: Option<Result<T, StoreError>>,
    committed: Result<(), StoreError>,
) -> Result<T, StoreError> {
    match committed {
        Ok(()) => {
            outcome.unwrap_or_else(|| Err(StoreError::Unavailable("the write was not run".into())))
        }
        Err(e) => Err(e),
    }
}

/// The current time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
pub(crate) mod conformance;
