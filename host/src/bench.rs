//! `kiln bench`: commands over HTTP against the raw append ceiling.
//!
//! Each run measures, in this order and on fresh databases in a temporary
//! directory:
//!
//! 1. HTTP: an in-process host (durable SQLite, the example plugins); open
//!    `--accounts` bank accounts, send `--warmup` then `--commands` `Deposit`
//!    commands round-robin over them from `--connections` keep-alive
//!    connections (one client each, on a runtime of their own), then check
//!    the log and a sample of balances.
//! 2. The ceilings for the same events: plain sqlx INSERTs in transactions
//!    (of as many events as group commit can gather with this many
//!    connections, and of `--max-batch`), and Kiln's store from as many
//!    tasks as there are connections.
//! 3. The wasm cost: instantiate, a warm `handle`, `apply` per event, and the
//!    whole unit of work of one command.
//!
//! It reports every run and the median of each figure.

pub mod cluster;
mod http;
pub mod plugins;
pub mod projection;
mod raw;
pub mod saga;
mod stats;
mod wasm;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value, json};

/// Name of the load generator's threads (at most 15 bytes: Linux truncates).
pub(crate) const CLIENT_THREAD_NAME: &str = "kiln-bench-cli";

/// Targets of the issue, checked on the medians.
const TARGET_COMMANDS_PER_S: f64 = 15_000.0;
const TARGET_P99_MS: f64 = 20.0;
const TARGET_CEILING_SHARE: f64 = 1.0 / 3.0;

/// Options of `kiln bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Distinct bank accounts, opened over HTTP before the deposits.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Concurrent HTTP/1.1 keep-alive connections (and store-phase tasks).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Deposits measured per run, round-robin over the accounts.
    #[arg(long, default_value_t = 50_000)]
    pub commands: usize,
    /// Deposits sent (and appended in the raw phases) before measuring.
    #[arg(long, default_value_t = 5_000)]
    pub warmup: usize,
    /// Runs; every figure is reported per run and as the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker threads of the load generator's own runtime.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Directory of `*.wasm` plugins (needs `bank_account.wasm`); defaults
    /// to the example plugins built with this binary.
    #[arg(long, env = "KILN_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Where to create the temporary databases (fsync costs depend on the
    /// disk); defaults to the system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Where the HTTP phase's host caches compiled plugins; defaults to one
    /// beside each run's database.
    #[arg(long)]
    pub compile_cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub tuning: crate::cli::Tuning,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// One figure of one run.
#[derive(Debug, Clone)]
struct Figure {
    key: &'static str,
    label: String,
    value: f64,
    decimals: usize,
}

fn fig(key: &'static str, label: impl Into<String>, value: f64, decimals: usize) -> Figure {
    Figure {
        key,
        label: label.into(),
        value,
        decimals,
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.accounts == 0 || args.commands == 0 || args.connections == 0 || args.runs == 0 {
        bail!("--accounts, --commands, --connections and --runs must be at least 1");
    }
    let plugins = args
        .plugins
        .clone()
        .or_else(crate::default_plugins_dir)
        .context("no plugins: pass --plugins DIR (a directory holding bank_account.wasm)")?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = TempDir(parent.join(format!("kiln-bench-{}-{nanos}", std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;

    let mut runs: Vec<Vec<Figure>> = Vec::new();
    for run_no in 1..=args.runs {
        eprintln!("== run {run_no} of {}", args.runs);
        runs.push(one_run(&args, &dir.0, &plugins, run_no).await?);
    }
    // By key: a figure a run could not measure counts as NaN there.
    let of_run = |run: &[Figure], key: &str| {
        run.iter()
            .find(|f| f.key == key)
            .map_or(f64::NAN, |f| f.value)
    };
    let medians: Vec<f64> = runs[0]
        .iter()
        .map(|f| stats::median(&runs.iter().map(|r| of_run(r, f.key)).collect::<Vec<_>>()))
        .collect();
    let value = |key: &str| {
        runs[0]
            .iter()
            .position(|f| f.key == key)
            .map_or(f64::NAN, |i| medians[i])
    };
    let targets = [
        (
            "commands_per_s",
            format!(">= {TARGET_COMMANDS_PER_S:.0} commands/s"),
            value("http_commands_per_s"),
            value("http_commands_per_s") >= TARGET_COMMANDS_PER_S,
        ),
        (
            "p99_ms",
            format!("p99 < {TARGET_P99_MS:.0} ms"),
            value("http_p99_ms"),
            value("http_p99_ms") < TARGET_P99_MS,
        ),
        (
            "share_of_raw_ceiling",
            "HTTP >= 1/3 of the raw SQL ceiling (multi-row INSERTs)".to_string(),
            value("ratio_http_raw_sql_multi_row"),
            value("ratio_http_raw_sql_multi_row") >= TARGET_CEILING_SHARE,
        ),
    ];
    let (model, cpus, memory) = stats::machine();
    let batch = args.connections.min(args.tuning.max_batch).max(1);
    if args.json {
        let per_run: Vec<Value> = runs
            .iter()
            .map(|r| {
                Value::Object(
                    r.iter()
                        .map(|f| (f.key.to_string(), json!(f.value)))
                        .collect(),
                )
            })
            .collect();
        let median: Map<String, Value> = runs[0]
            .iter()
            .zip(&medians)
            .map(|(f, m)| (f.key.to_string(), json!(m)))
            .collect();
        let out = json!({
            "machine": { "cpu": model, "cpus": cpus, "memory": memory },
            "config": {
                "accounts": args.accounts,
                "connections": args.connections,
                "commands": args.commands,
                "warmup": args.warmup,
                "runs": args.runs,
                "client_threads": args.client_threads,
                "max_batch": args.tuning.max_batch,
                "raw_sql_batch": batch,
                "pooling": !args.tuning.no_pooling,
            },
            "median": median,
            "runs": per_run,
            "targets": targets.iter().map(|(name, what, value, met)| json!({
                "name": name, "target": what, "value": value, "met": met,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!();
    println!(
        "kiln bench: {} accounts, {} connections, {} deposits per run (after {} warm-up), {} run(s), max batch {}, {} client thread(s)",
        args.accounts,
        args.connections,
        args.commands,
        args.warmup,
        args.runs,
        args.tuning.max_batch,
        args.client_threads
    );
    println!(
        "machine: {model}, {cpus} CPUs, {memory}; databases in {}",
        parent.display()
    );
    println!();
    let width = runs[0]
        .iter()
        .map(|f| f.label.chars().count())
        .max()
        .unwrap_or(0);
    let mut header = format!("{:width$}  {:>10}", "", "median");
    for i in 1..=runs.len() {
        header.push_str(&format!("  {:>10}", format!("run {i}")));
    }
    println!("{header}");
    for (i, f) in runs[0].iter().enumerate() {
        let d = f.decimals;
        let mut line = format!("{:width$}  {:>10.d$}", f.label, medians[i]);
        for r in &runs {
            line.push_str(&format!("  {:>10.d$}", of_run(r, f.key)));
        }
        println!("{line}");
    }
    println!();
    println!("targets (medians):");
    for (_, what, value, met) in &targets {
        println!(
            "  {:40} {:>10.3}  {}",
            what,
            value,
            if *met { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

async fn one_run(
    args: &BenchArgs,
    dir: &std::path::Path,
    plugins: &std::path::Path,
    run_no: usize,
) -> anyhow::Result<Vec<Figure>> {
    let mut args_http = args.clone();
    args_http.plugins = Some(plugins.to_path_buf());
    let h = http::run(&args_http, dir, run_no).await?;
    let batch = args.connections.min(args.tuning.max_batch).max(1);
    eprintln!("[run {run_no}] raw SQL, {batch} events per transaction");
    let sql = raw::plain_sql(args, dir, run_no, batch, raw::InsertMode::RowByRow).await?;
    eprintln!("[run {run_no}] raw SQL, multi-row INSERTs, {batch} events per transaction");
    let sql_multi = raw::plain_sql(args, dir, run_no, batch, raw::InsertMode::MultiRow).await?;
    let sql_max = if args.tuning.max_batch > batch {
        eprintln!(
            "[run {run_no}] raw SQL, {} events per transaction",
            args.tuning.max_batch
        );
        Some(
            raw::plain_sql(
                args,
                dir,
                run_no,
                args.tuning.max_batch,
                raw::InsertMode::RowByRow,
            )
            .await?,
        )
    } else {
        None
    };
    eprintln!(
        "[run {run_no}] Kiln store, {} concurrent appenders",
        args.connections
    );
    let store = raw::store(args, dir, run_no).await?;
    eprintln!("[run {run_no}] wasm costs");
    let limits = args
        .tuning
        .host_config("unused", ([127, 0, 0, 1], 0).into())
        .limits;
    let pooling = !args.tuning.no_pooling;
    let w = wasm::measure(limits, pooling, plugins)
        .await
        .context("the wasm measurement failed")?;

    let d = &h.deposits;
    let http_rate = d.per_s();
    let mut figures = vec![
        fig(
            "http_commands_per_s",
            "HTTP Deposit, commands/s",
            http_rate,
            0,
        ),
        fig("http_p50_ms", "  latency p50, ms", d.ms(50.0), 2),
        fig("http_p90_ms", "  latency p90, ms", d.ms(90.0), 2),
        fig("http_p99_ms", "  latency p99, ms", d.ms(99.0), 2),
        fig("http_max_ms", "  latency max, ms", d.ms(100.0), 2),
        fig("http_errors", "  errors (non-200)", d.errors as f64, 0),
        fig(
            "http_connections",
            "  server connections seen",
            d.connections_seen.map_or(f64::NAN, |c| c as f64),
            0,
        ),
        fig(
            "http_events_per_commit",
            "  events per commit (upper bound)",
            d.ok as f64 / d.commits_seen.max(1) as f64,
            1,
        ),
        fig(
            "http_open_per_s",
            "HTTP Open (new stream), commands/s",
            h.opens.per_s(),
            0,
        ),
    ];
    if let Some(cpu) = &d.cpu {
        let wall = d.wall.as_secs_f64().max(1e-9);
        let per_cmd = |s: f64| s * 1e6 / d.ok.max(1) as f64;
        figures.extend([
            fig(
                "http_cpu_cores",
                "  CPU busy during deposits, cores",
                cpu.total_s / wall,
                2,
            ),
            fig(
                "http_cpu_us_per_command",
                "  CPU per command, µs",
                per_cmd(cpu.total_s),
                1,
            ),
            fig(
                "http_cpu_client_us",
                "    load generator, µs",
                per_cmd(cpu.group("client")),
                1,
            ),
            fig(
                "http_cpu_server_us",
                "    host tokio + wasm, µs",
                per_cmd(cpu.group("server")),
                1,
            ),
            fig(
                "http_cpu_sqlite_us",
                "    SQLite threads, µs",
                per_cmd(cpu.group("sqlite")),
                1,
            ),
            fig(
                "http_cpu_other_us",
                "    other, µs",
                per_cmd(cpu.group("other")),
                1,
            ),
        ]);
    }
    figures.push(fig(
        "raw_sql_per_s",
        format!("raw SQL INSERT, {batch}/txn, events/s"),
        sql.per_s(),
        0,
    ));
    figures.push(fig(
        "raw_sql_multi_row_per_s",
        format!("raw SQL multi-row INSERT, {batch}/txn, events/s"),
        sql_multi.per_s(),
        0,
    ));
    if let Some(m) = &sql_max {
        figures.push(fig(
            "raw_sql_max_batch_per_s",
            format!("raw SQL INSERT, {}/txn, events/s", args.tuning.max_batch),
            m.per_s(),
            0,
        ));
    }
    figures.extend([
        fig(
            "store_per_s",
            "Kiln store append, events/s",
            store.per_s(),
            0,
        ),
        fig("store_p50_ms", "  append p50, ms", store.ms(50.0), 2),
        fig("store_p99_ms", "  append p99, ms", store.ms(99.0), 2),
    ]);
    if let Some(cpu) = &store.cpu {
        figures.push(fig(
            "store_cpu_us_per_event",
            "  CPU per append, µs",
            cpu.total_s * 1e6 / store.events.max(1) as f64,
            1,
        ));
    }
    if let Some(cpu) = &sql.cpu {
        figures.push(fig(
            "raw_sql_cpu_us_per_event",
            "raw SQL CPU per event, µs",
            cpu.total_s * 1e6 / sql.events.max(1) as f64,
            1,
        ));
    }
    figures.push(fig(
        "ratio_http_raw_sql_multi_row",
        format!("HTTP / raw SQL multi-row ({batch}/txn)"),
        http_rate / sql_multi.per_s(),
        3,
    ));
    figures.push(fig(
        "ratio_http_raw_sql",
        format!("HTTP / raw SQL ({batch}/txn)"),
        http_rate / sql.per_s(),
        3,
    ));
    if let Some(m) = &sql_max {
        figures.push(fig(
            "ratio_http_raw_sql_max_batch",
            format!("HTTP / raw SQL ({}/txn)", args.tuning.max_batch),
            http_rate / m.per_s(),
            3,
        ));
    }
    figures.extend([
        fig(
            "ratio_http_store",
            "HTTP / Kiln store",
            http_rate / store.per_s(),
            3,
        ),
        fig(
            "ratio_store_raw_sql",
            format!("Kiln store / raw SQL ({batch}/txn)"),
            store.per_s() / sql.per_s(),
            3,
        ),
        fig(
            "wasm_instantiate_us",
            "wasm instantiate, µs",
            w.instantiate_us,
            1,
        ),
        fig("wasm_handle_us", "wasm handle (warm), µs", w.handle_us, 2),
        fig(
            "wasm_apply_event_us",
            "wasm apply, per event of 100, µs",
            w.apply_per_event_us,
            2,
        ),
        fig(
            "wasm_command_unit_us",
            "wasm per command (inst.+apply+handle), µs",
            w.command_unit_us,
            1,
        ),
    ]);
    Ok(figures)
}
