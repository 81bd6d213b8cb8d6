//! The writer task of one host: one connection; per batch, one statement
//! for the appends and one transaction for the other writes.
//!
//! A batch's appends are one call of the `kiln_append` function
//! (migrations/postgres/0005_append_function.sql), run as its own
//! transaction: it locks the `log_tail` row, checks every request against
//! the versions and idempotency keys it then sees, continues the positions
//! and the hash chain from whatever host committed last, writes, and commits.
//! The lock that orders every host's appends is thus held while the server
//! works and flushes, never across a client round trip.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::{mpsc, oneshot};

use super::follower::{Publisher, StreamVersions};
use super::{CHANNEL, hash_from, int8};
use crate::store::jobs::Job as AnyJob;
use crate::store::{
    AppendOutcome, AppendRequest, ExpectedVersion, IdempotencyEntry, Position, RecordedEvent,
    Snapshot, StoreError, now_us,
};

/// A sqlx write job of this backend.
type Job = dyn AnyJob<PgConnection>;

pub enum WriteOp {
    Append(
        AppendRequest,
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ),
    Snapshot(Snapshot, oneshot::Sender<Result<(), StoreError>>),
    Purge(i64, oneshot::Sender<Result<u64, StoreError>>),
    /// Any other write, run in the batch's transaction of non-append writes.
    Job(Box<Job>),
    Shutdown(oneshot::Sender<()>),
}

/// The writer task's state.
pub struct Writer {
    connect: PgConnectOptions,
    connect_timeout: Duration,
    /// `None` after the connection failed; the next batch reconnects.
    conn: Option<PgConnection>,
    publisher: Arc<Publisher>,
    /// Told of this host's own commits (the follower learns the others').
    versions: Arc<StreamVersions>,
    /// This store's id in the notifications of its commits.
    origin: Arc<str>,
}

impl Writer {
    pub fn new(
        connect: PgConnectOptions,
        connect_timeout: Duration,
        conn: PgConnection,
        publisher: Arc<Publisher>,
        versions: Arc<StreamVersions>,
        origin: Arc<str>,
    ) -> Self {
        Self {
            connect,
            connect_timeout,
            conn: Some(conn),
            publisher,
            versions,
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
        if let Some(done) = writer.commit_batch(batch).await {
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
        WriteOp::Job(job) => job.finish(Err(StoreError::ShuttingDown)),
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
    jobs: Vec<Box<Job>>,
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
}

impl Writer {
    /// Apply the batch and answer each operation. Returns the shutdown
    /// acknowledgement if the batch contained one.
    ///
    /// The appends commit in one transaction and everything else in a
    /// second one: the log's lock, which every host's appends wait for, is
    /// then held for the appends alone, and no other write can ever wait
    /// for a row while holding it (a lock cycle between hosts).
    async fn commit_batch(&mut self, mut batch: Batch) -> Option<oneshot::Sender<()>> {
        if !batch.appends.is_empty() {
            let result = self.write_appends(&mut batch).await;
            let replies = std::mem::take(&mut batch.append_replies);
            match result {
                Ok(appended) => {
                    self.account(&appended);
                    self.publish(&appended.outcomes, appended.tail);
                    for (reply, outcome) in replies.into_iter().zip(appended.outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) => {
                    let error = self.failed(e);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
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
                let error = self.failed(e);
                let err = || error.clone();
                for reply in batch.snapshot_replies.drain(..) {
                    let _ = reply.send(Err(err()));
                }
                for reply in batch.purge_replies.drain(..) {
                    let _ = reply.send(Err(err()));
                }
                for job in batch.jobs.drain(..) {
                    job.finish(Err(err()));
                }
            }
        }
    }

    /// After a failed transaction: forget what may be stale, and the
    /// connection if it may be broken. Returns the error for the callers.
    fn failed(&mut self, e: sqlx::Error) -> StoreError {
        tracing::error!(error = %e, "event store batch failed; nothing of it was committed");
        if !matches!(e, sqlx::Error::Database(_)) {
            self.conn = None;
        }
        e.into()
    }

    /// Tell the record of stream versions which positions this host's
    /// batch took: the appends of every host take consecutive positions
    /// under the log's lock, so they end at the tail.
    fn account(&self, appended: &Appended) {
        let written: u64 = appended
            .outcomes
            .iter()
            .map(|o| match o {
                Ok(AppendOutcome::Committed { events, .. }) => events.len() as u64,
                _ => 0,
            })
            .sum();
        if written > 0 {
            self.versions
                .own(appended.tail.saturating_sub(written), appended.tail);
        }
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

    /// The appends, in one statement that is its own transaction (see the
    /// module's documentation). A request PostgreSQL cannot store is
    /// refused alone, before the statement.
    async fn write_appends(&mut self, batch: &mut Batch) -> Result<Appended, sqlx::Error> {
        let conn = connection(&mut self.conn, &self.connect, self.connect_timeout).await?;
        let mut refused: Vec<Option<StoreError>> = Vec::with_capacity(batch.appends.len());
        let mut sent = Vec::with_capacity(batch.appends.len());
        for request in std::mem::take(&mut batch.appends) {
            if storable(&request) {
                refused.push(None);
                sent.push(request);
            } else {
                refused.push(Some(StoreError::Corrupt(format!(
                    "an append to stream {:?} contains a NUL character, which PostgreSQL text cannot hold",
                    request.stream_id.replace('\0', "\\0")
                ))));
            }
        }
        let (staged, tail) = if sent.is_empty() {
            (Vec::new(), self.publisher.head())
        } else {
            append(conn, sent, &self.origin).await?
        };
        let mut staged = staged.into_iter();
        let outcomes = refused
            .into_iter()
            .map(|refusal| match refusal {
                Some(e) => Err(e),
                None => staged.next().unwrap_or_else(|| {
                    Err(StoreError::Corrupt(
                        "kiln_append answered fewer requests than it was sent".into(),
                    ))
                }),
            })
            .collect();
        Ok(Appended { outcomes, tail })
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

/// A batch's requests as the columns `kiln_append` takes.
struct Columns<'a> {
    streams: Vec<&'a str>,
    expect_kinds: Vec<i16>,
    expects: Vec<i64>,
    keys: Vec<Option<&'a str>>,
    request_hashes: Vec<Option<&'a str>>,
    window_starts: Vec<i64>,
    event_counts: Vec<i32>,
    types: Vec<&'a str>,
    schemas: Vec<i64>,
    data: Vec<&'a str>,
    metadata: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn new(requests: &'a [AppendRequest]) -> Self {
        let events = requests.iter().map(|r| r.events.len()).sum();
        let mut c = Columns {
            streams: Vec::with_capacity(requests.len()),
            expect_kinds: Vec::with_capacity(requests.len()),
            expects: Vec::with_capacity(requests.len()),
            keys: Vec::with_capacity(requests.len()),
            request_hashes: Vec::with_capacity(requests.len()),
            window_starts: Vec::with_capacity(requests.len()),
            event_counts: Vec::with_capacity(requests.len()),
            types: Vec::with_capacity(events),
            schemas: Vec::with_capacity(events),
            data: Vec::with_capacity(events),
            metadata: Vec::with_capacity(events),
        };
        for r in requests {
            c.streams.push(&r.stream_id);
            let (kind, expect) = match r.expected {
                ExpectedVersion::Any => (0, 0),
                ExpectedVersion::NoStream => (1, 0),
                ExpectedVersion::Exact(v) => (2, int8(v)),
            };
            c.expect_kinds.push(kind);
            c.expects.push(expect);
            c.keys.push(r.idempotency.as_ref().map(|k| k.key.as_str()));
            c.request_hashes
                .push(r.idempotency.as_ref().map(|k| k.request_hash.as_str()));
            c.window_starts
                .push(r.idempotency.as_ref().map_or(0, |k| k.window_start_us));
            c.event_counts
                .push(i32::try_from(r.events.len()).unwrap_or(i32::MAX));
            for e in &r.events {
                c.types.push(&e.event_type);
                c.schemas.push(i64::from(e.schema));
                c.data.push(&e.data);
                c.metadata.push(&e.metadata);
            }
        }
        c
    }
}

/// Call `kiln_append` for `requests`; each one's outcome, in order, and
/// the end of the log after the batch.
async fn append(
    conn: &mut PgConnection,
    requests: Vec<AppendRequest>,
    origin: &str,
) -> Result<(Vec<Result<AppendOutcome, StoreError>>, Position), sqlx::Error> {
    // Kept to the millisecond, the precision the API shows.
    let now = now_us() / 1000 * 1000;
    let answer: AppendAnswer = {
        let c = Columns::new(&requests);
        sqlx::query_as(include_str!("sql/append.sql"))
            .bind(c.streams)
            .bind(c.expect_kinds)
            .bind(c.expects)
            .bind(c.keys)
            .bind(c.request_hashes)
            .bind(c.window_starts)
            .bind(c.event_counts)
            .bind(c.types)
            .bind(c.schemas)
            .bind(c.data)
            .bind(c.metadata)
            .bind(now)
            .bind(CHANNEL)
            .bind(origin)
            .fetch_one(&mut *conn)
            .await?
    };
    answer.outcomes(requests)
}

/// The row `kiln_append` answers: per request its outcome (0 committed,
/// 1 wrong expected version, else already applied), version and first
/// position; per event its hash; per request the idempotency entry that
/// answered it (`k_*`, NULL unless already applied).
#[derive(sqlx::FromRow)]
struct AppendAnswer {
    outcomes: Vec<i16>,
    versions: Vec<i64>,
    first_positions: Vec<Option<i64>>,
    hashes: Vec<Option<Vec<u8>>>,
    recorded_at: i64,
    tail_position: i64,
    k_request_hash: Vec<Option<String>>,
    k_stream_id: Vec<Option<String>>,
    k_version: Vec<Option<i64>>,
    k_first_position: Vec<Option<i64>>,
    k_event_count: Vec<Option<i64>>,
    k_created_at: Vec<Option<i64>>,
}

/// A row `kiln_append` should not have answered, as a decode error.
fn corrupt(message: String) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(StoreError::Corrupt(message)))
}

impl AppendAnswer {
    /// Each request's outcome, and the log's tail.
    fn outcomes(
        mut self,
        requests: Vec<AppendRequest>,
    ) -> Result<(Vec<Result<AppendOutcome, StoreError>>, Position), sqlx::Error> {
        if self.outcomes.len() != requests.len() {
            return Err(corrupt(format!(
                "kiln_append answered {} of {} requests",
                self.outcomes.len(),
                requests.len()
            )));
        }
        let mut hashes = std::mem::take(&mut self.hashes).into_iter();
        let mut answers = Vec::with_capacity(requests.len());
        for (i, request) in requests.into_iter().enumerate() {
            let mine: Vec<Option<Vec<u8>>> = hashes.by_ref().take(request.events.len()).collect();
            let answer = match self.outcomes[i] {
                0 => Ok(self.committed(i, request, mine)?),
                1 => Err(StoreError::WrongExpectedVersion {
                    stream_id: request.stream_id,
                    expected: request.expected,
                    actual: self.versions[i] as u64,
                }),
                _ => Ok(self.already_applied(i, request)),
            };
            answers.push(answer);
        }
        Ok((answers, self.tail_position as u64))
    }

    /// The events request `i` recorded, with their hashes.
    fn committed(
        &self,
        i: usize,
        request: AppendRequest,
        hashes: Vec<Option<Vec<u8>>>,
    ) -> Result<AppendOutcome, sqlx::Error> {
        let count = request.events.len();
        let version = self.versions[i] as u64;
        let first = self.first_positions[i].unwrap_or(0) as u64;
        let mut events = Vec::with_capacity(count);
        for (j, (event, hash)) in request.events.into_iter().zip(hashes).enumerate() {
            let hash = hash.ok_or_else(|| corrupt("a committed event without its hash".into()))?;
            events.push(RecordedEvent {
                position: first + j as u64,
                stream_id: request.stream_id.clone(),
                version: version - count as u64 + 1 + j as u64,
                event_type: event.event_type,
                schema: event.schema,
                data: event.data,
                metadata: event.metadata,
                recorded_at_us: self.recorded_at,
                hash: hash_from(hash).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            });
        }
        Ok(AppendOutcome::Committed { version, events })
    }

    /// The idempotency entry that answered request `i`.
    fn already_applied(&self, i: usize, request: AppendRequest) -> AppendOutcome {
        let key = request
            .idempotency
            .map(|claim| claim.key)
            .unwrap_or_default();
        AppendOutcome::AlreadyApplied(IdempotencyEntry {
            key,
            request_hash: self.k_request_hash[i].clone().unwrap_or_default(),
            stream_id: self.k_stream_id[i].clone().unwrap_or_default(),
            version: self.k_version[i].unwrap_or(0) as u64,
            first_position: self.k_first_position[i].map(|p| p as u64),
            event_count: self.k_event_count[i].unwrap_or(0) as u32,
            created_at_us: self.k_created_at[i].unwrap_or(0),
        })
    }
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
