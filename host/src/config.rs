//! Configuration: limits and tuning, with defaults as named constants.

use std::time::Duration;

/// Default memory limit of one plugin instance: 64 MiB.
pub const MEMORY_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Default time limit of one plugin call while deciding a command.
pub const COMMAND_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default time limit of one projection batch.
pub const BATCH_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default size limit of one view row's value.
pub const VIEW_VALUE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default size limit of one event's payload.
pub const EVENT_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Default size limit of a request body.
pub const BODY_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default snapshot interval, in events.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 100;
/// Default idempotency window.
pub const IDEMPOTENCY_WINDOW_SECS_DEFAULT: u64 = 300;
/// Default number of stream states kept in memory.
pub const STATE_CACHE_ENTRIES_DEFAULT: usize = 100_000;
/// Wasm instance slots (the runtime's pooling allocator): the most units of
/// work that can run at once.
pub const WASM_SLOTS: u32 = 256;
/// Default wasm slots one plugin may hold at once: half of the instance
/// pool, so one plugin whose calls spin leaves the other half to the rest.
pub const PLUGIN_CONCURRENCY_DEFAULT: usize = WASM_SLOTS as usize / 2;
/// Events read and folded per `apply` call during a replay.
pub const REPLAY_BATCH_DEFAULT: u32 = 1_000;

/// Limits on what a plugin may use, per unit of work.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Linear memory one instance may grow to.
    pub memory_bytes_max: usize,
    /// Wall time one plugin call may take.
    pub command_timeout_ms: u64,
    /// Wall time one projection batch may take.
    pub batch_timeout_ms: u64,
    /// Size of one event's `data`, in bytes of JSON.
    pub event_bytes_max: usize,
    /// Size of one view row a projection writes.
    pub view_value_bytes_max: usize,
    /// Size of one HTTP request body.
    pub body_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes_max: MEMORY_BYTES_MAX_DEFAULT,
            command_timeout_ms: COMMAND_TIMEOUT_MS_DEFAULT,
            batch_timeout_ms: BATCH_TIMEOUT_MS_DEFAULT,
            event_bytes_max: EVENT_BYTES_MAX_DEFAULT,
            view_value_bytes_max: VIEW_VALUE_BYTES_MAX_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
        }
    }
}

/// Tuning of the command pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Take a snapshot each time a stream's version crosses a multiple of this.
    pub snapshot_every: u64,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Stream states kept in memory (least recently used are dropped).
    pub state_cache_entries: usize,
    /// Events per `apply` call when replaying a stream.
    pub replay_batch: u32,
    /// How many times a command is retried after a conflict with another
    /// writer before it is reported as 409.
    pub conflict_retries: u32,
    /// Units of work of one plugin running wasm at once; more wait (at most
    /// the command time limit) for one to end.
    pub plugin_concurrency: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            snapshot_every: SNAPSHOT_EVERY_DEFAULT,
            idempotency_window: Duration::from_secs(IDEMPOTENCY_WINDOW_SECS_DEFAULT),
            state_cache_entries: STATE_CACHE_ENTRIES_DEFAULT,
            replay_batch: REPLAY_BATCH_DEFAULT,
            conflict_retries: 3,
            plugin_concurrency: PLUGIN_CONCURRENCY_DEFAULT,
        }
    }
}

/// Default time a request's head may take to arrive.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time a request's body may take to arrive (a 12 MB plugin upload
/// at 200 kB/s).
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default time a kept-alive connection may wait for its next request.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default bound on open connections: well below the common `nofile` limit
/// of 1,024, which the database, the plugins and the compile cache share.
pub const MAX_CONNECTIONS_DEFAULT: usize = 768;
/// Default connections kept for health checks beyond the bound.
pub const HEALTH_CONNECTIONS_DEFAULT: usize = 8;

/// Timeouts and bounds of the HTTP server's connections, so that slow or
/// idle clients cannot hold the server's sockets for ever.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A request's head must arrive in full within this time, counted from
    /// when the server starts waiting for it.
    pub header_read_timeout: Duration,
    /// A request's body must arrive in full within this time, counted from
    /// when its head arrived; past it the answer is `408`.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Connections served in full at once; past it new connections are
    /// served health checks only (or closed at once).
    pub max_connections: usize,
    /// Connections beyond `max_connections` that may still ask for
    /// `/healthz` and `/readyz`.
    pub health_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS_DEFAULT),
            body_read_timeout: Duration::from_millis(BODY_READ_TIMEOUT_MS_DEFAULT),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS_DEFAULT),
            max_connections: MAX_CONNECTIONS_DEFAULT,
            health_connections: HEALTH_CONNECTIONS_DEFAULT,
        }
    }
}
