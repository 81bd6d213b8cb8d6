//! The options of `kiln-bench bench`: the command load that `bench-plugins`
//! and `bench-cluster` reuse for their HTTP phases.

use std::path::PathBuf;

use clap::Args;

/// Options of `kiln-bench bench`.
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
    pub tuning: kiln::cli::Tuning,
}
