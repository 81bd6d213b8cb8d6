//! `POST /commands/{aggregate}/{id}`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa::openapi::ObjectBuilder;
use utoipa::openapi::schema::{KnownFormat, OneOfBuilder, Schema, SchemaFormat, Type};

use super::error::ErrorBody;
use super::json::{EventJson, event_json, parse_json, read_json_body};
use super::responses::StoreRoute;
use super::{ApiError, AppState};
use crate::command::{CommandOutcome, CommandRequest};
use crate::store::ExpectedVersion;

/// The request body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "Deposit", "data": {"amount": 50}, "metadata": {"user": "ann"}, "expected_version": 3}))]
pub struct CommandBody {
    /// The command's type, as the aggregate plugin knows it; not empty.
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    command_type: String,
    /// The command's data (default `{}`), handed to the plugin as JSON.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    data: Option<Value>,
    /// A JSON object (default `{}`), copied into each event's metadata
    /// with `correlation_id` and `causation_id`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// A version number (0 is `"no_stream"`), `"no_stream"`, or `"any"`
    /// (the default).
    #[serde(default)]
    #[schema(schema_with = expected_version_schema)]
    expected_version: Option<Value>,
}

/// `expected_version` as [`parse_expected`] reads it: a version, one of
/// the two names, or null (`"any"`).
fn expected_version_schema() -> Schema {
    let version = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .examples([json!(3)]);
    let named = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["any", "no_stream"]));
    OneOfBuilder::new()
        .item(version)
        .item(named)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "A version number (0 is `\"no_stream\"`), `\"no_stream\"`, or `\"any\"` (the default).",
        ))
        .into()
}

/// A command's answer: the events it appended.
#[derive(Serialize, ToSchema)]
pub struct CommandResponse<'a> {
    stream_id: &'a str,
    /// The stream's version after the command (unchanged if it produced no
    /// events).
    version: u64,
    /// The global position of the last event appended (or of the stream's
    /// last event).
    position: u64,
    events: Vec<EventJson<'a>>,
}

#[utoipa::path(
    post,
    path = "/commands/{aggregate}/{id}",
    tag = "commands",
    summary = "Submit a command to an aggregate instance",
    description = "Runs the aggregate plugin `aggregate` on stream `{aggregate}-{id}` and appends the events it produces, atomically. A repeat with the same `Idempotency-Key` and the same body within the window answers the original response with `Idempotent-Replayed: true` and appends nothing.",
    params(
        ("aggregate" = String, Path, description = "The aggregate plugin's name"),
        ("id" = String, Path, description = "The instance id; the stream is `{aggregate}-{id}`"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Visible ASCII; may not start with `kiln-saga/` (the saga manager's keys do)"),
    ),
    request_body(content = CommandBody, content_type = "application/json"),
    responses(
        StoreRoute,
        (status = 200, description = "Appended (or a command that produced no events, with `events: []`)", body = CommandResponse,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier request with the same key"))),
        (status = 400, description = "`invalid_request` (malformed body, bad field, bad header) or `invalid_command` (the plugin answered invalid)", body = ErrorBody),
        (status = 404, description = "`not_found`: no aggregate plugin of that name", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version` (`details.expected`, `details.actual`) or `idempotency_conflict`", body = ErrorBody),
        (status = 413, description = "`too_large`: the body or an event over its limit (`details.limit`)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`", body = ErrorBody),
        (status = 422, description = "`rejected`: a business rule refused the command (`details.reason` when the plugin gave a code)", body = ErrorBody),
        (status = 500, description = "`plugin_trap`, or `internal` (`details.error_id`)", body = ErrorBody),
        (status = 503, description = "`plugin_timeout` (`details.limit_ms`) or `unavailable`", body = ErrorBody),
    ),
)]
pub async fn post_command(
    State(app): State<Arc<AppState>>,
    Path((aggregate, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = run(&app, aggregate, id, &headers, body).await;
    let code = match &result {
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    app.metrics.record_command(code, started.elapsed());
    match result {
        Ok(outcome) => {
            let body = CommandResponse {
                stream_id: &outcome.stream_id,
                version: outcome.version,
                position: outcome.position,
                events: outcome.events.iter().map(event_json).collect(),
            };
            let mut response = Json(body).into_response();
            if outcome.replayed {
                response
                    .headers_mut()
                    .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn run(
    app: &AppState,
    aggregate: String,
    id: String,
    headers: &HeaderMap,
    body: Body,
) -> Result<CommandOutcome, ApiError> {
    let limit = app.pipeline.limits().body_bytes_max;
    let bytes = read_json_body(headers, body, limit).await?;
    let body: CommandBody = parse_json(&bytes)
        .map_err(|e| ApiError::invalid_request(format!("invalid command body: {e}")))?;
    if body.command_type.is_empty() {
        return Err(ApiError::invalid_request("the command `type` is empty"));
    }
    let metadata = match body.metadata {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "`metadata` must be a JSON object",
            ));
        }
    };
    crate::command::check_client_metadata(&metadata)?;
    let idempotency_key = match headers.get("Idempotency-Key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid_request("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        ),
    };
    if let Some(key) = &idempotency_key
        && key.starts_with(crate::store::SAGA_IDEMPOTENCY_PREFIX)
    {
        return Err(ApiError::invalid_request(format!(
            "Idempotency-Key may not start with {:?}: the saga manager's keys do",
            crate::store::SAGA_IDEMPOTENCY_PREFIX
        )));
    }
    let request = CommandRequest {
        aggregate,
        id,
        command_type: body.command_type,
        data: match body.data {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v) => v,
        },
        metadata,
        expected: parse_expected(body.expected_version)?,
        idempotency_key,
    };
    Ok(app.pipeline.execute(request).await?)
}

/// `expected_version`: a number, `"no_stream"`, or `"any"` (the default).
fn parse_expected(v: Option<Value>) -> Result<ExpectedVersion, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(ExpectedVersion::Any),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|v| {
                if v == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(v)
                }
            })
            .ok_or_else(|| {
                ApiError::invalid_request(format!("expected_version {n} is not a version"))
            }),
        Some(Value::String(s)) if s == "any" => Ok(ExpectedVersion::Any),
        Some(Value::String(s)) if s == "no_stream" => Ok(ExpectedVersion::NoStream),
        Some(other) => Err(ApiError::invalid_request(format!(
            "expected_version must be a number, \"no_stream\" or \"any\", not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expected_version_forms() {
        assert_eq!(parse_expected(None).ok(), Some(ExpectedVersion::Any));
        assert_eq!(
            parse_expected(Some(json!(3))).ok(),
            Some(ExpectedVersion::Exact(3))
        );
        assert_eq!(
            parse_expected(Some(json!(0))).ok(),
            Some(ExpectedVersion::NoStream)
        );
        assert_eq!(
            parse_expected(Some(json!("no_stream"))).ok(),
            Some(ExpectedVersion::NoStream)
        );
        assert_eq!(
            parse_expected(Some(json!("any"))).ok(),
            Some(ExpectedVersion::Any)
        );
        assert!(parse_expected(Some(json!(-1))).is_err());
        assert!(parse_expected(Some(json!("latest"))).is_err());
        assert!(parse_expected(Some(json!(1.5))).is_err());
    }
}
