//! How a command fails.

use crate::runtime::PluginError;
use crate::store::{ExpectedVersion, StoreError};

/// Every way a command can fail, each mapped to one API status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Unknown aggregate, or a stream with no events where one is needed.
    ///
    /// Handling: 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is malformed (bad id, metadata not an object).
    ///
    /// Handling: 400 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(String),
    /// The plugin could not understand the command.
    ///
    /// Handling: 400 `invalid_command`.
    #[error("{0}")]
    InvalidCommand(String),
    /// A business rule refused the command; the message is the plugin's.
    ///
    /// Handling: 422 `rejected`.
    #[error("{message}")]
    Rejected {
        code: Option<String>,
        message: String,
    },
    /// The stream is not at the version the client expected.
    ///
    /// Handling: 409 `wrong_expected_version` with `expected` and `actual`.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// The idempotency key was used for a different request.
    ///
    /// Handling: 409 `idempotency_conflict`.
    #[error("idempotency key {key:?} was already used for a different command")]
    IdempotencyConflict { key: String },
    /// The plugin trapped, timed out, or broke the contract.
    ///
    /// Handling: per [`PluginError`].
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The store failed.
    ///
    /// Handling: per [`StoreError`].
    #[error(transparent)]
    Store(StoreError),
}

impl CommandError {
    /// The error's code, as clients and dead letters name it (the API
    /// answers with the same one).
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NotFound(_) => "not_found",
            CommandError::InvalidRequest(_) => "invalid_request",
            CommandError::InvalidCommand(_) => "invalid_command",
            CommandError::Rejected { .. } => "rejected",
            CommandError::WrongExpectedVersion { .. } => "wrong_expected_version",
            CommandError::IdempotencyConflict { .. } => "idempotency_conflict",
            CommandError::Plugin(e) => match e {
                PluginError::Timeout { .. } => "plugin_timeout",
                PluginError::EventTooLarge { .. } => "too_large",
                PluginError::Instantiate { .. } => "unavailable",
                PluginError::Busy { .. } => "plugin_busy",
                PluginError::OutOfMemory { .. }
                | PluginError::Trap { .. }
                | PluginError::Contract { .. } => "plugin_trap",
            },
            CommandError::Store(e) => match e {
                StoreError::WrongExpectedVersion { .. } => "wrong_expected_version",
                StoreError::Unavailable(_) | StoreError::ShuttingDown => "unavailable",
                _ => "internal",
            },
        }
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => CommandError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            },
            other => CommandError::Store(other),
        }
    }
}
