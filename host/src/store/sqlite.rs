//! The SQLite backend: one file, WAL, one writer task doing group commit.
//!
//! All writes go through a single writer task that owns the only write
//! connection. It takes every request queued at the moment (up to
//! `max_batch`), applies them in one transaction and commits once, so one
//! fsync acknowledges many commands. Readers use a separate pool; WAL lets
//! them read while the writer writes. Positions are assigned by the writer,
//! so the global order is gap-free and a reader never sees a later position
//! before an earlier one.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};

use super::hash_chain::{self, HashInput};
use super::{
    AppendOutcome, AppendRequest, EventStore, IdempotencyEntry, Position, RecordedEvent, Snapshot,
    StoreError, StreamQuery, now_us,
};

/// Tuning of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most requests committed in one transaction. Bounds the latency a batch
    /// adds and the memory it holds.
    pub max_batch: usize,
    /// Connections for readers.
    pub read_connections: u32,
    /// Queue of requests waiting for the writer; senders wait when it is full.
    pub queue_depth: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            read_connections: 8,
            queue_depth: 4096,
        }
    }
}

const SELECT_EVENT: &str = "SELECT position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash FROM events";

/// An event store in one SQLite file.
pub struct SqliteStore {
    readers: SqlitePool,
    writer: mpsc::Sender<WriteOp>,
    head: watch::Receiver<Position>,
}

enum WriteOp {
    Append(
        AppendRequest,
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ),
    Snapshot(Snapshot, oneshot::Sender<Result<(), StoreError>>),
    Purge(i64, oneshot::Sender<Result<u64, StoreError>>),
    Shutdown(oneshot::Sender<()>),
}

/// The writer's view of the end of the log.
#[derive(Debug, Clone, Copy)]
struct Tail {
    position: Position,
    hash: [u8; 32],
    recorded_at_us: i64,
}

impl SqliteStore {
    /// Open (creating if missing) the database at `url` (`sqlite://path` or a
    /// plain path), apply migrations and start the writer.
    pub async fn open(url: &str, options: SqliteOptions) -> Result<Self, StoreError> {
        let connect = connect_options(url)?;
        let mut conn = SqliteConnection::connect_with(&connect).await?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&mut conn)
            .await?;
        let tail = load_tail(&mut conn).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .connect_with(connect.read_only(true))
            .await?;
        let (head_tx, head) = watch::channel(tail.position);
        let (writer, rx) = mpsc::channel(options.queue_depth.max(1));
        let max_batch = options.max_batch.max(1);
        tokio::spawn(run_writer(conn, rx, tail, head_tx, max_batch));
        Ok(Self {
            readers,
            writer,
            head,
        })
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(make(tx))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }
}

fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let url = if url.starts_with("sqlite:") {
        url.to_string()
    } else {
        format!("sqlite://{url}")
    };
    let options = SqliteConnectOptions::from_str(&url)
        .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL {url}: {e}")))?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: every commit is fsynced before the writer acknowledges it.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5)))
}

async fn load_tail(conn: &mut SqliteConnection) -> Result<Tail, StoreError> {
    let row = sqlx::query(
        "SELECT position, hash, recorded_at FROM events ORDER BY position DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok(Tail {
            position: 0,
            hash: hash_chain::GENESIS,
            recorded_at_us: 0,
        }),
        Some(row) => Ok(Tail {
            position: row.try_get::<i64, _>(0)? as u64,
            hash: hash_from(row.try_get::<Vec<u8>, _>(1)?)?,
            recorded_at_us: row.try_get(2)?,
        }),
    }
}

fn hash_from(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| StoreError::Corrupt(format!("event hash of {} bytes", b.len())))
}

fn event_from_row(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: row.try_get::<i64, _>(0)? as u64,
        stream_id: row.try_get(1)?,
        version: row.try_get::<i64, _>(2)? as u64,
        event_type: row.try_get(3)?,
        schema: row.try_get::<i64, _>(4)? as u32,
        data: row.try_get(5)?,
        metadata: row.try_get(6)?,
        recorded_at_us: row.try_get(7)?,
        hash: hash_from(row.try_get(8)?)?,
    })
}

fn idempotency_from_row(row: &SqliteRow) -> Result<IdempotencyEntry, StoreError> {
    Ok(IdempotencyEntry {
        key: row.try_get(0)?,
        request_hash: row.try_get(1)?,
        stream_id: row.try_get(2)?,
        version: row.try_get::<i64, _>(3)? as u64,
        first_position: row.try_get::<Option<i64>, _>(4)?.map(|p| p as u64),
        event_count: row.try_get::<i64, _>(5)? as u32,
        created_at_us: row.try_get(6)?,
    })
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteOp>,
    mut tail: Tail,
    head_tx: watch::Sender<Position>,
    max_batch: usize,
) {
    let mut ops = Vec::with_capacity(max_batch);
    loop {
        let Some(first) = rx.recv().await else { break };
        ops.push(first);
        while ops.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let shutdown = commit_batch(&mut conn, &mut tail, &mut ops).await;
        let _ = head_tx.send(tail.position);
        if let Some(done) = shutdown {
            rx.close();
            // Requests that raced the shutdown are refused, never dropped silently.
            while let Ok(op) = rx.try_recv() {
                refuse(op);
            }
            let _ = conn.close().await;
            let _ = done.send(());
            return;
        }
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
        WriteOp::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

/// What one batch will answer once its transaction has committed.
enum Reply {
    Append(
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
        Result<AppendOutcome, StoreError>,
    ),
    Snapshot(oneshot::Sender<Result<(), StoreError>>),
    Purge(oneshot::Sender<Result<u64, StoreError>>, u64),
}

/// Apply `ops` in one transaction and answer each. Returns the shutdown
/// acknowledgement if the batch contained a shutdown request.
async fn commit_batch(
    conn: &mut SqliteConnection,
    tail: &mut Tail,
    ops: &mut Vec<WriteOp>,
) -> Option<oneshot::Sender<()>> {
    let mut replies = Vec::with_capacity(ops.len());
    let mut shutdown = None;
    let mut tentative = *tail;
    let mut pending: std::collections::VecDeque<WriteOp> = ops.drain(..).collect();
    let result = async {
        let mut tx = conn.begin().await?;
        let mut batch = BatchState::default();
        while let Some(op) = pending.pop_front() {
            match op {
                WriteOp::Append(request, reply) => {
                    let outcome = append_one(&mut tx, &mut tentative, &mut batch, request).await?;
                    replies.push(Reply::Append(reply, outcome));
                }
                WriteOp::Snapshot(snapshot, reply) => {
                    save_snapshot(&mut tx, &snapshot).await?;
                    replies.push(Reply::Snapshot(reply));
                }
                WriteOp::Purge(before_us, reply) => {
                    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
                        .bind(before_us)
                        .execute(&mut *tx)
                        .await?;
                    replies.push(Reply::Purge(reply, done.rows_affected()));
                }
                WriteOp::Shutdown(done) => shutdown = Some(done),
            }
        }
        tx.commit().await?;
        Ok::<(), sqlx::Error>(())
    }
    .await;
    match result {
        Ok(()) => {
            *tail = tentative;
            for reply in replies {
                match reply {
                    Reply::Append(tx, outcome) => {
                        let _ = tx.send(outcome);
                    }
                    Reply::Snapshot(tx) => {
                        let _ = tx.send(Ok(()));
                    }
                    Reply::Purge(tx, n) => {
                        let _ = tx.send(Ok(n));
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "event store batch failed; nothing of it was committed");
            let message = e.to_string();
            // Requests not reached before the failure were drained too; all
            // of them are answered with the error.
            for op in pending.drain(..) {
                if let WriteOp::Shutdown(done) = op {
                    shutdown = Some(done);
                } else {
                    refuse_with(op, &message);
                }
            }
            for reply in replies {
                let err = || StoreError::Unavailable(message.clone());
                match reply {
                    Reply::Append(tx, _) => {
                        let _ = tx.send(Err(err()));
                    }
                    Reply::Snapshot(tx) => {
                        let _ = tx.send(Err(err()));
                    }
                    Reply::Purge(tx, _) => {
                        let _ = tx.send(Err(err()));
                    }
                }
            }
        }
    }
    shutdown
}

fn refuse_with(op: WriteOp, message: &str) {
    let err = || StoreError::Unavailable(message.to_string());
    match op {
        WriteOp::Append(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        WriteOp::Snapshot(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        WriteOp::Purge(_, reply) => {
            let _ = reply.send(Err(err()));
        }
        WriteOp::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

/// Versions and idempotency keys written earlier in the same batch.
#[derive(Default)]
struct BatchState {
    versions: HashMap<String, u64>,
    keys: HashMap<String, IdempotencyEntry>,
}

/// Check and stage one append. The outer error aborts the whole batch (a
/// database failure); the inner one is this request's own answer.
async fn append_one(
    tx: &mut SqliteConnection,
    tail: &mut Tail,
    batch: &mut BatchState,
    request: AppendRequest,
) -> Result<Result<AppendOutcome, StoreError>, sqlx::Error> {
    if let Some(claim) = &request.idempotency {
        if let Some(entry) = batch.keys.get(&claim.key) {
            return Ok(Ok(AppendOutcome::AlreadyApplied(entry.clone())));
        }
        let existing = sqlx::query(
            "SELECT key, request_hash, stream_id, version, first_position, event_count, created_at \
             FROM idempotency_keys WHERE key = ?",
        )
        .bind(&claim.key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            match idempotency_from_row(&row) {
                Ok(entry) if entry.created_at_us >= claim.window_start_us => {
                    return Ok(Ok(AppendOutcome::AlreadyApplied(entry)));
                }
                // Expired: the key is free again; the row is replaced below.
                Ok(_) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
    }
    let actual = match batch.versions.get(&request.stream_id) {
        Some(v) => *v,
        None => current_version(tx, &request.stream_id).await?,
    };
    if !request.expected.matches(actual) {
        return Ok(Err(StoreError::WrongExpectedVersion {
            stream_id: request.stream_id,
            expected: request.expected,
            actual,
        }));
    }
    // Recorded times never decrease along positions, so time travel by
    // recorded time agrees with the order of the log. They are kept to the
    // millisecond, the precision the API shows, so a time a client read
    // back selects exactly the events it saw.
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
        sqlx::query(
            "INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(position as i64)
        .bind(&request.stream_id)
        .bind(version as i64)
        .bind(&event.event_type)
        .bind(i64::from(event.schema))
        .bind(&event.data)
        .bind(&event.metadata)
        .bind(recorded_at_us)
        .bind(&hash[..])
        .execute(&mut *tx)
        .await?;
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
    batch.versions.insert(request.stream_id.clone(), version);
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
        sqlx::query(
            "INSERT OR REPLACE INTO idempotency_keys (key, request_hash, stream_id, version, first_position, event_count, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&entry.key)
        .bind(&entry.request_hash)
        .bind(&entry.stream_id)
        .bind(entry.version as i64)
        .bind(entry.first_position.map(|p| p as i64))
        .bind(i64::from(entry.event_count))
        .bind(entry.created_at_us)
        .execute(&mut *tx)
        .await?;
        batch.keys.insert(entry.key.clone(), entry);
    }
    Ok(Ok(AppendOutcome::Committed {
        version,
        events: recorded,
    }))
}

async fn current_version(conn: &mut SqliteConnection, stream_id: &str) -> Result<u64, sqlx::Error> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM events WHERE stream_id = ?")
        .bind(stream_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(v.unwrap_or(0) as u64)
}

async fn save_snapshot(conn: &mut SqliteConnection, s: &Snapshot) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO snapshots (stream_id, plugin_hash, version, state, taken_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (stream_id, plugin_hash) DO UPDATE SET version = excluded.version, \
         state = excluded.state, taken_at = excluded.taken_at WHERE excluded.version > snapshots.version",
    )
    .bind(&s.stream_id)
    .bind(&s.plugin_hash)
    .bind(s.version as i64)
    .bind(&s.state)
    .bind(now_us())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.send(|reply| WriteOp::Append(request, reply)).await
    }

    async fn read_stream(&self, q: StreamQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "{SELECT_EVENT} WHERE stream_id = ? AND version >= ? AND version <= ? AND recorded_at <= ? \
             ORDER BY version LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(q.stream_id)
            .bind(q.from_version.min(i64::MAX as u64) as i64)
            .bind(q.to_version.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64)
            .bind(q.recorded_until_us.unwrap_or(i64::MAX))
            .bind(i64::from(q.limit))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: u32,
        types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let from = from_position.min(i64::MAX as u64) as i64;
        let rows = match types {
            None | Some([]) => {
                let sql = format!("{SELECT_EVENT} WHERE position >= ? ORDER BY position LIMIT ?");
                sqlx::query(&sql)
                    .bind(from)
                    .bind(i64::from(limit))
                    .fetch_all(&self.readers)
                    .await?
            }
            Some(types) => {
                // The types travel as one JSON array parameter: no SQL is built
                // from input.
                let sql = format!(
                    "{SELECT_EVENT} WHERE position >= ? AND event_type IN (SELECT value FROM json_each(?)) \
                     ORDER BY position LIMIT ?"
                );
                let types = serde_json::to_string(types)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                sqlx::query(&sql)
                    .bind(from)
                    .bind(types)
                    .bind(i64::from(limit))
                    .fetch_all(&self.readers)
                    .await?
            }
        };
        rows.iter().map(event_from_row).collect()
    }

    async fn read_positions(
        &self,
        first: Position,
        count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!("{SELECT_EVENT} WHERE position >= ? AND position < ? ORDER BY position");
        let rows = sqlx::query(&sql)
            .bind(first as i64)
            .bind((first + u64::from(count)) as i64)
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let mut conn = self.readers.acquire().await?;
        Ok(current_version(&mut conn, stream_id).await?)
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM events")
            .fetch_one(&self.readers)
            .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    async fn find_idempotency(
        &self,
        key: &str,
        since_us: i64,
    ) -> Result<Option<IdempotencyEntry>, StoreError> {
        let row = sqlx::query(
            "SELECT key, request_hash, stream_id, version, first_position, event_count, created_at \
             FROM idempotency_keys WHERE key = ? AND created_at >= ?",
        )
        .bind(key)
        .bind(since_us)
        .fetch_optional(&self.readers)
        .await?;
        row.as_ref().map(idempotency_from_row).transpose()
    }

    async fn purge_idempotency(&self, before_us: i64) -> Result<u64, StoreError> {
        self.send(|reply| WriteOp::Purge(before_us, reply)).await
    }

    async fn load_snapshot(
        &self,
        stream_id: &str,
        plugin_hash: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(
            "SELECT version, state FROM snapshots WHERE stream_id = ? AND plugin_hash = ?",
        )
        .bind(stream_id)
        .bind(plugin_hash)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|row| {
            Ok(Snapshot {
                stream_id: stream_id.to_string(),
                plugin_hash: plugin_hash.to_string(),
                version: row.try_get::<i64, _>(0)? as u64,
                state: row.try_get(1)?,
            })
        })
        .transpose()
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.send(|reply| WriteOp::Snapshot(snapshot, reply)).await
    }

    fn subscribe_head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        if self.writer.is_closed() {
            return Err(StoreError::ShuttingDown);
        }
        Ok(())
    }

    async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.writer.send(WriteOp::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        self.readers.close().await;
    }
}
