//! The bound on open connections. Up to `max` connections are served in
//! full; past it, up to `health` more are served `/healthz` and `/readyz`
//! only, so that a load balancer or an orchestrator still sees the host
//! alive while slow clients hold the rest (these have a short head timeout
//! and no keep-alive, so a slow client gives one back soon). Any further
//! connection is closed at once. Hitting the bound is logged, at most once
//! per [`BOUND_LOG_EVERY`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;

/// How often hitting the connection bound is logged, at most.
pub const BOUND_LOG_EVERY: Duration = Duration::from_secs(10);

/// The routes a connection beyond the bound may ask for.
pub const HEALTH_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// The connection slots: full ones and health-check ones.
pub struct Slots {
    max: usize,
    health_max: usize,
    full: Arc<Semaphore>,
    health: Arc<Semaphore>,
    /// Connections limited to health checks, and refused, since the last log line.
    limited: AtomicU64,
    refused: AtomicU64,
    log: Throttle,
}

/// The connections a host has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenConnections {
    /// Served in full (at most `--max-connections`).
    pub full: usize,
    /// Beyond the bound, served health checks only.
    pub health_only: usize,
}

/// What a new connection gets; its slot is given back when it is dropped.
pub enum Admission {
    Full(OwnedSemaphorePermit),
    HealthOnly(OwnedSemaphorePermit),
    Refused,
}

impl Slots {
    pub fn new(max: usize, health: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            health_max: health,
            full: Arc::new(Semaphore::new(max)),
            health: Arc::new(Semaphore::new(health)),
            limited: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            log: Throttle::default(),
        }
    }

    /// The connections open now.
    pub fn open(&self) -> OpenConnections {
        OpenConnections {
            full: self.max - self.full.available_permits(),
            health_only: self.health_max - self.health.available_permits(),
        }
    }

    /// A slot for a new connection.
    pub fn admit(&self) -> Admission {
        if let Ok(slot) = self.full.clone().try_acquire_owned() {
            return Admission::Full(slot);
        }
        let admission = match self.health.clone().try_acquire_owned() {
            Ok(slot) => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                Admission::HealthOnly(slot)
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Admission::Refused
            }
        };
        if self.log.due().is_some() {
            tracing::warn!(
                max_connections = self.max,
                health_only = self.limited.swap(0, Ordering::Relaxed),
                refused = self.refused.swap(0, Ordering::Relaxed),
                "connection limit reached: {} connections are open (--max-connections); \
                 new connections are served /healthz and /readyz only, or closed when \
                 the connections kept for health checks (--health-connections) are taken too",
                self.max
            );
        }
        admission
    }
}

/// A log line at most once per [`BOUND_LOG_EVERY`].
#[derive(Default)]
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl Throttle {
    /// `Some(times skipped since the last line)` when a line is due.
    pub fn due(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < BOUND_LOG_EVERY) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// `app` answering only the health routes; anything else is `503` and the
/// connection closed.
pub fn health_only(app: Router, max: usize) -> Router {
    app.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            if HEALTH_ROUTES.contains(&request.uri().path()) {
                return next.run(request).await;
            }
            busy(max)
        },
    ))
}

fn busy(max: usize) -> Response {
    let mut response = ApiError::unavailable(format!(
        "the server has {max} connections open, its limit; only /healthz and /readyz are served on new connections until some close; retry later"
    ))
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_connections_get_health_checks_then_nothing() {
        let slots = Slots::new(2, 1);
        let a = slots.admit();
        let b = slots.admit();
        assert!(matches!(a, Admission::Full(_)));
        assert!(matches!(b, Admission::Full(_)));
        let c = slots.admit();
        assert!(matches!(c, Admission::HealthOnly(_)));
        assert!(matches!(slots.admit(), Admission::Refused));
        assert_eq!(
            slots.open(),
            OpenConnections {
                full: 2,
                health_only: 1
            }
        );
        drop(a);
        let d = slots.admit();
        assert!(matches!(d, Admission::Full(_)));
        drop(c);
        assert!(matches!(slots.admit(), Admission::HealthOnly(_)));
        drop((b, d));
    }

    #[test]
    fn the_bound_is_logged_once_per_period() {
        let throttle = Throttle::default();
        assert_eq!(throttle.due(), Some(0));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        *throttle.last.lock().expect("lock") = Instant::now().checked_sub(BOUND_LOG_EVERY);
        assert_eq!(throttle.due(), Some(2));
    }

    #[tokio::test]
    async fn a_health_only_connection_answers_health_checks_alone() {
        use axum::routing::get;
        use tower::ServiceExt;
        let app = health_only(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/commands", get(|| async { "served" })),
            5,
        );
        let answer = |path: &'static str| {
            let app = app.clone();
            async move {
                app.oneshot(
                    Request::get(path)
                        .body(axum::body::Body::empty())
                        .expect("request"),
                )
                .await
                .expect("answer")
            }
        };
        assert_eq!(answer("/healthz").await.status(), 200);
        let refused = answer("/commands").await;
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()[header::CONNECTION], "close");
    }
}
