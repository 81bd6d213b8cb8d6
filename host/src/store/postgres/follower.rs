//! Telling this host about commits: its own, from the writer, and other
//! hosts', found through LISTEN/NOTIFY with polling as the safety net.
//!
//! Both go through one [`Publisher`], which keeps the head `watch` from
//! moving backwards and the live feed in position order without repeats.
//! Another host's events are read back from the database and broadcast like
//! this host's own, so a live feed on any host carries every commit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{broadcast, mpsc, watch};
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
/// deciding a command rather than learning it from a conflict. (Only a
/// shortcut: the append's version check catches a state it missed.)
///
/// Other hosts' commits are learned from their notifications, which carry
/// each stream's new version, and this host's own from its writer; what
/// neither covered (a notification lost, or too long to carry the list) is
/// read from the log at the next poll.
pub struct StreamVersions {
    inner: Mutex<VersionsInner>,
    /// Queries run for what no notification covered.
    reads: std::sync::atomic::AtomicU64,
}

struct VersionsInner {
    /// Every commit up to this position is accounted for.
    cursor: Position,
    /// Commits accounted for beyond the cursor, as (tail before, tail after).
    covered: BTreeMap<Position, Position>,
    latest: lru::LruCache<String, u64>,
}

impl VersionsInner {
    fn put(&mut self, stream: String, version: u64) {
        if self.latest.peek(&stream).is_none_or(|v| *v < version) {
            self.latest.put(stream, version);
        }
    }

    /// The commits in `(before, tail]` are accounted for.
    fn cover(&mut self, before: Position, tail: Position) {
        if tail > self.cursor {
            let end = self.covered.entry(before).or_insert(tail);
            *end = (*end).max(tail);
        }
        while let Some((&before, &tail)) = self.covered.first_key_value() {
            if before > self.cursor {
                break;
            }
            self.cursor = self.cursor.max(tail);
            self.covered.pop_first();
        }
    }
}

/// Streams whose latest version is remembered.
const STREAM_VERSIONS_MAX: usize = 100_000;

impl StreamVersions {
    /// Start remembering from the commits after `tail`.
    pub fn new(tail: Position) -> Self {
        Self {
            inner: Mutex::new(VersionsInner {
                cursor: tail,
                covered: BTreeMap::new(),
                latest: lru::LruCache::new(
                    std::num::NonZeroUsize::new(STREAM_VERSIONS_MAX)
                        .unwrap_or(std::num::NonZeroUsize::MIN),
                ),
            }),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a version of `stream_id` newer than `version` is known.
    pub fn newer_than(&self, stream_id: &str, version: u64) -> bool {
        self.lock()
            .latest
            .peek(stream_id)
            .is_some_and(|latest| *latest > version)
    }

    /// Another host's commit of `(before, tail]` left these streams at these
    /// versions.
    pub fn notified(&self, before: Position, tail: Position, streams: Vec<(String, u64)>) {
        let mut inner = self.lock();
        for (stream, version) in streams {
            inner.put(stream, version);
        }
        inner.cover(before, tail);
    }

    /// This host's own commit of `(before, tail]` (its pipeline knows the
    /// versions it wrote).
    pub fn own(&self, before: Position, tail: Position) {
        self.lock().cover(before, tail);
    }

    /// Every commit up to here is accounted for.
    #[cfg(test)]
    pub fn cursor(&self) -> Position {
        self.lock().cursor
    }

    /// How many times the log was read for versions no notification gave.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Account for the commits up to `tail`: what no notification covered
    /// is read, in one query for the streams they touched and their new
    /// versions.
    async fn follow(&self, readers: &PgPool, tail: Position) -> Result<(), StoreError> {
        let cursor = self.lock().cursor;
        if tail <= cursor {
            return Ok(());
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows: Vec<(String, i64)> = sqlx::query_as(include_str!("sql/stream_versions.sql"))
            .bind(int8(cursor))
            .bind(int8(tail))
            .fetch_all(readers)
            .await?;
        let mut inner = self.lock();
        for (stream, version) in rows {
            inner.put(stream, version as u64);
        }
        inner.cursor = inner.cursor.max(tail);
        inner.cover(tail, tail);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VersionsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the listener tells the follower.
#[derive(Debug, PartialEq)]
enum Note {
    /// Another host committed `(before, tail]`, leaving these streams at
    /// these versions (`None`: the notification did not carry them).
    Commit {
        before: Position,
        tail: Position,
        streams: Option<Vec<(String, u64)>>,
    },
    /// Notifications may have been missed (the connection was lost and is
    /// back, or this is the start): look at the log itself.
    Resync,
    /// The listener has just started listening: resync, then say so.
    Listening,
}

/// Notes waiting for the follower; beyond this many, notes are dropped and
/// the next poll reads what they would have said.
const NOTES_MAX: usize = 4096;

/// Parse a commit notification: `"<origin> <tail> <tail before>[ <{stream:
/// version}>]"` (migrations/postgres/0007). Returns the origin, and the
/// note unless the payload is not one of these (then only a wake-up).
fn parse_notification(payload: &str) -> (&str, Note) {
    let mut parts = payload.splitn(4, ' ');
    let origin = parts.next().unwrap_or_default();
    let tail = parts.next().and_then(|t| t.parse::<Position>().ok());
    let before = parts.next().and_then(|b| b.parse::<Position>().ok());
    let (Some(tail), Some(before)) = (tail, before) else {
        return (origin, Note::Resync);
    };
    let streams = parts.next().and_then(|json| {
        serde_json::from_str::<std::collections::HashMap<String, u64>>(json)
            .ok()
            .map(|m| m.into_iter().collect())
    });
    (
        origin,
        Note::Commit {
            before,
            tail,
            streams,
        },
    )
}

/// The tasks that follow other hosts' commits.
pub struct Follower {
    stop: watch::Sender<bool>,
    /// Whether the listener listens now and the log was looked at since.
    listening: Arc<watch::Sender<bool>>,
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
        let listening = Arc::new(watch::Sender::new(false));
        let (notes_tx, notes) = mpsc::channel(NOTES_MAX);
        let mut tasks = Vec::with_capacity(2);
        if let Some(connect) = listen {
            tasks.push(tokio::spawn(listen_for_commits(
                connect,
                origin,
                notes_tx,
                stopped.clone(),
                poll,
                listening.clone(),
            )));
        }
        tasks.push(tokio::spawn(follow(
            readers,
            publisher,
            versions,
            notes,
            stopped,
            poll,
            listening.clone(),
        )));
        Self {
            stop,
            listening,
            tasks: Mutex::new(tasks),
        }
    }

    /// Whether the listener is listening now and the log was looked at
    /// since (so that another host's next commit is heard of without a
    /// poll, and nothing before it is left to read).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.subscribe()
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
    mut notes: mpsc::Receiver<Note>,
    mut stopped: watch::Receiver<bool>,
    poll: Duration,
    listening: Arc<watch::Sender<bool>>,
) {
    let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let note = tokio::select! {
            biased;
            _ = stopped.changed() => return,
            Some(note) = notes.recv() => note,
            _ = tick.tick() => Note::Resync,
        };
        let caught_up = match note {
            // The notification says all this host needs: no query.
            Note::Commit {
                before,
                tail,
                streams: Some(streams),
            } => {
                versions.notified(before, tail, streams);
                publish_up_to(&readers, &publisher, tail).await
            }
            Note::Commit { streams: None, .. } | Note::Resync => {
                catch_up(&readers, &publisher, &versions).await
            }
            Note::Listening => {
                let caught_up = catch_up(&readers, &publisher, &versions).await;
                listening.send_replace(true);
                caught_up
            }
        };
        match caught_up {
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
    publish_up_to(readers, publisher, tail).await
}

/// Publish the commits up to `tail` (committed and visible), with their
/// events when anyone follows the live feed.
async fn publish_up_to(
    readers: &PgPool,
    publisher: &Publisher,
    tail: Position,
) -> Result<(), StoreError> {
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

/// LISTEN on the log's channel and hand each other host's notification to
/// the follower. PgListener reconnects by itself; notifications sent while
/// it was away are lost, which a resync after each (re)connect covers (and
/// the poll, if that is lost too).
async fn listen_for_commits(
    connect: PgConnectOptions,
    origin: Arc<str>,
    notes: mpsc::Sender<Note>,
    mut stopped: watch::Receiver<bool>,
    retry: Duration,
    announce: Arc<watch::Sender<bool>>,
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
            error = listen_once(&pool, &origin, &notes, &mut listening) => error,
        };
        announce.send_replace(false);
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
    notes: &mpsc::Sender<Note>,
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
    // A full queue drops the note: the next poll reads what it said.
    let _ = notes.try_send(Note::Listening);
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                // This store's own commit: its writer has published it, so
                // its list of versions is not even parsed.
                let payload = n.payload();
                if payload.split(' ').next() != Some(origin) {
                    let _ = notes.try_send(parse_notification(payload).1);
                }
            }
            // The connection was lost (and is back): notifications may
            // have been missed.
            Ok(None) => {
                let _ = notes.try_send(Note::Resync);
            }
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_carry_the_range_and_the_streams_versions() {
        let (origin, note) = parse_notification(r#"h1 12 9 {"a": 3, "b c": 7}"#);
        assert_eq!(origin, "h1");
        let Note::Commit {
            before,
            tail,
            streams: Some(mut streams),
        } = note
        else {
            panic!("{note:?}");
        };
        streams.sort();
        assert_eq!((before, tail), (9, 12));
        assert_eq!(streams, vec![("a".into(), 3), ("b c".into(), 7)]);
        // The list left out (too long for a notification): the range alone.
        assert_eq!(
            parse_notification("h1 12 9").1,
            Note::Commit {
                before: 9,
                tail: 12,
                streams: None
            }
        );
        // Anything else only wakes the follower up.
        assert_eq!(parse_notification("h1 12").1, Note::Resync);
        assert_eq!(parse_notification("h1 x 9 {}").1, Note::Resync);
    }

    #[test]
    fn the_cursor_moves_over_contiguous_commits_in_any_order() {
        let versions = StreamVersions::new(10);
        // Another host's commit after a gap: remembered, cursor stays.
        versions.notified(12, 15, vec![("a".into(), 4)]);
        assert_eq!(versions.cursor(), 10);
        assert!(versions.newer_than("a", 3));
        // This host's own commit fills the gap: the cursor moves past both.
        versions.own(10, 12);
        assert_eq!(versions.cursor(), 15);
        // Old versions never replace newer ones.
        versions.notified(15, 16, vec![("a".into(), 2)]);
        assert!(versions.newer_than("a", 3));
        assert_eq!(versions.cursor(), 16);
        // A range already accounted for changes nothing.
        versions.own(11, 13);
        assert_eq!(versions.cursor(), 16);
    }
}
