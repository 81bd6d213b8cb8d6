//! A bounded in-memory cache of stream states.
//!
//! An entry is the state folded up to `base_version` plus the events
//! committed after it that are not folded yet (`pending`). The events of a
//! command are folded lazily by the next unit of work on the stream, inside
//! the instance it creates anyway: a command costs one instance and one
//! blocking hop, not two.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::store::RecordedEvent;

/// Shards, so that concurrent commands rarely wait on one lock.
const SHARDS: usize = 16;

/// State of one stream as folded by one plugin version.
#[derive(Clone, Debug)]
pub struct CachedState {
    /// The content hash of the plugin that folded `base_state`.
    pub plugin_hash: Arc<str>,
    pub base_version: u64,
    pub base_state: Arc<[u8]>,
    /// Events after `base_version`, in order, not folded yet.
    pub pending: Arc<[RecordedEvent]>,
}

impl CachedState {
    /// The stream's version including pending events.
    pub fn version(&self) -> u64 {
        self.base_version + self.pending.len() as u64
    }
}

/// An LRU of stream states, sharded by stream id.
pub struct StateCache {
    shards: Vec<Mutex<LruCache<String, CachedState>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl StateCache {
    /// A cache holding about `entries` streams (0 disables it).
    pub fn new(entries: usize) -> Self {
        let per_shard = NonZeroUsize::new(entries.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: Default::default(),
        }
    }

    /// The cached state of `stream_id` if it was folded by `plugin_hash`.
    pub fn get(&self, stream_id: &str, plugin_hash: &str) -> Option<CachedState> {
        let mut shard = self.shard(stream_id);
        match shard.get(stream_id) {
            Some(entry) if &*entry.plugin_hash == plugin_hash => Some(entry.clone()),
            _ => None,
        }
    }

    pub fn put(&self, stream_id: &str, state: CachedState) {
        self.shard(stream_id).put(stream_id.to_string(), state);
    }

    pub fn remove(&self, stream_id: &str) {
        self.shard(stream_id).pop(stream_id);
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, LruCache<String, CachedState>> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str, version: u64) -> CachedState {
        CachedState {
            plugin_hash: Arc::from(hash),
            base_version: version,
            base_state: Arc::from(&b"{}"[..]),
            pending: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn entries_are_keyed_by_plugin_hash() {
        let cache = StateCache::new(10);
        cache.put("s-1", entry("sha256:a", 3));
        assert_eq!(cache.get("s-1", "sha256:a").map(|e| e.version()), Some(3));
        assert!(cache.get("s-1", "sha256:b").is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let cache = StateCache::new(SHARDS);
        for i in 0..1000 {
            cache.put(&format!("s-{i}"), entry("h", i));
        }
        let kept = (0..1000)
            .filter(|i| cache.get(&format!("s-{i}"), "h").is_some())
            .count();
        assert!(kept <= SHARDS, "kept {kept}");
    }
}
