//! The sandbox a plugin runs in: deny-by-default WASI, deterministic clocks
//! and random numbers, captured stdout/stderr, and per-store limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::bindings::projection::kiln::plugin::view;
use super::bindings::{LogLevel, aggregate::kiln::plugin};
use super::view::ViewAccess;

/// Bytes of stdout and of stderr kept per unit of work. Output past this is
/// dropped; it only feeds the log and trap messages.
const CAPTURED_OUTPUT_BYTES_MAX: usize = 16 * 1024;
/// Bytes of the last error-level log message kept for trap messages.
const LAST_ERROR_LOG_BYTES_MAX: usize = 2048;

/// What a store holds while a plugin runs one unit of work.
pub struct PluginState {
    /// The plugin's name, for log tags and messages.
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    /// The wall time one call may take (see `call::start_call`).
    pub call_limit: Duration,
    /// When the current call must stop.
    pub call_deadline: Instant,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// The view of the batch a projection is processing.
    pub view: Option<Box<dyn ViewAccess>>,
    /// The last message the plugin logged at `error` level during this unit
    /// of work. Guests whose stdio goes nowhere (JavaScript and Python
    /// components import no WASI) log an uncaught exception here before they
    /// trap, so the trap message can say what happened.
    last_error_log: Option<String>,
    /// The time the sandbox's clocks read, shared with them.
    now_ms: Arc<AtomicI64>,
}

impl PluginState {
    /// A fresh sandbox whose clocks read `now_ms` (the time the host stamped
    /// on the command or event being processed) and whose random numbers
    /// come from a fixed seed, so a replay sees the same inputs.
    pub fn new(plugin: Arc<str>, now_ms: i64, memory_bytes_max: usize) -> Self {
        let stdout = MemoryOutputPipe::new(CAPTURED_OUTPUT_BYTES_MAX);
        let stderr = MemoryOutputPipe::new(CAPTURED_OUTPUT_BYTES_MAX);
        let seed = now_ms.to_le_bytes().to_vec();
        let clock = Arc::new(AtomicI64::new(now_ms));
        // The builder's defaults already deny files, network, environment
        // and arguments; clocks and random are real by default, so override.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FixedClock(clock.clone()))
            .monotonic_clock(FixedClock(clock.clone()))
            .secure_random(wasmtime_wasi::Deterministic::new(seed.clone()))
            .insecure_random(wasmtime_wasi::Deterministic::new(seed))
            .insecure_random_seed(now_ms as u128)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes_max)
            .trap_on_grow_failure(true)
            .build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limits,
            call_limit: Duration::ZERO,
            call_deadline: Instant::now(),
            stdout,
            stderr,
            view: None,
            last_error_log: None,
            now_ms: clock,
        }
    }

    /// Move the clocks to `now_ms`, the time of the next unit of work an
    /// instance reused across a batch is given (the random seed stays the
    /// one of the instance's start).
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The last error-level message the plugin logged, if any.
    pub fn last_error_log(&self) -> Option<&str> {
        self.last_error_log.as_deref()
    }

    /// The tail of what the plugin wrote to stderr (a Rust panic message
    /// lands there), for trap messages.
    pub fn stderr_tail(&self) -> String {
        tail_text(&self.stderr.contents(), 2048)
    }

    /// Forward what the plugin printed to the host's log.
    pub fn flush_output(&self) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            if !bytes.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                for line in text.lines().filter(|l| !l.is_empty()) {
                    tracing::info!(plugin = %self.plugin, stream, "{line}");
                }
            }
        }
    }
}

fn tail_text(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.lines()
        .filter(|line| !is_backtrace_hint(line))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Rust's panic handler ends with advice to set `RUST_BACKTRACE`, which a
/// sandboxed plugin cannot act on: the host leaves it out of messages.
fn is_backtrace_hint(line: &str) -> bool {
    line.starts_with("note: run with `RUST_BACKTRACE=")
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl plugin::types::Host for PluginState {}

impl plugin::log::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => {
                tracing::error!(plugin, "{message}");
                self.last_error_log = Some(truncate_chars(&message, LAST_ERROR_LOG_BYTES_MAX));
            }
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
/// The `view` import, served from the batch's session.
fn session(state: &mut PluginState) -> wasmtime::Result<&mut Box<dyn ViewAccess>> {
    state
        .view
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("the view is only available inside handle-batch"))
}

impl view::Host for PluginState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        session(self)?.get(key).await.map_err(wasmtime::Error::msg)
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        session(self)?.put(key, value).map_err(wasmtime::Error::msg)
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        session(self)?.delete(key);
        Ok(())
    }

    async fn scan(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        session(self)?
            .scan(prefix, after, limit)
            .await
            .map_err(wasmtime::Error::msg)
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A clock stopped at the time of the unit of work.
struct FixedClock(Arc<AtomicI64>);

impl FixedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed).max(0) as u64
    }
}

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms())
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.now_ms().saturating_mul(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clocks_read_the_time_of_the_unit_of_work() {
        let mut state = PluginState::new(Arc::from("p"), 1_500, 1 << 20);
        let clock = FixedClock(state.now_ms.clone());
        assert_eq!(HostWallClock::now(&clock), Duration::from_millis(1_500));
        state.set_now(2_000);
        assert_eq!(HostWallClock::now(&clock), Duration::from_millis(2_000));
        assert_eq!(HostMonotonicClock::now(&clock), 2_000_000_000);
    }

    #[test]
    fn the_last_error_log_is_kept_and_cut_at_a_char_boundary() {
        use plugin::log::Host as _;
        let mut state = PluginState::new(Arc::from("p"), 0, 1 << 20);
        assert_eq!(state.last_error_log(), None);
        state.log(LogLevel::Info, "not an error".into());
        assert_eq!(state.last_error_log(), None);
        state.log(LogLevel::Error, "first".into());
        state.log(LogLevel::Error, "é".repeat(LAST_ERROR_LOG_BYTES_MAX));
        let kept = state.last_error_log().unwrap();
        assert!(kept.starts_with('é') && kept.ends_with('…'));
        assert!(kept.len() <= LAST_ERROR_LOG_BYTES_MAX + '…'.len_utf8());
    }

    #[test]
    fn messages_leave_out_advice_a_plugin_cannot_follow() {
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        let tail = tail_text(stderr.as_bytes(), 2048);
        assert_eq!(tail, "thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom");
    }
}
