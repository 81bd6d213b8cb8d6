//! The cluster: this host's id and the leases that say which host runs each
//! projection and saga (see `docs/design.md`, "Leases").

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// `GET /cluster`
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "operations",
    summary = "This host's id and every lease: which host runs each projection and saga",
    responses(
        super::responses::StoreRoute,
        (status = 200, description = "`{\"host\", \"leases_enabled\", \"lease_ttl_ms\", \"leases\": [{\"name\", \"holder\", \"expires_at\", …}]}`", body = Object),
    ),
)]
pub async fn cluster(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let leases = app.leases.views().await?;
    Ok(Json(json!({
        "host": app.leases.holder(),
        "leases_enabled": app.leases.enabled(),
        "lease_ttl_ms": app.leases.ttl().as_millis() as u64,
        "leases": leases,
    })))
}
