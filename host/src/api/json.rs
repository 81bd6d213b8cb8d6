//! JSON shapes shared by the handlers, and reading request bodies.

pub mod unique_keys;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::ApiError;
use crate::store::RecordedEvent;

/// An event as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Event)]
pub struct EventJson<'a> {
    /// Its place in the global log (from 1, no gaps).
    pub position: u64,
    pub stream_id: &'a str,
    /// Its place in its stream (from 1, no gaps).
    pub version: u64,
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// The version of the event type's shape.
    pub schema: u32,
    #[schema(value_type = Value)]
    pub data: &'a RawValue,
    /// The command's metadata with `correlation_id` and `causation_id`.
    #[schema(value_type = Object)]
    pub metadata: &'a RawValue,
    /// RFC 3339 in UTC with milliseconds.
    #[schema(example = "2026-11-22T10:00:00.123Z")]
    pub recorded_at: String,
}

/// Events as stored hold valid JSON text (checked before append); a row
/// edited behind the store's back is shown as `null` rather than failing.
fn raw(text: &str) -> &RawValue {
    serde_json::from_str::<&RawValue>(text).unwrap_or_else(|_| {
        serde_json::from_str::<&RawValue>("null").unwrap_or_else(|_| unreachable!("null is JSON"))
    })
}

pub fn event_json(e: &RecordedEvent) -> EventJson<'_> {
    EventJson {
        position: e.position,
        stream_id: &e.stream_id,
        version: e.version,
        event_type: &e.event_type,
        schema: e.schema,
        data: raw(&e.data),
        metadata: raw(&e.metadata),
        recorded_at: format_time_us(e.recorded_at_us),
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T10:00:00.123Z`.
pub fn format_time_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How to resume a failed projection or saga.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    /// Skip the event (or unit of work) it failed on instead of retrying it.
    #[serde(default)]
    pub skip: bool,
}

/// Read a request body of at most `limit` bytes that must be JSON.
pub async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be JSON with Content-Type: application/json (got {})",
                if content_type.is_empty() {
                    "none"
                } else {
                    content_type
                }
            ),
        ));
    }
    read_body(body, limit).await
}

/// Read a request body of at most `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::too_large(
            format!("the request body is over the limit of {limit} bytes"),
            limit,
        )
    })
}

/// A small optional JSON body: empty means `T::default()`.
pub async fn read_optional_json<T: serde::de::DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes).map_err(|e| ApiError::invalid_request(format!("bad body: {e}")))
}

/// A request body's JSON as `T`: what every body goes through. A key given
/// twice in one object, at any depth, is an error naming it
/// ([`unique_keys`]); a field `T` does not know is one too where `T` says
/// `#[serde(deny_unknown_fields)]`, as every body type does.
pub fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    unique_keys::from_slice(bytes)
}
