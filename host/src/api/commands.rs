//! `POST /commands/{aggregate}/{id}`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{EventJson, event_json, read_json_body};
use super::{ApiError, AppState};
use crate::command::{CommandOutcome, CommandRequest};
use crate::store::ExpectedVersion;

/// The request body.
#[derive(Deserialize)]
struct CommandBody {
    #[serde(rename = "type")]
    command_type: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    expected_version: Option<Value>,
}

#[derive(Serialize)]
struct CommandResponse<'a> {
    stream_id: &'a str,
    version: u64,
    position: u64,
    events: Vec<EventJson<'a>>,
}

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
    let body: CommandBody = serde_json::from_slice(&bytes)
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
