//! Telling this host about commits: its own, from the writer, and other
//! hosts', found through LISTEN/NOTIFY with polling as the safety net.
//!
//! Both go through one [`Publisher`], which keeps the head `watch` from
//! moving backwards and the live feed in position order without repeats.
//! Another host's events are read back from the database and broadcast like
//! this host's own, so a live feed on any host carries every commit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{CHANNEL, FOLLOW_PAGE, head_from, int8, read_global};
use crate::store::{CommittedBatch, GlobalQuery, Position, RecordedEvent, StoreError};

/// The head `watch` and the live feed of one store.
pub struct Publisher {
    head_tx: watch::Sender<Position>,
    commits_tx: broadcast::Sender<CommittedBatch>,
}

impl Publisher {
    pub fn new(
        head_tx: watch::Sender<Position>,
        commits_tx: broadcast::Sender<CommittedBatch>,
    ) -> Self {
        Self {
            head_tx,
            commits_tx,
        }
    }

    /// The last position published.
    pub fn head(&self) -> Position {
        *self.head_tx.borrow()
    }

    /// Whether anyone follows the live feed (else events need not be read).
    pub fn has_feed(&self) -> bool {
        self.commits_tx.receiver_count() > 0
    }

    /// Publish that everything up to `tail` is committed, with `events`
    /// (in position order, ending at or before `tail`) for the live feed.
    /// Events at or below the published head were published already and
    /// are dropped. Events the caller did not have (another host's, between
    /// the head and `events`) leave a gap the feed's readers fill from the
    /// store.
    pub fn publish(&self, events: Vec<RecordedEvent>, tail: Position) {
        // The watch's lock makes the broadcast and the head move together,
        // whichever of the writer and the follower publishes.
        self.head_tx.send_if_modified(|head| {
            let fresh: Vec<RecordedEvent> =
                events.into_iter().filter(|e| e.position > *head).collect();
            if !fresh.is_empty() && self.commits_tx.receiver_count() > 0 {
                let _ = self.commits_tx.send(fresh.into());
            }
            if tail > *head {
                *head = tail;
                true
            } else {
                false
            }
        });
    }
}

/// The latest version of each stream committed recently, by any host: what
/// tells a host that a state it cached is behind the store (another host
/// wrote to the stream since), so that it reads the newer events before
/// deciding a command rather than learning it from a conflict.
pub struct StreamVersions {
    inner: Mutex<VersionsInner>,
}

struct VersionsInner {
    /// Every commit up to this position is accounted for.
    cursor: Position,
    latest: lru::LruCache<String, u64>,
}

/// Streams whose latest version is remembered.
const STREAM_VERSIONS_MAX: usize = 100_000;

impl StreamVersions {
    /// Start remembering from the commits after `tail`.
    pub fn new(tail: Position) -> Self {
        Self {
            inner: Mutex::new(VersionsInner {
                cursor: tail,
                latest: lru::LruCache::new(
                    std::num::NonZeroUsize::new(STREAM_VERSIONS_MAX)
                        .unwrap_or(std::num::NonZeroUsize::MIN),
                ),
            }),
        }
    }

    /// Whether a version of `stream_id` newer than `version` is known.
    pub fn newer_than(&self, stream_id: &str, version: u64) -> bool {
        self.lock()
            .latest
            .peek(stream_id)
            .is_some_and(|latest| *latest > version)
    }

    /// Account for the commits up to `tail`: one query for the streams they
    /// touched and their new versions.
    async fn follow(&self, readers: &PgPool, tail: Position) -> Result<(), StoreError> {
        let cursor = self.lock().cursor;
        if tail <= cursor {
            return Ok(());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(include_str!("sql/stream_versions.sql"))
            .bind(int8(cursor))
            .bind(int8(tail))
            .fetch_all(readers)
            .await?;
        let mut inner = self.lock();
        for (stream, version) in rows {
            let version = version as u64;
            if inner.latest.peek(&stream).is_none_or(|v| *v < version) {
                inner.latest.put(stream, version);
            }
        }
        inner.cursor = inner.cursor.max(tail);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VersionsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The tasks that follow other hosts' commits.
pub struct Follower {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Follower {
    /// Start following: a poll every `poll`, and a wake-up on every
    /// notification of another store's commit when `listen` gives the
    /// connection to listen on (`origin` is this store's own id).
    pub fn spawn(
        readers: PgPool,
        listen: Option<PgConnectOptions>,
        origin: Arc<str>,
        publisher: Arc<Publisher>,
        poll: Duration,
        versions: Arc<StreamVersions>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::with_capacity(2);
        if let Some(connect) = listen {
            tasks.push(tokio::spawn(listen_for_commits(
                connect,
                origin,
                wake.clone(),
                stopped.clone(),
                poll,
            )));
        }
        tasks.push(tokio::spawn(follow(
            readers, publisher, versions, wake, stopped, poll,
        )));
        Self {
            stop,
            tasks: Mutex::new(tasks),
        }
    }

    /// Stop the tasks (a read in progress is abandoned) and wait for them.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Catch up on a notification or a tick, until told to stop (or the store
/// is dropped, which drops the stop sender).
async fn follow(
    readers: PgPool,
    publisher: Arc<Publisher>,
    versions: Arc<StreamVersions>,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
    poll: Duration,
) {
    let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stopped.changed() => return,
            () = wake.notified() => {}
            _ = tick.tick() => {}
        }
        match catch_up(&readers, &publisher, &versions).await {
            Ok(()) => failing = false,
            Err(e) => {
                // Once per outage: the poll goes on every tick.
                if !failing {
                    tracing::warn!(error = %e, "cannot follow the event log; retrying");
                }
                failing = true;
            }
        }
    }
}

/// Publish whatever was committed beyond the published head, in pages,
/// once the streams' new versions are known.
async fn catch_up(
    readers: &PgPool,
    publisher: &Publisher,
    versions: &StreamVersions,
) -> Result<(), StoreError> {
    let tail = head_from(readers).await?;
    versions.follow(readers, tail).await?;
    loop {
        let head = publisher.head();
        if tail <= head {
            return Ok(());
        }
        if !publisher.has_feed() {
            publisher.publish(Vec::new(), tail);
            return Ok(());
        }
        let events = read_global(
            readers,
            GlobalQuery {
                from_position: head + 1,
                until_position: Some(tail),
                limit: FOLLOW_PAGE,
                types: None,
            },
        )
        .await?;
        // Everything up to `tail` is visible once `log_tail` says so: the
        // rows and the tail commit together.
        let last = events.last().map_or(tail, |e| e.position);
        publisher.publish(events, last);
        if last >= tail {
            return Ok(());
        }
    }
}

/// LISTEN on the log's channel and turn each notification into a wake-up.
/// PgListener reconnects by itself; notifications sent while it was away
/// are lost, which the poll covers, and a wake-up after each (re)connect
/// shortens that.
async fn listen_for_commits(
    connect: PgConnectOptions,
    origin: Arc<str>,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
    retry: Duration,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(connect);
    let mut failing = false;
    loop {
        let mut listening = false;
        let error = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            error = listen_once(&pool, &origin, &wake, &mut listening) => error,
        };
        // Once per outage: it is retried every `retry`.
        if listening || !failing {
            tracing::warn!(error = %error, "LISTEN for other hosts' commits failed; polling until it works again");
        }
        failing = true;
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            () = tokio::time::sleep(retry) => {}
        }
    }
    pool.close().await;
}

/// Listen until an error that the listener does not recover from itself;
/// `listening` tells whether it got as far as listening.
async fn listen_once(
    pool: &PgPool,
    origin: &str,
    wake: &Notify,
    listening: &mut bool,
) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(e) => return e,
    };
    if let Err(e) = listener.listen(CHANNEL).await {
        return e;
    }
    *listening = true;
    wake.notify_one();
    loop {
        match listener.try_recv().await {
            // This store's own commit: its writer has published it.
            Ok(Some(n)) if n.payload().split(' ').next() == Some(origin) => {}
            // Another store's commit; or `None`: the connection was lost
            // (and is back), so notifications may have been missed.
            Ok(_) => wake.notify_one(),
            Err(e) => return e,
        }
    }
}
