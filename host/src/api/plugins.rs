//! Plugins: list and deploy.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::json::{format_time_us, read_body};
use super::{ApiError, AppState};
use crate::runtime::Plugin;

fn plugin_json(p: &Plugin) -> Value {
    json!({
        "name": &*p.name,
        "kind": p.kind.as_str(),
        "hash": p.hash,
        "size": p.size,
        "loaded_at": format_time_us(p.loaded_at.timestamp_micros()),
    })
}

/// `GET /plugins`
pub async fn list_plugins(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(Value::Array(
        app.registry.list().iter().map(|p| plugin_json(p)).collect(),
    ))
}

/// Largest component accepted by `PUT /plugins/{name}`: JavaScript and
/// Python components are 10–20 MB.
pub const PLUGIN_BYTES_MAX: usize = 64 * 1024 * 1024;

/// `PUT /plugins/{name}` (admin): deploy a new version.
pub async fn put_plugin(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let bytes = read_body(body, PLUGIN_BYTES_MAX).await?;
    let plugin = app
        .registry
        .deploy(&app.runtime, &name, bytes.to_vec())
        .await?;
    tracing::info!(plugin = %plugin.name, kind = plugin.kind.as_str(), hash = %plugin.hash, "plugin deployed over HTTP");
    Ok(Json(plugin_json(&plugin)))
}

/// Admin routes need `Authorization: Bearer $KILN_ADMIN_TOKEN`, compared in
/// constant time. With no token configured they are locked.
pub fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(expected) = app.admin_token.as_deref() else {
        return Err(unauthorized(
            "admin routes are locked: start kiln with --admin-token or KILN_ADMIN_TOKEN set, and send Authorization: Bearer <token>",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized("wrong bearer token"))
    }
}
