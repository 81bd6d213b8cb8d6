//! `kiln-bench bench`: commands over HTTP against the raw append ceiling.
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

mod figures;
mod report;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::args::BenchArgs;
use crate::temp_dir::TempDir;
use crate::{http, raw, wasm};
use figures::Figure;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.accounts == 0 || args.commands == 0 || args.connections == 0 || args.runs == 0 {
        bail!("--accounts, --commands, --connections and --runs must be at least 1");
    }
    let plugins = args
        .plugins
        .clone()
        .or_else(kiln::default_plugins_dir)
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
        let measured = measure(&args, &dir.0, &plugins, run_no).await?;
        runs.push(figures::of_run(&args, &measured));
    }
    report::print(&args, &parent, &runs)
}

/// What one run measured, phase by phase.
struct Measured {
    http: http::HttpResult,
    /// Plain INSERTs, as many events per transaction as group commit can
    /// gather with this many connections.
    sql: raw::Ceiling,
    /// The same with multi-row INSERTs.
    sql_multi: raw::Ceiling,
    /// Plain INSERTs of `--max-batch` events per transaction, when that is
    /// more than `sql`'s.
    sql_max: Option<raw::Ceiling>,
    store: raw::Ceiling,
    wasm: wasm::WasmCost,
}

/// The events per transaction of the raw SQL ceilings.
fn raw_batch(args: &BenchArgs) -> usize {
    args.connections.min(args.tuning.max_batch).max(1)
}

async fn measure(
    args: &BenchArgs,
    dir: &Path,
    plugins: &Path,
    run_no: usize,
) -> anyhow::Result<Measured> {
    let mut args_http = args.clone();
    args_http.plugins = Some(plugins.to_path_buf());
    let http = http::run(&args_http, dir, run_no).await?;
    let batch = raw_batch(args);
    eprintln!("[run {run_no}] raw SQL, {batch} events per transaction");
    let sql = raw::plain_sql(args, dir, run_no, batch, raw::InsertMode::RowByRow).await?;
    eprintln!("[run {run_no}] raw SQL, multi-row INSERTs, {batch} events per transaction");
    let sql_multi = raw::plain_sql(args, dir, run_no, batch, raw::InsertMode::MultiRow).await?;
    let max_batch = args.tuning.max_batch;
    let sql_max = if max_batch > batch {
        eprintln!("[run {run_no}] raw SQL, {max_batch} events per transaction");
        Some(raw::plain_sql(args, dir, run_no, max_batch, raw::InsertMode::RowByRow).await?)
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
    let wasm = wasm::measure(limits, pooling, plugins)
        .await
        .context("the wasm measurement failed")?;
    Ok(Measured {
        http,
        sql,
        sql_multi,
        sql_max,
        store,
        wasm,
    })
}
