//! What every plugin call shares: a fresh store with limits and a time
//! budget, and the classification of a failed call.
//!
//! The time limit of a call is wall time, counted from the call's start
//! (not CPU time, and not the ticks the call happened to run in): at every
//! epoch tick a running call yields to the async runtime, and once the
//! clock has passed its deadline it is interrupted instead. A call that is
//! waiting for a worker thread when its deadline passes is interrupted as
//! soon as it runs again, before doing more work than one tick.

use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::PluginError;
use super::engine::Runtime;
use super::plugin::Plugin;
use super::sandbox::PluginState;

/// A fresh store for one unit of work of `plugin`, whose clocks read
/// `now_ms`, with the memory limit and a wall-time limit of `limit_ms` per
/// call (each call starts its clock with [`start_call`]).
pub fn new_store(
    runtime: &Runtime,
    plugin: &Plugin,
    now_ms: i64,
    limit_ms: u64,
) -> Store<PluginState> {
    let limits = &runtime.limits;
    let mut state = PluginState::new(plugin.name.clone(), now_ms, limits.memory_bytes_max);
    state.call_limit = Duration::from_millis(limit_ms);
    state.call_deadline = Instant::now() + state.call_limit;
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|s| &mut s.limits);
    // At every tick: stop the call once its deadline has passed, else
    // yield to the async runtime so other work runs.
    store.epoch_deadline_callback(|ctx| Ok(on_tick(ctx.data().call_deadline, Instant::now())));
    store.set_epoch_deadline(1);
    store
}

/// What a call does at an epoch tick: stop once `now` has reached its
/// deadline, else yield and run on at the next tick.
fn on_tick(deadline: Instant, now: Instant) -> UpdateDeadline {
    if now >= deadline {
        UpdateDeadline::Interrupt
    } else {
        UpdateDeadline::Yield(1)
    }
}

/// The error of an instantiation that failed (e.g. the pool is exhausted).
pub fn instantiate_failed(plugin: &Plugin) -> impl FnOnce(wasmtime::Error) -> PluginError + '_ {
    move |e| PluginError::Instantiate {
        plugin: plugin.name.to_string(),
        message: format!("{e:#}"),
    }
}

/// Start the clock of the next call: it may run until its limit from now.
pub fn start_call(store: &mut Store<PluginState>) {
    let state = store.data_mut();
    state.call_deadline = Instant::now() + state.call_limit;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_yields_until_its_wall_deadline_then_stops() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        assert!(matches!(on_tick(deadline, start), UpdateDeadline::Yield(1)));
        assert!(matches!(
            on_tick(deadline, start + Duration::from_millis(99)),
            UpdateDeadline::Yield(1)
        ));
        assert!(matches!(
            on_tick(deadline, deadline),
            UpdateDeadline::Interrupt
        ));
        assert!(matches!(
            on_tick(deadline, start + Duration::from_secs(5)),
            UpdateDeadline::Interrupt
        ));
    }
}
