//! The command line: `kiln serve`, `kiln verify`. Every flag can also be set
//! with a `KILN_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, HttpConfig, Limits, PipelineConfig};
use crate::projection::ProjectionConfig;
use crate::saga::SagaConfig;
use crate::server::HostConfig;
use crate::store::sqlite::SqliteOptions;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "A WebAssembly-plugin event processing host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Walk the event log and check its hash chain; exits 1 when it is broken.
    Verify(crate::verify::VerifyArgs),
}

/// Options of `kiln serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The event store: `sqlite://path` (or a plain path), or
    /// `postgres://user:password@host/database` (several hosts may share it).
    #[arg(long, env = "KILN_DB", default_value = "sqlite://kiln.db")]
    pub db: String,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of `*.wasm` plugins to load; defaults to the example plugins
    /// built with this binary.
    #[arg(long, env = "KILN_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Bearer token of admin routes (`PUT /plugins/{name}`); unset locks them.
    #[arg(long, env = "KILN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where compiled plugins are cached; defaults to `<db file>.compiled`.
    #[arg(long, env = "KILN_COMPILE_CACHE_DIR")]
    pub compile_cache_dir: Option<PathBuf>,
    /// How often the plugin directory is checked for new or changed files,
    /// in ms (0: not watched).
    #[arg(long, env = "KILN_WATCH_INTERVAL_MS", default_value_t = 1000)]
    pub watch_interval_ms: u64,
    /// How long a host's lease on a projection or saga lasts, in ms, when
    /// several hosts share a PostgreSQL database: it is renewed every third
    /// of this, and another host takes over a dead host's work within it.
    #[arg(long, env = "KILN_LEASE_TTL_MS", default_value_t = crate::lease::LEASE_TTL_MS_DEFAULT)]
    pub lease_ttl_ms: u64,
    /// How long an undeployed projection's rows are kept, in seconds:
    /// deployed again within it, it resumes from its checkpoints; after it,
    /// its rows are dropped.
    #[arg(long, env = "KILN_UNDEPLOY_GRACE_SECS", default_value_t = crate::projection::UNDEPLOY_GRACE_SECS_DEFAULT)]
    pub undeploy_grace_secs: u64,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Timeouts and the connection bound of the HTTP server.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Time a request's head may take to arrive, in ms (on a kept-alive
    /// connection, counted from the end of the previous answer).
    #[arg(long, env = "KILN_HEADER_READ_TIMEOUT_MS", default_value_t = config::HEADER_READ_TIMEOUT_MS_DEFAULT)]
    pub header_read_timeout_ms: u64,
    /// Time a request's body may take to arrive, in ms, counted from its
    /// head; past it the answer is 408.
    #[arg(long, env = "KILN_BODY_READ_TIMEOUT_MS", default_value_t = config::BODY_READ_TIMEOUT_MS_DEFAULT)]
    pub body_read_timeout_ms: u64,
    /// Time a connection with no request in flight stays open, in ms.
    #[arg(long, env = "KILN_IDLE_TIMEOUT_MS", default_value_t = config::IDLE_TIMEOUT_MS_DEFAULT)]
    pub idle_timeout_ms: u64,
    /// Connections served at once; keep it and --health-connections well
    /// below the process's open-file limit (`ulimit -n`).
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = config::MAX_CONNECTIONS_DEFAULT)]
    pub max_connections: usize,
    /// Connections beyond --max-connections served /healthz and /readyz only.
    #[arg(long, env = "KILN_HEALTH_CONNECTIONS", default_value_t = config::HEALTH_CONNECTIONS_DEFAULT)]
    pub health_connections: usize,
}

impl HttpArgs {
    pub fn config(&self) -> HttpConfig {
        HttpConfig {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_connections: self.max_connections.max(1),
            health_connections: self.health_connections,
        }
    }
}

/// Limits and tuning shared by `serve` and the benchmarks of `kiln-bench`.
#[derive(Args, Debug, Clone)]
pub struct Tuning {
    /// Memory one plugin instance may use, in MiB.
    #[arg(long, env = "KILN_MEMORY_LIMIT_MIB", default_value_t = config::MEMORY_BYTES_MAX_DEFAULT / (1024 * 1024))]
    pub memory_limit_mib: usize,
    /// Wall time one plugin call may take, in ms.
    #[arg(long, env = "KILN_COMMAND_TIMEOUT_MS", default_value_t = config::COMMAND_TIMEOUT_MS_DEFAULT)]
    pub command_timeout_ms: u64,
    /// Wall time one projection batch may take, in ms.
    #[arg(long, env = "KILN_BATCH_TIMEOUT_MS", default_value_t = config::BATCH_TIMEOUT_MS_DEFAULT)]
    pub batch_timeout_ms: u64,
    /// Largest view row a projection may write, in bytes.
    #[arg(long, env = "KILN_VIEW_VALUE_SIZE_LIMIT", default_value_t = config::VIEW_VALUE_BYTES_MAX_DEFAULT)]
    pub view_value_size_limit: usize,
    /// Events per projection batch.
    #[arg(long, env = "KILN_PROJECTION_BATCH", default_value_t = crate::projection::BATCH_SIZE_DEFAULT)]
    pub projection_batch: u32,
    /// View rows each projection runner keeps in memory.
    #[arg(long, env = "KILN_PROJECTION_CACHE_ROWS", default_value_t = crate::projection::CACHE_ROWS_DEFAULT)]
    pub projection_cache_rows: usize,
    /// Largest event payload, in bytes.
    #[arg(long, env = "KILN_EVENT_SIZE_LIMIT", default_value_t = config::EVENT_BYTES_MAX_DEFAULT)]
    pub event_size_limit: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "KILN_BODY_SIZE_LIMIT", default_value_t = config::BODY_BYTES_MAX_DEFAULT)]
    pub body_size_limit: usize,
    /// Snapshot a stream every N events (0: never).
    #[arg(long, env = "KILN_SNAPSHOT_EVERY", default_value_t = config::SNAPSHOT_EVERY_DEFAULT)]
    pub snapshot_every: u64,
    /// How long an idempotency key is remembered, in seconds.
    #[arg(long, env = "KILN_IDEMPOTENCY_WINDOW_SECS", default_value_t = config::IDEMPOTENCY_WINDOW_SECS_DEFAULT)]
    pub idempotency_window_secs: u64,
    /// Stream states kept in memory (0: none).
    #[arg(long, env = "KILN_STATE_CACHE_ENTRIES", default_value_t = config::STATE_CACHE_ENTRIES_DEFAULT)]
    pub state_cache_entries: usize,
    /// Plugin calls of one plugin running at once (its share of the wasm
    /// slots); more wait for one to end, at most the command time limit.
    #[arg(long, env = "KILN_PLUGIN_CONCURRENCY", default_value_t = config::PLUGIN_CONCURRENCY_DEFAULT)]
    pub plugin_concurrency: usize,
    /// Most appends committed in one SQLite transaction (group commit).
    #[arg(long, env = "KILN_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,
    /// Attempts of a saga command that keeps failing transiently before it
    /// moves to the dead-letter list.
    #[arg(long, env = "KILN_SAGA_MAX_ATTEMPTS", default_value_t = crate::saga::MAX_ATTEMPTS_DEFAULT)]
    pub saga_max_attempts: u32,
    /// First retry delay of a saga command, in ms (doubles per attempt, with jitter).
    #[arg(long, env = "KILN_SAGA_RETRY_BASE_MS", default_value_t = crate::saga::RETRY_BASE_MS_DEFAULT)]
    pub saga_retry_base_ms: u64,
    /// Longest retry delay of a saga command, in ms.
    #[arg(long, env = "KILN_SAGA_RETRY_MAX_MS", default_value_t = crate::saga::RETRY_MAX_MS_DEFAULT)]
    pub saga_retry_max_ms: u64,
    /// Days the step history of a completed saga instance is kept (0: for
    /// ever). The instance itself is kept.
    #[arg(long, env = "KILN_SAGA_HISTORY_DAYS", default_value_t = crate::saga::HISTORY_DAYS_DEFAULT)]
    pub saga_history_days: u64,
    /// Disable wasmtime's pooling allocator.
    #[arg(long, env = "KILN_NO_POOLING")]
    pub no_pooling: bool,
}

impl ServeArgs {
    pub fn host_config(&self, default_plugins: Option<PathBuf>) -> HostConfig {
        let mut config = self.tuning.host_config(&self.db, self.listen);
        config.plugins_dir = self.plugins.clone().or(default_plugins);
        config.admin_token = self.admin_token.clone();
        config.compile_cache_dir = self.compile_cache_dir.clone();
        config.watch_interval =
            (self.watch_interval_ms > 0).then(|| Duration::from_millis(self.watch_interval_ms));
        config.lease_ttl = Duration::from_millis(self.lease_ttl_ms);
        config.projections.undeploy_grace = Duration::from_secs(self.undeploy_grace_secs);
        config.http = self.http.config();
        config
    }
}

impl Tuning {
    pub fn host_config(&self, db: &str, listen: SocketAddr) -> HostConfig {
        let mut config = HostConfig::new(db, listen);
        config.limits = Limits {
            memory_bytes_max: self.memory_limit_mib.saturating_mul(1024 * 1024),
            command_timeout_ms: self.command_timeout_ms,
            batch_timeout_ms: self.batch_timeout_ms,
            event_bytes_max: self.event_size_limit,
            view_value_bytes_max: self.view_value_size_limit,
            body_bytes_max: self.body_size_limit,
        };
        config.pipeline = PipelineConfig {
            snapshot_every: self.snapshot_every,
            idempotency_window: Duration::from_secs(self.idempotency_window_secs),
            state_cache_entries: self.state_cache_entries,
            plugin_concurrency: self.plugin_concurrency,
            ..PipelineConfig::default()
        };
        config.sqlite = SqliteOptions {
            max_batch: self.max_batch,
            ..SqliteOptions::default()
        };
        config.postgres = crate::store::postgres::PostgresOptions {
            max_batch: self.max_batch,
            ..Default::default()
        };
        config.projections = ProjectionConfig {
            batch_size: self.projection_batch.max(1),
            cache_rows: self.projection_cache_rows,
            ..ProjectionConfig::default()
        };
        config.sagas = SagaConfig {
            max_attempts: self.saga_max_attempts.max(1),
            retry_base: Duration::from_millis(self.saga_retry_base_ms),
            retry_max: Duration::from_millis(self.saga_retry_max_ms.max(self.saga_retry_base_ms)),
            history_retention: (self.saga_history_days > 0)
                .then(|| Duration::from_secs(self.saga_history_days.saturating_mul(24 * 3600))),
            ..SagaConfig::default()
        };
        config.pooling = !self.no_pooling;
        config
    }
}
