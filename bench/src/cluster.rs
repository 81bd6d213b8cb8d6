//! `kiln-bench bench-cluster`: commands/s over HTTP with 1, 2 and 3 hosts on one
//! PostgreSQL database, next to PostgreSQL's own batched-insert rate for
//! the same events (the ceiling) and the same command load on durable
//! SQLite, all in one run.
//!
//! Each phase gets a fresh database (created on the server of `--db`,
//! dropped at the end). The hosts run in this process, each with its own
//! store, connection pool, pipeline and HTTP listener, as separate
//! processes on this machine would (they share its two cores either way);
//! the `--connections` HTTP connections are spread round-robin over them.
//! Each host loads only `bank_account`, so no projection or saga competes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use sqlx::Connection;

use crate::args::BenchArgs;
use crate::http::{self, account_id};
use crate::stats;
use crate::temp_dir::TempDir;
use kiln::server;
use kiln_testkit::ScratchDatabase;

/// Options of `kiln-bench bench-cluster`.
#[derive(Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// A PostgreSQL server and a database to connect to for creating the
    /// benchmark's own databases (the role needs CREATEDB).
    #[arg(long, env = "KILN_BENCH_DATABASE_URL")]
    pub db: String,
    /// Host counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2, 3])]
    pub hosts: Vec<usize>,
    /// Bank accounts opened before the deposits.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Concurrent HTTP connections, spread over the hosts.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Deposits measured per phase.
    #[arg(long, default_value_t = 30_000)]
    pub commands: usize,
    /// Deposits sent before measuring.
    #[arg(long, default_value_t = 3_000)]
    pub warmup: usize,
    /// Runs; every figure is reported per run and as the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// How commands are spread over the hosts: by connection (any stream
    /// reaches any host) or by stream (a load balancer hashing the stream id).
    #[arg(long, value_enum, default_value_t = http::Routing::Connection)]
    pub routing: http::Routing,
    /// Where the SQLite phase's database goes; defaults to the system's
    /// temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tuning: kiln::cli::Tuning,
}

/// One phase of one run.
#[derive(Debug, Clone, Copy, Default)]
struct Figure {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn bench_args(args: &ClusterBenchArgs, plugins: &Path) -> BenchArgs {
    BenchArgs {
        accounts: args.accounts,
        connections: args.connections,
        commands: args.commands,
        warmup: args.warmup,
        runs: 1,
        client_threads: 1,
        plugins: Some(plugins.to_path_buf()),
        dir: None,
        json: false,
        compile_cache_dir: None,
        tuning: args.tuning.clone(),
    }
}

/// `n` hosts on the database at `url`, commands spread over them.
async fn cluster_phase(
    args: &ClusterBenchArgs,
    plugins: &Path,
    url: &str,
    n: usize,
    run_no: usize,
) -> anyhow::Result<Figure> {
    let mut hosts = Vec::new();
    for _ in 0..n {
        let mut config = args.tuning.host_config(url, "127.0.0.1:0".parse()?);
        config.plugins_dir = Some(plugins.to_path_buf());
        config.watch_interval = None;
        hosts.push(server::start(config).await.context("starting a host")?);
    }
    let bases: Vec<String> = hosts.iter().map(|h| format!("http://{}", h.addr)).collect();
    let ports: Vec<u16> = hosts.iter().map(|h| h.addr.port()).collect();
    let head = hosts[0].state.store.subscribe_head();
    let result = http::drive_hosts(
        &bench_args(args, plugins),
        &bases,
        &ports,
        head,
        args.routing,
        run_no,
    )
    .await;
    for host in hosts {
        host.shutdown().await?;
    }
    let deposits = result?.deposits;
    Ok(Figure {
        per_s: deposits.per_s(),
        p50_ms: deposits.ms(50.0),
        p99_ms: deposits.ms(99.0),
    })
}

/// The same events as the command phases (the opens, the warm-up and the
/// measured deposits), written by one connection into Kiln's own schema
/// with multi-row INSERTs of `batch` events per transaction: PostgreSQL's
/// batched-insert rate, with no version check, hash computation or HTTP.
async fn raw_insert_phase(args: &ClusterBenchArgs, url: &str) -> anyhow::Result<Figure> {
    // Kiln's schema, by its own migrations.
    let store = kiln::store::open(url, Default::default(), Default::default()).await?;
    store.close().await;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let batch = args.connections.min(args.tuning.max_batch).max(1);
    let metadata = json!({"causation_id": uuid::Uuid::new_v4().to_string(), "correlation_id": uuid::Uuid::new_v4().to_string()}).to_string();
    let hash = vec![7u8; 32];
    let mut versions = vec![0i64; args.accounts];
    let total = args.accounts + args.warmup + args.commands;
    let measured_from = args.accounts + args.warmup;
    let mut position = 0i64;
    let mut started = Instant::now();
    while (position as usize) < total {
        let end = (position as usize + batch).min(total);
        if position as usize <= measured_from && end > measured_from {
            started = Instant::now();
        }
        let mut builder = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO events (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash) ",
        );
        let rows: Vec<(i64, String, i64, &str, &str)> = (position as usize..end)
            .map(|i| {
                let (account, event_type, data) = if i < args.accounts {
                    (i, "Opened", r#"{"owner":"bench","overdraft_limit":0}"#)
                } else {
                    (
                        (i - args.accounts) % args.accounts,
                        "Deposited",
                        r#"{"amount":1}"#,
                    )
                };
                versions[account] += 1;
                (
                    i as i64 + 1,
                    format!("bank_account-{}", account_id(account)),
                    versions[account],
                    event_type,
                    data,
                )
            })
            .collect();
        let now = kiln::store::now_us();
        builder.push_values(rows, |mut row, (pos, stream, version, event_type, data)| {
            row.push_bind(pos)
                .push_bind(stream)
                .push_bind(version)
                .push_bind(event_type)
                .push_bind(1i64)
                .push_bind(data)
                .push_bind(&metadata)
                .push_bind(now)
                .push_bind(&hash);
        });
        let mut tx = conn.begin().await?;
        builder.build().execute(&mut *tx).await?;
        tx.commit().await?;
        position = end as i64;
    }
    let wall = started.elapsed();
    let _ = conn.close().await;
    Ok(Figure {
        per_s: args.commands as f64 / wall.as_secs_f64().max(1e-9),
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
    })
}

pub async fn run(args: ClusterBenchArgs) -> anyhow::Result<()> {
    if !kiln::store::is_postgres_url(&args.db) {
        bail!("--db must be a postgres:// URL");
    }
    if args.runs == 0 || args.accounts == 0 || args.commands == 0 || args.connections == 0 {
        bail!("--runs, --accounts, --commands and --connections must be at least 1");
    }
    if args.hosts.is_empty() || args.hosts.contains(&0) {
        bail!("--hosts takes host counts of at least 1, e.g. 1,2,3");
    }
    let examples =
        kiln::default_plugins_dir().context("this binary was built without the example plugins")?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("kiln-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = TempDir(dir.clone());
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(
        examples.join("bank_account.wasm"),
        plugins.join("bank_account.wasm"),
    )?;

    let mut runs: Vec<Vec<Figure>> = Vec::new();
    for run_no in 1..=args.runs {
        runs.push(one_run(&args, &dir, &plugins, run_no).await?);
    }
    report(&args, &labels(&args), &runs, &parent)
}

/// The phases of a run, in order: SQLite, each host count on PostgreSQL,
/// PostgreSQL's batched INSERT.
fn labels(args: &ClusterBenchArgs) -> Vec<String> {
    let mut labels: Vec<String> = vec!["sqlite, 1 host".into()];
    labels.extend(
        args.hosts
            .iter()
            .map(|n| format!("postgres, {n} host{}", if *n == 1 { "" } else { "s" })),
    );
    labels.push("postgres, batched INSERT (ceiling)".into());
    labels
}

/// Every phase of one run, in the order of [`labels`].
async fn one_run(
    args: &ClusterBenchArgs,
    dir: &Path,
    plugins: &Path,
    run_no: usize,
) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    eprintln!("== run {run_no} of {}: sqlite", args.runs);
    let sqlite_dir = dir.join(format!("sqlite-{run_no}"));
    std::fs::create_dir_all(&sqlite_dir)?;
    let deposits = http::run(&bench_args(args, plugins), &sqlite_dir, run_no)
        .await?
        .deposits;
    figures.push(Figure {
        per_s: deposits.per_s(),
        p50_ms: deposits.ms(50.0),
        p99_ms: deposits.ms(99.0),
    });
    for &n in &args.hosts {
        eprintln!("== run {run_no} of {}: postgres, {n} host(s)", args.runs);
        let db = ScratchDatabase::create(
            &args.db,
            &format!("kiln_bench_{}_{run_no}_{n}", std::process::id()),
        )
        .await
        .context("creating a benchmark database (the role needs CREATEDB)")?;
        let figure = cluster_phase(args, plugins, db.url(), n, run_no).await;
        remove(db).await;
        figures.push(figure?);
        // Let the server settle (autovacuum of the dropped database).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("== run {run_no} of {}: postgres batched INSERT", args.runs);
    let db = ScratchDatabase::create(
        &args.db,
        &format!("kiln_bench_{}_{run_no}_raw", std::process::id()),
    )
    .await
    .context("creating a benchmark database (the role needs CREATEDB)")?;
    let figure = raw_insert_phase(args, db.url()).await;
    remove(db).await;
    figures.push(figure?);
    Ok(figures)
}

/// Drop a phase's database; a failure is reported, not fatal (cleanup).
async fn remove(db: ScratchDatabase) {
    let name = db.name().to_string();
    if let Err(e) = db.remove().await {
        eprintln!("could not drop database {name}: {e}");
    }
}

/// The median of each figure of each phase, over the runs that measured it.
fn medians(phases: usize, runs: &[Vec<Figure>]) -> Vec<Figure> {
    let median = |i: usize, f: fn(&Figure) -> f64| {
        let values: Vec<f64> = runs
            .iter()
            .map(|r| f(&r[i]))
            .filter(|v| !v.is_nan())
            .collect();
        if values.is_empty() {
            f64::NAN
        } else {
            stats::median(&values)
        }
    };
    (0..phases)
        .map(|i| Figure {
            per_s: median(i, |f| f.per_s),
            p50_ms: median(i, |f| f.p50_ms),
            p99_ms: median(i, |f| f.p99_ms),
        })
        .collect()
}

fn report(
    args: &ClusterBenchArgs,
    labels: &[String],
    runs: &[Vec<Figure>],
    parent: &Path,
) -> anyhow::Result<()> {
    let medians = medians(labels.len(), runs);
    if args.json {
        let (model, cpus, memory) = stats::machine();
        let out = json!({
            "machine": { "cpu": model, "cpus": cpus, "memory": memory },
            "config": {
                "hosts": args.hosts, "accounts": args.accounts, "connections": args.connections,
                "commands": args.commands, "warmup": args.warmup, "runs": args.runs,
                "max_batch": args.tuning.max_batch,
            },
            "median": labels.iter().zip(&medians).map(|(l, f)| json!({
                "phase": l, "per_s": f.per_s, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
            })).collect::<Vec<_>>(),
            "runs": runs.iter().map(|r| labels.iter().zip(r).map(|(l, f)| json!({
                "phase": l, "per_s": f.per_s, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
            })).collect::<Vec<_>>()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_table(args, labels, runs, parent, &medians);
    Ok(())
}

fn print_table(
    args: &ClusterBenchArgs,
    labels: &[String],
    runs: &[Vec<Figure>],
    parent: &Path,
    medians: &[Figure],
) {
    // Index of "postgres, 1 host" when measured, for the ratios.
    let one_host = args.hosts.iter().position(|n| *n == 1).map(|i| i + 1);
    let raw = labels.len() - 1;
    let (model, cpus, memory) = stats::machine();
    println!();
    println!(
        "kiln bench-cluster: {} deposits ({} warm-up) over {} accounts, {} connections spread over the hosts, {} run(s), max batch {}",
        args.commands,
        args.warmup,
        args.accounts,
        args.connections,
        args.runs,
        args.tuning.max_batch
    );
    println!(
        "machine: {model}, {cpus} CPUs, {memory}; SQLite in {}",
        parent.display()
    );
    println!();
    let width = labels.iter().map(|l| l.len()).max().unwrap_or(0);
    println!(
        "{:width$}  {:>10}  {:>8}  {:>8}  {:>10}  {:>10}",
        "median", "per s", "p50 ms", "p99 ms", "/pg 1 host", "/ceiling"
    );
    for (label, f) in labels.iter().zip(medians) {
        let vs_one = one_host.map_or(f64::NAN, |o| f.per_s / medians[o].per_s);
        println!(
            "{label:width$}  {:>10.0}  {:>8.2}  {:>8.2}  {:>10.2}  {:>10.2}",
            f.per_s,
            f.p50_ms,
            f.p99_ms,
            vs_one,
            f.per_s / medians[raw].per_s,
        );
    }
    println!();
    println!("per run (per s):");
    for (r, run) in runs.iter().enumerate() {
        let values: Vec<String> = run.iter().map(|f| format!("{:.0}", f.per_s)).collect();
        println!("  run {}: {}", r + 1, values.join("  "));
    }
}
