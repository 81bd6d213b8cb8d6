//! Running an aggregate: one sandboxed instance per unit of work (one
//! command on one stream), never shared between streams.

use wasmtime::{Store, Trap, UpdateDeadline};

use super::PluginError;
use super::bindings::aggregate::{Aggregate, AggregatePre};
use super::bindings::{WitCommand, WitEvent, WitFailure, WitNewEvent};
use super::engine::{EPOCH_TICK, Runtime};
use super::plugin::Plugin;
use super::sandbox::PluginState;

/// An instance of an aggregate plugin, alive for one unit of work.
pub struct AggregateInstance {
    store: Store<PluginState>,
    bindings: Aggregate,
    limit_ms: u64,
    memory_bytes_max: usize,
}

impl AggregateInstance {
    /// Instantiate `plugin` in a fresh sandbox whose clocks read `now_ms`.
    pub async fn new(
        runtime: &Runtime,
        plugin: &Plugin,
        pre: &AggregatePre<PluginState>,
        now_ms: i64,
    ) -> Result<Self, PluginError> {
        let limits = &runtime.limits;
        let state = PluginState::new(plugin.name.clone(), now_ms, limits.memory_bytes_max);
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        // At every tick: yield to the async runtime, and stop the call once
        // it has used up its ticks.
        let limit_ticks = deadline_ticks(limits.command_timeout_ms);
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
        let bindings =
            pre.instantiate_async(&mut store)
                .await
                .map_err(|e| PluginError::Instantiate {
                    plugin: plugin.name.to_string(),
                    message: format!("{e:#}"),
                })?;
        Ok(Self {
            store,
            bindings,
            limit_ms: limits.command_timeout_ms,
            memory_bytes_max: limits.memory_bytes_max,
        })
    }

    /// Fold `events` into `state` in one call.
    pub async fn apply(
        &mut self,
        state: &[u8],
        events: &[WitEvent],
    ) -> Result<Vec<u8>, PluginError> {
        self.start_call();
        let state = state.to_vec();
        let result = self
            .bindings
            .call_apply(&mut self.store, &state, events)
            .await;
        result.map_err(|e| self.classify(e))
    }

    /// Decide `command` against `state`.
    pub async fn handle(
        &mut self,
        state: &[u8],
        command: &WitCommand,
    ) -> Result<Result<Vec<WitNewEvent>, WitFailure>, PluginError> {
        self.start_call();
        let state = state.to_vec();
        let result = self
            .bindings
            .call_handle(&mut self.store, &state, command)
            .await;
        result.map_err(|e| self.classify(e))
    }

    /// Each call gets the whole time budget.
    fn start_call(&mut self) {
        self.store.data_mut().ticks_used = 0;
        self.store.set_epoch_deadline(1);
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.store.data().plugin
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        let plugin = self.plugin().to_string();
        let data = self.store.data();
        data.flush_output();
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            return PluginError::Timeout {
                plugin,
                limit_ms: self.limit_ms,
            };
        }
        let text = format!("{error:?}");
        // A refused memory.grow is not a `Trap` (see WASM-NOTES.md); Rust's
        // allocator reports its own failure on stderr before aborting.
        let stderr = data.stderr_tail();
        if text.contains("forcing trap when growing memory")
            || stderr.contains("memory allocation of")
        {
            return PluginError::OutOfMemory {
                plugin,
                limit_bytes: self.memory_bytes_max,
            };
        }
        // The outermost context is a wasm backtrace; the cause is what a
        // reader needs.
        let what = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => error.root_cause().to_string(),
        };
        let message = if stderr.is_empty() {
            what
        } else {
            format!("{what}; plugin stderr: {stderr}")
        };
        PluginError::Trap { plugin, message }
    }
}

impl Drop for AggregateInstance {
    fn drop(&mut self) {
        self.store.data().flush_output();
    }
}

/// Ticks a call may see before it is stopped: the limit rounded up, plus one
/// so that a tick landing right after the call starts does not cut it short.
fn deadline_ticks(limit_ms: u64) -> u64 {
    let tick_ms = EPOCH_TICK.as_millis().max(1) as u64;
    limit_ms.div_ceil(tick_ms).max(1) + 1
}
