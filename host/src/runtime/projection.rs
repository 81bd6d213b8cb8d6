//! Running a projection: one sandboxed instance per batch of events, with
//! the batch's view session in its store.

use wasmtime::Store;

use super::PluginError;
use super::bindings::WitEvent;
use super::bindings::projection::{Projection, ProjectionPre};
use super::call;
use super::engine::Runtime;
use super::plugin::Plugin;
use super::sandbox::PluginState;
use super::view::{ViewAccess, take_back};

/// An instance of a projection plugin, alive for one batch.
pub struct ProjectionInstance {
    store: Store<PluginState>,
    bindings: Projection,
    limit_ms: u64,
    memory_bytes_max: usize,
}

/// How a batch ended, when the plugin itself did not fail.
pub type BatchOutcome = Result<(), String>;

impl ProjectionInstance {
    /// Instantiate `plugin` in a fresh sandbox whose clocks read `now_ms`.
    pub async fn new(
        runtime: &Runtime,
        plugin: &Plugin,
        pre: &ProjectionPre<PluginState>,
        now_ms: i64,
    ) -> Result<Self, PluginError> {
        let limits = &runtime.limits;
        let mut store = call::new_store(runtime, plugin, now_ms, limits.batch_timeout_ms);
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(call::instantiate_failed(plugin))?;
        Ok(Self {
            store,
            bindings,
            limit_ms: limits.batch_timeout_ms,
            memory_bytes_max: limits.memory_bytes_max,
        })
    }

    /// The event types the projection asks for (empty: all).
    pub async fn subscriptions(&mut self) -> Result<Vec<String>, PluginError> {
        call::start_call(&mut self.store);
        let result = self.bindings.call_subscriptions(&mut self.store).await;
        result.map_err(|e| self.classify(e))
    }

    /// Run one batch against `session`; the session comes back with the
    /// batch's writes whatever happened.
    pub async fn handle_batch<V: ViewAccess>(
        &mut self,
        events: &[WitEvent],
        session: V,
    ) -> (Result<BatchOutcome, PluginError>, V) {
        call::start_call(&mut self.store);
        self.store.data_mut().view = Some(Box::new(session));
        let result = self
            .bindings
            .call_handle_batch(&mut self.store, events)
            .await;
        let result = result.map_err(|e| self.classify(e));
        let session = take_back(self.store.data_mut().view.take());
        (result, session)
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        call::classify(&self.store, error, self.limit_ms, self.memory_bytes_max)
    }
}

impl Drop for ProjectionInstance {
    fn drop(&mut self) {
        self.store.data().flush_output();
    }
}
