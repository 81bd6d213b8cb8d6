//! Live feeds: `GET /events/live` and `GET /streams/{stream_id}/live`, as
//! Server-Sent Events. Each event is one message with `event: event`,
//! `id: <global position>` and `data: <the event JSON of GET /events>`.
//!
//! A feed subscribes to the store's commit broadcast *first*, then catches up
//! from the store in pages, then follows the broadcast, skipping what it
//! already sent. The broadcast is bounded and lossy: when this subscriber
//! falls behind (`Lagged`) or a batch does not follow on from the last
//! position handled, the feed goes back to reading the store from its cursor.
//! So a slow subscriber never holds up writers or other subscribers, and
//! never misses an event.
//!
//! The body is produced lazily: the next page is read only when the previous
//! one has been handed to the connection, so what a subscriber buffers is
//! bounded by one page (plus the socket's buffers). When the client goes
//! away, the body is dropped and the feed with it: no task is left behind.
//!
//! A feed ends when the host shuts down ([`LiveFeeds::shutdown`]), otherwise
//! graceful shutdown would wait for it forever; and when the store fails
//! (the client resumes with `Last-Event-ID`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};
use utoipa::IntoParams;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

use super::bounds::stored_int;
use super::error::ErrorBody;
use super::json::event_json;
use super::responses::{BadRequest, StoreRoute};
use super::{ApiError, AppState};
use crate::store::{CommittedBatch, EventLog, Position, RecordedEvent, StoreError, StreamQuery};

/// Default interval of keep-alive comments on an idle feed.
pub const KEEP_ALIVE_DEFAULT: Duration = Duration::from_secs(15);
/// Default number of events read from the store per catch-up page.
pub const PAGE_DEFAULT: u32 = 256;

/// Tuning of the live feeds.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// How long a feed may stay silent before a keep-alive comment.
    pub keep_alive: Duration,
    /// Events read from the store per catch-up page; also bounds what one
    /// subscriber holds in memory.
    pub page: u32,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            keep_alive: KEEP_ALIVE_DEFAULT,
            page: PAGE_DEFAULT,
        }
    }
}

/// What the live feeds share: their configuration and the shutdown signal.
#[derive(Debug, Default)]
pub struct LiveFeeds {
    pub config: LiveConfig,
    shutdown: watch::Sender<bool>,
}

impl LiveFeeds {
    pub fn new(config: LiveConfig) -> Self {
        Self {
            config,
            shutdown: watch::Sender::default(),
        }
    }

    /// End every open feed and refuse new ones (`503 unavailable`). Call it
    /// before waiting for the HTTP server's graceful shutdown: a feed never
    /// ends by itself.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver of the shutdown signal, or 503 if it was already given.
    fn open(&self) -> Result<watch::Receiver<bool>, ApiError> {
        let rx = self.shutdown.subscribe();
        if *rx.borrow() {
            return Err(ApiError::unavailable("the host is shutting down"));
        }
        Ok(rx)
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GlobalLiveQuery {
    /// The first position to send (0 counts as 1); by default only what
    /// commits from now on. `Last-Event-ID` wins over it.
    #[serde(default, deserialize_with = "stored_int")]
    #[param(minimum = 0, maximum = 9223372036854775807i64)]
    from_position: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamLiveQuery {
    /// The first version to send (default 1; 0 counts as 1).
    /// `Last-Event-ID` wins over it.
    #[serde(default, deserialize_with = "stored_int")]
    #[param(minimum = 0, maximum = 9223372036854775807i64)]
    from_version: Option<u64>,
}

/// One message of a feed, as the document describes it (OpenAPI's schema
/// of a `text/event-stream` answer is that of each message): `event:
/// event`, `id:` the position, `data:` the event's JSON as `GET /events`
/// shows it. Keep-alive comments are not messages.
pub struct FeedEvent;

impl utoipa::PartialSchema for FeedEvent {
    fn schema() -> RefOr<Schema> {
        let event = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["event"]));
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]+$"));
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .content_schema(Some(Ref::from_schema_name("Event")));
        ObjectBuilder::new()
            .property("event", event)
            .property("id", id)
            .property("data", data)
            .required("event")
            .required("id")
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for FeedEvent {}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_request(format!("bad query parameter: {}", e.body_text())))
}

/// The position in `Last-Event-ID`, if the client sent one (an empty value
/// is none, as in the SSE specification).
fn last_event_id(headers: &HeaderMap) -> Result<Option<Position>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid_request("Last-Event-ID is not text"))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    // Positions are stored as SQL integers: at most i64::MAX.
    text.parse::<i64>()
        .ok()
        .and_then(|p| Position::try_from(p).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid_request(format!(
                "Last-Event-ID {text:?} is not an event position (a non-negative integer)"
            ))
        })
}

/// `GET /events/live?from_position=P` — the global log.
///
/// Starts after `Last-Event-ID` if given, else at `from_position`, else at
/// the current head + 1 (only what is committed from now on).
#[utoipa::path(
    get,
    path = "/events/live",
    tag = "streams",
    summary = "Follow the global log as Server-Sent Events: catch-up, then live",
    params(
        GlobalLiveQuery,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, maximum = 9223372036854775807i64, description = "Resume after this position (what the feed's `id:` lines carry)"),
    ),
    responses(
        BadRequest,
        (status = 200, description = "`text/event-stream`: each event one message `event: event`, `id: <position>`, `data: <the event JSON of GET /events>`; keep-alive comments when idle", content_type = "text/event-stream", body = inline(FeedEvent)),
        (status = 400, description = "`invalid_request`: a bad query parameter or Last-Event-ID", body = ErrorBody),
        (status = 503, description = "`unavailable`: the host is shutting down", body = ErrorBody),
    ),
)]
pub async fn global_live(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<GlobalLiveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let last = last_event_id(&headers)?;
    let shutdown = app.live.open()?;
    let store = app.store.clone();
    // Subscribe before reading anything: whatever commits from here on is
    // either in the store when the catch-up reads it or in the broadcast.
    let commits = store.subscribe_commits();
    let head = store.subscribe_head();
    let cursor = match (last, q.from_position) {
        (Some(k), _) => k.saturating_add(1),
        (None, Some(p)) => p.max(1),
        (None, None) => *head.borrow() + 1,
    };
    let feed = Feed {
        store,
        commits,
        head,
        cursor,
        catching_up: true,
        page: app.live.config.page.max(1),
        filter: Filter::All,
    };
    Ok(respond(feed, shutdown, app.live.config.keep_alive))
}

/// `GET /streams/{stream_id}/live?from_version=V` — one stream.
///
/// Starts after the event at position `Last-Event-ID` if given, else at
/// `from_version` (default 1). A stream with no events yet is not an error:
/// the feed waits for it to come into existence.
#[utoipa::path(
    get,
    path = "/streams/{stream_id}/live",
    tag = "streams",
    summary = "Follow one stream as Server-Sent Events: catch-up, then live",
    description = "A stream with no events yet is not an error: the feed waits for it.",
    params(
        ("stream_id" = String, Path, description = "e.g. `bank_account-42`"),
        StreamLiveQuery,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, maximum = 9223372036854775807i64, description = "Resume after the event at this position"),
    ),
    responses(
        StoreRoute,
        (status = 200, description = "`text/event-stream`, as `GET /events/live`", content_type = "text/event-stream", body = inline(FeedEvent)),
        (status = 400, description = "`invalid_request`: a bad query parameter or Last-Event-ID", body = ErrorBody),
    ),
)]
pub async fn stream_live(
    State(app): State<Arc<AppState>>,
    Path(stream_id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<StreamLiveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let last = last_event_id(&headers)?;
    let shutdown = app.live.open()?;
    let store = app.store.clone();
    let commits = store.subscribe_commits();
    let head = store.subscribe_head();
    let (cursor, next_version) = match last {
        Some(k) => {
            // Usually the last event the client saw is of this stream, and
            // its version tells where to go on. If not, read the stream from
            // its start and skip everything at or before position k.
            let at = store.read_positions(k, 1).await?;
            let next_version = at
                .first()
                .filter(|e| e.position == k && e.stream_id == stream_id)
                .map_or(1, |e| e.version + 1);
            (k.saturating_add(1), next_version)
        }
        None => (1, q.from_version.unwrap_or(1).max(1)),
    };
    let feed = Feed {
        store,
        commits,
        head,
        cursor,
        catching_up: true,
        page: app.live.config.page.max(1),
        filter: Filter::Stream {
            stream_id,
            next_version,
        },
    };
    Ok(respond(feed, shutdown, app.live.config.keep_alive))
}

fn respond(feed: Feed, shutdown: watch::Receiver<bool>, keep_alive: Duration) -> Response {
    let stream = FeedStream {
        ready: Vec::new().into_iter(),
        step: Some(feed.step(shutdown)),
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}

/// Which events a feed carries.
enum Filter {
    All,
    Stream {
        stream_id: String,
        /// The version of the next event of the stream to send.
        next_version: u64,
    },
}

/// One subscriber's position and source.
///
/// Invariant: every event the feed carries with a position below `cursor`
/// has been sent (or was before the requested start); none at or above it
/// has been.
struct Feed {
    store: Arc<dyn EventLog>,
    commits: broadcast::Receiver<CommittedBatch>,
    head: watch::Receiver<Position>,
    cursor: Position,
    /// Reading from the store rather than following the broadcast.
    catching_up: bool,
    page: u32,
    filter: Filter,
}

/// The future of a feed's next events; `None` ends the feed.
type Step = Pin<Box<dyn Future<Output = Option<StepOutput>> + Send>>;

/// A feed, its shutdown signal and the events it found.
type StepOutput = (Feed, watch::Receiver<bool>, Vec<RecordedEvent>);

impl Feed {
    fn step(mut self, mut shutdown: watch::Receiver<bool>) -> Step {
        Box::pin(async move {
            let next = tokio::select! {
                biased;
                // An error means the sender is gone with the app: shut down too.
                _ = shutdown.wait_for(|stop| *stop) => return None,
                next = self.next() => next,
            };
            match next {
                Ok(Some(events)) => Some((self, shutdown, events)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "live feed ended: store failed");
                    None
                }
            }
        })
    }

    /// The next non-empty run of events; `Ok(None)` when the store's
    /// broadcast has closed (the store is shutting down).
    async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        loop {
            if self.catching_up {
                let events = self.catch_up().await?;
                if !events.is_empty() {
                    return Ok(Some(events));
                }
                continue;
            }
            match self.commits.recv().await {
                Ok(batch) => {
                    let events = self.take_live(&batch);
                    if !events.is_empty() {
                        return Ok(Some(events));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        cursor = self.cursor,
                        "live feed lagged; reading the store"
                    );
                    self.catching_up = true;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }

    /// One page from the store; clears `catching_up` once the store has
    /// nothing more than the page.
    async fn catch_up(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let page = self.page;
        match &mut self.filter {
            Filter::All => {
                let events = self.store.read_all(self.cursor, page, None).await?;
                if events.len() < page as usize {
                    self.catching_up = false;
                }
                let mut out = Vec::with_capacity(events.len());
                for e in events {
                    if e.position >= self.cursor {
                        self.cursor = e.position + 1;
                        out.push(e);
                    }
                }
                Ok(out)
            }
            Filter::Stream {
                stream_id,
                next_version,
            } => {
                // Everything committed up to `head` is visible to the read below.
                let head = *self.head.borrow();
                let events = self
                    .store
                    .read_stream(StreamQuery {
                        stream_id,
                        from_version: *next_version,
                        to_version: None,
                        recorded_until_us: None,
                        limit: page,
                    })
                    .await?;
                let exhausted = events.len() < page as usize;
                let mut out = Vec::with_capacity(events.len());
                for e in events {
                    *next_version = e.version + 1;
                    if e.position >= self.cursor {
                        self.cursor = e.position + 1;
                        out.push(e);
                    }
                }
                if exhausted {
                    // Every event of the stream up to `head` has now been
                    // sent: the broadcast takes over after it.
                    self.catching_up = false;
                    self.cursor = self.cursor.max(head + 1);
                }
                Ok(out)
            }
        }
    }

    /// The events of a committed batch this feed has not sent yet. A batch
    /// that does not follow on from the cursor sends the feed back to the
    /// store.
    fn take_live(&mut self, batch: &[RecordedEvent]) -> Vec<RecordedEvent> {
        let mut out = Vec::new();
        for e in batch {
            if e.position < self.cursor {
                continue;
            }
            if e.position > self.cursor {
                tracing::debug!(
                    cursor = self.cursor,
                    position = e.position,
                    "live feed gap; reading the store"
                );
                self.catching_up = true;
                break;
            }
            self.cursor += 1;
            match &mut self.filter {
                Filter::All => out.push(e.clone()),
                Filter::Stream {
                    stream_id,
                    next_version,
                } => {
                    if e.stream_id == *stream_id && e.version >= *next_version {
                        *next_version = e.version + 1;
                        out.push(e.clone());
                    }
                }
            }
        }
        out
    }
}

/// The SSE body's stream: events of the current run, then the next step.
struct FeedStream {
    ready: std::vec::IntoIter<RecordedEvent>,
    step: Option<Step>,
}

impl futures_core::Stream for FeedStream {
    /// An error aborts the response (the client resumes with `Last-Event-ID`).
    type Item = Result<Event, serde_json::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.ready.next() {
                return Poll::Ready(Some(sse_event(&e)));
            }
            let Some(step) = this.step.as_mut() else {
                return Poll::Ready(None);
            };
            match step.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.step = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some((feed, shutdown, events))) => {
                    this.ready = events.into_iter();
                    this.step = Some(feed.step(shutdown));
                }
            }
        }
    }
}

fn sse_event(e: &RecordedEvent) -> Result<Event, serde_json::Error> {
    // Compact JSON holds no newline, so `data` is one line.
    let data = serde_json::to_string(&event_json(e))?;
    Ok(Event::default()
        .event("event")
        .id(e.position.to_string())
        .data(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};

    async fn store(dir: &tempfile::TempDir, feed_buffer: usize) -> Arc<dyn EventStore> {
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let options = SqliteOptions {
            feed_buffer,
            ..SqliteOptions::default()
        };
        Arc::new(SqliteStore::open(&url, options).await.unwrap())
    }

    async fn append(store: &dyn EventLog, stream_id: &str, n: usize) {
        let events = (0..n)
            .map(|i| NewEvent {
                event_type: "Happened".into(),
                schema: 1,
                data: format!("{{\"i\":{i}}}"),
                metadata: "{}".into(),
            })
            .collect();
        store
            .append(AppendRequest {
                stream_id: stream_id.into(),
                expected: ExpectedVersion::Any,
                events,
                idempotency: None,
            })
            .await
            .unwrap();
    }

    fn feed(store: &Arc<dyn EventStore>, cursor: Position, filter: Filter) -> Feed {
        Feed {
            store: store.clone() as Arc<dyn EventLog>,
            commits: store.subscribe_commits(),
            head: store.subscribe_head(),
            cursor,
            catching_up: true,
            page: 7,
            filter,
        }
    }

    /// Drain `n` events from a feed, failing after a generous wait.
    async fn take(feed: &mut Feed, n: usize) -> Vec<RecordedEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(20), feed.next())
                .await
                .expect("the feed delivers in time")
                .unwrap()
                .expect("the feed goes on");
            out.extend(next);
        }
        out
    }

    /// Wait (bounded) until the store's head watch reaches `position`.
    async fn wait_for_head(store: &dyn EventStore, position: Position) {
        let mut head = store.subscribe_head();
        tokio::time::timeout(Duration::from_secs(20), head.wait_for(|h| *h >= position))
            .await
            .expect("the head watch moves in time")
            .expect("the store is open");
    }

    #[tokio::test]
    async fn a_lagging_feed_reads_what_it_missed_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, 1).await;
        append(&*store, "a-1", 3).await;
        let mut all = feed(&store, 2, Filter::All);
        let mut one = feed(
            &store,
            1,
            Filter::Stream {
                stream_id: "b-1".into(),
                next_version: 1,
            },
        );
        // The stream feed's catch-up takes the head from the watch: wait
        // until it shows the three appends (the state asserted below).
        wait_for_head(&*store, 3).await;
        // Catch up on what exists: positions 2 and 3; nothing of b-1.
        let got = take(&mut all, 2).await;
        assert_eq!(got.iter().map(|e| e.position).collect::<Vec<_>>(), [2, 3]);
        assert!(!all.catching_up);
        assert!(one.catch_up().await.unwrap().is_empty());
        assert!(!one.catching_up);
        assert_eq!(one.cursor, 4);
        // Many commits while nobody reads: the one-slot broadcast lags.
        for i in 0..40 {
            append(&*store, if i % 2 == 0 { "a-1" } else { "b-1" }, 2).await;
        }
        wait_for_head(&*store, 83).await;
        let got = take(&mut all, 80).await;
        assert_eq!(
            got.iter().map(|e| e.position).collect::<Vec<_>>(),
            (4..84).collect::<Vec<_>>()
        );
        let got = take(&mut one, 40).await;
        assert!(got.iter().all(|e| e.stream_id == "b-1"));
        assert_eq!(
            got.iter().map(|e| e.version).collect::<Vec<_>>(),
            (1..41).collect::<Vec<_>>()
        );
        // Then live again, without duplicates.
        append(&*store, "b-1", 1).await;
        let got = take(&mut all, 1).await;
        assert_eq!(got[0].position, 84);
        let got = take(&mut one, 1).await;
        assert_eq!((got[0].position, got[0].version), (84, 41));
        store.close().await;
    }

    #[tokio::test]
    async fn a_stream_feed_resumes_after_a_position_of_another_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, 16).await;
        append(&*store, "a-1", 2).await; // 1, 2
        append(&*store, "b-1", 1).await; // 3
        append(&*store, "a-1", 2).await; // 4, 5 (versions 3, 4)
        let mut one = feed(
            &store,
            4,
            Filter::Stream {
                stream_id: "a-1".into(),
                next_version: 1,
            },
        );
        let got = take(&mut one, 1).await;
        assert_eq!(
            got.iter()
                .map(|e| (e.position, e.version))
                .collect::<Vec<_>>(),
            [(4, 3), (5, 4)]
        );
        store.close().await;
    }
}
