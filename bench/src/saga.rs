//! `kiln-bench bench-saga`: transfers per second end to end (the client's request
//! to the saga instance completed), against the same four commands sent by
//! the clients themselves (`Request`, `Withdraw`, `Deposit`, `Complete`)
//! on a host without the saga, measured in the same run.
//!
//! Each phase runs on a fresh durable SQLite database with 64 concurrent
//! HTTP clients, each moving money between its own two accounts. A saga
//! client waits for its transfer's `TransferCompleted` event (watched on
//! the store's commit feed, in process) before sending the next one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::stats;
use kiln::server::{self, HostConfig};

/// The target: the saga machinery adds at most this over the plain
/// commands it issues (time per transfer, saga / plain - 1).
const TARGET_OVERHEAD: f64 = 0.5;

/// Options of `kiln-bench bench-saga`.
#[derive(Args, Debug, Clone)]
pub struct SagaBenchArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Transfers per client per phase (80: phases of 2–4 s on a 2-core
    /// machine, long enough to steady the figure).
    #[arg(long, default_value_t = 80)]
    pub transfers: usize,
    /// Runs; every figure is reported per run and as the median.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Directory holding bank_account.wasm, transfer.wasm and
    /// transfer_saga.wasm; defaults to the examples built with this binary.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Where to create the databases; defaults to the system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub tuning: kiln::cli::Tuning,
}

/// Completions of transfers, by transfer id, fed by the commit feed.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

pub async fn run(args: SagaBenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.transfers == 0 || args.runs == 0 {
        bail!("--clients, --transfers and --runs must be at least 1");
    }
    let plugins = args
        .plugins
        .clone()
        .or_else(kiln::default_plugins_dir)
        .context("no plugins: pass --plugins DIR")?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut plain = Vec::new();
    let mut saga = Vec::new();
    for run_no in 1..=args.runs {
        eprintln!("== run {run_no} of {}", args.runs);
        let dir = parent.join(format!("kiln-bench-saga-{}-{run_no}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let measured = async {
            let p = phase(&args, &dir, &plugins, false).await?;
            eprintln!("   plain commands: {p:.0} transfers/s");
            let s = phase(&args, &dir, &plugins, true).await?;
            eprintln!("   saga:           {s:.0} transfers/s");
            anyhow::Ok((p, s))
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        let (p, s) = measured?;
        plain.push(p);
        saga.push(s);
    }
    let (plain_m, saga_m) = (stats::median(&plain), stats::median(&saga));
    let overhead = plain_m / saga_m - 1.0;
    let (model, cpus, memory) = stats::machine();
    println!("machine: {model}, {cpus} CPUs, {memory}");
    println!(
        "{} clients, {} transfers per client per phase, durable SQLite, {} runs",
        args.clients, args.transfers, args.runs
    );
    println!("| figure | per run | median |");
    println!("|---|---|---|");
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "| plain: Request+Withdraw+Deposit+Complete by the client, transfers/s | {} | {plain_m:.0} |",
        list(&plain)
    );
    println!(
        "| saga: Request, then the saga's three commands, to completed, transfers/s | {} | {saga_m:.0} |",
        list(&saga)
    );
    println!(
        "| saga overhead per transfer (time saga / plain - 1) | | {:.0}% (target <= {:.0}%: {}) |",
        overhead * 100.0,
        TARGET_OVERHEAD * 100.0,
        if overhead <= TARGET_OVERHEAD {
            "met"
        } else {
            "not met"
        }
    );
    Ok(())
}

/// One phase on a fresh database: transfers per second.
async fn phase(
    args: &SagaBenchArgs,
    dir: &Path,
    plugins: &Path,
    with_saga: bool,
) -> anyhow::Result<f64> {
    let host = start_host(args, dir, plugins, with_saga).await?;
    let base = format!("http://{}", host.addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    open_accounts(&client, &base, args.clients).await?;
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let watcher = watch_completions(&host, waiters.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, base, waiters) = (client.clone(), base.clone(), waiters.clone());
        let transfers = args.transfers;
        tasks.push(tokio::spawn(async move {
            for t in 0..transfers {
                transfer(&client, &base, &waiters, c, t, with_saga).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    watcher.abort();
    host.shutdown().await?;
    Ok((args.clients * args.transfers) as f64 / elapsed.as_secs_f64())
}

/// A host on a fresh database in `dir`, loading `bank_account` and
/// `transfer`, and `transfer_saga` when `with_saga`.
async fn start_host(
    args: &SagaBenchArgs,
    dir: &Path,
    plugins: &Path,
    with_saga: bool,
) -> anyhow::Result<server::Host> {
    let name = if with_saga { "saga" } else { "plain" };
    let plugin_dir = dir.join(format!("plugins-{name}"));
    std::fs::create_dir_all(&plugin_dir)?;
    let mut names = vec!["bank_account", "transfer"];
    if with_saga {
        names.push("transfer_saga");
    }
    for n in names {
        let file = format!("{n}.wasm");
        std::fs::copy(plugins.join(&file), plugin_dir.join(&file))
            .with_context(|| format!("copying {file} from {}", plugins.display()))?;
    }
    let db = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let mut config: HostConfig = args.tuning.host_config(&db, "127.0.0.1:0".parse()?);
    config.plugins_dir = Some(plugin_dir);
    config.watch_interval = None;
    server::start(config).await
}

/// Each client's two accounts: `src{c}` holding 1,000,000, `dst{c}` empty.
async fn open_accounts(client: &reqwest::Client, base: &str, clients: usize) -> anyhow::Result<()> {
    for c in 0..clients {
        for (account, balance) in [(format!("src{c}"), 1_000_000), (format!("dst{c}"), 0)] {
            post(
                client,
                base,
                "bank_account",
                &account,
                json!({"type": "Open", "data": {"owner": "bench"}}),
            )
            .await?;
            if balance > 0 {
                post(
                    client,
                    base,
                    "bank_account",
                    &account,
                    json!({"type": "Deposit", "data": {"amount": balance}}),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Wakes the waiter of each transfer whose `TransferCompleted` event the
/// host's commit feed carries.
fn watch_completions(host: &server::Host, waiters: Waiters) -> tokio::task::JoinHandle<()> {
    let mut feed = host.state.store.subscribe_commits();
    tokio::spawn(async move {
        while let Ok(batch) = feed.recv().await {
            for e in batch.iter().filter(|e| e.event_type == "TransferCompleted") {
                let id = e.stream_id.trim_start_matches("transfer-");
                if let Some(tx) = waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
                    let _ = tx.send(());
                }
            }
        }
    })
}

/// Client `c`'s transfer `t` from `src{c}` to `dst{c}`: through the saga
/// (sent, then waited for), or as the four commands sent plainly.
async fn transfer(
    client: &reqwest::Client,
    base: &str,
    waiters: &Waiters,
    c: usize,
    t: usize,
    with_saga: bool,
) -> anyhow::Result<()> {
    let id = format!("c{c}t{t}");
    let request = json!({"type": "Request", "data": {"from": format!("src{c}"), "to": format!("dst{c}"), "amount": 1}});
    if with_saga {
        let (tx, rx) = oneshot::channel();
        waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        post(client, base, "transfer", &id, request).await?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .context("a transfer did not complete within 60 s")?
            .context("the commit feed stopped")?;
    } else {
        post(client, base, "transfer", &id, request).await?;
        post(
            client,
            base,
            "bank_account",
            &format!("src{c}"),
            json!({"type": "Withdraw", "data": {"amount": 1}}),
        )
        .await?;
        post(
            client,
            base,
            "bank_account",
            &format!("dst{c}"),
            json!({"type": "Deposit", "data": {"amount": 1}}),
        )
        .await?;
        post(
            client,
            base,
            "transfer",
            &id,
            json!({"type": "Complete", "data": {}}),
        )
        .await?;
    }
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    aggregate: &str,
    id: &str,
    body: Value,
) -> anyhow::Result<()> {
    let response = client
        .post(format!("{base}/commands/{aggregate}/{id}"))
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{aggregate}/{id}: {status} {text}");
    }
    Ok(())
}
