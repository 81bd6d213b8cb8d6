//! `kiln bench-projection`: catch-up of `account_balances` over a large log,
//! against the raw read rate of the same events (the ceiling), and a hot
//! swap of that projection with read latency before and during it.
//!
//! The log is written once, straight through the store; each run deploys
//! the projection under a fresh name (so it starts from position 0), then
//! swaps it for `fixture_balances_v2` (the same view with one more field).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use super::stats;
use crate::server::{self, HostConfig};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{AppendRequest, EventLog, EventStore, ExpectedVersion, GlobalQuery, NewEvent};

/// Targets of the issue, checked on the medians.
const TARGET_EVENTS_PER_S: f64 = 150_000.0;
const TARGET_SHARE_OF_READ: f64 = 0.5;
const TARGET_SWAP_P99_RATIO: f64 = 2.0;

/// Options of `kiln bench-projection`.
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
    pub tuning: crate::cli::Tuning,
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
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("kiln-bench-projection-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = super::TempDir(dir.clone());
    let db = format!("sqlite://{}", dir.join("kiln.db").display());
    {
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteStore::open(&db, SqliteOptions::default()).await?);
        fill(store.clone(), args.events, args.accounts).await?;
        store.close().await;
    }
    let token = "bench-admin-token";
    let client = reqwest::Client::new();
    let mut rows: Vec<[f64; 8]> = Vec::new();
    for run_no in 1..=args.runs {
        eprintln!("== run {run_no} of {}", args.runs);
        let name = format!("balances_run{run_no}");
        let plugins = dir.join(format!("plugins-{run_no}"));
        std::fs::create_dir_all(&plugins)?;
        let mut config: HostConfig = args.tuning.host_config(&db, "127.0.0.1:0".parse()?);
        config.admin_token = Some(token.into());
        config.watch_interval = None;
        config.plugins_dir = Some(plugins.clone());
        // The ceiling, on the same store the host will use.
        let (raw_per_s, head) = {
            let store = SqliteStore::open(&db, SqliteOptions::default()).await?;
            let head = store.head_position().await?;
            let rate = read_rate(&store, head, config.projections.batch_size).await?;
            store.close().await;
            (rate, head)
        };
        let host = server::start(config).await?;
        let base = format!("http://{}", host.addr);
        // Catch-up counts from the deployment (compiling included) to the
        // projection's position reaching the head; the host's own start is
        // not part of it.
        let started = Instant::now();
        deploy(&client, &base, token, &name, &projection_bytes).await?;
        loop {
            let s = status(&client, &base, &name).await?;
            if s["position"].as_u64() >= Some(head) {
                eprintln!("time split (ms): {}", s["time_ms"]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let catch_up = started.elapsed();
        let catch_up_per_s = head as f64 / catch_up.as_secs_f64();

        // Read latency, then the same during a hot swap.
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(read_load(
            client.clone(),
            base.clone(),
            name.clone(),
            args.accounts,
            args.readers,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(args.baseline_secs)).await;
        stop.store(true, Ordering::Relaxed);
        let before = load.await??;
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(read_load(
            client.clone(),
            base.clone(),
            name.clone(),
            args.accounts,
            args.readers,
            stop.clone(),
        ));
        let swap_started = Instant::now();
        deploy(&client, &base, token, &name, &new_bytes).await?;
        let generation = loop {
            let s = status(&client, &base, &name).await?;
            if s["generation"].as_u64() > Some(1) && s["rebuild"].is_null() {
                break s["generation"].as_u64().unwrap_or(0);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let swap = swap_started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let during = load.await??;
        host.shutdown().await?;
        eprintln!(
            "run {run_no}: caught up {head} events in {:.2} s; swapped to generation {generation} in {:.2} s",
            catch_up.as_secs_f64(),
            swap.as_secs_f64()
        );
        rows.push([
            catch_up_per_s,
            raw_per_s,
            catch_up_per_s / raw_per_s,
            swap.as_secs_f64(),
            ms(&before, 0.5),
            ms(&before, 0.99),
            ms(&during, 0.5),
            ms(&during, 0.99),
        ]);
    }
    let labels = [
        ("catch_up_events_per_s", "catch-up, events/s"),
        (
            "raw_read_events_per_s",
            "raw store read, events/s (ceiling)",
        ),
        ("ratio_catch_up_raw_read", "catch-up / raw read"),
        ("swap_s", "hot swap (rebuild + switch), s"),
        ("read_p50_ms_before", "row read p50 before, ms"),
        ("read_p99_ms_before", "row read p99 before, ms"),
        ("read_p50_ms_during_swap", "row read p50 during swap, ms"),
        ("read_p99_ms_during_swap", "row read p99 during swap, ms"),
    ];
    let medians: Vec<f64> = (0..labels.len())
        .map(|i| stats::median(&rows.iter().map(|r| r[i]).collect::<Vec<_>>()))
        .collect();
    let p99_ratio = medians[7] / medians[5];
    let targets = [
        (
            format!(">= {TARGET_EVENTS_PER_S:.0} events/s catch-up"),
            medians[0],
            medians[0] >= TARGET_EVENTS_PER_S,
        ),
        (
            "catch-up >= 1/2 of the raw read rate".to_string(),
            medians[2],
            medians[2] >= TARGET_SHARE_OF_READ,
        ),
        (
            "read p99 during swap <= 2x before".to_string(),
            p99_ratio,
            p99_ratio <= TARGET_SWAP_P99_RATIO,
        ),
    ];
    let (model, cpus, memory) = stats::machine();
    if args.json {
        let out = json!({
            "machine": { "cpu": model, "cpus": cpus, "memory": memory },
            "config": { "events": args.events, "accounts": args.accounts, "runs": args.runs, "readers": args.readers, "batch": args.tuning.projection_batch },
            "median": labels.iter().zip(&medians).map(|((k, _), m)| (k.to_string(), json!(m))).collect::<serde_json::Map<_, _>>(),
            "runs": rows.iter().map(|r| labels.iter().zip(r).map(|((k, _), v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
            "targets": targets.iter().map(|(what, value, met)| json!({"target": what, "value": value, "met": met})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!();
    println!(
        "kiln bench-projection: {} events over {} accounts, batch {}, {} reader(s), {} run(s)",
        args.events, args.accounts, args.tuning.projection_batch, args.readers, args.runs
    );
    println!(
        "machine: {model}, {cpus} CPUs, {memory}; database in {}",
        parent.display()
    );
    println!();
    let width = labels.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
    let mut header = format!("{:width$}  {:>10}", "", "median");
    for i in 1..=rows.len() {
        header.push_str(&format!("  {:>10}", format!("run {i}")));
    }
    println!("{header}");
    for (i, (_, label)) in labels.iter().enumerate() {
        let mut line = format!("{label:width$}  {:>10.3}", medians[i]);
        for r in &rows {
            line.push_str(&format!("  {:>10.3}", r[i]));
        }
        println!("{line}");
    }
    println!();
    println!("targets (medians):");
    for (what, value, met) in &targets {
        println!(
            "  {what:42} {value:>10.3}  {}",
            if *met { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
