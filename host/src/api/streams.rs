//! Streams and the global log: events, state, time travel.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::bounds::stored_int;
use super::error::ErrorBody;
use super::json::{EventJson, event_json};
use super::responses::StoreRoute;
use super::{ApiError, AppState};
use crate::command::pipeline::StateAt;
use crate::store::StreamQuery;

/// Most events one page returns.
pub const PAGE_EVENTS_MAX: u32 = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamEventsQuery {
    /// The first version to return (default 1; 0 counts as 1).
    #[serde(default, deserialize_with = "stored_int")]
    #[param(minimum = 0, maximum = 9223372036854775807i64)]
    from_version: Option<u64>,
    /// Most events to return (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// The state after this version (not with `at_time`).
    #[serde(default, deserialize_with = "stored_int")]
    #[param(minimum = 1, maximum = 9223372036854775807i64)]
    at_version: Option<u64>,
    /// The state as it was at this RFC 3339 time (not with `at_version`).
    #[param(format = DateTime, example = "2026-11-22T10:00:00Z")]
    at_time: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GlobalEventsQuery {
    /// The first position to return (default 1; 0 counts as 1).
    #[serde(default, deserialize_with = "stored_int")]
    #[param(minimum = 0, maximum = 9223372036854775807i64)]
    from_position: Option<u64>,
    /// Most events to return (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only events of these types, comma-separated (e.g. `Deposited,Withdrawn`).
    types: Option<String>,
}

/// A page of a stream's events.
#[derive(Serialize, ToSchema)]
pub struct StreamEventsPage<'a> {
    events: Vec<EventJson<'a>>,
    /// The `from_version` of the next page.
    next_version: u64,
}

/// A page of the global log.
#[derive(Serialize, ToSchema)]
pub struct GlobalEventsPage<'a> {
    events: Vec<EventJson<'a>>,
    /// The `from_position` of the next page (past the head when a `types`
    /// filter found nothing).
    next_position: u64,
}

/// A stream's state.
#[derive(Serialize, ToSchema)]
pub struct StateJson {
    stream_id: String,
    /// The version the state is at (0: no events).
    version: u64,
    /// The aggregate's state: its JSON, or `{"hex": …}` for bytes that are
    /// not JSON, or null for none.
    #[schema(value_type = Value)]
    state: Value,
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
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/events",
    tag = "streams",
    summary = "Read a stream's events, in version order",
    params(("stream_id" = String, Path, description = "e.g. `bank_account-42`"), StreamEventsQuery),
    responses(
        StoreRoute,
        (status = 200, description = "A page of events", body = StreamEventsPage),
        (status = 404, description = "`not_found`: the stream has no events", body = ErrorBody),
    ),
)]
pub async fn stream_events(
    State(app): State<Arc<AppState>>,
    Path(stream_id): Path<String>,
    q: Result<Query<StreamEventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
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
    Ok(Json(StreamEventsPage {
        events: events.iter().map(event_json).collect(),
        next_version,
    })
    .into_response())
}

/// `GET /streams/{stream_id}/state[?at_version=N|at_time=RFC3339]`
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/state",
    tag = "streams",
    summary = "A stream's state, now or as it was at a version or a time",
    params(("stream_id" = String, Path, description = "e.g. `bank_account-42`"), StateQuery),
    responses(
        StoreRoute,
        (status = 200, description = "The state (replayed through the aggregate plugin)", body = StateJson,
            headers(("ETag" = String, description = "The version, quoted: `\"4\"`"))),
        (status = 400, description = "`invalid_request`: both `at_version` and `at_time`, `at_version` 0 or over 2^63-1, a time that is not RFC 3339, or another bad query parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: no aggregate plugin for the stream, or the stream has no such version", body = ErrorBody),
        (status = 500, description = "`plugin_trap` or `internal`", body = ErrorBody),
        (status = 503, description = "`plugin_timeout` or `unavailable`", body = ErrorBody),
    ),
)]
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
    let mut response = Json(StateJson {
        stream_id: state.stream_id,
        version: state.version,
        state: value,
    })
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
#[utoipa::path(
    get,
    path = "/events",
    tag = "streams",
    summary = "Read the global log, in position order",
    params(GlobalEventsQuery),
    responses(
        StoreRoute,
        (status = 200, description = "A page of events", body = GlobalEventsPage),
    ),
)]
pub async fn global_events(
    State(app): State<Arc<AppState>>,
    q: Result<Query<GlobalEventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
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
    Ok(Json(GlobalEventsPage {
        events: events.iter().map(event_json).collect(),
        next_position,
    })
    .into_response())
}
