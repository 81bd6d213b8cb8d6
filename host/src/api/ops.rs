//! Operations: health, readiness, metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ErrorBody;
use super::responses::{BadRequest, StoreRoute};
use super::{ApiError, AppState};

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "The process is up",
    responses(BadRequest, (status = 200, description = "`{\"status\": \"ok\"}`", body = Object)),
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers and plugins are loaded (`compiling`
/// names the versions still compiling, which the others serve beside).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "The store answers and plugins are loaded",
    responses(
        StoreRoute,
        (status = 200, description = "`{\"status\": \"ready\", \"plugins\", \"compiling\": [names], \"head\"}`", body = Object),
        (status = 503, description = "`unavailable`: the store does not answer, or no plugin is loaded", body = ErrorBody),
    ),
)]
pub async fn readyz(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let store = &app.store;
    store.ping().await?;
    if app.registry.is_empty() {
        return Err(ApiError::unavailable("no plugin is loaded"));
    }
    let head = *store.subscribe_head().borrow();
    let compiling: Vec<String> = app
        .registry
        .compiling()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    Ok(Json(json!({
        "status": "ready",
        "plugins": app.registry.len(),
        "compiling": compiling,
        "head": head,
    })))
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(BadRequest, (status = 200, description = "The text exposition format 0.0.4", content_type = "text/plain", body = String)),
)]
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let head = *app.store.subscribe_head().borrow();
    let mut text = app.metrics.render(head, app.registry.len());
    crate::metrics::render_conflict_retries(&mut text, app.pipeline.conflict_retries());
    crate::metrics::render_projections(&mut text, &app.projections.statuses().await);
    crate::metrics::render_sagas(&mut text, &app.sagas.infos().await);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// Any route the API does not have.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
