//! The PostgreSQL backend: several hosts on one database, each with one
//! writer task doing group commit.
//!
//! As in the SQLite backend, every write of a host goes through one writer
//! task that owns one connection: it takes what is queued (up to
//! `max_batch`) and commits all its appends in one transaction, so one WAL
//! flush acknowledges many commands. The other writes of the batch
//! (projection and saga commits, snapshots) commit in a second transaction,
//! so that the lock all hosts' appends wait for is held for appends only.
//! Readers use a pool.
//!
//! The global order stays gap-free with several hosts because every
//! transaction that appends first locks the one row of `log_tail` and takes
//! its positions, the previous hash and the previous recorded time from it
//! (see `writer.rs` and docs/design.md). Appending transactions therefore
//! commit one after the other, in position order, and a reader never sees
//! position N+1 before N.
//!
//! Other hosts' commits reach this host's head `watch` and live feed through
//! LISTEN/NOTIFY, with polling as the safety net (`follower.rs`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::queries::{Sql, int8};
use super::{
    AppendOutcome, AppendRequest, CommittedBatch, EventLog, EventStore, GlobalQuery,
    IdempotencyEntry, Position, RecordedEvent, RecordedTail, SagaCommit, SagaInstanceRecord,
    SagaLoad, Snapshot, StoreError, StreamQuery, ViewCommit,
};

mod catalog;
mod follower;
mod sagas;
mod statements;
mod writer;

use super::jobs::TypedJob;
use follower::{Follower, Publisher, StreamVersions};

/// A write job run by the writer.
type JobFn<T> = super::jobs::JobFn<T, PgConnection>;
use statements::SQL;
use writer::{WriteOp, Writer};

/// Tuning of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most requests committed in one transaction. Bounds the latency a batch
    /// adds, the memory it holds and how long it holds the log's lock.
    pub max_batch: usize,
    /// Connections for readers (the writer and the listener have their own).
    pub read_connections: u32,
    /// Queue of requests waiting for the writer; senders wait when it is full.
    pub queue_depth: usize,
    /// Commits the live feed buffers for a receiver that falls behind.
    pub feed_buffer: usize,
    /// How often to look for commits of other hosts when no notification
    /// came: the safety net under LISTEN/NOTIFY.
    pub poll_interval: Duration,
    /// LISTEN for other hosts' commits. Off: polling only (for a proxy that
    /// pools connections per transaction and so cannot LISTEN).
    pub listen: bool,
    /// How long opening a connection may take before the store reports
    /// itself unavailable.
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            read_connections: 8,
            queue_depth: 4096,
            feed_buffer: 1024,
            poll_interval: Duration::from_secs(1),
            listen: true,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The NOTIFY channel an appending transaction signals; the payload is the
/// writing store's id and the new last position.
const CHANNEL: &str = "kiln_log";

/// How long the writer's session may sit idle inside a transaction before
/// the server ends it (and so releases the log's lock).
const WRITER_IDLE_IN_TRANSACTION: &str = "10s";

/// Events read from the log per query when following other hosts.
const FOLLOW_PAGE: u32 = 1000;

const SELECT_EVENT: &str = "SELECT position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash FROM events";

/// An event store in a PostgreSQL database, shareable by several hosts.
pub struct PostgresStore {
    readers: PgPool,
    writer: mpsc::Sender<WriteOp>,
    head: watch::Receiver<Position>,
    commits: broadcast::Sender<CommittedBatch>,
    follower: Follower,
    /// The latest versions of the streams recent commits touched.
    versions: Arc<StreamVersions>,
}

impl PostgresStore {
    /// How many times the follower read the log for stream versions that no
    /// notification carried.
    pub fn version_reads(&self) -> u64 {
        self.versions.reads()
    }

    /// Whether this store is listening for other hosts' commits now.
    pub fn listening(&self) -> tokio::sync::watch::Receiver<bool> {
        self.follower.listening()
    }

    /// Open the database at `url` (`postgres://user:password@host:port/db`),
    /// apply migrations and start the writer and the follower.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        Self::connect(connect, options).await
    }

    /// As [`PostgresStore::open`], with the connection options already parsed.
    pub async fn connect(
        connect: PgConnectOptions,
        options: PostgresOptions,
    ) -> Result<Self, StoreError> {
        // Named in pg_stat_activity, unless the URL names it already.
        let connect = match connect.get_application_name() {
            Some(_) => connect,
            None => connect.application_name("kiln"),
        };
        // Every host's appends wait for the log's lock, so a writer that
        // stops in the middle of a transaction (its host frozen, or gone
        // without closing the connection) must not hold it for long: the
        // server ends such a session, and the writer reconnects.
        let writer_connect = connect.clone().options([(
            "idle_in_transaction_session_timeout",
            WRITER_IDLE_IN_TRANSACTION,
        )]);
        let mut conn = connect_with_timeout(&writer_connect, options.connect_timeout).await?;
        // The migrator holds an advisory lock while it runs, so hosts that
        // start together apply each migration once.
        sqlx::migrate!("../migrations/postgres")
            .run(&mut conn)
            .await?;
        let tail = head_from(&mut conn).await?;
        let readers = PgPoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            .acquire_timeout(options.connect_timeout)
            .connect_lazy_with(connect.clone());
        let (head_tx, head) = watch::channel(tail);
        let (commits, _) = broadcast::channel(options.feed_buffer.max(1));
        let publisher = Arc::new(Publisher::new(head_tx, commits.clone()));
        let (writer, rx) = mpsc::channel(options.queue_depth.max(1));
        let origin: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let versions = Arc::new(StreamVersions::new(tail));
        let state = Writer::new(
            writer_connect,
            options.connect_timeout,
            conn,
            publisher.clone(),
            versions.clone(),
            origin.clone(),
        );
        tokio::spawn(writer::run(state, rx, options.max_batch.max(1)));
        let follower = Follower::spawn(
            readers.clone(),
            options.listen.then_some(connect),
            origin,
            publisher,
            options.poll_interval,
            versions.clone(),
        );
        Ok(Self {
            readers,
            writer,
            head,
            commits,
            follower,
            versions,
        })
    }

    /// With `durable` false the job is atomic but its commit need not be
    /// flushed before the answer (a projection batch: rebuildable, and
    /// atomic with its checkpoint).
    async fn run_job_with<T: Send + 'static>(
        &self,
        job: JobFn<T>,
        durable: bool,
    ) -> Result<T, StoreError> {
        self.send(|reply| WriteOp::Job(Box::new(TypedJob::new(job, reply, durable))))
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

async fn connect_with_timeout(
    connect: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(connect)).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no connection to PostgreSQL within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// The last committed position.
async fn head_from<'e, E>(executor: E) -> Result<Position, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let position: i64 = sqlx::query_scalar("SELECT position FROM log_tail")
        .fetch_one(executor)
        .await?;
    Ok(position as u64)
}

fn hash_from(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| StoreError::Corrupt(format!("event hash of {} bytes", b.len())))
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
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

fn idempotency_from_row(row: &PgRow) -> Result<IdempotencyEntry, StoreError> {
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

/// A slice of the global log; shared by the store and the follower.
async fn read_global(
    readers: &PgPool,
    q: GlobalQuery<'_>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let types: Option<Vec<&str>> = match q.types {
        None | Some([]) => None,
        Some(types) => Some(types.iter().map(String::as_str).collect()),
    };
    let sql = format!(
        "{SELECT_EVENT} WHERE position >= $1 AND position <= $2 \
         AND ($3::text[] IS NULL OR event_type = ANY($3)) ORDER BY position LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(int8(q.from_position))
        .bind(int8(q.until_position.unwrap_or(u64::MAX)))
        .bind(types)
        .bind(i64::from(q.limit))
        .fetch_all(readers)
        .await?;
    rows.iter().map(event_from_row).collect()
}

#[async_trait]
impl EventLog for PostgresStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.send(|reply| WriteOp::Append(request, reply)).await
    }

    async fn read_stream(&self, q: StreamQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "{SELECT_EVENT} WHERE stream_id = $1 AND version >= $2 AND version <= $3 \
             AND recorded_at <= $4 ORDER BY version LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(q.stream_id)
            .bind(int8(q.from_version))
            .bind(int8(q.to_version.unwrap_or(u64::MAX)))
            .bind(q.recorded_until_us.unwrap_or(i64::MAX))
            .bind(i64::from(q.limit))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_global(&self, q: GlobalQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
        read_global(&self.readers, q).await
    }

    async fn read_positions(
        &self,
        first: Position,
        count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql =
            format!("{SELECT_EVENT} WHERE position >= $1 AND position < $2 ORDER BY position");
        let rows = sqlx::query(&sql)
            .bind(int8(first))
            .bind(int8(first.saturating_add(u64::from(count))))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(stream_id)
        .fetch_optional(&self.readers)
        .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        Ok(head_from(&self.readers).await?)
    }

    async fn recorded_tail(&self) -> Result<RecordedTail, StoreError> {
        let (position, hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT position, hash FROM log_tail")
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
             FROM idempotency_keys WHERE key = $1 AND created_at >= $2",
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
            "SELECT version, state FROM snapshots WHERE stream_id = $1 AND plugin_hash = $2",
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

    fn shared(&self) -> bool {
        true
    }

    fn newer_version_known(&self, stream_id: &str, version: u64) -> bool {
        self.versions.newer_than(stream_id, version)
    }
}

/// The role traits (`ViewStore`, `PluginCatalog`, `LeaseStore`,
/// `SagaStore`) are `store::sql_roles`, shared with SQLite; these are
/// PostgreSQL's own parts.
#[async_trait]
impl super::sql_roles::SqlBackend for PostgresStore {
    type Db = sqlx::Postgres;

    fn sql(&self) -> &'static Sql {
        &SQL
    }

    fn readers(&self) -> &PgPool {
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
        sagas::load(&self.readers, saga).await
    }

    async fn commit_saga(&self, commit: SagaCommit) -> Result<(), StoreError> {
        self.run_job_with(
            Box::new(move |conn| Box::pin(sagas::commit_saga(conn, commit))),
            true,
        )
        .await
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
impl EventStore for PostgresStore {
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
        self.follower.stop().await;
        self.readers.close().await;
    }
}
