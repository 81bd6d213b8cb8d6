//! The writer task of one host: one connection; per batch, one transaction
//! for the appends and one for the other writes.
//!
//! A batch that appends locks the `log_tail` row first and reads the end of
//! the log from it (position, hash, recorded time), so the hash chain and the
//! positions continue from whatever host committed last. It keeps a cache of
//! stream versions, valid only while no other host appends: when the tail it
//! locks is not the one its own last commit left, it drops the cache.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::{mpsc, oneshot};

use super::follower::Publisher;
use super::jobs::Job;
use super::{CHANNEL, hash_from, int8};
use crate::store::hash_chain::{self, HashInput};
use crate::store::{
    AppendOutcome, AppendRequest, IdempotencyEntry, Position, RecordedEvent, Snapshot, StoreError,
    now_us,
};

pub enum WriteOp {
    Append(
        AppendRequest,
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ),
    Snapshot(Snapshot, oneshot::Sender<Result<(), StoreError>>),
    Purge(i64, oneshot::Sender<Result<u64, StoreError>>),
    /// Any other write, run in the batch's transaction of non-append writes.
    Job(Box<dyn Job>),
    Shutdown(oneshot::Sender<()>),
}

/// The end of the log, as `log_tail` holds it.
#[derive(Debug, Clone, Copy)]
struct Tail {
    position: Position,
    hash: [u8; 32],
    recorded_at_us: i64,
}

/// Streams whose versions the writer remembers.
const VERSION_CACHE_ENTRIES: usize = 100_000;

/// The writer task's state.
pub struct Writer {
    connect: PgConnectOptions,
    connect_timeout: Duration,
    /// `None` after the connection failed; the next batch reconnects.
    conn: Option<PgConnection>,
    /// Committed versions of streams this writer wrote or looked up.
    versions: LruCache<String, u64>,
    /// The end of the log as this writer's last appending commit left it.
    /// The version cache is true while the locked tail is still this one.
    last_tail: Option<Position>,
    publisher: Arc<Publisher>,
    /// This store's id in the notifications of its commits.
    origin: Arc<str>,
}

impl Writer {
    pub fn new(
        connect: PgConnectOptions,
        connect_timeout: Duration,
        conn: PgConnection,
        publisher: Arc<Publisher>,
        origin: Arc<str>,
    ) -> Self {
        Self {
            connect,
            connect_timeout,
            conn: Some(conn),
            versions: LruCache::new(
                NonZeroUsize::new(VERSION_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
            ),
            last_tail: None,
            publisher,
            origin,
        }
    }
}

/// Drain the queue into batches until shut down (or the store is dropped).
pub async fn run(mut writer: Writer, mut rx: mpsc::Receiver<WriteOp>, max_batch: usize) {
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = Batch::default();
        batch.add(first);
        batch.drain(&mut rx, max_batch);
        if let Some(done) = writer.commit_batch(batch, &mut rx, max_batch).await {
            rx.close();
            // Requests that raced the shutdown are refused, never dropped silently.
            while let Ok(op) = rx.try_recv() {
                refuse(op);
            }
            if let Some(conn) = writer.conn.take() {
                let _ = conn.close().await;
            }
            let _ = done.send(());
            return;
        }
    }
    if let Some(conn) = writer.conn.take() {
        let _ = conn.close().await;
    }
}

fn refuse(op: WriteOp) {
    match op {
        WriteOp::Append(_, reply) => {
            let _ = reply.send(Err(StoreError::ShuttingDown));
        }
        WriteOp::Snapshot(_, reply) => {
            let _ = reply.send(Err(StoreError::ShuttingDown));
        }
        WriteOp::Purge(_, reply) => {
            let _ = reply.send(Err(StoreError::ShuttingDown));
        }
        WriteOp::Job(job) => job.finish(Err(StoreError::ShuttingDown.to_string())),
        WriteOp::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

/// The operations of one batch, by kind, with their reply channels.
#[derive(Default)]
struct Batch {
    /// Operations taken from the queue, the shutdown included.
    size: usize,
    appends: Vec<AppendRequest>,
    append_replies: Vec<oneshot::Sender<Result<AppendOutcome, StoreError>>>,
    snapshots: Vec<Snapshot>,
    snapshot_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    purges: Vec<i64>,
    purge_replies: Vec<oneshot::Sender<Result<u64, StoreError>>>,
    jobs: Vec<Box<dyn Job>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Batch {
    fn add(&mut self, op: WriteOp) {
        self.size += 1;
        match op {
            WriteOp::Append(request, reply) => {
                self.appends.push(request);
                self.append_replies.push(reply);
            }
            WriteOp::Snapshot(snapshot, reply) => {
                self.snapshots.push(snapshot);
                self.snapshot_replies.push(reply);
            }
            WriteOp::Purge(before, reply) => {
                self.purges.push(before);
                self.purge_replies.push(reply);
            }
            WriteOp::Job(job) => self.jobs.push(job),
            WriteOp::Shutdown(done) => self.shutdown = Some(done),
        }
    }

    /// Take what is queued, up to `max_batch` operations in all; nothing
    /// after a shutdown.
    fn drain(&mut self, rx: &mut mpsc::Receiver<WriteOp>, max_batch: usize) {
        while self.size < max_batch && self.shutdown.is_none() {
            match rx.try_recv() {
                Ok(op) => self.add(op),
                Err(_) => break,
            }
        }
    }

    /// Whether a caller of the non-append writes needs their commit
    /// flushed before the answer. Projection commits alone do not: they
    /// stay atomic (view rows and checkpoint together), and the next durable
    /// commit's flush covers them.
    fn durable(&self) -> bool {
        !self.snapshots.is_empty()
            || !self.purges.is_empty()
            || self.jobs.iter().any(|j| j.durable())
    }
}

/// What the appends of a batch did, to be published once it has committed.
struct Appended {
    outcomes: Vec<Result<AppendOutcome, StoreError>>,
    /// The end of the log after them.
    tail: Position,
    versions: HashMap<String, u64>,
}

impl Writer {
    /// Apply the batch and answer each operation. Returns the shutdown
    /// acknowledgement if the batch contained one.
    ///
    /// The appends commit in one transaction and everything else in a
    /// second one: the log's lock, which every host's appends wait for, is
    /// then held for the appends alone, and no other write can ever wait
    /// for a row while holding it (a lock cycle between hosts).
    async fn commit_batch(
        &mut self,
        mut batch: Batch,
        rx: &mut mpsc::Receiver<WriteOp>,
        max_batch: usize,
    ) -> Option<oneshot::Sender<()>> {
        if !batch.appends.is_empty() {
            let result = self.write_appends(&mut batch, rx, max_batch).await;
            let replies = std::mem::take(&mut batch.append_replies);
            match result {
                Ok(appended) => {
                    self.last_tail = Some(appended.tail);
                    self.publish(&appended.outcomes, appended.tail);
                    for (stream, version) in appended.versions {
                        self.versions.put(stream, version);
                    }
                    for (reply, outcome) in replies.into_iter().zip(appended.outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) => {
                    let message = self.failed(&e);
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
                    }
                }
            }
        }
        if !(batch.snapshots.is_empty() && batch.purges.is_empty() && batch.jobs.is_empty()) {
            self.commit_other(&mut batch).await;
        }
        batch.shutdown
    }

    /// Snapshots, purges and jobs, in one transaction.
    async fn commit_other(&mut self, batch: &mut Batch) {
        match self.write_other(batch).await {
            Ok(purged) => {
                for job in batch.jobs.drain(..) {
                    job.finish(Ok(()));
                }
                for reply in batch.snapshot_replies.drain(..) {
                    let _ = reply.send(Ok(()));
                }
                for (reply, n) in batch.purge_replies.drain(..).zip(purged) {
                    let _ = reply.send(Ok(n));
                }
            }
            Err(e) => {
                let message = self.failed(&e);
                let err = || StoreError::Unavailable(message.clone());
                for reply in batch.snapshot_replies.drain(..) {
                    let _ = reply.send(Err(err()));
                }
                for reply in batch.purge_replies.drain(..) {
                    let _ = reply.send(Err(err()));
                }
                for job in batch.jobs.drain(..) {
                    job.finish(Err(message.clone()));
                }
            }
        }
    }

    /// After a failed transaction: forget what may be stale, and the
    /// connection if it may be broken. Returns the message for the callers.
    fn failed(&mut self, e: &sqlx::Error) -> String {
        tracing::error!(error = %e, "event store batch failed; nothing of it was committed");
        self.versions.clear();
        self.last_tail = None;
        if !matches!(e, sqlx::Error::Database(_)) {
            self.conn = None;
        }
        e.to_string()
    }

    /// Hand the batch's committed events to the live feed and move the head.
    fn publish(&self, outcomes: &[Result<AppendOutcome, StoreError>], tail: Position) {
        let events: Vec<RecordedEvent> = if self.publisher.has_feed() {
            outcomes
                .iter()
                .filter_map(|o| match o {
                    Ok(AppendOutcome::Committed { events, .. }) => Some(events.iter().cloned()),
                    _ => None,
                })
                .flatten()
                .collect()
        } else {
            Vec::new()
        };
        self.publisher.publish(events, tail);
    }

    /// The appends, in one transaction under the log's lock.
    async fn write_appends(
        &mut self,
        batch: &mut Batch,
        rx: &mut mpsc::Receiver<WriteOp>,
        max_batch: usize,
    ) -> Result<Appended, sqlx::Error> {
        let conn = connection(&mut self.conn, &self.connect, self.connect_timeout).await?;
        let mut tx = conn.begin().await?;
        let tail = lock_tail(&mut tx).await?;
        // With several hosts taking turns, this writer may have waited for
        // the lock: what was queued meanwhile joins the batch.
        batch.drain(rx, max_batch);
        let appends = std::mem::take(&mut batch.appends);
        let appended = append(
            &mut tx,
            &mut self.versions,
            self.last_tail,
            tail,
            appends,
            &self.origin,
        )
        .await?;
        tx.commit().await?;
        Ok(appended)
    }

    /// Snapshots, purges and jobs, in one transaction; returns the keys each
    /// purge removed.
    async fn write_other(&mut self, batch: &mut Batch) -> Result<Vec<u64>, sqlx::Error> {
        let durable = batch.durable();
        let conn = connection(&mut self.conn, &self.connect, self.connect_timeout).await?;
        let mut tx = conn.begin().await?;
        if !durable {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        for s in &batch.snapshots {
            sqlx::query(include_str!("sql/save_snapshot.sql"))
                .bind(&s.stream_id)
                .bind(&s.plugin_hash)
                .bind(int8(s.version))
                .bind(&s.state)
                .bind(now_us())
                .execute(&mut *tx)
                .await?;
        }
        let mut purged = Vec::with_capacity(batch.purges.len());
        for before_us in &batch.purges {
            let done = sqlx::query(include_str!("sql/purge_idempotency_keys.sql"))
                .bind(before_us)
                .bind(crate::store::SAGA_IDEMPOTENCY_PREFIX)
                .bind(now_us() - crate::store::SAGA_IDEMPOTENCY_RETENTION_US)
                .execute(&mut *tx)
                .await?;
            purged.push(done.rows_affected());
        }
        for job in batch.jobs.iter_mut() {
            job.run(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(purged)
    }
}

/// The writer's connection, opened again if the last one failed.
async fn connection<'a>(
    slot: &'a mut Option<PgConnection>,
    connect: &PgConnectOptions,
    timeout: Duration,
) -> Result<&'a mut PgConnection, sqlx::Error> {
    if slot.is_none() {
        let conn = tokio::time::timeout(timeout, PgConnection::connect_with(connect))
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection to PostgreSQL within {} ms",
                        timeout.as_millis()
                    ),
                ))
            })??;
        *slot = Some(conn);
    }
    slot.as_mut()
        .ok_or_else(|| sqlx::Error::Protocol("the writer has no connection".into()))
}

/// Lock the end of the log (waiting for another host's appending
/// transaction to end) and read it.
async fn lock_tail(conn: &mut PgConnection) -> Result<Tail, sqlx::Error> {
    let row = sqlx::query(include_str!("sql/lock_tail.sql"))
        .fetch_one(&mut *conn)
        .await?;
    Ok(Tail {
        position: row.try_get::<i64, _>(0)? as u64,
        hash: hash_from(row.try_get(1)?).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        recorded_at_us: row.try_get(2)?,
    })
}

/// Stage and write the batch's appends; the log's lock is held.
async fn append(
    conn: &mut PgConnection,
    cache: &mut LruCache<String, u64>,
    last_tail: Option<Position>,
    mut tail: Tail,
    appends: Vec<AppendRequest>,
    origin: &str,
) -> Result<Appended, sqlx::Error> {
    if last_tail != Some(tail.position) {
        // Another host appended since this writer last did (or this is the
        // first batch): what the cache says may be stale.
        cache.clear();
    }
    let start = tail.position;
    let (mut versions, mut keys) = lookup(cache, conn, &appends).await?;
    let mut staged_keys = HashMap::new();
    let outcomes: Vec<_> = appends
        .into_iter()
        .map(|request| {
            stage_append(
                request,
                &mut tail,
                &mut versions,
                &mut keys,
                &mut staged_keys,
            )
        })
        .collect();
    let entries = KeyColumns::new(staged_keys.values());
    if tail.position != start {
        write_events(conn, &outcomes, &tail, entries, origin).await?;
    } else if !staged_keys.is_empty() {
        // Commands that produced no events but carried a key.
        entries
            .bind(sqlx::query(include_str!("sql/upsert_idempotency_keys.sql")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Appended {
        outcomes,
        tail: tail.position,
        versions,
    })
}

/// Current versions of the batch's streams (from the cache, the rest looked
/// up) and the entries of its idempotency keys, in at most one query.
async fn lookup(
    cache: &mut LruCache<String, u64>,
    conn: &mut PgConnection,
    appends: &[AppendRequest],
) -> Result<(HashMap<String, u64>, HashMap<String, IdempotencyEntry>), sqlx::Error> {
    let mut versions = HashMap::with_capacity(appends.len());
    let mut unknown = Vec::new();
    for request in appends {
        let stream = &request.stream_id;
        if versions.contains_key(stream) {
            continue;
        }
        match cache.get(stream) {
            Some(v) => {
                versions.insert(stream.clone(), *v);
            }
            None => {
                versions.insert(stream.clone(), 0);
                unknown.push(stream.as_str());
            }
        }
    }
    let keys: Vec<&str> = appends
        .iter()
        .filter_map(|r| r.idempotency.as_ref().map(|c| c.key.as_str()))
        .collect();
    let mut entries = HashMap::new();
    if unknown.is_empty() && keys.is_empty() {
        return Ok((versions, entries));
    }
    let row = sqlx::query(include_str!("sql/lookup.sql"))
        .bind(&unknown)
        .bind(&keys)
        .fetch_one(&mut *conn)
        .await?;
    let found: Vec<i64> = row.try_get(0)?;
    for (stream, version) in unknown.iter().zip(found) {
        versions.insert(stream.to_string(), version as u64);
    }
    let keys: Vec<String> = row.try_get(1)?;
    let request_hashes: Vec<String> = row.try_get(2)?;
    let stream_ids: Vec<String> = row.try_get(3)?;
    let key_versions: Vec<i64> = row.try_get(4)?;
    let first_positions: Vec<Option<i64>> = row.try_get(5)?;
    let event_counts: Vec<i64> = row.try_get(6)?;
    let created_ats: Vec<i64> = row.try_get(7)?;
    let columns = request_hashes
        .into_iter()
        .zip(stream_ids)
        .zip(key_versions)
        .zip(first_positions)
        .zip(event_counts)
        .zip(created_ats);
    for (key, (((((request_hash, stream_id), version), first), count), created)) in
        keys.into_iter().zip(columns)
    {
        entries.insert(
            key.clone(),
            IdempotencyEntry {
                key,
                request_hash,
                stream_id,
                version: version as u64,
                first_position: first.map(|p| p as u64),
                event_count: count as u32,
                created_at_us: created,
            },
        );
    }
    Ok((versions, entries))
}

/// Idempotency entries column by column, as the statements bind them.
struct KeyColumns<'a> {
    keys: Vec<&'a str>,
    request_hashes: Vec<&'a str>,
    stream_ids: Vec<&'a str>,
    versions: Vec<i64>,
    first_positions: Vec<Option<i64>>,
    event_counts: Vec<i64>,
    created_ats: Vec<i64>,
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl<'a> KeyColumns<'a> {
    fn new(entries: impl Iterator<Item = &'a IdempotencyEntry>) -> Self {
        let mut columns = KeyColumns {
            keys: Vec::new(),
            request_hashes: Vec::new(),
            stream_ids: Vec::new(),
            versions: Vec::new(),
            first_positions: Vec::new(),
            event_counts: Vec::new(),
            created_ats: Vec::new(),
        };
        for e in entries {
            columns.keys.push(&e.key);
            columns.request_hashes.push(&e.request_hash);
            columns.stream_ids.push(&e.stream_id);
            columns.versions.push(int8(e.version));
            columns.first_positions.push(e.first_position.map(int8));
            columns.event_counts.push(i64::from(e.event_count));
            columns.created_ats.push(e.created_at_us);
        }
        columns
    }

    /// Bind the seven columns, in the statements' order.
    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.keys)
            .bind(self.request_hashes)
            .bind(self.stream_ids)
            .bind(self.versions)
            .bind(self.first_positions)
            .bind(self.event_counts)
            .bind(self.created_ats)
    }
}

/// The committed events of the batch column by column, its idempotency
/// entries and the new tail, in one statement.
async fn write_events(
    conn: &mut PgConnection,
    outcomes: &[Result<AppendOutcome, StoreError>],
    tail: &Tail,
    entries: KeyColumns<'_>,
    origin: &str,
) -> Result<(), sqlx::Error> {
    let events: Vec<&RecordedEvent> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(AppendOutcome::Committed { events, .. }) => Some(events.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let column = |f: fn(&RecordedEvent) -> i64| events.iter().map(|e| f(e)).collect::<Vec<_>>();
    let text = |f: fn(&RecordedEvent) -> &str| events.iter().map(|e| f(e)).collect::<Vec<_>>();
    let query = sqlx::query(include_str!("sql/append_events.sql"))
        .bind(column(|e| int8(e.position)))
        .bind(text(|e| &e.stream_id))
        .bind(column(|e| int8(e.version)))
        .bind(text(|e| &e.event_type))
        .bind(column(|e| i64::from(e.schema)))
        .bind(text(|e| &e.data))
        .bind(text(|e| &e.metadata))
        .bind(column(|e| e.recorded_at_us))
        .bind(events.iter().map(|e| e.hash).collect::<Vec<_>>())
        .bind(int8(tail.position))
        .bind(tail.hash)
        .bind(tail.recorded_at_us)
        .bind(CHANNEL);
    entries.bind(query).bind(origin).execute(&mut *conn).await?;
    Ok(())
}

/// Whether PostgreSQL can store the request's text: its `text` type cannot
/// hold NUL, and one such value would fail the whole batch's statement.
fn storable(request: &AppendRequest) -> bool {
    let nul = |s: &str| s.contains('\0');
    !(nul(&request.stream_id)
        || request
            .events
            .iter()
            .any(|e| nul(&e.event_type) || nul(&e.data) || nul(&e.metadata))
        || request
            .idempotency
            .as_ref()
            .is_some_and(|c| nul(&c.key) || nul(&c.request_hash)))
}

/// Check one append against the batch's view of versions and keys, and
/// stage its events. The result is this request's own answer.
fn stage_append(
    request: AppendRequest,
    tail: &mut Tail,
    versions: &mut HashMap<String, u64>,
    keys: &mut HashMap<String, IdempotencyEntry>,
    staged_keys: &mut HashMap<String, IdempotencyEntry>,
) -> Result<AppendOutcome, StoreError> {
    if !storable(&request) {
        return Err(StoreError::Corrupt(format!(
            "an append to stream {:?} contains a NUL character, which PostgreSQL text cannot hold",
            request.stream_id.replace('\0', "\\0")
        )));
    }
    if let Some(claim) = &request.idempotency
        && let Some(entry) = keys.get(&claim.key)
        && entry.created_at_us >= claim.window_start_us
    {
        // Expired entries fall through: the key is free again and its row
        // is replaced.
        return Ok(AppendOutcome::AlreadyApplied(entry.clone()));
    }
    let actual = versions.get(&request.stream_id).copied().unwrap_or(0);
    if !request.expected.matches(actual) {
        return Err(StoreError::WrongExpectedVersion {
            stream_id: request.stream_id,
            expected: request.expected,
            actual,
        });
    }
    // Recorded times never decrease along positions (whatever the clocks of
    // the hosts say: the tail's time is the floor), so time travel by
    // recorded time agrees with the order of the log. They are kept to the
    // millisecond, the precision the API shows.
    let recorded_at_us = (now_us() / 1000 * 1000).max(tail.recorded_at_us);
    let mut recorded = Vec::with_capacity(request.events.len());
    for (i, event) in request.events.into_iter().enumerate() {
        let position = tail.position + 1;
        let version = actual + 1 + i as u64;
        let hash = hash_chain::event_hash(
            &tail.hash,
            &HashInput {
                position,
                stream_id: &request.stream_id,
                version,
                event_type: &event.event_type,
                schema: event.schema,
                data: &event.data,
                metadata: &event.metadata,
                recorded_at_us,
            },
        );
        *tail = Tail {
            position,
            hash,
            recorded_at_us,
        };
        recorded.push(RecordedEvent {
            position,
            stream_id: request.stream_id.clone(),
            version,
            event_type: event.event_type,
            schema: event.schema,
            data: event.data,
            metadata: event.metadata,
            recorded_at_us,
            hash,
        });
    }
    let version = actual + recorded.len() as u64;
    versions.insert(request.stream_id.clone(), version);
    if let Some(claim) = request.idempotency {
        let entry = IdempotencyEntry {
            key: claim.key,
            request_hash: claim.request_hash,
            stream_id: request.stream_id,
            version,
            first_position: recorded.first().map(|e| e.position),
            event_count: recorded.len() as u32,
            created_at_us: recorded_at_us,
        };
        keys.insert(entry.key.clone(), entry.clone());
        staged_keys.insert(entry.key.clone(), entry);
    }
    Ok(AppendOutcome::Committed {
        version,
        events: recorded,
    })
}
