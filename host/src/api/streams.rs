//! Streams and the global log: events, state, time travel.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::event_json;
use super::{ApiError, AppState};
use crate::command::pipeline::StateAt;
use crate::store::StreamQuery;

/// Most events one page returns.
pub const PAGE_EVENTS_MAX: u32 = 1000;

#[derive(Deserialize)]
pub struct StreamEventsQuery {
    from_version: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
pub struct StateQuery {
    at_version: Option<u64>,
    at_time: Option<String>,
}

#[derive(Deserialize)]
pub struct GlobalEventsQuery {
    from_position: Option<u64>,
    limit: Option<u32>,
    types: Option<String>,
}

pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_request(format!("bad query parameter: {}", e.body_text())))
}

fn page_limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match limit.unwrap_or(default) {
        0 => Err(ApiError::invalid_request("limit must be at least 1")),
        n if n > PAGE_EVENTS_MAX => Err(ApiError::invalid_request(format!(
            "limit must be at most {PAGE_EVENTS_MAX}"
        ))),
        n => Ok(n),
    }
}

/// `GET /streams/{stream_id}/events?from_version=1&limit=100`
pub async fn stream_events(
    State(app): State<Arc<AppState>>,
    Path(stream_id): Path<String>,
    q: Result<Query<StreamEventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let from_version = q.from_version.unwrap_or(1).max(1);
    let limit = page_limit(q.limit, 100)?;
    let store = &app.store;
    let events = store
        .read_stream(StreamQuery {
            stream_id: &stream_id,
            from_version,
            to_version: None,
            recorded_until_us: None,
            limit,
        })
        .await?;
    if events.is_empty() && store.stream_version(&stream_id).await? == 0 {
        return Err(ApiError::not_found(format!(
            "stream {stream_id} has no events"
        )));
    }
    let next_version = events.last().map_or(from_version, |e| e.version + 1);
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "next_version": next_version,
    })))
}

/// `GET /streams/{stream_id}/state[?at_version=N|at_time=RFC3339]`
pub async fn stream_state(
    State(app): State<Arc<AppState>>,
    Path(stream_id): Path<String>,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let at = match (q.at_version, q.at_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(
                "give at_version or at_time, not both",
            ));
        }
        (Some(0), None) => return Err(ApiError::invalid_request("at_version starts at 1")),
        (Some(v), None) => StateAt::Version(v),
        (None, Some(t)) => {
            let t = chrono::DateTime::parse_from_rfc3339(&t).map_err(|e| {
                ApiError::invalid_request(format!("at_time {t:?} is not an RFC 3339 time: {e}"))
            })?;
            StateAt::Time(t.timestamp_micros())
        }
        (None, None) => StateAt::Latest,
    };
    let state = app.pipeline.state(&stream_id, at).await?;
    let value = state_json(&state.state);
    let mut response = Json(json!({
        "stream_id": state.stream_id,
        "version": state.version,
        "state": value,
    }))
    .into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", state.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// State is the plugin's bytes; JSON by convention. Bytes that are not JSON
/// are shown as a hex string rather than hidden.
fn state_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!({ "hex": hex::encode(bytes) }))
}

/// `GET /events?from_position=1&limit=1000&types=A,B`
pub async fn global_events(
    State(app): State<Arc<AppState>>,
    q: Result<Query<GlobalEventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let from_position = q.from_position.unwrap_or(1).max(1);
    let limit = page_limit(q.limit, PAGE_EVENTS_MAX)?;
    let types: Option<Vec<String>> = q.types.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    let store = &app.store;
    let events = store
        .read_all(from_position, limit, types.as_deref())
        .await?;
    let next_position = match events.last() {
        Some(e) => e.position + 1,
        // Filtered reads may find nothing in a long stretch: continue after
        // the head, so a poller does not scan it again.
        None if types.is_some() => (*store.subscribe_head().borrow() + 1).max(from_position),
        None => from_position,
    };
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "next_position": next_position,
    })))
}
