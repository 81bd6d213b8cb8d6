//! `kiln bench-plugins`: the same plugins built in Rust, JavaScript and
//! Python, measured in one run.
//!
//! For each language's build of `bank_account` (and of `account_balances`
//! where the language has one), on fresh databases in a temporary directory:
//!
//! 1. compile: the first compile of each component (Cranelift), once; every
//!    later load comes from a compile cache shared by the phases;
//! 2. per call: a fresh instance, a warm `handle`, `apply` per event, and a
//!    command's whole unit of work (instance + apply + handle), with the
//!    host's runtime and limits;
//! 3. commands/s over HTTP: `--commands` deposits from `--connections`
//!    clients to an in-process host (durable SQLite) running that build;
//! 4. projection events/s: `account_balances` deployed on a host whose log
//!    holds `--events` events, timed until it has caught up.
//!
//! Every figure is reported per run and as the median; ratios are against
//! the Rust build of the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use super::{BenchArgs, TempDir, http, projection, stats, wasm};
use crate::runtime::Runtime;
use crate::server;
use crate::store::EventStore;
use crate::store::sqlite::{SqliteOptions, SqliteStore};

/// Options of `kiln bench-plugins`.
#[derive(Args, Debug, Clone)]
pub struct PluginsBenchArgs {
    /// Runs; every figure is reported per run and as the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Bank accounts opened before the deposits.
    #[arg(long, default_value_t = 1_000)]
    pub accounts: usize,
    /// Deposits measured per run and build.
    #[arg(long, default_value_t = 10_000)]
    pub commands: usize,
    /// Deposits sent before measuring.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Events in the log the projections catch up on.
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Directories holding each build (`bank_account.wasm`, and
    /// `account_balances.wasm` if the language has one), as
    /// `language=DIR`; defaults to the builds made with this binary.
    #[arg(long = "build", value_parser = parse_build)]
    pub builds: Vec<(String, PathBuf)>,
    /// Where to create the temporary databases; defaults to the system's
    /// temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tuning: crate::cli::Tuning,
}

fn parse_build(text: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = text
        .split_once('=')
        .ok_or_else(|| format!("expected language=DIR, got {text:?}"))?;
    if name.is_empty() || dir.is_empty() {
        return Err(format!("expected language=DIR, got {text:?}"));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

fn default_builds() -> Vec<(String, PathBuf)> {
    #[cfg(feature = "examples")]
    {
        use kiln_plugin_artifacts::polyglot::{Language, build_examples};
        let mut builds = vec![(
            "rust".into(),
            PathBuf::from(kiln_plugin_artifacts::EXAMPLES_DIR),
        )];
        // The JavaScript and Python examples are built on demand (node,
        // npm and python3 needed); a language that cannot be built is left
        // out with a warning.
        for (name, language) in [
            ("javascript", Language::JavaScript),
            ("python", Language::Python),
        ] {
            match build_examples(language) {
                Ok(dir) => builds.push((name.into(), PathBuf::from(dir))),
                Err(error) => eprintln!("leaving out the {name} build: {error}"),
            }
        }
        builds
    }
    #[cfg(not(feature = "examples"))]
    {
        Vec::new()
    }
}

/// The figures of one build in one run.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    instantiate_us: f64,
    handle_us: f64,
    apply_per_event_us: f64,
    command_unit_us: f64,
    commands_per_s: f64,
    p99_ms: f64,
    /// NaN when the build has no projection.
    projection_events_per_s: f64,
}

const COLUMNS: [(&str, &str); 7] = [
    ("instantiate_us", "instance, µs"),
    ("handle_us", "warm handle, µs"),
    ("apply_per_event_us", "apply/event, µs"),
    ("command_unit_us", "command unit, µs"),
    ("commands_per_s", "commands/s"),
    ("p99_ms", "p99, ms"),
    ("projection_events_per_s", "projection events/s"),
];

impl Row {
    fn values(&self) -> [f64; 7] {
        [
            self.instantiate_us,
            self.handle_us,
            self.apply_per_event_us,
            self.command_unit_us,
            self.commands_per_s,
            self.p99_ms,
            self.projection_events_per_s,
        ]
    }
}

pub async fn run(args: PluginsBenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.accounts == 0 || args.commands == 0 || args.connections == 0 {
        bail!("--runs, --accounts, --commands and --connections must be at least 1");
    }
    let builds = if args.builds.is_empty() {
        default_builds()
    } else {
        args.builds.clone()
    };
    if builds.is_empty() {
        bail!("no builds: pass --build language=DIR (a directory holding bank_account.wasm)");
    }
    for (name, dir) in &builds {
        if !dir.join("bank_account.wasm").is_file() {
            bail!("{name}: {} holds no bank_account.wasm", dir.display());
        }
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("kiln-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _cleanup = TempDir(dir.clone());
    let cache = dir.join("compiled");

    // 1. First compiles, into the cache every later phase loads from.
    let config = args
        .tuning
        .host_config("sqlite::memory:", "127.0.0.1:0".parse()?);
    let runtime =
        Runtime::new(config.limits.clone(), config.pooling)?.with_compile_cache(&cache)?;
    let mut compile_s: Vec<(String, String, f64)> = Vec::new();
    for (name, build_dir) in &builds {
        for component in ["bank_account", "account_balances"] {
            let path = build_dir.join(format!("{component}.wasm"));
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path)?;
            eprintln!(
                "compiling {name} {component} ({:.1} MB)",
                bytes.len() as f64 / 1e6
            );
            let runtime = runtime.clone();
            let started = Instant::now();
            tokio::task::spawn_blocking(move || runtime.compile(component, &bytes))
                .await?
                .map_err(|e| anyhow::anyhow!("compiling {}: {e}", path.display()))?;
            compile_s.push((
                name.clone(),
                component.into(),
                started.elapsed().as_secs_f64(),
            ));
        }
    }

    // The log the projections catch up on, written once.
    let projection_db = dir.join("projection.db");
    let projection_url = format!("sqlite://{}", projection_db.display());
    {
        let store: Arc<dyn EventStore> =
            Arc::new(SqliteStore::open(&projection_url, SqliteOptions::default()).await?);
        projection::fill(store.clone(), args.events, args.accounts).await?;
        store.close().await;
    }

    let mut runs: Vec<Vec<Row>> = Vec::new();
    for run_no in 1..=args.runs {
        let mut rows = Vec::new();
        for (name, build_dir) in &builds {
            eprintln!("== run {run_no} of {}: {name}", args.runs);
            rows.push(
                measure_build(
                    &args,
                    &dir,
                    &cache,
                    build_dir,
                    &projection_url,
                    name,
                    run_no,
                )
                .await?,
            );
        }
        runs.push(rows);
    }
    report(&args, &builds, &compile_s, &runs, &parent)
}

async fn measure_build(
    args: &PluginsBenchArgs,
    dir: &Path,
    cache: &Path,
    build_dir: &Path,
    projection_url: &str,
    name: &str,
    run_no: usize,
) -> anyhow::Result<Row> {
    let config = args
        .tuning
        .host_config("sqlite::memory:", "127.0.0.1:0".parse()?);
    let cost = wasm::measure_with_cache(
        config.limits.clone(),
        config.pooling,
        build_dir,
        Some(cache),
    )
    .await?;

    let http_args = BenchArgs {
        accounts: args.accounts,
        connections: args.connections,
        commands: args.commands,
        warmup: args.warmup,
        runs: 1,
        client_threads: 1,
        plugins: Some(only_bank_account(dir, build_dir, name, run_no)?),
        dir: None,
        json: false,
        compile_cache_dir: Some(cache.to_path_buf()),
        tuning: args.tuning.clone(),
    };
    let db_dir = dir.join(format!("http-{name}"));
    std::fs::create_dir_all(&db_dir)?;
    let load = http::run(&http_args, &db_dir, run_no).await?;
    let deposits = load.deposits;

    let projection = build_dir.join("account_balances.wasm");
    let projection_events_per_s = if projection.is_file() {
        catch_up_rate(
            args,
            cache,
            projection_url,
            &projection,
            &format!("balances_{name}_{run_no}"),
        )
        .await?
    } else {
        f64::NAN
    };
    Ok(Row {
        instantiate_us: cost.instantiate_us,
        handle_us: cost.handle_us,
        apply_per_event_us: cost.apply_per_event_us,
        command_unit_us: cost.command_unit_us,
        commands_per_s: deposits.per_s(),
        p99_ms: deposits.ms(99.0),
        projection_events_per_s,
    })
}

/// A plugin directory holding only this build's `bank_account.wasm` (the
/// HTTP phase loads a whole directory).
fn only_bank_account(
    dir: &Path,
    build_dir: &Path,
    name: &str,
    run_no: usize,
) -> anyhow::Result<PathBuf> {
    let plugins = dir.join(format!("plugins-{name}-{run_no}"));
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(
        build_dir.join("bank_account.wasm"),
        plugins.join("bank_account.wasm"),
    )?;
    Ok(plugins)
}

/// Deploy `projection` as `name` on a host over the filled log; events per
/// second from the deployment to the projection reaching the head.
async fn catch_up_rate(
    args: &PluginsBenchArgs,
    cache: &Path,
    db: &str,
    projection: &Path,
    name: &str,
) -> anyhow::Result<f64> {
    let token = "bench-admin-token";
    let mut config = args.tuning.host_config(db, "127.0.0.1:0".parse()?);
    config.admin_token = Some(token.into());
    config.watch_interval = None;
    config.plugins_dir = None;
    config.compile_cache_dir = Some(cache.to_path_buf());
    let head = {
        let store = SqliteStore::open(db, SqliteOptions::default()).await?;
        let head = store.head_position().await?;
        store.close().await;
        head
    };
    let bytes = std::fs::read(projection)?;
    let host = server::start(config).await?;
    let base = format!("http://{}", host.addr);
    let client = reqwest::Client::new();
    let started = Instant::now();
    projection::deploy(&client, &base, token, name, &bytes).await?;
    loop {
        let s = projection::status(&client, &base, name).await?;
        if s["position"].as_u64() >= Some(head) {
            break;
        }
        if s["state"] == "failed" {
            host.shutdown().await?;
            bail!("projection {name} failed: {}", s["error"]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = head as f64 / started.elapsed().as_secs_f64();
    host.shutdown().await?;
    Ok(rate)
}

fn report(
    args: &PluginsBenchArgs,
    builds: &[(String, PathBuf)],
    compile_s: &[(String, String, f64)],
    runs: &[Vec<Row>],
    parent: &Path,
) -> anyhow::Result<()> {
    // medians[build][column]
    let medians: Vec<[f64; 7]> = (0..builds.len())
        .map(|b| {
            std::array::from_fn(|c| {
                let values: Vec<f64> = runs
                    .iter()
                    .map(|r| r[b].values()[c])
                    .filter(|v| !v.is_nan())
                    .collect();
                if values.is_empty() {
                    f64::NAN
                } else {
                    stats::median(&values)
                }
            })
        })
        .collect();
    let (model, cpus, memory) = stats::machine();
    if args.json {
        let out = json!({
            "machine": { "cpu": model, "cpus": cpus, "memory": memory },
            "config": {
                "runs": args.runs, "accounts": args.accounts, "commands": args.commands,
                "warmup": args.warmup, "connections": args.connections, "events": args.events,
            },
            "compile_s": compile_s.iter().map(|(b, c, s)| json!({"build": b, "component": c, "seconds": s})).collect::<Vec<_>>(),
            "median": builds.iter().zip(&medians).map(|((name, _), m)| {
                (name.clone(), Value::Object(COLUMNS.iter().zip(m).map(|((k, _), v)| (k.to_string(), json!(v))).collect()))
            }).collect::<serde_json::Map<_, _>>(),
            "runs": runs.iter().map(|r| builds.iter().zip(r).map(|((name, _), row)| {
                (name.clone(), Value::Object(COLUMNS.iter().zip(row.values()).map(|((k, _), v)| (k.to_string(), json!(v))).collect()))
            }).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!();
    println!(
        "kiln bench-plugins: {} deposits ({} warm-up) over {} accounts from {} connections, {} projection events, {} run(s)",
        args.commands, args.warmup, args.accounts, args.connections, args.events, args.runs
    );
    println!(
        "machine: {model}, {cpus} CPUs, {memory}; databases in {}",
        parent.display()
    );
    println!();
    println!("first compile (Cranelift), s:");
    for (build, component, seconds) in compile_s {
        println!("  {build:<12} {component:<18} {seconds:>8.2}");
    }
    println!();
    let width = COLUMNS
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0);
    let mut header = format!("{:width$}", "median");
    for (name, _) in builds {
        header.push_str(&format!("  {name:>12}"));
        if name != &builds[0].0 {
            header.push_str(&format!("  {:>10}", format!("/{}", builds[0].0)));
        }
    }
    println!("{header}");
    for (c, (_, label)) in COLUMNS.iter().enumerate() {
        let mut line = format!("{label:width$}");
        for (b, (name, _)) in builds.iter().enumerate() {
            let v = medians[b][c];
            line.push_str(&format!("  {v:>12.2}"));
            if name != &builds[0].0 {
                line.push_str(&format!("  {:>10.2}", v / medians[0][c]));
            }
        }
        println!("{line}");
    }
    println!();
    println!("per run:");
    for (i, run) in runs.iter().enumerate() {
        for ((name, _), row) in builds.iter().zip(run) {
            let values: Vec<String> = row.values().iter().map(|v| format!("{v:.2}")).collect();
            println!("  run {} {name:<12} {}", i + 1, values.join("  "));
        }
    }
    Ok(())
}
