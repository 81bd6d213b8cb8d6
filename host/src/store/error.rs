//! The errors of the store boundary.

use std::sync::Arc;

use super::db_error;
use super::{ExpectedVersion, Position};

/// Errors at the store boundary. Cloning is cheap: one failed batch answers
/// each of its writes with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at the expected version.
    ///
    /// Handling: report 409 `wrong_expected_version`, or reload and retry when
    /// the caller did not ask for a version itself.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// No connection to the database can be had (a pool timed out or
    /// closed, an I/O or TLS error, a server that went away or is shutting
    /// down, a busy or full SQLite file): retrying later may succeed.
    ///
    /// Handling: 503 `unavailable`; the append may be retried.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error that retrying will not mend: a
    /// violated constraint, a row that does not decode, a statement that
    /// fails. A bug, or data changed behind the store's back; `source`
    /// keeps the whole cause.
    ///
    /// Handling: 500 `internal` with an error id; the cause chain is logged
    /// under that id.
    #[error("event store failed: {source}")]
    Internal {
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The store is shutting down and takes no more writes.
    ///
    /// Handling: 503 `unavailable`.
    #[error("event store is shutting down")]
    ShuttingDown,
    /// Data in the store breaks an invariant (e.g. a malformed hash).
    ///
    /// Handling: 500; an operator must look.
    #[error("event store data is corrupt: {0}")]
    Corrupt(String),
    /// A projection generation's checkpoint is not where the committing
    /// runner started: another runner wrote, or the generation was dropped.
    ///
    /// Handling: the runner stops and reloads its checkpoint.
    #[error(
        "checkpoint of {projection} generation {generation} is at {actual:?}, expected {expected}"
    )]
    CheckpointMoved {
        projection: String,
        generation: u64,
        expected: Position,
        actual: Option<Position>,
    },
}

impl StoreError {
    /// An [`StoreError::Internal`] keeping `cause` as its source.
    pub fn internal(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Internal {
            source: Arc::new(cause),
        }
    }
}

/// Only a connection that cannot be had is [`StoreError::Unavailable`]
/// (see [`db_error::connection_lost`]); any other database error is
/// [`StoreError::Internal`], keeping the error itself.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if db_error::connection_lost(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::internal(e)
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Unavailable(format!("migration failed: {e}"))
    }
}
