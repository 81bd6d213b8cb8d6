//! Sagas: status, instances (state, pending commands, history), the
//! dead-letter list and the operator's controls (retry, resume).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::bounds::stored_int;
use super::error::ErrorBody;
use super::json::{ResumeBody, read_optional_json};
use super::plugins::authorize;
use super::responses::{AdminBodyRoute, AdminRoute, BadRequest, StoreRoute};
use super::streams::query;
use super::{ApiError, AppState};
use crate::saga::{InstanceDetail, SagaError};
use crate::store::{DeadLetter, OutboxCommand, SagaHistoryEntry, SagaStatus};
use crate::time::rfc3339;

/// Dead letters per page when not asked otherwise, and at most.
pub const DEAD_LETTERS_PAGE_DEFAULT: u32 = 100;
pub const DEAD_LETTERS_PAGE_MAX: u32 = 1_000;

impl From<SagaError> for ApiError {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::NotFound(message) => ApiError::not_found(message),
            SagaError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            SagaError::Store(e) => e.into(),
        }
    }
}

/// `GET /sagas`
#[utoipa::path(
    get,
    path = "/sagas",
    tag = "sagas",
    summary = "Every saga: checkpoint, lag, instances per status, outbox depth, dead letters",
    responses(BadRequest, (status = 200, description = "A list of statuses, as `GET /sagas/{name}`", body = [Object])),
)]
pub async fn list(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(json!(app.sagas.infos().await))
}

/// `GET /sagas/{name}`
#[utoipa::path(
    get,
    path = "/sagas/{name}",
    tag = "sagas",
    summary = "One saga's status; `state` is `failed` (with `error`) when its plugin failed",
    params(("name" = String, Path)),
    responses(
        StoreRoute,
        (status = 200, description = "The status", body = Object),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn status(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(app.sagas.info(&name).await?)))
}

/// One instance, as `GET /sagas/{name}/{instance}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub saga: String,
    pub instance: String,
    /// The plugin's state, as JSON when it is JSON, else as a string.
    pub state: Value,
    pub status: SagaStatus,
    pub done: bool,
    /// Commands decided and not applied yet, in dispatch order.
    pub pending: Vec<Value>,
    /// Steps and their outcomes, oldest first.
    pub history: Vec<Value>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<InstanceDetail> for InstanceView {
    fn from(detail: InstanceDetail) -> Self {
        let record = detail.record;
        Self {
            state: serde_json::from_slice(&record.state).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&record.state).into_owned())
            }),
            saga: record.saga,
            instance: record.instance,
            status: record.status,
            done: record.done,
            pending: detail.pending.iter().map(command_json).collect(),
            history: detail.history.into_iter().map(history_json).collect(),
            created_at: rfc3339(record.created_at_us),
            updated_at: rfc3339(record.updated_at_us),
        }
    }
}

/// An outbox command as the API shows it.
fn command_json(c: &OutboxCommand) -> Value {
    json!({
        "step": c.step,
        "aggregate": c.aggregate,
        "id": c.aggregate_id,
        "type": c.command_type,
        "data": serde_json::from_str::<Value>(&c.data).unwrap_or(Value::Null),
        "metadata": serde_json::from_str::<Value>(&c.metadata).unwrap_or(Value::Null),
        "compensating": c.compensating,
        "attempts": c.attempts,
        "errors": c.errors,
    })
}

/// A history entry as the API shows it: the stored entry and its time.
fn history_json(h: SagaHistoryEntry) -> Value {
    let mut entry = h.entry;
    if let Some(map) = entry.as_object_mut() {
        map.insert("at".into(), rfc3339(h.at_us).into());
    }
    entry
}

/// `GET /sagas/{name}/{instance}`
#[utoipa::path(
    get,
    path = "/sagas/{name}/{instance}",
    tag = "sagas",
    summary = "A saga instance: state, status, pending commands, history of steps with their outcomes",
    description = "`{\"state\": {…}, \"status\": \"running|completed|compensating|failed\", \"pending\": [...], \"history\": [...], …}`",
    params(("name" = String, Path), ("instance" = String, Path)),
    responses(
        StoreRoute,
        (status = 200, description = "The instance", body = Object),
        (status = 404, description = "`not_found`: no such saga or instance", body = ErrorBody),
    ),
)]
pub async fn instance(
    State(app): State<Arc<AppState>>,
    Path((name, instance)): Path<(String, String)>,
) -> Result<Json<InstanceView>, ApiError> {
    Ok(Json(app.sagas.instance(&name, &instance).await?.into()))
}

/// `POST /sagas/{name}/resume` (admin): retry, or skip, the unit of work
/// the saga's plugin failed on.
#[utoipa::path(
    post,
    path = "/sagas/{name}/resume",
    tag = "sagas",
    summary = "Retry the unit of work a saga's plugin failed on, or skip it (admin)",
    params(("name" = String, Path)),
    request_body(content = Option<ResumeBody>, content_type = "application/json", description = "Optional (an empty body is `{\"skip\": false}`); at most 4096 bytes"),
    responses(
        AdminBodyRoute,
        (status = 200, description = "`{\"name\", \"resumed\", \"skip\"}`", body = Object),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: it has not failed", body = ErrorBody),
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
    let resumed = app.sagas.resume(&name, body.skip).await?;
    Ok(Json(
        json!({ "name": name, "resumed": resumed, "skip": body.skip }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersQuery {
    /// Only dead letters after this id (the previous page's `next`).
    #[serde(default, deserialize_with = "stored_int")]
    #[param(minimum = 0, maximum = 9223372036854775807i64)]
    after: Option<u64>,
    /// Most dead letters to return (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    let mut command = command_json(&d.command);
    if let Some(map) = command.as_object_mut() {
        map.insert("id".into(), d.id.into());
        map.insert("saga".into(), d.command.saga.clone().into());
        map.insert("instance".into(), d.command.instance.clone().into());
        map.insert(
            "command".into(),
            json!({
                "aggregate": d.command.aggregate,
                "id": d.command.aggregate_id,
                "type": d.command.command_type,
                "data": serde_json::from_str::<Value>(&d.command.data).unwrap_or(Value::Null),
            }),
        );
        map.remove("aggregate");
        map.remove("type");
        map.remove("data");
        map.insert("dead_at".into(), rfc3339(d.dead_at_us).into());
    }
    command
}

/// `GET /dead-letters?after=ID&limit=N`: commands that exhausted their
/// attempts, oldest first, each with its errors.
#[utoipa::path(
    get,
    path = "/dead-letters",
    tag = "sagas",
    summary = "Saga commands that exhausted their attempts, oldest first, with their errors",
    params(DeadLettersQuery),
    responses(
        StoreRoute,
        (status = 200, description = "`{\"dead_letters\": [{\"id\", \"saga\", \"instance\", \"command\": {\"aggregate\", \"id\", \"type\", \"data\"}, \"errors\", \"dead_at\", …}], \"next\": id|null}`", body = Object),
    ),
)]
pub async fn dead_letters(
    State(app): State<Arc<AppState>>,
    q: Result<Query<DeadLettersQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEAD_LETTERS_PAGE_DEFAULT);
    if limit == 0 || limit > DEAD_LETTERS_PAGE_MAX {
        return Err(ApiError::invalid_request(format!(
            "limit must be 1 to {DEAD_LETTERS_PAGE_MAX}"
        )));
    }
    let letters = app.sagas.dead_letters(q.after.unwrap_or(0), limit).await?;
    let next = (letters.len() == limit as usize)
        .then(|| letters.last().map(|d| d.id))
        .flatten();
    Ok(Json(json!({
        "dead_letters": letters.iter().map(dead_letter_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// `POST /dead-letters/{id}/retry` (admin): back into its instance's
/// outbox with its attempts reset.
#[utoipa::path(
    post,
    path = "/dead-letters/{id}/retry",
    tag = "sagas",
    summary = "Put a dead letter back in its instance's outbox, attempts reset (admin)",
    params(("id" = u64, Path, maximum = 9223372036854775807i64, description = "The dead letter's id")),
    responses(
        AdminRoute,
        (status = 202, description = "`{\"retried\": <the dead letter>}`", body = Object),
        (status = 400, description = "`invalid_request`: the id is not a non-negative integer (e.g. `-3027`)", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn retry_dead_letter(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&app, &headers)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::invalid_request(format!("dead letter id {id:?} is not a number")))?;
    let letter = app.sagas.retry_dead_letter(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "retried": dead_letter_json(&letter) })),
    ))
}
