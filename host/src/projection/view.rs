//! The `view` a projection writes through, as the host serves it during one
//! batch (the runtime calls it through [`ViewAccess`]).
//!
//! Writes go to an overlay that the runner commits with the checkpoint once
//! the batch succeeds (or throws away if it fails). Reads see the overlay
//! first, then a row cache the runner keeps across batches (it is the only
//! writer of its generation, so the cache never goes stale), then the store.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use lru::LruCache;

use crate::runtime::ViewAccess;
use crate::store::{RowWrite, StoreError, ViewId, ViewStore};

/// Rows of one generation remembered between batches: `None` is a row known
/// to be absent. `pending` holds the writes of the batch whose commit is in
/// flight: they are not in the store yet, and the LRU may not drop them.
pub struct RowCache {
    rows: LruCache<String, Option<Vec<u8>>>,
    pending: HashMap<String, Option<Vec<u8>>>,
}

fn value_of(write: &RowWrite) -> Option<Vec<u8>> {
    match write {
        RowWrite::Put(v) => Some(v.clone()),
        RowWrite::Delete => None,
    }
}

impl RowCache {
    pub fn new(entries: usize) -> Self {
        Self {
            rows: LruCache::new(NonZeroUsize::new(entries).unwrap_or(NonZeroUsize::MIN)),
            pending: HashMap::new(),
        }
    }

    /// Writes of a batch whose commit is in flight. They stay out of the
    /// LRU (which could drop them before the store has them) until
    /// [`RowCache::pending_committed`].
    pub fn set_pending(&mut self, writes: &[(String, RowWrite)]) {
        debug_assert!(self.pending.is_empty(), "one commit in flight at most");
        for (key, write) in writes {
            self.pending.insert(key.clone(), value_of(write));
        }
    }

    /// The in-flight commit succeeded: its rows join the cache.
    pub fn pending_committed(&mut self) {
        for (key, value) in self.pending.drain() {
            self.rows.put(key, value);
        }
    }

    /// Forget everything (after a failed commit).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.pending.clear();
    }

    fn get(&mut self, key: &str) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(key) {
            return Some(v.clone());
        }
        self.rows.get(key).cloned()
    }
}

/// One batch's access to a view.
pub struct ViewSession {
    store: Arc<dyn ViewStore>,
    projection: Arc<str>,
    generation: u64,
    overlay: BTreeMap<String, RowWrite>,
    cache: RowCache,
    value_bytes_max: usize,
    /// A store failure met during the batch: the batch failed for a reason
    /// that is not the plugin's.
    pub store_error: Option<StoreError>,
}

impl ViewSession {
    pub fn new(
        store: Arc<dyn ViewStore>,
        projection: Arc<str>,
        generation: u64,
        cache: RowCache,
        value_bytes_max: usize,
    ) -> Self {
        Self {
            store,
            projection,
            generation,
            overlay: BTreeMap::new(),
            cache,
            value_bytes_max,
            store_error: None,
        }
    }

    fn id(&self) -> ViewId<'_> {
        ViewId {
            projection: &self.projection,
            generation: self.generation,
        }
    }

    /// The batch's writes (one per key) and the cache, to commit and keep.
    pub fn finish(self) -> (Vec<(String, RowWrite)>, RowCache) {
        (self.overlay.into_iter().collect(), self.cache)
    }

    /// The cache, discarding the batch's writes.
    pub fn abandon(self) -> RowCache {
        self.cache
    }

    fn store_failed(&mut self, e: StoreError) -> String {
        let message = format!("the view store failed: {e}");
        self.store_error = Some(e);
        message
    }
}

#[async_trait]
impl ViewAccess for ViewSession {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        if let Some(write) = self.overlay.get(&key) {
            return Ok(match write {
                RowWrite::Put(v) => Some(v.clone()),
                RowWrite::Delete => None,
            });
        }
        if let Some(cached) = self.cache.get(&key) {
            return Ok(cached);
        }
        let found = match self.store.view_get(self.id(), &key).await {
            Ok(found) => found,
            Err(e) => return Err(self.store_failed(e)),
        };
        self.cache.rows.put(key, found.clone());
        Ok(found)
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if value.len() > self.value_bytes_max {
            return Err(format!(
                "view row {key:?} of {} bytes is over the limit of {} bytes",
                value.len(),
                self.value_bytes_max
            ));
        }
        self.overlay.insert(key, RowWrite::Put(value));
        Ok(())
    }

    fn delete(&mut self, key: String) {
        self.overlay.insert(key, RowWrite::Delete);
    }

    /// Committed rows merged with the batch's own writes, in key order.
    async fn scan(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let limit = limit.clamp(1, 10_000);
        // Writes not in the store yet: the in-flight batch's, then this one's.
        let mut layer: BTreeMap<String, RowWrite> = BTreeMap::new();
        for (key, value) in &self.cache.pending {
            if key.starts_with(&prefix) {
                let write = match value {
                    Some(v) => RowWrite::Put(v.clone()),
                    None => RowWrite::Delete,
                };
                layer.insert(key.clone(), write);
            }
        }
        for (key, write) in self.overlay.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            layer.insert(key.clone(), write.clone());
        }
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut cursor = after;
        loop {
            let page = match self
                .store
                .view_scan(self.id(), &prefix, cursor.as_deref(), limit)
                .await
            {
                Ok(page) => page,
                Err(e) => return Err(self.store_failed(e)),
            };
            let exhausted = page.len() < limit as usize;
            // The window this page covers: after the cursor, up to its last
            // key (or to the end of the prefix when the store has no more).
            let upper = if exhausted {
                None
            } else {
                page.last().map(|(k, _)| k.clone())
            };
            let mut window: BTreeMap<String, Vec<u8>> = page.into_iter().collect();
            let lower = match &cursor {
                Some(c) => Bound::Excluded(c.clone()),
                None => Bound::Included(prefix.clone()),
            };
            let high = match &upper {
                Some(u) => Bound::Included(u.clone()),
                None => Bound::Unbounded,
            };
            for (key, write) in layer.range((lower, high)) {
                match write {
                    RowWrite::Put(v) => {
                        window.insert(key.clone(), v.clone());
                    }
                    RowWrite::Delete => {
                        window.remove(key);
                    }
                }
            }
            for row in window {
                if out.len() == limit as usize {
                    return Ok(out);
                }
                out.push(row);
            }
            match upper {
                Some(u) if out.len() < limit as usize => cursor = Some(u),
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventStore;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{GenerationRecord, GenerationRole, ViewCommit};

    async fn store_with_rows(dir: &std::path::Path, rows: &[&str]) -> Arc<dyn EventStore> {
        let url = format!("sqlite://{}", dir.join("kiln.db").display());
        let store: Arc<dyn EventStore> = Arc::new(
            SqliteStore::open(&url, SqliteOptions::default())
                .await
                .unwrap(),
        );
        store
            .save_generation(GenerationRecord {
                name: "p".into(),
                generation: 1,
                plugin_hash: "sha256:x".into(),
                role: GenerationRole::Active,
                position: 0,
            })
            .await
            .unwrap();
        store
            .commit_view(ViewCommit {
                projection: "p".into(),
                generation: 1,
                from_position: 0,
                to_position: 1,
                writes: rows
                    .iter()
                    .map(|k| (k.to_string(), RowWrite::Put(k.as_bytes().to_vec())))
                    .collect(),
                skip: None,
            })
            .await
            .unwrap();
        store
    }

    fn keys(rows: &[(String, Vec<u8>)]) -> Vec<&str> {
        rows.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[tokio::test]
    async fn scan_merges_the_store_the_in_flight_batch_and_this_batch_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_rows(dir.path(), &["a-1", "a-2", "a-4", "a-6", "b-1"]).await;
        let mut cache = RowCache::new(16);
        // The previous batch, not committed yet: adds a-3, deletes a-4.
        cache.set_pending(&[
            ("a-3".into(), RowWrite::Put(b"a-3".to_vec())),
            ("a-4".into(), RowWrite::Delete),
        ]);
        let mut session = ViewSession::new(store.clone(), Arc::from("p"), 1, cache, 1024);
        // This batch: adds a-5 and a-0, deletes a-2, overwrites a-6.
        session.put("a-5".into(), b"a-5".to_vec()).unwrap();
        session.put("a-0".into(), b"a-0".to_vec()).unwrap();
        session.delete("a-2".into());
        session.put("a-6".into(), b"new".to_vec()).unwrap();

        let all = session.scan("a-".into(), None, 100).await.unwrap();
        assert_eq!(keys(&all), ["a-0", "a-1", "a-3", "a-5", "a-6"]);
        assert_eq!(all[4].1, b"new");
        // Paging with small limits sees the same rows, none twice.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = session.scan("a-".into(), after.clone(), 2).await.unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(k, _)| k.clone());
            paged.extend(page);
        }
        assert_eq!(keys(&paged), keys(&all));
        // Reads see the same layering.
        assert_eq!(session.get("a-4".into()).await.unwrap(), None);
        assert_eq!(
            session.get("a-3".into()).await.unwrap(),
            Some(b"a-3".to_vec())
        );
        assert_eq!(
            session.get("a-1".into()).await.unwrap(),
            Some(b"a-1".to_vec())
        );
        assert!(session.put("big".into(), vec![0; 2048]).is_err());
        let (writes, _) = session.finish();
        assert_eq!(writes.len(), 4, "one write per key, in key order");
    }

    #[tokio::test]
    async fn commits_are_fenced_by_the_checkpoint_and_generations_promote_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_rows(dir.path(), &["k1", "k2", "k3"]).await;
        let stale = store
            .commit_view(ViewCommit {
                projection: "p".into(),
                generation: 1,
                from_position: 0,
                to_position: 2,
                writes: vec![("k9".into(), RowWrite::Put(b"x".to_vec()))],
                skip: None,
            })
            .await;
        assert!(
            matches!(
                stale,
                Err(StoreError::CheckpointMoved {
                    actual: Some(1),
                    ..
                })
            ),
            "{stale:?}"
        );
        let view = ViewId {
            projection: "p",
            generation: 1,
        };
        assert_eq!(
            store.view_get(view, "k9").await.unwrap(),
            None,
            "nothing of it written"
        );
        store
            .save_generation(GenerationRecord {
                name: "p".into(),
                generation: 2,
                plugin_hash: "sha256:y".into(),
                role: GenerationRole::Building,
                position: 0,
            })
            .await
            .unwrap();
        store.promote_generation("p", 2).await.unwrap();
        let roles: Vec<_> = store
            .generations()
            .await
            .unwrap()
            .into_iter()
            .map(|g| (g.generation, g.role, g.position))
            .collect();
        assert_eq!(
            roles,
            [
                (1, GenerationRole::Retired, 1),
                (2, GenerationRole::Active, 0)
            ]
        );
        assert_eq!(store.drop_generation(view, 2).await.unwrap(), 2);
        assert_eq!(store.drop_generation(view, 2).await.unwrap(), 1);
        assert_eq!(store.drop_generation(view, 2).await.unwrap(), 0);
        assert_eq!(store.generations().await.unwrap().len(), 1);
        assert!(
            store
                .view_scan(view, "", None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rows_of_the_commit_in_flight_are_never_evicted() {
        let mut cache = RowCache::new(1);
        cache.set_pending(&[
            ("a".into(), RowWrite::Put(b"1".to_vec())),
            ("b".into(), RowWrite::Delete),
        ]);
        // Both are served although the LRU holds one row.
        assert_eq!(cache.get("a"), Some(Some(b"1".to_vec())));
        assert_eq!(cache.get("b"), Some(None));
        cache.pending_committed();
        assert!(cache.pending.is_empty());
        // Committed rows are ordinary cache entries: the LRU keeps one.
        let cached = [cache.get("a"), cache.get("b")];
        assert_eq!(
            cached.iter().filter(|c| c.is_some()).count(),
            1,
            "{cached:?}"
        );
    }
}
