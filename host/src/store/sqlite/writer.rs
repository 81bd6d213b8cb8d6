//! The single writer: group commit of every write to the SQLite file.
//!
//! The writer runs on a thread of its own and owns the only write
//! connection. It takes every request queued at the moment (up to
//! `max_batch`), applies them in one transaction and commits once, so one
//! fsync acknowledges many commands. Appends, snapshots, purges and saga
//! commits run as prepared statements on the connection directly
//! ([`super::direct`]): one lock of the connection per batch instead of a
//! round trip to sqlx's connection thread per statement. Other jobs
//! (projection commits, catalog writes) run through sqlx inside the same
//! transaction. What a batch writes directly is in `writer/staging.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use lru::LruCache;
use sqlx::{Connection as _, SqliteConnection};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

mod staging;

use super::Tail;
use super::direct::{Direct, Prepared, SqliteError};
use super::sagas::SagaJob;
use crate::store::jobs::Job as AnyJob;
use crate::store::{
    AppendOutcome, AppendRequest, CommittedBatch, Position, RecordedEvent, Snapshot, StoreError,
};

/// A sqlx write job of this backend.
type Job = dyn AnyJob<SqliteConnection>;

/// A request to the writer.
pub(super) enum WriteOp {
    Append(
        AppendRequest,
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ),
    Snapshot(Snapshot, oneshot::Sender<Result<(), StoreError>>),
    Purge(i64, oneshot::Sender<Result<u64, StoreError>>),
    /// A saga's commit, run on the connection directly.
    Saga(Box<SagaJob>),
    /// Any other write, run through sqlx inside the batch's transaction.
    Job(Box<Job>),
    Shutdown(oneshot::Sender<()>),
}

/// Why a batch failed as a whole (nothing of it was committed).
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
}

/// What the batch's callers are told: a file that cannot be used now is
/// `Unavailable`; any other failure is `Internal`, keeping its cause.
impl From<BatchError> for StoreError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Sqlx(e) => e.into(),
            BatchError::Sqlite(e) if crate::store::db_error::sqlite_unavailable(e.code) => {
                StoreError::Unavailable(e.to_string())
            }
            BatchError::Sqlite(e) => StoreError::internal(e),
        }
    }
}

/// The writer's connection and its prepared statements, which must be
/// finalized before the connection closes.
struct Connection {
    conn: Option<SqliteConnection>,
    prepared: Prepared,
}

impl Connection {
    fn sqlx(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Run `work` with the connection locked for direct statements.
    async fn direct<T>(
        &mut self,
        work: impl FnOnce(&mut Direct<'_>) -> T,
    ) -> Result<T, sqlx::Error> {
        let conn = self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        let mut handle = conn.lock_handle().await?;
        let mut db = Direct::new(&mut handle, &mut self.prepared);
        Ok(work(&mut db))
    }

    /// Finalize the statements and close the connection.
    async fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if let Ok(mut handle) = conn.lock_handle().await {
                Direct::new(&mut handle, &mut self.prepared).finalize_all();
            }
            if self.prepared.is_empty() {
                let _ = conn.close().await;
            } else {
                // Closing with statements left would fail inside sqlx's
                // thread; leaking the connection is the lesser harm.
                std::mem::forget(conn);
            }
        }
    }
}

impl Drop for Connection {
    /// The writer ended without closing (it panicked): finalize what is
    /// left, waiting on this thread (the writer's own) for the lock.
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.prepared.is_empty()
            && let Ok(mut handle) = block_on(conn.lock_handle())
        {
            Direct::new(&mut handle, &mut self.prepared).finalize_all();
        }
        if !self.prepared.is_empty() {
            std::mem::forget(conn);
        }
    }
}

/// Wait for `future` on the current thread, outside any executor.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// The writer's state.
pub(super) struct Writer {
    conn: Connection,
    tail: Tail,
    /// Committed versions of recently written streams. The writer is the
    /// only writer of the file, so an entry stays true until it writes that
    /// stream again; a failed batch clears it all.
    versions: LruCache<String, u64>,
    head_tx: watch::Sender<Position>,
    commits_tx: broadcast::Sender<CommittedBatch>,
    /// Whether the connection is at `synchronous = FULL` (else `NORMAL`).
    sync_full: bool,
}

/// Streams whose versions the writer remembers.
const VERSION_CACHE_ENTRIES: usize = 100_000;

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        tail: Tail,
        head_tx: watch::Sender<Position>,
        commits_tx: broadcast::Sender<CommittedBatch>,
    ) -> Self {
        Self {
            conn: Connection {
                conn: Some(conn),
                prepared: Prepared::default(),
            },
            tail,
            versions: LruCache::new(
                NonZeroUsize::new(VERSION_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
            ),
            head_tx,
            commits_tx,
            sync_full: true,
        }
    }

    /// Run the writer on a thread of its own until the store shuts down or
    /// every sender is gone. Its statements block (SQLite, fsync), so it
    /// must not hold one of the runtime's worker threads.
    pub(super) fn spawn(
        self,
        rx: mpsc::Receiver<WriteOp>,
        max_batch: usize,
    ) -> Result<(), StoreError> {
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("kiln-sqlite-writer".into())
            .spawn(move || runtime.block_on(self.run(rx, max_batch)))
            .map(drop)
            .map_err(|e| StoreError::Unavailable(format!("starting the SQLite writer: {e}")))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<WriteOp>, max_batch: usize) {
        let mut ops = Vec::with_capacity(max_batch);
        // For the log line at shutdown: how busy the writer was.
        let (mut busy, mut batches, mut nops) = (std::time::Duration::ZERO, 0u64, 0u64);
        let born = std::time::Instant::now();
        loop {
            let Some(first) = rx.recv().await else { break };
            let t0 = std::time::Instant::now();
            ops.push(first);
            while ops.len() < max_batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            nops += ops.len() as u64;
            batches += 1;
            let shutdown = self.commit_batch(&mut ops).await;
            busy += t0.elapsed();
            if shutdown.is_some() {
                tracing::debug!(
                    alive_ms = born.elapsed().as_millis() as u64,
                    busy_ms = busy.as_millis() as u64,
                    batches,
                    ops = nops,
                    "SQLite writer stopping"
                );
            }
            if let Some(done) = shutdown {
                rx.close();
                // Requests that raced the shutdown are refused, never dropped silently.
                while let Ok(op) = rx.try_recv() {
                    refuse(op, &StoreError::ShuttingDown);
                }
                self.conn.close().await;
                let _ = done.send(());
                return;
            }
        }
        self.conn.close().await;
    }
}

fn refuse(op: WriteOp, error: &StoreError) {
    let err = || error.clone();
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
        WriteOp::Saga(job) => job.finish(Err(err())),
        WriteOp::Job(job) => job.finish(Err(err())),
        WriteOp::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

/// A write other than an append, snapshot or purge, in queue order.
enum BatchJob {
    Saga(Box<SagaJob>),
    Sqlx(Box<Job>),
}

impl BatchJob {
    fn needs_fsync(&self) -> bool {
        match self {
            BatchJob::Saga(job) => job.needs_fsync(),
            BatchJob::Sqlx(job) => job.durable(),
        }
    }

    fn finish(self, committed: Result<(), StoreError>) {
        match self {
            BatchJob::Saga(job) => job.finish(committed),
            BatchJob::Sqlx(job) => job.finish(committed),
        }
    }
}

/// The operations of one batch, by kind, with their reply channels.
#[derive(Default)]
struct Batch {
    appends: Vec<AppendRequest>,
    append_replies: Vec<oneshot::Sender<Result<AppendOutcome, StoreError>>>,
    snapshots: Vec<Snapshot>,
    snapshot_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    purges: Vec<i64>,
    purge_replies: Vec<oneshot::Sender<Result<u64, StoreError>>>,
    jobs: Vec<BatchJob>,
}

/// What a batch wrote, to be published once it has committed.
struct Written {
    outcomes: Vec<Result<AppendOutcome, StoreError>>,
    purged: Vec<u64>,
    tail: Tail,
    versions: HashMap<String, u64>,
}

impl Writer {
    /// Apply `ops` in one transaction (one fsync) and answer each. Returns
    /// the shutdown acknowledgement if the batch contained a shutdown.
    async fn commit_batch(&mut self, ops: &mut Vec<WriteOp>) -> Option<oneshot::Sender<()>> {
        let mut batch = Batch::default();
        let mut shutdown = None;
        for op in ops.drain(..) {
            match op {
                WriteOp::Append(request, reply) => {
                    batch.appends.push(request);
                    batch.append_replies.push(reply);
                }
                WriteOp::Snapshot(snapshot, reply) => {
                    batch.snapshots.push(snapshot);
                    batch.snapshot_replies.push(reply);
                }
                WriteOp::Purge(before, reply) => {
                    batch.purges.push(before);
                    batch.purge_replies.push(reply);
                }
                WriteOp::Saga(job) => batch.jobs.push(BatchJob::Saga(job)),
                WriteOp::Job(job) => batch.jobs.push(BatchJob::Sqlx(job)),
                WriteOp::Shutdown(done) => shutdown = Some(done),
            }
        }
        // A batch of projection commits alone is not fsynced: it stays
        // atomic (view rows and checkpoint together), survives a crash of
        // the process, and the next durable commit's fsync covers it.
        let needs_fsync = !batch.appends.is_empty()
            || !batch.snapshots.is_empty()
            || !batch.purges.is_empty()
            || batch.jobs.iter().any(BatchJob::needs_fsync);
        let appends = std::mem::take(&mut batch.appends);
        match self
            .write(
                needs_fsync,
                appends,
                &batch.snapshots,
                &batch.purges,
                &mut batch.jobs,
            )
            .await
        {
            Ok(written) => {
                self.tail = written.tail;
                // The head moves before anyone hears of the commit, so a
                // client that got its answer never reads an older head.
                let _ = self.head_tx.send(self.tail.position);
                self.publish(&written.outcomes);
                for job in batch.jobs {
                    job.finish(Ok(()));
                }
                for (stream, version) in written.versions {
                    self.versions.put(stream, version);
                }
                for (reply, outcome) in batch.append_replies.into_iter().zip(written.outcomes) {
                    let _ = reply.send(outcome);
                }
                for reply in batch.snapshot_replies {
                    let _ = reply.send(Ok(()));
                }
                for (reply, n) in batch.purge_replies.into_iter().zip(written.purged) {
                    let _ = reply.send(Ok(n));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "event store batch failed; nothing of it was committed");
                self.versions.clear();
                let error = StoreError::from(e);
                let err = || error.clone();
                for reply in batch.append_replies {
                    let _ = reply.send(Err(err()));
                }
                for reply in batch.snapshot_replies {
                    let _ = reply.send(Err(err()));
                }
                for reply in batch.purge_replies {
                    let _ = reply.send(Err(err()));
                }
                for job in batch.jobs {
                    job.finish(Err(err()));
                }
            }
        }
        shutdown
    }

    /// Hand the batch's committed events to the live feed, if anyone listens.
    fn publish(&self, outcomes: &[Result<AppendOutcome, StoreError>]) {
        if self.commits_tx.receiver_count() == 0 {
            return;
        }
        let events: Vec<RecordedEvent> = outcomes
            .iter()
            .filter_map(|o| match o {
                Ok(AppendOutcome::Committed { events, .. }) => Some(events.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        if !events.is_empty() {
            let _ = self.commits_tx.send(events.into());
        }
    }

    /// One transaction. Everything up to the first sqlx job runs with one
    /// lock of the connection (in the common batch, with no such job, the
    /// commit too); sqlx jobs run between direct sections, in queue order.
    async fn write(
        &mut self,
        needs_fsync: bool,
        appends: Vec<AppendRequest>,
        snapshots: &[Snapshot],
        purges: &[i64],
        jobs: &mut [BatchJob],
    ) -> Result<Written, BatchError> {
        let first_sqlx = jobs
            .iter()
            .position(|j| matches!(j, BatchJob::Sqlx(_)))
            .unwrap_or(jobs.len());
        let all_direct = first_sqlx == jobs.len();
        let set_sync = (needs_fsync != self.sync_full).then_some(needs_fsync);
        let mut tail = self.tail;
        let cache = &mut self.versions;
        let sync_full = &mut self.sync_full;
        let staged = self
            .conn
            .direct(|db| {
                if let Some(full) = set_sync {
                    // A durable batch that cannot switch to FULL fails as a whole.
                    db.execute(if full {
                        "PRAGMA synchronous = FULL"
                    } else {
                        "PRAGMA synchronous = NORMAL"
                    })?;
                    // The connection's setting, whatever becomes of the batch.
                    *sync_full = full;
                }
                db.execute("BEGIN")?;
                let staged = (|| {
                    let staged = staging::stage(db, cache, &mut tail, appends, snapshots, purges)?;
                    for job in jobs[..first_sqlx].iter_mut() {
                        run_direct(db, job)?;
                    }
                    if all_direct {
                        db.execute("COMMIT")?;
                    }
                    Ok::<_, SqliteError>(staged)
                })();
                if staged.is_err() {
                    let _ = db.execute("ROLLBACK");
                }
                staged
            })
            .await??;
        if !all_direct {
            let rest = self.write_rest(&mut jobs[first_sqlx..]).await;
            if rest.is_err() {
                let _ = self.conn.direct(|db| db.execute("ROLLBACK")).await;
            }
            rest?;
        }
        let (outcomes, purged, versions) = staged;
        Ok(Written {
            outcomes,
            purged,
            tail,
            versions,
        })
    }

    /// The batch's jobs from its first sqlx job on, then the commit.
    async fn write_rest(&mut self, jobs: &mut [BatchJob]) -> Result<(), BatchError> {
        let mut i = 0;
        while i < jobs.len() {
            if let BatchJob::Sqlx(job) = &mut jobs[i] {
                job.run(self.conn.sqlx()?).await?;
                i += 1;
                continue;
            }
            let end = jobs[i..]
                .iter()
                .position(|j| matches!(j, BatchJob::Sqlx(_)))
                .map_or(jobs.len(), |n| i + n);
            let section = &mut jobs[i..end];
            self.conn
                .direct(|db| section.iter_mut().try_for_each(|job| run_direct(db, job)))
                .await??;
            i = end;
        }
        self.conn.direct(|db| db.execute("COMMIT")).await??;
        Ok(())
    }
}

fn run_direct(db: &mut Direct<'_>, job: &mut BatchJob) -> Result<(), SqliteError> {
    match job {
        BatchJob::Saga(job) => job.run(db),
        // Never given one: sqlx jobs run outside direct sections.
        BatchJob::Sqlx(_) => Ok(()),
    }
}
