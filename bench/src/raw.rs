//! Phase 2: the append ceilings, measured with the same events as phase 1.
//!
//! (a) plain sqlx INSERTs into a fresh database with Kiln's schema, one
//! writer, `batch` events per transaction, WAL and `synchronous=FULL`;
//! (b) Kiln's own store (`SqliteStore::append`) from as many tasks as phase 1
//! has connections: the store's overhead (version checks, the hash chain,
//! group commit through a channel) without HTTP and wasm.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use crate::args::BenchArgs;
use crate::http::account_id;
use crate::stats::{self, CpuSample, CpuUse};
use kiln::store::sqlite::{SqliteOptions, SqliteStore};
use kiln::store::{AppendOutcome, AppendRequest, EventStore, ExpectedVersion, NewEvent, now_us};

const DEPOSITED: &str = r#"{"amount":1}"#;
const OPENED: &str = r#"{"owner":"bench","overdraft_limit":0}"#;

/// Metadata the size and shape of what the pipeline writes.
fn metadata() -> String {
    let id = uuid::Uuid::new_v4().to_string();
    serde_json::json!({ "causation_id": id, "correlation_id": id }).to_string()
}

fn stream_id(account: usize) -> String {
    format!("bank_account-{}", account_id(account))
}

/// An append ceiling.
#[derive(Debug, Clone, Default)]
pub struct Ceiling {
    pub events: usize,
    pub wall: Duration,
    /// Per append, ascending, in µs (store phase only).
    pub latencies_us: Vec<u32>,
    pub cpu: Option<CpuUse>,
}

impl Ceiling {
    pub fn per_s(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn ms(&self, p: f64) -> f64 {
        f64::from(stats::percentile(&self.latencies_us, p)) / 1000.0
    }
}

/// How the raw ceiling writes a transaction's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertMode {
    /// One `INSERT` statement per event.
    RowByRow,
    /// Multi-row `INSERT … VALUES (…), (…)`, up to [`ROWS_PER_STATEMENT`]
    /// rows per statement: SQLite's own rate without a statement per event.
    MultiRow,
}

/// Rows per multi-row statement: 9 parameters each stays far below SQLite's
/// limit of 32,766 parameters.
const ROWS_PER_STATEMENT: usize = 256;

/// (a): the opens, then `commands` deposits, `batch` per transaction.
pub async fn plain_sql(
    args: &BenchArgs,
    dir: &Path,
    run_no: usize,
    batch: usize,
    mode: InsertMode,
) -> anyhow::Result<Ceiling> {
    let path = dir.join(format!("raw-{run_no}-{batch}-{mode:?}.db"));
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .context("opening the raw database")?;
    sqlx::migrate!("../migrations/sqlite")
        .run(&mut conn)
        .await
        .context("creating the schema")?;
    let accounts = args.accounts.max(1);
    // Everything but the INSERTs is prepared before the clock starts.
    let opens: Vec<Row> = (0..args.accounts)
        .map(|a| Row::new(a + 1, a, 1, "Opened", OPENED))
        .collect();
    let deposits = args.warmup + args.commands;
    let rows: Vec<Row> = (0..deposits)
        .map(|i| {
            let account = i % accounts;
            let version = 2 + i / accounts;
            Row::new(
                args.accounts + i + 1,
                account,
                version,
                "Deposited",
                DEPOSITED,
            )
        })
        .collect();
    insert(&mut conn, &opens, 512, mode).await?;
    insert(&mut conn, &rows[..args.warmup], batch, mode).await?;
    let cpu_before = CpuSample::now();
    let started = Instant::now();
    insert(&mut conn, &rows[args.warmup..], batch, mode).await?;
    let wall = started.elapsed();
    let cpu = CpuSample::now()
        .zip(cpu_before)
        .map(|(after, before)| before.until(&after));
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    if count as usize != args.accounts + deposits {
        bail!(
            "raw SQL: {count} events stored, expected {}",
            args.accounts + deposits
        );
    }
    Ok(Ceiling {
        events: args.commands,
        wall,
        latencies_us: Vec::new(),
        cpu,
    })
}

struct Row {
    position: i64,
    stream_id: String,
    version: i64,
    event_type: &'static str,
    data: &'static str,
    metadata: String,
    recorded_at: i64,
    hash: [u8; 32],
}

impl Row {
    fn new(
        position: usize,
        account: usize,
        version: usize,
        event_type: &'static str,
        data: &'static str,
    ) -> Self {
        let mut hash = [0u8; 32];
        for chunk in hash.chunks_mut(8) {
            chunk.copy_from_slice(&(position as u64).to_le_bytes());
        }
        Self {
            position: position as i64,
            stream_id: stream_id(account),
            version: version as i64,
            event_type,
            data,
            metadata: metadata(),
            recorded_at: now_us() / 1000 * 1000,
            hash,
        }
    }
}

async fn insert(
    conn: &mut SqliteConnection,
    rows: &[Row],
    batch: usize,
    mode: InsertMode,
) -> anyhow::Result<()> {
    for chunk in rows.chunks(batch.max(1)) {
        let mut tx = conn.begin().await?;
        if mode == InsertMode::MultiRow {
            for statement in chunk.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) ",
                );
                q.push_values(statement, |mut b, r| {
                    b.push_bind(r.position)
                        .push_bind(&r.stream_id)
                        .push_bind(r.version)
                        .push_bind(r.event_type)
                        .push_bind(1i64)
                        .push_bind(r.data)
                        .push_bind(&r.metadata)
                        .push_bind(r.recorded_at)
                        .push_bind(&r.hash[..]);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            continue;
        }
        for r in chunk {
            sqlx::query(
                "INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.position)
            .bind(&r.stream_id)
            .bind(r.version)
            .bind(r.event_type)
            .bind(1i64)
            .bind(r.data)
            .bind(&r.metadata)
            .bind(r.recorded_at)
            .bind(&r.hash[..])
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// (b): Kiln's store from `connections` concurrent tasks, each append one
/// Deposited event at the version the task expects (as the pipeline does).
pub async fn store(args: &BenchArgs, dir: &Path, run_no: usize) -> anyhow::Result<Ceiling> {
    let path = dir.join(format!("store-{run_no}.db"));
    let options = SqliteOptions {
        max_batch: args.tuning.max_batch,
        ..SqliteOptions::default()
    };
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(&path.display().to_string(), options)
            .await
            .context("opening the Kiln store")?,
    );
    let result = async {
        let accounts = args.accounts.max(1);
        concurrent(args, &store, 0, args.accounts, |_| {
            ("Opened", OPENED, ExpectedVersion::NoStream)
        })
        .await?;
        let deposit = move |i: usize| {
            (
                "Deposited",
                DEPOSITED,
                ExpectedVersion::Exact(1 + (i / accounts) as u64),
            )
        };
        concurrent(args, &store, 0, args.warmup, deposit).await?;
        let cpu_before = CpuSample::now();
        let started = Instant::now();
        let mut latencies = concurrent(
            args,
            &store,
            args.warmup,
            args.warmup + args.commands,
            deposit,
        )
        .await?;
        let wall = started.elapsed();
        let cpu = CpuSample::now()
            .zip(cpu_before)
            .map(|(after, before)| before.until(&after));
        let head = store.head_position().await?;
        let expected = (args.accounts + args.warmup + args.commands) as u64;
        if head != expected {
            bail!("Kiln store: head at {head}, expected {expected}");
        }
        latencies.sort_unstable();
        Ok(Ceiling {
            events: args.commands,
            wall,
            latencies_us: latencies,
            cpu,
        })
    }
    .await;
    store.close().await;
    result
}

/// Append event `i` for `i` in `from..to` (to account `i % accounts`) from
/// `connections` tasks; the latencies of the appends, in µs.
async fn concurrent(
    args: &BenchArgs,
    store: &Arc<dyn EventStore>,
    from: usize,
    to: usize,
    event: impl Fn(usize) -> (&'static str, &'static str, ExpectedVersion)
    + Send
    + Sync
    + Clone
    + 'static,
) -> anyhow::Result<Vec<u32>> {
    let next = Arc::new(AtomicUsize::new(from));
    let accounts = args.accounts.max(1);
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let next = next.clone();
            let store = store.clone();
            let event = event.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        break;
                    }
                    let (event_type, data, expected) = event(i);
                    let request = AppendRequest {
                        stream_id: stream_id(i % accounts),
                        expected,
                        events: vec![NewEvent {
                            event_type: event_type.to_string(),
                            schema: 1,
                            data: data.to_string(),
                            metadata: metadata(),
                        }],
                        idempotency: None,
                    };
                    let t0 = Instant::now();
                    let outcome = store.append(request).await;
                    latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    match outcome {
                        Ok(AppendOutcome::Committed { .. }) => {}
                        Ok(AppendOutcome::AlreadyApplied(_)) => {
                            return Err(anyhow::anyhow!("append {i} reported as already applied"));
                        }
                        Err(e) => return Err(anyhow::anyhow!("append {i} failed: {e}")),
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(to.saturating_sub(from));
    for t in tasks {
        all.extend(t.await.context("an append task failed")??);
    }
    Ok(all)
}
