//! The sandbox a plugin runs in: deny-by-default WASI, deterministic clocks
//! and random numbers, captured stdout/stderr, and per-store limits.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::bindings::{LogLevel, aggregate::kiln::plugin};

/// Bytes of stdout and of stderr kept per unit of work. Output past this is
/// dropped; it only feeds the log and trap messages.
const CAPTURED_OUTPUT_BYTES_MAX: usize = 16 * 1024;

/// What a store holds while a plugin runs one unit of work.
pub struct PluginState {
    /// The plugin's name, for log tags and messages.
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    /// Epoch ticks seen by the current call.
    pub ticks_used: u64,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// The view of the batch a projection is processing.
    pub view: Option<super::view::ViewSession>,
}

impl PluginState {
    /// A fresh sandbox whose clocks read `now_ms` (the time the host stamped
    /// on the command or event being processed) and whose random numbers
    /// come from a fixed seed, so a replay sees the same inputs.
    pub fn new(plugin: Arc<str>, now_ms: i64, memory_bytes_max: usize) -> Self {
        let stdout = MemoryOutputPipe::new(CAPTURED_OUTPUT_BYTES_MAX);
        let stderr = MemoryOutputPipe::new(CAPTURED_OUTPUT_BYTES_MAX);
        let seed = now_ms.to_le_bytes().to_vec();
        // The builder's defaults already deny files, network, environment
        // and arguments; clocks and random are real by default, so override.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FixedClock { now_ms })
            .monotonic_clock(FixedClock { now_ms })
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
            ticks_used: 0,
            stdout,
            stderr,
            view: None,
        }
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
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
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
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// A clock stopped at the time of the unit of work.
struct FixedClock {
    now_ms: i64,
}

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms.max(0) as u64)
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        (self.now_ms.max(0) as u64).saturating_mul(1_000_000)
    }
}
