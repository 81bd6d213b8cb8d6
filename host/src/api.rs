//! The HTTP API (see `docs/api.md`): one router, one error type, one file
//! per resource. Each handler carries its own OpenAPI description
//! (`#[utoipa::path]`), and [`routes`] builds the router and
//! `/openapi.json` from the same list.

pub mod bounds;
pub mod cluster;
pub mod commands;
pub mod error;
pub mod json;
pub mod live;
pub mod openapi;
pub mod ops;
pub mod plain_errors;
pub mod plugins;
pub mod projections;
pub mod responses;
pub mod sagas;
pub mod streams;
pub mod undocumented;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// Every route of the API with its OpenAPI description: the router and the
/// document come from this one list, so neither has a route the other
/// lacks. A route goes in only through `routes!` (never `.route`), one
/// path per call.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(commands::post_command))
        .routes(routes!(streams::stream_events))
        .routes(routes!(streams::stream_state))
        .routes(routes!(streams::global_events))
        .routes(routes!(live::global_live))
        .routes(routes!(live::stream_live))
        .routes(routes!(plugins::list_plugins))
        .routes(routes!(plugins::put_plugin))
        .routes(routes!(plugins::undeploy))
        .routes(routes!(plugins::history))
        .routes(routes!(plugins::rollback))
        .routes(routes!(projections::list))
        .routes(routes!(projections::status))
        .routes(routes!(projections::rows))
        .routes(routes!(projections::row))
        .routes(routes!(projections::rebuild))
        .routes(routes!(projections::resume))
        .routes(routes!(projections::skips))
        .routes(routes!(projections::diff))
        .routes(routes!(projections::promote))
        .routes(routes!(projections::drop_shadow))
        .routes(routes!(sagas::list))
        .routes(routes!(sagas::status))
        .routes(routes!(sagas::resume))
        .routes(routes!(sagas::instance))
        .routes(routes!(sagas::dead_letters))
        .routes(routes!(sagas::retry_dead_letter))
        .routes(routes!(cluster::cluster))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi::openapi))
}

/// The router, separate from serving it, so tests can call it directly.
pub fn app(state: Arc<AppState>) -> Router {
    let (router, _) = routes().split_for_parts();
    let api = router
        // Every route refuses query parameters (and a body) its operation
        // does not list.
        .route_layer(middleware::from_fn(undocumented::refuse_undocumented))
        .fallback(ops::not_found)
        // Bodies are read with our own limit so that the 413 has our shape.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    // What axum answers by itself (405, extractor rejections) in our shape.
    // Around the whole router, so that it sees a 405 with its `Allow`
    // header, which the router adds last.
    Router::new()
        .fallback_service(api)
        .layer(middleware::from_fn(plain_errors::json_bodies))
}

#[cfg(test)]
mod tests;
