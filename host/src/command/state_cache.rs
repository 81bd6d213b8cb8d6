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
    /// Empty when the cache is disabled.
    shards: Vec<Mutex<LruCache<String, CachedState>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl StateCache {
    /// A cache holding about `entries` streams: each of its shards keeps its
    /// `entries / SHARDS` (rounded up) most recently used. 0 disables it:
    /// it keeps nothing.
    pub fn new(entries: usize) -> Self {
        let shards = match NonZeroUsize::new(entries.div_ceil(SHARDS)) {
            Some(per_shard) => (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            None => Vec::new(),
        };
        Self {
            shards,
            hasher: Default::default(),
        }
    }

    /// The cached state of `stream_id` if it was folded by `plugin_hash`.
    pub fn get(&self, stream_id: &str, plugin_hash: &str) -> Option<CachedState> {
        let mut shard = self.shard(stream_id)?;
        match shard.get(stream_id) {
            Some(entry) if &*entry.plugin_hash == plugin_hash => Some(entry.clone()),
            _ => None,
        }
    }

    pub fn put(&self, stream_id: &str, state: CachedState) {
        if let Some(mut shard) = self.shard(stream_id) {
            shard.put(stream_id.to_string(), state);
        }
    }

    pub fn remove(&self, stream_id: &str) {
        if let Some(mut shard) = self.shard(stream_id) {
            shard.pop(stream_id);
        }
    }

    /// The shard of `key`, or `None` when the cache is disabled.
    fn shard(&self, key: &str) -> Option<std::sync::MutexGuard<'_, LruCache<String, CachedState>>> {
        let i = self.shard_index(key)?;
        Some(self.shards[i].lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn shard_index(&self, key: &str) -> Option<usize> {
        if self.shards.is_empty() {
            return None;
        }
        Some((self.hasher.hash_one(key) as usize) % self.shards.len())
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

    /// Keys that fall into each shard of `cache`, `per_shard` of each.
    fn keys_per_shard(cache: &StateCache, per_shard: usize) -> Vec<Vec<String>> {
        let mut shards = vec![Vec::new(); SHARDS];
        let mut i = 0;
        while shards
            .iter()
            .any(|keys: &Vec<String>| keys.len() < per_shard)
        {
            let key = format!("s-{i}");
            i += 1;
            let keys = &mut shards[cache.shard_index(&key).expect("enabled")];
            if keys.len() < per_shard {
                keys.push(key);
            }
        }
        shards
    }

    #[test]
    fn cache_is_bounded() {
        const PER_SHARD: usize = 4;
        let cache = StateCache::new(SHARDS * PER_SHARD);
        let shards = keys_per_shard(&cache, PER_SHARD + 1);
        // Up to the bound, every entry is kept.
        for keys in &shards {
            for (version, key) in keys[..PER_SHARD].iter().enumerate() {
                cache.put(key, entry("h", version as u64));
            }
        }
        for keys in &shards {
            for key in &keys[..PER_SHARD] {
                assert!(cache.get(key, "h").is_some(), "{key} was evicted");
            }
        }
        // Beyond it, the least recently used entry of the shard goes: the
        // gets above used them in order, so the first is the oldest.
        for keys in &shards {
            cache.put(&keys[PER_SHARD], entry("h", 99));
        }
        for keys in &shards {
            assert!(cache.get(&keys[0], "h").is_none(), "{} was kept", keys[0]);
            for key in &keys[1..] {
                assert!(cache.get(key, "h").is_some(), "{key} was evicted");
            }
        }
    }

    #[test]
    fn a_cache_of_many_streams_keeps_the_most_recent_of_each_shard() {
        const PER_SHARD: usize = 4;
        let cache = StateCache::new(SHARDS * PER_SHARD);
        let keys: Vec<String> = (0..1000).map(|i| format!("s-{i}")).collect();
        for (version, key) in keys.iter().enumerate() {
            cache.put(key, entry("h", version as u64));
        }
        let mut by_shard = vec![Vec::new(); SHARDS];
        for key in &keys {
            by_shard[cache.shard_index(key).expect("enabled")].push(key);
        }
        let mut kept = 0;
        for shard in by_shard {
            let (evicted, recent) = shard.split_at(shard.len().saturating_sub(PER_SHARD));
            for key in evicted {
                assert!(cache.get(key, "h").is_none(), "{key} was kept");
            }
            for key in recent {
                assert!(cache.get(key, "h").is_some(), "{key} was evicted");
                kept += 1;
            }
        }
        assert_eq!(kept, SHARDS * PER_SHARD, "every shard is full");
    }

    #[test]
    fn zero_entries_disables_the_cache() {
        let cache = StateCache::new(0);
        cache.put("s-1", entry("h", 1));
        assert!(cache.get("s-1", "h").is_none());
        cache.remove("s-1");
        // The smallest cache that is enabled keeps one entry per shard.
        let cache = StateCache::new(1);
        cache.put("s-1", entry("h", 1));
        assert_eq!(cache.get("s-1", "h").map(|e| e.version()), Some(1));
    }
}
