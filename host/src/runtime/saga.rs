//! Running a saga: one sandboxed instance per unit of work (an event, a
//! refused command, a timer), whose clocks read the time of that unit.

use wasmtime::Store;

use super::PluginError;
use super::bindings::saga::{Saga, SagaPre};
use super::bindings::{WitEvent, WitFailedCommand, WitReaction, WitTimer};
use super::call;
use super::engine::Runtime;
use super::plugin::Plugin;
use super::sandbox::PluginState;

/// An instance of a saga plugin, alive for one unit of work.
pub struct SagaInstance {
    store: Store<PluginState>,
    bindings: Saga,
    limit_ms: u64,
    memory_bytes_max: usize,
}

/// What the plugin answered, when it did not trap: a reaction, or its error.
pub type ReactionOutcome = Result<WitReaction, String>;

impl SagaInstance {
    /// Instantiate `plugin` in a fresh sandbox whose clocks read `now_ms`.
    pub async fn new(
        runtime: &Runtime,
        plugin: &Plugin,
        pre: &SagaPre<PluginState>,
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

    /// The event types the saga asks for (empty: all).
    pub async fn subscriptions(&mut self) -> Result<Vec<String>, PluginError> {
        call::start_call(&mut self.store);
        let result = self.bindings.call_subscriptions(&mut self.store).await;
        result.map_err(|e| self.classify(e))
    }

    /// The instance `event` belongs to, if any. One instance answers this
    /// for a whole batch (a mapping from event to id, with no instance state
    /// involved); its clocks read each event's time.
    pub async fn correlate(&mut self, event: &WitEvent) -> Result<Option<String>, PluginError> {
        call::start_call(&mut self.store);
        self.store.data_mut().set_now(event.recorded_at_ms);
        let result = self.bindings.call_correlate(&mut self.store, event).await;
        result.map_err(|e| self.classify(e))
    }

    /// React to an event of an instance in `state`.
    pub async fn react(
        &mut self,
        state: &[u8],
        event: &WitEvent,
    ) -> Result<ReactionOutcome, PluginError> {
        call::start_call(&mut self.store);
        let state = state.to_vec();
        let result = self
            .bindings
            .call_react(&mut self.store, &state, event)
            .await;
        result.map_err(|e| self.classify(e))
    }

    /// Tell the instance one of its commands was refused.
    pub async fn on_failure(
        &mut self,
        state: &[u8],
        failed: &WitFailedCommand,
    ) -> Result<ReactionOutcome, PluginError> {
        call::start_call(&mut self.store);
        let state = state.to_vec();
        let result = self
            .bindings
            .call_on_failure(&mut self.store, &state, failed)
            .await;
        result.map_err(|e| self.classify(e))
    }

    /// Tell the instance one of its timers fired.
    pub async fn on_timer(
        &mut self,
        state: &[u8],
        timer: &WitTimer,
    ) -> Result<ReactionOutcome, PluginError> {
        call::start_call(&mut self.store);
        let state = state.to_vec();
        let result = self
            .bindings
            .call_on_timer(&mut self.store, &state, timer)
            .await;
        result.map_err(|e| self.classify(e))
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        call::classify(&self.store, error, self.limit_ms, self.memory_bytes_max)
    }
}

impl Drop for SagaInstance {
    fn drop(&mut self) {
        self.store.data().flush_output();
    }
}
