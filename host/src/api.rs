//! The HTTP API (see `API.md`): one router, one error type, one file per
//! resource.

pub mod cluster;
pub mod commands;
pub mod error;
pub mod json;
pub mod live;
pub mod openapi;
pub mod ops;
pub mod plugins;
pub mod projections;
pub mod sagas;
pub mod streams;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};

pub use error::ApiError;

use crate::command::Pipeline;
use crate::deploy::Deployer;
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::projection::Projections;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::store::EventStore;

/// What every handler shares.
pub struct AppState {
    /// The whole store; handlers use the role they need.
    pub store: Arc<dyn EventStore>,
    pub pipeline: Arc<Pipeline>,
    pub registry: Arc<Registry>,
    pub runtime: Runtime,
    pub projections: Arc<Projections>,
    pub sagas: Arc<crate::saga::Sagas>,
    pub deployer: Arc<Deployer>,
    pub metrics: Arc<Metrics>,
    /// The bearer token of admin routes; `None` locks them.
    pub admin_token: Option<String>,
    /// The live feeds' configuration and shutdown signal.
    pub live: live::LiveFeeds,
    /// This host's leases (which projections and sagas it runs).
    pub leases: Arc<Leases>,
}

/// The router, separate from serving it, so tests can call it directly.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/commands/{aggregate}/{id}", post(commands::post_command))
        .route("/streams/{stream_id}/events", get(streams::stream_events))
        .route("/streams/{stream_id}/state", get(streams::stream_state))
        .route("/events", get(streams::global_events))
        .route("/events/live", get(live::global_live))
        .route("/streams/{stream_id}/live", get(live::stream_live))
        .route("/plugins", get(plugins::list_plugins))
        .route("/plugins/{name}", put(plugins::put_plugin))
        .route("/plugins/{name}/history", get(plugins::history))
        .route("/plugins/{name}/rollback", post(plugins::rollback))
        .route("/projections", get(projections::list))
        .route("/projections/{name}", get(projections::status))
        .route("/projections/{name}/rows", get(projections::rows))
        .route("/projections/{name}/rows/{key}", get(projections::row))
        .route("/projections/{name}/rebuild", post(projections::rebuild))
        .route("/projections/{name}/resume", post(projections::resume))
        .route("/projections/{name}/skips", get(projections::skips))
        .route("/projections/{name}/diff", get(projections::diff))
        .route("/projections/{name}/promote", post(projections::promote))
        .route(
            "/projections/{name}/shadow",
            delete(projections::drop_shadow),
        )
        .route("/sagas", get(sagas::list))
        .route("/sagas/{name}", get(sagas::status))
        .route("/sagas/{name}/resume", post(sagas::resume))
        .route("/sagas/{name}/{instance}", get(sagas::instance))
        .route("/dead-letters", get(sagas::dead_letters))
        .route("/dead-letters/{id}/retry", post(sagas::retry_dead_letter))
        .route("/cluster", get(cluster::cluster))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(ops::not_found)
        // Bodies are read with our own limit so that the 413 has our shape.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}
