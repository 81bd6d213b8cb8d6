//! Projections: status, rows (with read-your-writes), and the operator's
//! controls (rebuild, resume, shadow diff, promote, drop).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::bounds::stored_int;
use super::error::ErrorBody;
use super::json::{ResumeBody, read_optional_json};
use super::plugins::{authorize, plugin_json};
use super::responses::{AdminBodyRoute, AdminRoute, BadRequest, StoreRoute};
use super::streams::query;
use super::{ApiError, AppState};
use crate::projection::diff::{diff_views, value_json};
use crate::projection::{Entry, Poison, ProjectionError, ResumeOutcome, Serving, Waited};
use crate::store::{Position, ViewId};

/// Default wait of a read with `min_position`, in ms.
pub const MIN_POSITION_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Longest wait a reader may ask for, in ms.
pub const MIN_POSITION_TIMEOUT_MS_MAX: u64 = 60_000;
/// Rows per page when not asked otherwise, and at most.
pub const ROWS_PAGE_DEFAULT: u32 = 100;
pub const ROWS_PAGE_MAX: u32 = 1_000;
/// Keys named per kind of difference in a diff, by default and at most.
pub const DIFF_SAMPLE_DEFAULT: usize = 10;
pub const DIFF_SAMPLE_MAX: usize = 1_000;
/// How long a resume waits to hear whether the retried event passed, in ms.
pub const RESUME_WAIT_MS: u64 = 10_000;

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::NotFound(name) => {
                ApiError::not_found(format!("no projection named {name}"))
            }
            removed @ ProjectionError::Removed(_) => ApiError::not_found(removed.to_string()),
            ProjectionError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            ProjectionError::NoShadow(message) => ApiError::not_found(message),
            ProjectionError::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Read-your-writes: answer once the projection has processed this
    /// global position (e.g. a command's `position`).
    #[serde(default, deserialize_with = "stored_int")]
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9223372036854775807i64)]
    min_position: Option<Position>,
    /// How long to wait for `min_position`, in ms (default 5000).
    #[param(minimum = 0, maximum = 60000)]
    timeout_ms: Option<u64>,
    /// `active` (default): the generation that serves reads; `shadow`: the
    /// shadow (or building) generation, without `min_position`.
    #[param(pattern = "^(active|shadow)$")]
    generation: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RowsQuery {
    /// Only keys that start with this (default: all).
    prefix: Option<String>,
    /// Only keys after this one (the previous page's `next`).
    after: Option<String>,
    /// Most rows to return (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// As for one row: answer once this position is processed.
    #[serde(default, deserialize_with = "stored_int")]
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9223372036854775807i64)]
    min_position: Option<Position>,
    /// How long to wait for `min_position`, in ms (default 5000).
    #[param(minimum = 0, maximum = 60000)]
    timeout_ms: Option<u64>,
    /// As for one row: `active` (default) or `shadow`.
    #[param(pattern = "^(active|shadow)$")]
    generation: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// Keys named per kind of difference (default 10; more than 1000
    /// counts as 1000).
    #[param(minimum = 0, maximum = 18446744073709551615u64)]
    sample: Option<usize>,
}

fn entry(app: &AppState, name: &str) -> Result<Arc<Entry>, ApiError> {
    app.projections
        .get(name)
        .ok_or_else(|| app.projections.missing(name).into())
}

/// Read-your-writes: wait until the serving generation has processed
/// `min_position` (if asked), then name the generation to read. On a host
/// that does not run the projection, the stored checkpoint tells.
async fn serving_after(
    app: &AppState,
    entry: &Entry,
    min_position: Option<Position>,
    timeout_ms: Option<u64>,
) -> Result<Serving, ApiError> {
    let timeout_ms = timeout_ms.unwrap_or(MIN_POSITION_TIMEOUT_MS_DEFAULT);
    if timeout_ms > MIN_POSITION_TIMEOUT_MS_MAX {
        return Err(ApiError::invalid_request(format!(
            "timeout_ms must be at most {MIN_POSITION_TIMEOUT_MS_MAX}"
        )));
    }
    let position = min_position.unwrap_or_default();
    match app
        .projections
        .serving_after(entry, min_position, Duration::from_millis(timeout_ms))
        .await?
    {
        Waited::Reached(serving) => Ok(serving),
        Waited::TimedOut(reached) => Err(ApiError::unavailable(format!(
            "projection {} has processed position {} and not yet {position} after {timeout_ms} ms",
            entry.name, reached.position
        ))
        .with_details(json!({ "position": reached.position, "min_position": position }))),
        Waited::Failed(reached, poison) => {
            let message = format!(
                "projection {name} has failed {}; it has processed position {} and will not reach {position} until an operator resumes it (POST /projections/{name}/resume)",
                failure_text(&poison),
                reached.position,
                name = entry.name,
            );
            Err(
                projection_failed(message, reached.generation, reached.position, &poison)
                    .with_min_position(position),
            )
        }
    }
}

/// The poison event and the plugin's message, for people.
fn failure_text(poison: &Poison) -> String {
    if poison.position == 0 {
        return format!("before any event: {}", poison.message);
    }
    format!(
        "at position {} ({} on stream {}): {}",
        poison.position, poison.event_type, poison.stream_id, poison.message
    )
}

/// `503 projection_failed`: the generation stopped on a poison event and
/// goes no further until an operator resumes it.
fn projection_failed(
    message: String,
    generation: u64,
    position: Position,
    poison: &Poison,
) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "projection_failed",
        message,
    )
    .with_details(json!({
        "state": "failed",
        "generation": generation,
        "position": position,
        "error": {
            "message": poison.message,
            "position": poison.position,
            "stream_id": poison.stream_id,
            "event_type": poison.event_type,
        },
    }))
}

impl ApiError {
    /// Add `details.min_position` (a read that waited for it).
    fn with_min_position(mut self, min_position: Position) -> Self {
        if let Some(Value::Object(details)) = &mut self.details {
            details.insert("min_position".into(), json!(min_position));
        }
        self
    }
}

/// Which generation a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadGeneration {
    Active,
    Shadow,
}

fn read_generation(value: Option<&str>) -> Result<ReadGeneration, ApiError> {
    match value {
        None | Some("active") => Ok(ReadGeneration::Active),
        Some("shadow") => Ok(ReadGeneration::Shadow),
        Some(other) => Err(ApiError::invalid_request(format!(
            "generation must be active or shadow, not {other:?}"
        ))),
    }
}

/// The generation a row read uses: the serving one once it has processed
/// `min_position`, or the shadow (which is not waited on).
async fn view_to_read(
    app: &AppState,
    name: &str,
    generation: Option<&str>,
    min_position: Option<Position>,
    timeout_ms: Option<u64>,
) -> Result<Serving, ApiError> {
    match read_generation(generation)? {
        ReadGeneration::Active => {
            let entry = entry(app, name)?;
            serving_after(app, &entry, min_position, timeout_ms).await
        }
        ReadGeneration::Shadow => {
            if min_position.is_some() {
                return Err(ApiError::invalid_request(
                    "min_position waits for the active generation; it cannot be used with generation=shadow",
                ));
            }
            Ok(app.projections.shadow_view(name).await?)
        }
    }
}

/// `GET /projections`
#[utoipa::path(
    get,
    path = "/projections",
    tag = "projections",
    summary = "Every projection's status",
    responses(BadRequest, (status = 200, description = "A list of statuses, as `GET /projections/{name}`", body = [Object])),
)]
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(json!(app.projections.statuses().await))
}

/// `GET /projections/{name}`
#[utoipa::path(
    get,
    path = "/projections/{name}",
    tag = "projections",
    summary = "A projection's status",
    description = "`{\"name\", \"plugin\", \"generation\", \"state\": \"running|rebuilding|paused|failed\", \"position\", \"head\", \"lag\", \"error\", \"rebuild\": null|{\"generation\", \"position\", \"head\", \"progress\"}, …}`",
    params(("name" = String, Path)),
    responses(
        StoreRoute,
        (status = 200, description = "The status", body = Object),
        (status = 404, description = "`not_found`: no projection of that name", body = ErrorBody),
    ),
)]
pub async fn status(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(app.projections.status(&name).await?)))
}

/// `GET /projections/{name}/rows/{key}`: served from the store, no wasm.
#[utoipa::path(
    get,
    path = "/projections/{name}/rows/{key}",
    tag = "projections",
    summary = "One row's value, as the projection stored it",
    params(("name" = String, Path), ("key" = String, Path), WaitQuery),
    responses(
        StoreRoute,
        (status = 200, description = "The row's JSON value (a value that is not JSON comes as a string)", body = Value,
            headers(("Kiln-Position" = u64, description = "The position the serving generation had processed"))),
        (status = 400, description = "`invalid_request`: a bad query parameter, `timeout_ms` over 60000, `min_position` with `generation=shadow`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such projection or row, or no shadow generation with `generation=shadow`", body = ErrorBody),
        (status = 503, description = "`unavailable`: `min_position` not reached in time (`details.position`, `details.min_position`), or the store; `projection_failed`: the serving generation stopped on a poison event before `min_position` (`details.state`, `details.generation`, `details.position`, `details.min_position`, `details.error`)", body = ErrorBody),
    ),
)]
pub async fn row(
    State(app): State<Arc<AppState>>,
    Path((name, key)): Path<(String, String)>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let serving = view_to_read(
        &app,
        &name,
        q.generation.as_deref(),
        q.min_position,
        q.timeout_ms,
    )
    .await?;
    let view = ViewId {
        projection: &name,
        generation: serving.generation,
    };
    let value = app
        .store
        .view_get(view, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("projection {name} has no row {key:?}")))?;
    let position = serving.position.to_string();
    if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_ok() {
        // Already JSON: send the bytes as they are.
        return Ok((
            [
                (header::CONTENT_TYPE, "application/json"),
                (
                    header::HeaderName::from_static("kiln-position"),
                    position.as_str(),
                ),
            ],
            value,
        )
            .into_response());
    }
    Ok((
        [(
            header::HeaderName::from_static("kiln-position"),
            position.as_str(),
        )],
        Json(value_json(&value)),
    )
        .into_response())
}

/// `GET /projections/{name}/rows?prefix=&after=&limit=`
#[utoipa::path(
    get,
    path = "/projections/{name}/rows",
    tag = "projections",
    summary = "Rows by key prefix, in key order, paged",
    params(("name" = String, Path), RowsQuery),
    responses(
        StoreRoute,
        (status = 200, description = "`{\"rows\": [{\"key\", \"value\"}], \"next\": key|null, \"position\"}`; `next` is the `after` of the next page", body = Object),
        (status = 400, description = "`invalid_request`: a bad query parameter, `min_position` with `generation=shadow`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such projection, or no shadow generation with `generation=shadow`", body = ErrorBody),
        (status = 503, description = "`unavailable`: `min_position` not reached in time, or the store; `projection_failed`: the serving generation stopped on a poison event before `min_position`, as for one row", body = ErrorBody),
    ),
)]
pub async fn rows(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Result<Query<RowsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = match q.limit.unwrap_or(ROWS_PAGE_DEFAULT) {
        0 => return Err(ApiError::invalid_request("limit must be at least 1")),
        n if n > ROWS_PAGE_MAX => {
            return Err(ApiError::invalid_request(format!(
                "limit must be at most {ROWS_PAGE_MAX}"
            )));
        }
        n => n,
    };
    let serving = view_to_read(
        &app,
        &name,
        q.generation.as_deref(),
        q.min_position,
        q.timeout_ms,
    )
    .await?;
    let view = ViewId {
        projection: &name,
        generation: serving.generation,
    };
    let prefix = q.prefix.unwrap_or_default();
    let found = app
        .store
        .view_scan(view, &prefix, q.after.as_deref(), limit)
        .await?;
    let next = (found.len() == limit as usize)
        .then(|| found.last().map(|(k, _)| k.clone()))
        .flatten();
    let rows: Vec<Value> = found
        .iter()
        .map(|(key, value)| json!({ "key": key, "value": value_json(value) }))
        .collect();
    Ok(Json(
        json!({ "rows": rows, "next": next, "position": serving.position }),
    ))
}

/// `POST /projections/{name}/rebuild` (admin)
#[utoipa::path(
    post,
    path = "/projections/{name}/rebuild",
    tag = "projections",
    summary = "Rebuild into a new generation (admin); reads stay on the old one until it catches up",
    params(("name" = String, Path)),
    responses(
        AdminRoute,
        (status = 202, description = "`{\"name\", \"generation\", \"state\": \"rebuilding\"}`", body = Object),
        (status = 404, description = "`not_found`: no projection of that name", body = ErrorBody),
        (status = 409, description = "`conflict`: a rebuild is already under way, or the projection runs on another host", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn rebuild(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&app, &headers)?;
    let generation = app.projections.rebuild(&name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "name": name, "generation": generation, "state": "rebuilding" })),
    ))
}

/// `POST /projections/{name}/resume` (admin) `{"skip": false}`
#[utoipa::path(
    post,
    path = "/projections/{name}/resume",
    tag = "projections",
    summary = "Retry a failed projection, or skip its poison event (admin)",
    params(("name" = String, Path)),
    request_body(content = Option<ResumeBody>, content_type = "application/json", description = "Optional (an empty body is `{\"skip\": false}`); at most 4096 bytes"),
    responses(
        AdminBodyRoute,
        (status = 200, description = "`{\"name\", \"resumed\", \"skip\", \"state\"}`: `state` is `running` once the event passed (or was skipped), `retrying` when the retry had not finished after 10 s", body = Object),
        (status = 404, description = "`not_found`: no projection of that name", body = ErrorBody),
        (status = 409, description = "`conflict`: it has not failed", body = ErrorBody),
        (status = 503, description = "`projection_failed`: the retry failed again on the same event (`details.state`, `details.generation`, `details.position`, `details.error`); `unavailable`: the store", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn resume(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let body: ResumeBody = read_optional_json(body, 4096).await?;
    let resumed = app
        .projections
        .resume(&name, body.skip, Duration::from_millis(RESUME_WAIT_MS))
        .await?;
    for r in &resumed {
        if let ResumeOutcome::FailedAgain(poison) = &r.outcome {
            let message = format!(
                "projection {name} failed again {}; it waits for another resume (with {{\"skip\": true}} to skip the event)",
                failure_text(poison)
            );
            return Err(projection_failed(message, r.generation, r.position, poison));
        }
    }
    let pending = resumed.iter().any(|r| r.outcome == ResumeOutcome::Pending);
    Ok(Json(json!({
        "name": name,
        "resumed": resumed.len(),
        "skip": body.skip,
        "state": if pending { "retrying" } else { "running" },
    })))
}

/// `GET /projections/{name}/skips`: events skipped by operators.
#[utoipa::path(
    get,
    path = "/projections/{name}/skips",
    tag = "projections",
    summary = "Events operators skipped",
    params(("name" = String, Path)),
    responses(
        StoreRoute,
        (status = 200, description = "`{\"skips\": [{\"generation\", \"position\", \"stream_id\", \"event_type\", \"reason\"}]}`", body = Object),
        (status = 404, description = "`not_found`: no projection of that name", body = ErrorBody),
    ),
)]
pub async fn skips(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    entry(&app, &name)?;
    let skips = app.store.skips(&name).await?;
    let list: Vec<Value> = skips
        .iter()
        .map(|(generation, s)| {
            json!({
                "generation": generation,
                "position": s.position,
                "stream_id": s.stream_id,
                "event_type": s.event_type,
                "reason": s.reason,
            })
        })
        .collect();
    Ok(Json(json!({ "skips": list })))
}

/// `GET /projections/{name}/diff`: the active generation against the
/// shadow (or building) one.
#[utoipa::path(
    get,
    path = "/projections/{name}/diff",
    tag = "projections",
    summary = "Compare the active generation with the shadow (or building) one",
    params(("name" = String, Path), DiffQuery),
    responses(
        StoreRoute,
        (status = 200, description = "`{\"name\", \"old\": {\"generation\", \"plugin\", \"position\"}, \"new\": {…}, \"comparable\", \"only_in_old\", \"only_in_new\", \"changed\", \"unchanged\"}`; each kind of difference is `{\"count\", \"sample\": [key], \"values\": [{\"key\", \"old\", \"new\"}]}`, the values of the sampled keys in each generation (`null` where absent)", body = Object),
        (status = 404, description = "`not_found`: no projection of that name", body = ErrorBody),
        (status = 409, description = "`conflict`: no second generation", body = ErrorBody),
    ),
)]
pub async fn diff(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let sample = q.sample.unwrap_or(DIFF_SAMPLE_DEFAULT).min(DIFF_SAMPLE_MAX);
    let (old, new) = app.projections.pair(&name).await?;
    let store = &app.store;
    let diff = diff_views(
        store.as_ref(),
        ViewId {
            projection: &name,
            generation: old.generation,
        },
        ViewId {
            projection: &name,
            generation: new.generation,
        },
        sample,
    )
    .await?;
    let (po, pn) = (old.progress().position, new.progress().position);
    Ok(Json(json!({
        "name": name,
        "old": { "generation": old.generation, "plugin": old.plugin.hash, "position": po },
        "new": { "generation": new.generation, "plugin": new.plugin.hash, "position": pn },
        // Both have processed the same events: the differences are the logic's.
        "comparable": po == pn,
        "only_in_old": diff.only_in_old,
        "only_in_new": diff.only_in_new,
        "changed": diff.changed,
        "unchanged": diff.unchanged,
    })))
}

/// `POST /projections/{name}/promote` (admin): cut over to the shadow.
#[utoipa::path(
    post,
    path = "/projections/{name}/promote",
    tag = "projections",
    summary = "Switch reads to the shadow generation once it has caught up (admin); recorded in the plugin's history",
    params(("name" = String, Path)),
    responses(
        AdminRoute,
        (status = 202, description = "`{\"name\", \"generation\"}`", body = Object),
        (status = 404, description = "`not_found`: no projection of that name", body = ErrorBody),
        (status = 409, description = "`conflict`: no shadow", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn promote(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&app, &headers)?;
    let generation = app.deployer.promote(&name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "name": name, "generation": generation })),
    ))
}

/// `DELETE /projections/{name}/shadow` (admin): drop the shadow.
#[utoipa::path(
    delete,
    path = "/projections/{name}/shadow",
    tag = "projections",
    summary = "Drop the shadow generation (admin)",
    params(("name" = String, Path)),
    responses(
        AdminRoute,
        (status = 200, description = "Dropped: the serving plugin's entry as in `GET /plugins`", body = Object),
        (status = 404, description = "`not_found`: no projection of that name", body = ErrorBody),
        (status = 409, description = "`conflict`: no shadow", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn drop_shadow(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let plugin = app.deployer.drop_shadow(&name).await?;
    Ok(Json(plugin_json(&plugin)))
}
