//! Serving the router over HTTP/1.1 with bounds a slow or idle client
//! cannot get around: a header read timeout (hyper's), a body read deadline
//! ([`deadline`]), an idle timeout ([`idle`]) and a bound on open
//! connections with room kept for health checks ([`slots`]).
//!
//! `axum::serve` offers none of these knobs, so connections are accepted
//! here and handed to hyper's HTTP/1 connection builder directly.

mod deadline;
mod idle;
mod slots;

pub use slots::OpenConnections;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::config::HttpConfig;
use slots::Admission;
pub use slots::Slots;

/// How long the accept loop rests after an `accept` that failed for want of
/// resources (file descriptors, memory), before it tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The longest a connection beyond the bound may take to send its health
/// check's head: a probe sends it at once, and a slow client in one of
/// these few slots gives it back soon.
pub const HEALTH_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// How one connection is served.
#[derive(Clone, Copy)]
struct Profile {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// Serve more than one request.
    keep_alive: bool,
}

/// Serve `app` on `listener` until `stop` completes; then stop accepting,
/// let every connection finish its request in flight, and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    slots: Arc<Slots>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = deadline::cut_slow_bodies(app, config.body_read_timeout);
    let health = slots::health_only(app.clone(), config.max_connections);
    let full = Profile {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        keep_alive: true,
    };
    let health_check = Profile {
        header_read_timeout: config.header_read_timeout.min(HEALTH_HEADER_TIMEOUT),
        keep_alive: false,
        ..full
    };
    let (stopping, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let accept_errors = slots::Throttle::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        if !is_connection_error(&e) {
                            if let Some(since) = accept_errors.due() {
                                tracing::error!(error = %e, failures = since, "cannot accept connections");
                            }
                            tokio::time::sleep(ACCEPT_RETRY).await;
                        }
                        continue;
                    }
                };
                let (service, profile, slot) = match slots.admit() {
                    Admission::Full(slot) => (app.clone(), full, slot),
                    Admission::HealthOnly(slot) => (health.clone(), health_check, slot),
                    // Closed at once: its descriptor is given back.
                    Admission::Refused => continue,
                };
                let stopped = stopped.clone();
                connections.spawn(async move {
                    serve_connection(stream, service, profile, stopped).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors of one connection that does not matter to the next.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// One connection, until the client closes it, a timeout cuts it, or the
/// server stops (then after its request in flight).
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    profile: Profile,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = idle::Activity::new();
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let in_flight = activity.begin();
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                response.map(|r| r.map(|body| idle::TrackedBody::new(body, in_flight)))
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(profile.header_read_timeout)
        .keep_alive(profile.keep_alive);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = activity.idle_for(profile.idle_timeout), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stopped.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
