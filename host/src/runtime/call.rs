//! What every plugin call shares: a fresh store with limits and a time
//! budget, and the classification of a failed call.

use wasmtime::{Store, Trap, UpdateDeadline};

use super::PluginError;
use super::engine::{EPOCH_TICK, Runtime};
use super::plugin::Plugin;
use super::sandbox::PluginState;

/// A fresh store for one unit of work of `plugin`, whose clocks read
/// `now_ms`, with the memory limit and a time budget of `limit_ms` per call.
pub fn new_store(
    runtime: &Runtime,
    plugin: &Plugin,
    now_ms: i64,
    limit_ms: u64,
) -> Store<PluginState> {
    let limits = &runtime.limits;
    let state = PluginState::new(plugin.name.clone(), now_ms, limits.memory_bytes_max);
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|s| &mut s.limits);
    // At every tick: yield to the async runtime, and stop the call once it
    // has used up its ticks.
    let limit_ticks = deadline_ticks(limit_ms);
    store.epoch_deadline_callback(move |mut ctx| {
        let used = &mut ctx.data_mut().ticks_used;
        *used += 1;
        if *used >= limit_ticks {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    store
}

/// The error of an instantiation that failed (e.g. the pool is exhausted).
pub fn instantiate_failed(plugin: &Plugin) -> impl FnOnce(wasmtime::Error) -> PluginError + '_ {
    move |e| PluginError::Instantiate {
        plugin: plugin.name.to_string(),
        message: format!("{e:#}"),
    }
}

/// Give the next call the whole time budget.
pub fn start_call(store: &mut Store<PluginState>) {
    store.data_mut().ticks_used = 0;
    store.set_epoch_deadline(1);
}

/// What went wrong in a call that returned a wasmtime error.
pub fn classify(
    store: &Store<PluginState>,
    error: wasmtime::Error,
    limit_ms: u64,
    memory_bytes_max: usize,
) -> PluginError {
    let data = store.data();
    let plugin = data.plugin.to_string();
    data.flush_output();
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return PluginError::Timeout { plugin, limit_ms };
    }
    let text = format!("{error:?}");
    // A refused memory.grow is not a `Trap` (see WASM-NOTES.md); Rust's
    // allocator reports its own failure on stderr before aborting.
    let stderr = data.stderr_tail();
    if text.contains("forcing trap when growing memory") || stderr.contains("memory allocation of")
    {
        return PluginError::OutOfMemory {
            plugin,
            limit_bytes: memory_bytes_max,
        };
    }
    // The outermost context is a wasm backtrace; the cause is what a reader
    // needs.
    let what = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    let mut message = what;
    if let Some(logged) = data.last_error_log() {
        message = format!("{message}; plugin error: {logged}");
    }
    if !stderr.is_empty() {
        message = format!("{message}; plugin stderr: {stderr}");
    }
    PluginError::Trap { plugin, message }
}

/// Ticks a call may see before it is stopped: the limit rounded up, plus one
/// so that a tick landing right after the call starts does not cut it short.
fn deadline_ticks(limit_ms: u64) -> u64 {
    let tick_ms = EPOCH_TICK.as_millis().max(1) as u64;
    limit_ms.div_ceil(tick_ms).max(1) + 1
}
