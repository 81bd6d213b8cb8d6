//! The SQLite backend: one file, WAL, one writer doing group commit.
//!
//! All writes go through a single writer (`writer.rs`, on a thread of its
//! own) that owns the only write connection. It takes every request queued at the moment (up to
//! `max_batch`), applies them in one transaction and commits once, so one
//! fsync acknowledges many commands. Readers use a separate pool; WAL lets
//! them read while the writer writes. Positions are assigned by the writer,
//! so the global order is gap-free and a reader never sees a later position
//! before an earlier one.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::hash_chain;
use super::queries::{self, Sql};
use super::{
    AppendOutcome, AppendRequest, CommittedBatch, EventLog, EventStore, GlobalQuery,
    IdempotencyEntry, Position, RecordedEvent, RecordedTail, SagaCommit, SagaInstanceRecord,
    SagaLoad, Snapshot, StoreError, StreamQuery, ViewCommit,
};

mod catalog;
mod direct;
mod sagas;
mod statements;
mod writer;

use super::jobs::TypedJob;

/// A write job run by the writer through sqlx.
type JobFn<T> = super::jobs::JobFn<T, SqliteConnection>;
use statements::SQL;
use writer::{WriteOp, Writer};

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
    /// Commits the live feed buffers for a receiver that falls behind.
    pub feed_buffer: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            read_connections: 8,
            queue_depth: 4096,
            feed_buffer: 1024,
        }
    }
}

const SELECT_EVENT: &str = "SELECT position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash FROM events";

/// An event store in one SQLite file.
pub struct SqliteStore {
    readers: SqlitePool,
    writer: mpsc::Sender<WriteOp>,
    head: watch::Receiver<Position>,
    commits: broadcast::Sender<CommittedBatch>,
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
        let (commits, _) = broadcast::channel(options.feed_buffer.max(1));
        let (writer, rx) = mpsc::channel(options.queue_depth.max(1));
        Writer::new(conn, tail, head_tx, commits.clone()).spawn(rx, options.max_batch.max(1))?;
        Ok(Self {
            readers,
            writer,
            head,
            commits,
        })
    }

    /// With `fsync` false the job is atomic but need not be on disk before
    /// its answer (a projection batch: rebuildable, and atomic with its
    /// checkpoint).
    async fn run_job_with<T: Send + 'static>(
        &self,
        job: JobFn<T>,
        fsync: bool,
    ) -> Result<T, StoreError> {
        self.send(|reply| WriteOp::Job(Box::new(TypedJob::new(job, reply, fsync))))
            .await
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
        // Statement journals (a statement that may fail halfway inside the
        // writer's transaction keeps one) in memory, not in a temporary file
        // written page by page.
        .pragma("temp_store", "MEMORY")
        .busy_timeout(Duration::from_secs(5)))
}

/// Where the log goes on: after the recorded tail, or after the last event
/// if there are events beyond it (written by something else than the
/// writer). Positions of removed events are not reused, so `kiln verify`
/// goes on seeing the gap.
async fn load_tail(conn: &mut SqliteConnection) -> Result<Tail, StoreError> {
    let row = sqlx::query(
        "SELECT position, hash, recorded_at FROM events \
         UNION ALL SELECT position, hash, recorded_at FROM log_tail \
         ORDER BY 1 DESC LIMIT 1",
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

/// One event as `json_array(...)` gives it, in `SELECT_EVENT`'s order.
type EventTuple = (u64, String, u64, String, u32, String, String, i64, String);

/// Events from a page built by `json_group_array`, in position order.
fn events_from_json_page(json: &str) -> Result<Vec<RecordedEvent>, StoreError> {
    let tuples: Vec<EventTuple> = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("a page of events did not decode: {e}")))?;
    let mut events = tuples
        .into_iter()
        .map(
            |(
                position,
                stream_id,
                version,
                event_type,
                schema,
                data,
                metadata,
                recorded_at_us,
                hash,
            )| {
                let hash = hex::decode(&hash)
                    .map_err(|e| StoreError::Corrupt(format!("event hash is not hex: {e}")))?;
                Ok(RecordedEvent {
                    position,
                    stream_id,
                    version,
                    event_type,
                    schema,
                    data,
                    metadata,
                    recorded_at_us,
                    hash: hash_from(hash)?,
                })
            },
        )
        .collect::<Result<Vec<_>, StoreError>>()?;
    // Aggregates keep the subquery's order in SQLite; make sure of it.
    if !events.is_sorted_by_key(|e| e.position) {
        events.sort_by_key(|e| e.position);
    }
    Ok(events)
}

/// An idempotency entry from the row's columns `first..first + 7` (key,
/// request hash, stream, version, first position, event count, created at).
fn idempotency_from_row(row: &SqliteRow, first: usize) -> Result<IdempotencyEntry, sqlx::Error> {
    Ok(IdempotencyEntry {
        key: row.try_get(first)?,
        request_hash: row.try_get(first + 1)?,
        stream_id: row.try_get(first + 2)?,
        version: row.try_get::<i64, _>(first + 3)? as u64,
        first_position: row.try_get::<Option<i64>, _>(first + 4)?.map(|p| p as u64),
        event_count: row.try_get::<i64, _>(first + 5)? as u32,
        created_at_us: row.try_get(first + 6)?,
    })
}

async fn current_version(conn: &mut SqliteConnection, stream_id: &str) -> Result<u64, sqlx::Error> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM events WHERE stream_id = ?")
        .bind(stream_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(v.unwrap_or(0) as u64)
}

#[async_trait]
impl EventLog for SqliteStore {
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

    async fn read_global(&self, q: GlobalQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
        let from = q.from_position.min(i64::MAX as u64) as i64;
        let until = q
            .until_position
            .unwrap_or(i64::MAX as u64)
            .min(i64::MAX as u64) as i64;
        // The page comes back as one row holding a JSON array: sqlx's SQLite
        // driver hands every row across threads on its own, which costs
        // more than the row. The types travel as one JSON array parameter:
        // no SQL is built from input.
        let types = match q.types {
            None | Some([]) => None,
            Some(types) => Some(
                serde_json::to_string(types).map_err(|e| StoreError::Unavailable(e.to_string()))?,
            ),
        };
        let page: Option<String> = sqlx::query_scalar(
            "SELECT json_group_array(json_array(position, stream_id, version, event_type, schema, \
             data, metadata, recorded_at, hex(hash))) FROM (SELECT * FROM events \
             WHERE position >= ?1 AND position <= ?2 \
             AND (?3 IS NULL OR event_type IN (SELECT value FROM json_each(?3))) \
             ORDER BY position LIMIT ?4)",
        )
        .bind(from)
        .bind(until)
        .bind(types)
        .bind(i64::from(q.limit))
        .fetch_one(&self.readers)
        .await?;
        events_from_json_page(page.as_deref().unwrap_or("[]"))
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

    async fn recorded_tail(&self) -> Result<RecordedTail, StoreError> {
        let (position, hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT position, hash FROM log_tail WHERE id = 1")
                .fetch_one(&self.readers)
                .await?;
        Ok(RecordedTail {
            position: position as u64,
            hash: hash_from(hash)?,
        })
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
        Ok(row
            .as_ref()
            .map(|row| idempotency_from_row(row, 0))
            .transpose()?)
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

    fn subscribe_commits(&self) -> broadcast::Receiver<CommittedBatch> {
        self.commits.subscribe()
    }
}

/// The role traits (`ViewStore`, `PluginCatalog`, `LeaseStore`,
/// `SagaStore`) are `store::sql_roles`, shared with PostgreSQL; these are
/// SQLite's own parts.
#[async_trait]
impl super::sql_roles::SqlBackend for SqliteStore {
    type Db = sqlx::Sqlite;

    fn sql(&self) -> &'static Sql {
        &SQL
    }

    fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    async fn run_job<T: Send + 'static>(
        &self,
        job: JobFn<T>,
        durable: bool,
    ) -> Result<T, StoreError> {
        self.run_job_with(job, durable).await
    }

    async fn commit_view(&self, commit: ViewCommit) -> Result<(), StoreError> {
        self.run_job_with(
            Box::new(move |conn| Box::pin(catalog::commit_view(conn, commit))),
            false,
        )
        .await
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl_us: i64) -> Result<bool, StoreError> {
        let name = name.to_string();
        let holder = holder.to_string();
        self.run_job_with(
            Box::new(move |conn| Box::pin(catalog::try_lease(conn, name, holder, ttl_us))),
            true,
        )
        .await
    }

    async fn saga_load(&self, saga: &str) -> Result<SagaLoad, StoreError> {
        let mut conn = self.readers.acquire().await?;
        queries::load::<sqlx::Sqlite>(&SQL, &mut conn, saga).await
    }

    async fn commit_saga(&self, commit: SagaCommit) -> Result<(), StoreError> {
        // The WAL is written in order: the fsync of the append of a command
        // the saga dispatches after this commit puts this commit on disk too.
        let job = |reply| sagas::SagaJob::new(commit, reply);
        let (reply, done) = oneshot::channel();
        self.writer
            .send(WriteOp::Saga(Box::new(job(reply)?)))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        done.await.map_err(|_| StoreError::ShuttingDown)?
    }

    async fn commit_saga_ordered(
        &self,
        commit: SagaCommit,
        ordered: oneshot::Sender<()>,
    ) -> Result<(), StoreError> {
        // The writer takes its queue in order and commits each batch as one
        // transaction (a failed batch commits nothing): once this job is
        // queued, a later append commits in its batch or in a later one.
        let (reply, done) = oneshot::channel();
        let job = sagas::SagaJob::new(commit, reply)?;
        self.writer
            .send(WriteOp::Saga(Box::new(job)))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        let _ = ordered.send(());
        done.await.map_err(|_| StoreError::ShuttingDown)?
    }

    fn orders_writes_as_queued(&self) -> bool {
        true
    }

    async fn saga_instances(
        &self,
        saga: &str,
        instances: &[String],
    ) -> Result<Vec<SagaInstanceRecord>, StoreError> {
        sagas::instances(&self.readers, saga, instances).await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
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

#[cfg(test)]
mod tests;
