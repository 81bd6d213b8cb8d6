//! `kiln-bench bench-projection`: catch-up of `account_balances` over a large log,
//! against the raw read rate of the same events (the ceiling), and a hot
//! swap of that projection with read latency before and during it.
//!
//! The log is written once, straight through the store; each run deploys
//! the projection under a fresh name (so it starts from position 0), then
//! swaps it for `fixture_balances_v2` (the same view with one more field).

mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::stats;
use crate::temp_dir::TempDir;
use kiln::server::{self, HostConfig};
use kiln::store::sqlite::{SqliteOptions, SqliteStore};
use kiln::store::{AppendRequest, EventLog, EventStore, ExpectedVersion, GlobalQuery, NewEvent};

/// Options of `kiln-bench bench-projection`.
#[derive(Args, Debug, Clone)]
pub struct ProjectionBenchArgs {
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Bank accounts the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Runs; every figure is reported per run and as the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Concurrent readers of rows during the latency measurements.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// How long read latency is measured before the swap.
    #[arg(long, default_value_t = 3)]
    pub baseline_secs: u64,
    /// `account_balances.wasm`; defaults to the example built with this binary.
    #[arg(long)]
    pub projection: Option<PathBuf>,
    /// The new version swapped in; defaults to the `fixture_balances_v2` fixture.
    #[arg(long)]
    pub new_version: Option<PathBuf>,
    /// Where to create the database; defaults to the system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tuning: kiln::cli::Tuning,
}

fn default_component(name: &str) -> Option<PathBuf> {
    #[cfg(feature = "examples")]
    {
        match name {
            "projection" => Some(PathBuf::from(kiln_plugin_artifacts::ACCOUNT_BALANCES)),
            _ => Some(PathBuf::from(kiln_plugin_artifacts::FIXTURE_BALANCES_V2)),
        }
    }
    #[cfg(not(feature = "examples"))]
    {
        let _ = name;
        None
    }
}

/// Write the log: every account opened, then deposits and withdrawals
/// round-robin, in appends of up to 50 events from 64 tasks.
pub(super) async fn fill(
    store: Arc<dyn EventStore>,
    events: usize,
    accounts: usize,
) -> anyhow::Result<()> {
    let per_account = events.div_ceil(accounts).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let workers = 64.min(accounts);
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut a = w;
            while a < accounts {
                let stream_id = format!("bank_account-{a:05}");
                let mut written = 0;
                while written < per_account {
                    let n = (per_account - written).min(50);
                    let batch: Vec<NewEvent> = (written..written + n)
                        .map(|i| {
                            let (event_type, data) = match i {
                                0 => (
                                    "Opened",
                                    format!(r#"{{"owner":"owner-{a}","overdraft_limit":0}}"#),
                                ),
                                i if i % 10 == 9 => ("Withdrawn", r#"{"amount":3}"#.to_string()),
                                i => ("Deposited", format!(r#"{{"amount":{}}}"#, i % 100 + 1)),
                            };
                            NewEvent {
                                event_type: event_type.into(),
                                schema: 1,
                                data,
                                metadata: "{}".into(),
                            }
                        })
                        .collect();
                    store
                        .append(AppendRequest {
                            stream_id: stream_id.clone(),
                            expected: ExpectedVersion::Exact(written as u64),
                            events: batch,
                            idempotency: None,
                        })
                        .await?;
                    written += n;
                }
                a += workers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!(
        "wrote {} events in {:.1} s",
        per_account * accounts,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Read the whole log in pages the size of a projection batch: the rate no
/// projection runner can beat.
async fn read_rate(store: &dyn EventStore, head: u64, page: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut from = 1;
    let mut count = 0u64;
    while from <= head {
        let events = store
            .read_global(GlobalQuery {
                from_position: from,
                until_position: Some(head),
                limit: page,
                types: None,
            })
            .await?;
        let Some(last) = events.last() else { break };
        from = last.position + 1;
        count += events.len() as u64;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// `PUT /plugins/{name}` with the admin token.
pub(super) async fn deploy(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let deployed = client
        .put(format!("{base}/plugins/{name}"))
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await?;
    if !deployed.status().is_success() {
        bail!("deploying {name} failed: {}", deployed.text().await?);
    }
    Ok(())
}

pub(super) async fn status(
    client: &reqwest::Client,
    base: &str,
    name: &str,
) -> anyhow::Result<Value> {
    Ok(client
        .get(format!("{base}/projections/{name}"))
        .send()
        .await?
        .json()
        .await?)
}

/// Read random rows from `readers` tasks until `stop`; the latencies in µs.
async fn read_load(
    client: reqwest::Client,
    base: String,
    name: String,
    accounts: usize,
    readers: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u32>> {
    let mut tasks = Vec::new();
    for r in 0..readers {
        let (client, base, name, stop) = (client.clone(), base.clone(), name.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = r * 7919;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 104_729) % accounts;
                let started = Instant::now();
                let response = client
                    .get(format!("{base}/projections/{name}/rows/account-{i:05}"))
                    .send()
                    .await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                if !ok {
                    bail!("a read of account-{i:05} failed during the benchmark");
                }
                latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(all)
}

fn ms(sorted: &[u32], p: f64) -> f64 {
    f64::from(stats::percentile(sorted, p)) / 1000.0
}

pub async fn run(args: ProjectionBenchArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.accounts == 0 || args.runs == 0 || args.readers == 0 {
        bail!("--events, --accounts, --runs and --readers must be at least 1");
    }
    let (projection, new_version) = components(&args)?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("kiln-bench-projection-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = TempDir(dir.clone());
    let db = format!("sqlite://{}", dir.join("kiln.db").display());
    {
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteStore::open(&db, SqliteOptions::default()).await?);
        fill(store.clone(), args.events, args.accounts).await?;
        store.close().await;
    }
    let setup = Setup {
        args: &args,
        client: reqwest::Client::new(),
        dir,
        db,
        projection,
        new_version,
    };
    let mut rows: Vec<report::Row> = Vec::new();
    for run_no in 1..=args.runs {
        eprintln!("== run {run_no} of {}", args.runs);
        rows.push(one_run(&setup, run_no).await?);
    }
    report::print(&args, &parent, &rows)
}

/// The bytes of the projection and of the version swapped in.
fn components(args: &ProjectionBenchArgs) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let projection = args
        .projection
        .clone()
        .or_else(|| default_component("projection"))
        .context("pass --projection PATH (account_balances.wasm)")?;
    let new_version = args
        .new_version
        .clone()
        .or_else(|| default_component("new"))
        .context("pass --new-version PATH (a second version of the projection)")?;
    let projection_bytes =
        std::fs::read(&projection).with_context(|| format!("reading {}", projection.display()))?;
    let new_bytes = std::fs::read(&new_version)
        .with_context(|| format!("reading {}", new_version.display()))?;
    Ok((projection_bytes, new_bytes))
}

/// What every run shares: the log written once, the components, a client.
struct Setup<'a> {
    args: &'a ProjectionBenchArgs,
    client: reqwest::Client,
    dir: PathBuf,
    db: String,
    projection: Vec<u8>,
    new_version: Vec<u8>,
}

const ADMIN_TOKEN: &str = "bench-admin-token";

async fn one_run(setup: &Setup<'_>, run_no: usize) -> anyhow::Result<report::Row> {
    let name = format!("balances_run{run_no}");
    let plugins = setup.dir.join(format!("plugins-{run_no}"));
    std::fs::create_dir_all(&plugins)?;
    let mut config: HostConfig = setup
        .args
        .tuning
        .host_config(&setup.db, "127.0.0.1:0".parse()?);
    config.admin_token = Some(ADMIN_TOKEN.into());
    config.watch_interval = None;
    config.plugins_dir = Some(plugins.clone());
    let (raw_per_s, head) = ceiling(&setup.db, config.projections.batch_size).await?;
    let host = server::start(config).await?;
    let base = format!("http://{}", host.addr);
    let catch_up = catch_up(setup, &base, &name, head).await?;
    let catch_up_per_s = head as f64 / catch_up.as_secs_f64();
    // Read latency, then the same during a hot swap.
    let before = read_while(setup, &base, &name, async {
        tokio::time::sleep(Duration::from_secs(setup.args.baseline_secs)).await;
        anyhow::Ok(())
    })
    .await?
    .1;
    let ((generation, swap), during) =
        read_while(setup, &base, &name, hot_swap(setup, &base, &name)).await?;
    host.shutdown().await?;
    eprintln!(
        "run {run_no}: caught up {head} events in {:.2} s; swapped to generation {generation} in {:.2} s",
        catch_up.as_secs_f64(),
        swap.as_secs_f64()
    );
    Ok([
        catch_up_per_s,
        raw_per_s,
        catch_up_per_s / raw_per_s,
        swap.as_secs_f64(),
        ms(&before, 0.5),
        ms(&before, 0.99),
        ms(&during, 0.5),
        ms(&during, 0.99),
    ])
}

/// The ceiling, on the same store the host will use: the raw read rate,
/// and the head of the log.
async fn ceiling(db: &str, page: u32) -> anyhow::Result<(f64, u64)> {
    let store = SqliteStore::open(db, SqliteOptions::default()).await?;
    let head = store.head_position().await?;
    let rate = read_rate(&store, head, page).await?;
    store.close().await;
    Ok((rate, head))
}

/// Catch-up counts from the deployment (compiling included) to the
/// projection's position reaching the head; the host's own start is not
/// part of it.
async fn catch_up(
    setup: &Setup<'_>,
    base: &str,
    name: &str,
    head: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    deploy(&setup.client, base, ADMIN_TOKEN, name, &setup.projection).await?;
    loop {
        let s = status(&setup.client, base, name).await?;
        if s["position"].as_u64() >= Some(head) {
            eprintln!("time split (ms): {}", s["time_ms"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

/// Deploy the new version and wait until its rebuild has been switched
/// in: the new generation, and how long that took.
async fn hot_swap(setup: &Setup<'_>, base: &str, name: &str) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    deploy(&setup.client, base, ADMIN_TOKEN, name, &setup.new_version).await?;
    loop {
        let s = status(&setup.client, base, name).await?;
        if s["generation"].as_u64() > Some(1) && s["rebuild"].is_null() {
            return Ok((s["generation"].as_u64().unwrap_or(0), started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Read rows from `--readers` tasks while `during` runs: its result and
/// the read latencies in µs.
async fn read_while<T>(
    setup: &Setup<'_>,
    base: &str,
    name: &str,
    during: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Vec<u32>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(read_load(
        setup.client.clone(),
        base.to_string(),
        name.to_string(),
        setup.args.accounts,
        setup.args.readers,
        stop.clone(),
    ));
    let result = during.await?;
    stop.store(true, Ordering::Relaxed);
    Ok((result, load.await??))
}
