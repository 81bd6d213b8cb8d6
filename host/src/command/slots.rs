//! Wasm slots: how many units of work run wasm at once, in all and per
//! plugin.
//!
//! The total is bounded by the instance pool, so a burst waits for a slot
//! instead of failing to instantiate. Each plugin may hold at most its
//! share of the slots, so a plugin whose calls spin until their time limit
//! cannot take every slot (nor fill the async runtime's queue) and starve
//! the other plugins' commands. A unit of work waits for a slot at most a
//! given time (the command time limit), then is refused as busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Why no slot was had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The plugin's share was taken for the whole wait.
    ///
    /// Handling: 503 `plugin_busy`.
    #[error(
        "plugin {plugin} already runs {share} calls, its share of the wasm slots, and none ended within {waited_ms} ms; retry later"
    )]
    PluginShareFull {
        plugin: String,
        share: usize,
        waited_ms: u64,
    },
    /// Every slot was taken for the whole wait.
    ///
    /// Handling: 503 `plugin_busy`.
    #[error("all {total} wasm slots stayed busy for {waited_ms} ms; retry later")]
    AllBusy { total: usize, waited_ms: u64 },
    /// The host is shutting down.
    ///
    /// Handling: 503 `unavailable`.
    #[error("the host is shutting down")]
    Closed,
}

/// The slots of a pipeline.
pub struct WasmSlots {
    total: Semaphore,
    total_count: usize,
    share: usize,
    per_plugin: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A slot, held while a unit of work runs wasm.
pub struct Slot<'a> {
    _plugin: OwnedSemaphorePermit,
    _total: SemaphorePermit<'a>,
}

impl WasmSlots {
    /// `total` slots, of which one plugin may hold `share` (at least one,
    /// at most all).
    pub fn new(total: usize, share: usize) -> Self {
        let total = total.max(1);
        Self {
            total: Semaphore::new(total),
            total_count: total,
            share: share.clamp(1, total),
            per_plugin: Mutex::default(),
        }
    }

    /// The most slots one plugin may hold.
    pub fn share(&self) -> usize {
        self.share
    }

    /// Slots `plugin` holds now.
    pub fn held_by(&self, plugin: &str) -> usize {
        self.share - self.plugin_semaphore(plugin).available_permits()
    }

    /// A slot for a unit of work of `plugin`, waiting at most `wait_max`
    /// for the plugin's share and the total together.
    pub async fn acquire(&self, plugin: &str, wait_max: Duration) -> Result<Slot<'_>, SlotError> {
        let started = tokio::time::Instant::now();
        let waited_ms = || started.elapsed().as_millis() as u64;
        let semaphore = self.plugin_semaphore(plugin);
        let own = match tokio::time::timeout(wait_max, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SlotError::Closed),
            Err(_) => {
                return Err(SlotError::PluginShareFull {
                    plugin: plugin.to_string(),
                    share: self.share,
                    waited_ms: waited_ms(),
                });
            }
        };
        let left = wait_max.saturating_sub(started.elapsed());
        let total = match tokio::time::timeout(left, self.total.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SlotError::Closed),
            Err(_) => {
                return Err(SlotError::AllBusy {
                    total: self.total_count,
                    waited_ms: waited_ms(),
                });
            }
        };
        Ok(Slot {
            _plugin: own,
            _total: total,
        })
    }

    fn plugin_semaphore(&self, plugin: &str) -> Arc<Semaphore> {
        let mut map = self.per_plugin.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(plugin.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_plugin_holds_at_most_its_share_and_others_still_get_slots() {
        let slots = WasmSlots::new(4, 2);
        let a1 = slots.acquire("spin", WAIT).await.expect("first");
        let _a2 = slots.acquire("spin", WAIT).await.expect("second");
        assert_eq!(slots.held_by("spin"), 2);
        let refused = slots.acquire("spin", WAIT).await.err();
        assert!(
            matches!(
                refused,
                Some(SlotError::PluginShareFull { share: 2, ref plugin, .. }) if plugin == "spin"
            ),
            "{refused:?}"
        );
        // Another plugin is not held up by the first one's full share.
        let _b = slots.acquire("bank", WAIT).await.expect("another plugin");
        // A slot freed within the wait is taken.
        let waiting = slots.acquire("spin", Duration::from_secs(30));
        drop(a1);
        let _a3 = waiting.await.expect("a slot freed meanwhile");
        assert_eq!(slots.held_by("spin"), 2);
    }

    #[tokio::test]
    async fn the_total_bounds_every_plugin_together() {
        let slots = WasmSlots::new(2, 2);
        let _a = slots.acquire("a", WAIT).await.expect("a");
        let _b = slots.acquire("b", WAIT).await.expect("b");
        let refused = slots.acquire("c", WAIT).await.err();
        assert!(
            matches!(refused, Some(SlotError::AllBusy { total: 2, .. })),
            "{refused:?}"
        );
        // Nor does a refused wait keep its plugin's share.
        assert_eq!(slots.held_by("c"), 0);
    }

    #[test]
    fn the_share_is_at_least_one_and_at_most_the_total() {
        assert_eq!(WasmSlots::new(8, 0).share(), 1);
        assert_eq!(WasmSlots::new(8, 100).share(), 8);
    }
}
