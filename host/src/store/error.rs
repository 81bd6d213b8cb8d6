//! The errors of the store boundary.

use super::ExpectedVersion;
use super::Position;

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
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
    /// The database failed or cannot be reached.
    ///
    /// Handling: 503 `unavailable`; the append may be retried.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
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

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Unavailable(format!("migration failed: {e}"))
    }
}
