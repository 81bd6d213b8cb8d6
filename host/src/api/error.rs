//! The one API error type: a status, a code, a message and details, always
//! as `{"error": {"code", "message", "details"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::command::CommandError;
use crate::registry::RegistryError;
use crate::runtime::{LoadError, PluginError};
use crate::store::StoreError;

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(message: impl Into<String>, limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            .with_details(json!({ "limit": limit }))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl From<StoreError> for ApiError {
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
            }
            .into(),
            StoreError::Unavailable(_) | StoreError::ShuttingDown => {
                // The cause is logged, not echoed: it may hold paths or SQL.
                tracing::warn!(error = %e, "store unavailable");
                ApiError::unavailable("the event store is unavailable; retry later")
            }
            StoreError::Corrupt(_) | StoreError::CheckpointMoved { .. } => {
                tracing::error!(error = %e, "store corrupt");
                ApiError::internal("the event store reported corrupt data; see the host's log")
            }
        }
    }
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        let message = e.to_string();
        match e {
            PluginError::Timeout { limit_ms, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "plugin_timeout", message)
                    .with_details(json!({ "limit_ms": limit_ms }))
            }
            PluginError::EventTooLarge { limit, size, .. } => ApiError::too_large(message, limit)
                .with_details(json!({ "limit": limit, "size": size })),
            PluginError::Instantiate { .. } => {
                tracing::warn!(error = %message, "instantiation failed");
                ApiError::unavailable(message)
            }
            PluginError::OutOfMemory { limit_bytes, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_trap", message)
                    .with_details(json!({ "limit_bytes": limit_bytes }))
            }
            PluginError::Trap { .. } | PluginError::Contract { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "plugin_trap", message)
            }
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound(m) => ApiError::not_found(m),
            CommandError::InvalidRequest(m) => ApiError::invalid_request(m),
            CommandError::InvalidCommand(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_command", m)
            }
            CommandError::Rejected { code, message } => {
                let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", message);
                match code {
                    Some(reason) => e.with_details(json!({ "reason": reason })),
                    None => e,
                }
            }
            CommandError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => {
                let expected_json = match expected {
                    crate::store::ExpectedVersion::Exact(v) => json!(v),
                    other => json!(other.to_string()),
                };
                ApiError::new(
                    StatusCode::CONFLICT,
                    "wrong_expected_version",
                    format!("stream {stream_id} is at version {actual}, expected {expected}"),
                )
                .with_details(json!({ "expected": expected_json, "actual": actual }))
            }
            e @ CommandError::IdempotencyConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", e.to_string())
            }
            CommandError::Plugin(p) => p.into(),
            CommandError::Store(s) => s.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::BadName(_) => ApiError::invalid_request(e.to_string()),
            RegistryError::Load(LoadError::NotAComponent(_)) => {
                ApiError::invalid_request(e.to_string())
            }
            RegistryError::Load(LoadError::Invalid(m)) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin", m)
            }
            RegistryError::Io { .. } => {
                tracing::error!(error = %e, "plugin io");
                ApiError::internal("could not read the plugin")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ExpectedVersion;

    /// The code a dead letter records for a command (`CommandError::code`)
    /// is the one a client gets for the same failure.
    #[test]
    fn command_error_codes_are_the_api_codes() {
        let plugin = || "p".to_string();
        let errors = vec![
            CommandError::NotFound("x".into()),
            CommandError::InvalidRequest("x".into()),
            CommandError::InvalidCommand("x".into()),
            CommandError::Rejected {
                code: Some("c".into()),
                message: "x".into(),
            },
            CommandError::WrongExpectedVersion {
                stream_id: "s-1".into(),
                expected: ExpectedVersion::Exact(1),
                actual: 2,
            },
            CommandError::IdempotencyConflict { key: "k".into() },
            CommandError::Plugin(PluginError::Trap {
                plugin: plugin(),
                message: "x".into(),
            }),
            CommandError::Plugin(PluginError::OutOfMemory {
                plugin: plugin(),
                limit_bytes: 1,
            }),
            CommandError::Plugin(PluginError::Timeout {
                plugin: plugin(),
                limit_ms: 1,
            }),
            CommandError::Plugin(PluginError::Contract {
                plugin: plugin(),
                message: "x".into(),
            }),
            CommandError::Plugin(PluginError::Instantiate {
                plugin: plugin(),
                message: "x".into(),
            }),
            CommandError::Store(StoreError::Unavailable("x".into())),
            CommandError::Store(StoreError::ShuttingDown),
            CommandError::Store(StoreError::Corrupt("x".into())),
        ];
        for error in errors {
            let code = error.code();
            let described = error.to_string();
            assert_eq!(ApiError::from(error).code, code, "{described}");
        }
    }
}
