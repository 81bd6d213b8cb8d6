//! The one API error type: a status, a code, a message and details, always
//! as `{"error": {"code", "message", "details"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

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

    /// `500 internal` for a bug or broken data: the client gets `message`
    /// and a fresh error id (`details.error_id`, also in the message); the
    /// log gets the id and `cause` with its whole chain of sources. The
    /// cause is not echoed to the client: it may hold paths or SQL.
    pub fn internal(message: &str, cause: &(dyn std::error::Error + 'static)) -> Self {
        let error_id = uuid::Uuid::new_v4();
        tracing::error!(%error_id, error = %cause_chain(cause), "{message}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{message}; see the host's log for error id {error_id}"),
        )
        .with_details(json!({ "error_id": error_id.to_string() }))
    }
}

/// `e` and each of its sources, joined by `: `; a source whose text its
/// error already shows (`"failed: {source}"`) is not repeated.
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "wrong_expected_version", "message": "stream bank_account-42 is at version 3, expected 2", "details": {"expected": 2, "actual": 3}}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_request`, `not_found`,
    /// `unavailable`, `internal`… (see docs/api.md).
    pub code: &'static str,
    /// For people; may change between versions.
    pub message: String,
    /// More, by code: e.g. `expected` and `actual` for
    /// `wrong_expected_version`, `limit` for `too_large`, `error_id` for
    /// `internal`. Always present: an empty object when there is nothing
    /// more to say.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details.unwrap_or_else(|| json!({})),
            },
        };
        (self.status, axum::Json(body)).into_response()
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
            StoreError::Internal { .. } => ApiError::internal("the event store failed", &e),
            StoreError::Corrupt(_) | StoreError::CheckpointMoved { .. } => {
                ApiError::internal("the event store reported corrupt data", &e)
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
            PluginError::Busy { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "plugin_busy", message)
            }
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
            RegistryError::Io { .. } => ApiError::internal("could not read the plugin", &e),
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
            CommandError::Plugin(PluginError::Busy {
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

    /// Every error body has `details`: an empty object when there is
    /// nothing more (a rejection without a code, for one).
    #[tokio::test]
    async fn every_error_body_has_details() {
        let rejected = CommandError::Rejected {
            code: None,
            message: "insufficient funds".into(),
        };
        let response = ApiError::from(rejected).into_response();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(body["error"]["details"], json!({}), "{body}");
        assert_eq!(body["error"]["code"], "rejected");
    }
}
