//! The idle timeout: a connection with no request in flight for a while is
//! closed. A request is in flight from its head until its answer's body is
//! done (a live feed is in flight for as long as it streams).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use tokio::time::Instant;

/// What a connection is doing: requests in flight, and when the last one ended.
pub struct Activity {
    in_flight: AtomicUsize,
    last_ended: Mutex<Instant>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_ended: Mutex::new(Instant::now()),
        })
    }

    /// A request begins; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn last_ended(&self) -> Instant {
        *self
            .last_ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes once no request has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let wake = if self.in_flight.load(Ordering::SeqCst) > 0 {
                Instant::now() + timeout
            } else {
                let deadline = self.last_ended() + timeout;
                if deadline <= Instant::now() {
                    return;
                }
                deadline
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in flight.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last_ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body that keeps its request in flight until it is done.
pub struct TrackedBody {
    body: Body,
    in_flight: Option<InFlight>,
}

impl TrackedBody {
    pub fn new(body: Body, in_flight: InFlight) -> Self {
        Self {
            body,
            in_flight: Some(in_flight),
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let timeout = Duration::from_millis(100);
        let activity = Activity::new();
        let request = activity.begin();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(timeout).await }
        });
        tokio::time::sleep(timeout * 3).await;
        assert!(!idle.is_finished(), "a request in flight is not idle");
        drop(request);
        let ended = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), idle)
            .await
            .expect("idle in time")
            .expect("idle");
        assert!(ended.elapsed() >= timeout);
    }
}
