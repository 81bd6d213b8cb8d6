//! `kiln-bench bench-plugins`: the same plugins built in Rust, JavaScript and
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

mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::args::BenchArgs;
use crate::temp_dir::TempDir;
use crate::{http, projection, wasm};
use kiln::runtime::Runtime;
use kiln::server;
use kiln::store::sqlite::{SqliteOptions, SqliteStore};
use kiln::store::{EventLog, EventStore};
use report::Row;

/// Options of `kiln-bench bench-plugins`.
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
    pub tuning: kiln::cli::Tuning,
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

pub async fn run(args: PluginsBenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.accounts == 0 || args.commands == 0 || args.connections == 0 {
        bail!("--runs, --accounts, --commands and --connections must be at least 1");
    }
    let builds = builds(&args)?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("kiln-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _cleanup = TempDir(dir.clone());
    let cache = dir.join("compiled");
    let compile_s = first_compiles(&args, &builds, &cache).await?;

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
    report::print(&args, &builds, &compile_s, &runs, &parent)
}

/// The builds to measure, each checked to hold a `bank_account.wasm`.
fn builds(args: &PluginsBenchArgs) -> anyhow::Result<Vec<(String, PathBuf)>> {
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
    Ok(builds)
}

/// The first compile of each component of each build, into the cache every
/// later phase loads from: (build, component, seconds).
async fn first_compiles(
    args: &PluginsBenchArgs,
    builds: &[(String, PathBuf)],
    cache: &Path,
) -> anyhow::Result<Vec<(String, String, f64)>> {
    let config = args
        .tuning
        .host_config("sqlite::memory:", "127.0.0.1:0".parse()?);
    let runtime = Runtime::new(config.limits.clone(), config.pooling)?.with_compile_cache(cache)?;
    let mut compile_s: Vec<(String, String, f64)> = Vec::new();
    for (name, build_dir) in builds {
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
    Ok(compile_s)
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
