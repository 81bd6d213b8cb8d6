//! `kiln-bench`: the benchmarks of the Kiln host, out of the server binary.
//!
//! Every benchmark runs the host in this process through `kiln`'s library
//! (an in-process server, its store and its wasm runtime), so the figures
//! are those of the code the `kiln` binary runs. Each subcommand keeps the
//! flags and the output it had as `kiln <subcommand>`.

mod args;
mod bench;
mod cluster;
mod http;
mod plugins;
mod projection;
mod raw;
mod saga;
mod stats;
mod temp_dir;
mod wasm;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kiln-bench", version, about = "Benchmarks of the Kiln host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmark commands over HTTP against the raw append rate.
    Bench(args::BenchArgs),
    /// Benchmark projection catch-up and a hot swap against the raw read rate.
    BenchProjection(projection::ProjectionBenchArgs),
    /// Benchmark transfers through the transfer saga against the same
    /// commands sent plainly.
    BenchSaga(saga::SagaBenchArgs),
    /// Benchmark the same plugins built in Rust, JavaScript and Python:
    /// per-call costs, commands/s and projection events/s.
    BenchPlugins(plugins::PluginsBenchArgs),
    /// Benchmark commands with 1, 2 and 3 hosts on one PostgreSQL database
    /// against PostgreSQL's batched-insert rate, and on SQLite.
    BenchCluster(cluster::ClusterBenchArgs),
}

/// How long the exit waits for blocking work still running (as `kiln`).
const SHUTDOWN_BLOCKING_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

fn main() -> anyhow::Result<()> {
    // The in-process hosts log as `kiln serve` does, filtered by `KILN_LOG`.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Bench(args) => bench::run(args).await,
            Command::BenchProjection(args) => projection::run(args).await,
            Command::BenchSaga(args) => saga::run(args).await,
            Command::BenchPlugins(args) => plugins::run(args).await,
            Command::BenchCluster(args) => cluster::run(args).await,
        }
    });
    // A compile on the blocking pool is abandoned rather than waited for:
    // the compile cache only ever renames complete files into place.
    runtime.shutdown_timeout(SHUTDOWN_BLOCKING_WAIT);
    result
}
