//! Plugins: list and deploy.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::error::ErrorBody;
use super::json::{format_time_us, read_body, read_optional_json};
use super::responses::{AdminBodyRoute, AdminRoute, BadRequest, StoreRoute};
use super::streams::query;
use super::{ApiError, AppState};
use crate::deploy::{DeployError, SOURCE_UPLOAD};
use crate::registry::Compiling;
use crate::runtime::Plugin;
use crate::store::{DeployMode, Deployment};
use serde::Deserialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{IntoParams, ToSchema};

pub fn plugin_json(p: &Plugin) -> Value {
    json!({
        "name": &*p.name,
        "kind": p.kind.as_str(),
        "hash": p.hash,
        "size": p.size,
        "loaded_at": format_time_us(p.loaded_at.timestamp_micros()),
        "status": "ready",
    })
}

fn compiling_json(c: &Compiling) -> Value {
    json!({
        "hash": c.hash,
        "size": c.size,
        "since": format_time_us(c.since.timestamp_micros()),
    })
}

/// `GET /plugins`: the loaded plugins (`status` `ready`), and those whose
/// first version is still compiling (`status` `compiling`, `kind` null). A
/// loaded plugin with a new version compiling carries it under `compiling`
/// while the loaded version serves.
#[utoipa::path(
    get,
    path = "/plugins",
    tag = "plugins",
    summary = "The loaded plugins, and versions still compiling",
    responses(
        BadRequest,
        (status = 200, description = "By name: `[{\"name\", \"kind\", \"hash\", \"size\", \"loaded_at\", \"status\": \"ready|compiling\", \"compiling\"?: {\"hash\", \"size\", \"since\"}}]`", body = [Object]),
    ),
)]
pub async fn list_plugins(State(app): State<Arc<AppState>>) -> Json<Value> {
    let mut compiling: std::collections::HashMap<String, Compiling> =
        app.registry.compiling().into_iter().collect();
    let mut entries: Vec<(String, Value)> = app
        .registry
        .list()
        .iter()
        .map(|p| {
            let mut entry = plugin_json(p);
            if let Some(c) = compiling.remove(&*p.name).filter(|c| c.hash != p.hash) {
                entry["compiling"] = compiling_json(&c);
            }
            (p.name.to_string(), entry)
        })
        .collect();
    for (name, c) in compiling {
        entries.push((
            name.clone(),
            json!({
                "name": name,
                "kind": null,
                "hash": c.hash,
                "size": c.size,
                "loaded_at": null,
                "status": "compiling",
                "compiling": compiling_json(&c),
            }),
        ));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Json(Value::Array(entries.into_iter().map(|(_, v)| v).collect()))
}

/// Largest component accepted by `PUT /plugins/{name}`: JavaScript and
/// Python components are 10–20 MB.
pub const PLUGIN_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// `live` (default): serve the new version now (a projection rebuilds
    /// into a new generation); `shadow`: a projection builds a shadow
    /// generation beside the serving one (see `/projections/{name}/diff`).
    #[param(pattern = "^(live|shadow)$")]
    mode: Option<String>,
}

/// The body of `PUT /plugins/{name}`, as the document describes it: bytes.
pub struct ComponentBytes;

impl utoipa::PartialSchema for ComponentBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for ComponentBytes {}

/// `PUT /plugins/{name}?mode=live|shadow` (admin): deploy a new version.
#[utoipa::path(
    put,
    path = "/plugins/{name}",
    tag = "plugins",
    summary = "Deploy a plugin version (admin)",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9_]*$", max_length = 64, description = "The plugin's name: a lowercase letter, then lowercase letters, digits and `_`; at most 64"), DeployQuery),
    request_body(content = inline(ComponentBytes), content_type = "application/wasm", description = "The component's bytes, at most 64 MiB"),
    responses(
        AdminRoute,
        (status = 200, description = "Deployed: the plugin's entry as in `GET /plugins`", body = Object),
        (status = 400, description = "`invalid_request`: not a component, a bad name or mode", body = ErrorBody),
        (status = 409, description = "`conflict`: the projection runs on another host", body = ErrorBody),
        (status = 413, description = "`too_large`: over 64 MiB (`details.limit`)", body = ErrorBody),
        (status = 422, description = "`invalid_plugin`: the component fits no world, its kind differs from the plugin it replaces, or a shadow that is not a projection", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn put_plugin(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    q: Result<Query<DeployQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let mode = match query(q)?.mode.as_deref() {
        None | Some("live") => DeployMode::Live,
        Some("shadow") => DeployMode::Shadow,
        Some(other) => {
            return Err(ApiError::invalid_request(format!(
                "mode must be live or shadow, not {other:?}"
            )));
        }
    };
    let bytes = read_body(body, PLUGIN_BYTES_MAX).await?;
    let plugin = app
        .deployer
        .deploy(&name, bytes.to_vec(), mode, SOURCE_UPLOAD)
        .await?;
    Ok(Json(plugin_json(&plugin)))
}

/// `DELETE /plugins/{name}` (admin): undeploy.
#[utoipa::path(
    delete,
    path = "/plugins/{name}",
    tag = "plugins",
    summary = "Undeploy a plugin (admin)",
    description = "An aggregate takes no more commands and its state is not served (`404` saying it was removed); its events stay and stream reads serve them. A projection stops at once and its reads answer `404` saying it was removed; its generations are kept for the undeploy grace (`--undeploy-grace-secs`), then its rows are dropped. A saga stops dispatching; its instances and outbox are kept. `GET /plugins` no longer lists it and its history records the removal. Deploying the name again brings it back: a saga resumes its outbox, a projection resumes from its checkpoints within the grace and builds from the start after it. The plugin directory does not bring a removed plugin back, at a restart or when its file changes.",
    params(("name" = String, Path)),
    responses(
        AdminRoute,
        (status = 200, description = "Removed: the history entry of the removal, `{\"id\", \"name\", \"kind\", \"hash\", \"size\", \"mode\": \"removed\", \"source\": \"undeploy\", \"deployed_at\"}` (the version that served until then)", body = Object),
        (status = 404, description = "`not_found`: no such plugin, or removed already", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn undeploy(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let removal = app.deployer.undeploy(&name).await?;
    Ok(Json(deployment_json(&removal)))
}

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "kind": d.kind,
        "hash": d.hash,
        "size": d.size,
        "mode": d.mode,
        "source": d.source,
        "deployed_at": format_time_us(d.deployed_at_us),
    })
}

/// `GET /plugins/{name}/history`: versions deployed, newest first.
#[utoipa::path(
    get,
    path = "/plugins/{name}/history",
    tag = "plugins",
    summary = "The versions deployed under a name, newest first",
    params(("name" = String, Path)),
    responses(
        StoreRoute,
        (status = 200, description = "`{\"name\", \"versions\": [{\"id\", \"name\", \"kind\", \"hash\", \"size\", \"mode\", \"source\", \"deployed_at\"}]}`", body = Object),
        (status = 404, description = "`not_found`: no plugin of that name was ever deployed", body = ErrorBody),
    ),
)]
pub async fn history(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let history = app.deployer.history(&name).await?;
    Ok(Json(json!({
        "name": name,
        "versions": history.iter().map(deployment_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The version to deploy again; by default the newest one that differs
    /// from the current one.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    hash: Option<String>,
}

/// `POST /plugins/{name}/rollback` (admin) `{"hash": "sha256:…"}` (optional).
#[utoipa::path(
    post,
    path = "/plugins/{name}/rollback",
    tag = "plugins",
    summary = "Deploy an earlier version again (admin)",
    params(("name" = String, Path)),
    request_body(content = Option<RollbackBody>, content_type = "application/json", description = "Optional (an empty body is `{}`); at most 4096 bytes"),
    responses(
        AdminBodyRoute,
        (status = 200, description = "Deployed: the plugin's entry as in `GET /plugins`", body = Object),
        (status = 404, description = "`not_found`: no such plugin, no such version or no earlier version", body = ErrorBody),
        (status = 409, description = "`conflict`: the projection runs on another host", body = ErrorBody),
    ),
    security(("admin" = [])),
)]
pub async fn rollback(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let body: RollbackBody = read_optional_json(body, 4096).await?;
    let plugin = app.deployer.rollback(&name, body.hash.as_deref()).await?;
    Ok(Json(plugin_json(&plugin)))
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Registry(e) => e.into(),
            DeployError::NotFound(m) => ApiError::not_found(m),
            removed @ DeployError::Removed(_) => ApiError::not_found(removed.to_string()),
            DeployError::Store(e) => e.into(),
            DeployError::Projection(e) => e.into(),
        }
    }
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
