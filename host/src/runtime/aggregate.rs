//! Running an aggregate: one sandboxed instance per unit of work (one
//! command on one stream), never shared between streams.

use wasmtime::Store;

use super::PluginError;
use super::bindings::aggregate::{Aggregate, AggregatePre};
use super::bindings::{WitCommand, WitEvent, WitFailure, WitNewEvent};
use super::call;
use super::engine::Runtime;
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
        let mut store = call::new_store(runtime, plugin, now_ms, limits.command_timeout_ms);
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(call::instantiate_failed(plugin))?;
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
        call::start_call(&mut self.store);
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
        call::start_call(&mut self.store);
        let state = state.to_vec();
        let result = self
            .bindings
            .call_handle(&mut self.store, &state, command)
            .await;
        result.map_err(|e| self.classify(e))
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.store.data().plugin
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        call::classify(&self.store, error, self.limit_ms, self.memory_bytes_max)
    }
}

impl Drop for AggregateInstance {
    fn drop(&mut self) {
        self.store.data().flush_output();
    }
}
