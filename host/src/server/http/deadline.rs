//! The body read deadline: a request's body must arrive in full within a
//! time counted from its head, or the answer is `408` and the connection is
//! closed.
//!
//! tower-http's `RequestBodyTimeoutLayer` times the gap between two chunks
//! (it resets on every chunk), so a client sending one byte a second under
//! that gap holds the connection for ever; this deadline is for the whole
//! body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// `app` with every request body given `timeout` to arrive.
pub fn cut_slow_bodies(app: Router, timeout: Duration) -> Router {
    app.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| with_deadline(request, next, timeout),
    ))
}

async fn with_deadline(request: Request, next: Next, timeout: Duration) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            expired: expired.clone(),
        })
    });
    let response = next.run(request).await;
    if expired.load(Ordering::SeqCst) {
        return timed_out(timeout);
    }
    response
}

/// `408 request_timeout`, and the connection closed after it (the rest of
/// the body is not read).
fn timed_out(timeout: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The time a request body has, and whether it ran out.
struct DeadlineBody {
    body: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

/// The error a body that ran out of time ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {}
            ready => return ready,
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
            }
        }
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
    use axum::routing::post;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    /// The receiving end of a channel as a body's stream of chunks.
    struct Chunks(mpsc::Receiver<Result<Bytes, std::io::Error>>);

    impl futures_core::Stream for Chunks {
        type Item = Result<Bytes, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }

    /// A body that never finishes is cut at the deadline with a `408`; one
    /// that arrives in time is served.
    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_a_408() {
        let app = cut_slow_bodies(
            Router::new().route(
                "/",
                post(|body: Bytes| async move { body.len().to_string() }),
            ),
            Duration::from_millis(200),
        );
        let (sender, chunks) = mpsc::channel(1);
        sender
            .send(Ok(Bytes::from_static(b"{")))
            .await
            .expect("send");
        let request = Request::post("/")
            .body(Body::from_stream(Chunks(chunks)))
            .expect("request");
        let started = tokio::time::Instant::now();
        let answer = app.clone().oneshot(request).await.expect("answer");
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(sender);
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(answer.headers()[header::CONNECTION], "close");

        let request = Request::post("/")
            .body(Body::from("12345"))
            .expect("request");
        let answer = app.oneshot(request).await.expect("answer");
        assert_eq!(answer.status(), StatusCode::OK);
    }
}
