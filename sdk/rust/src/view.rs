//! [`View`]: the key-value read model a projection writes, with a per-batch
//! row cache.

use std::any::type_name;
use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The key-value view a projection owns: string keys, byte values (JSON by
/// convention), read and written by [`crate::Projection`] methods.
///
/// The typed methods store values as `serde_json` makes them; the `*_bytes`
/// methods take and give the bytes as they are.
///
/// # The per-batch cache
///
/// A `View` lives for one batch of events. It reads through and writes back:
///
/// - the first read of a key asks the store, later reads of that key in the
///   same batch (and every read after a write) are answered from memory;
/// - writes and deletes stay in memory until the batch has been handled
///   successfully, then each changed key is written once, in key order (a
///   write of the value a key already has is no change);
/// - [`View::scan`] merges the pending writes into what the store returns,
///   so a projection always reads its own writes.
///
/// So a projection that reads and writes one row per event costs one store
/// read and one store write per *distinct* key per batch, however many of
/// the batch's events touch that key. When the batch fails (a method returns
/// `Err`, or the plugin traps) nothing is written: the host discards the
/// batch's writes anyway.
///
/// In a component the store is the host's `view` interface; natively (in
/// [`crate::testing::ProjectionTest`]) it is an in-memory map. The projection's
/// code is the same for both.
pub struct View {
    store: Store,
    cache: BTreeMap<String, Slot>,
    calls: StoreCalls,
}

/// A cached row: `value` is `None` for a key that has no row (or a deleted
/// one); `dirty` when it differs from the store.
struct Slot {
    value: Option<Vec<u8>>,
    dirty: bool,
}

/// How many times a [`View`] called its store: what a batch costs in calls
/// to the host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCalls {
    /// `get` calls.
    pub gets: u64,
    /// `put` calls.
    pub puts: u64,
    /// `delete` calls.
    pub deletes: u64,
    /// `scan` calls.
    pub scans: u64,
}

enum Store {
    /// The host's `view` import. Only the component's export creates it.
    Host,
    /// An in-memory map, for native tests.
    Memory(BTreeMap<String, Vec<u8>>),
}

impl Store {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Self::Host => host::get(key),
            Self::Memory(rows) => rows.get(key).cloned(),
        }
    }

    fn put(&mut self, key: &str, value: &[u8]) {
        match self {
            Self::Host => host::put(key, value),
            Self::Memory(rows) => {
                rows.insert(key.to_owned(), value.to_vec());
            }
        }
    }

    fn delete(&mut self, key: &str) {
        match self {
            Self::Host => host::delete(key),
            Self::Memory(rows) => {
                rows.remove(key);
            }
        }
    }

    fn scan(&self, prefix: &str, after: Option<&str>, limit: u32) -> Vec<(String, Vec<u8>)> {
        match self {
            Self::Host => host::scan(prefix, after, limit),
            Self::Memory(rows) => rows
                .range::<str, _>((start(prefix, after), Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(prefix))
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }
    }
}

/// The host's `view` interface, as plain functions.
mod host {
    use crate::bindings::projection::kiln::plugin::view;

    pub(super) fn get(key: &str) -> Option<Vec<u8>> {
        view::get(key)
    }

    pub(super) fn put(key: &str, value: &[u8]) {
        view::put(key, value);
    }

    pub(super) fn delete(key: &str) {
        view::delete(key);
    }

    pub(super) fn scan(prefix: &str, after: Option<&str>, limit: u32) -> Vec<(String, Vec<u8>)> {
        view::scan(prefix, after, limit)
    }
}

/// Where a scan for `prefix` after `after` starts.
fn start<'a>(prefix: &'a str, after: Option<&'a str>) -> Bound<&'a str> {
    match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

impl View {
    /// A view over the host's `view` interface.
    pub(crate) fn host() -> Self {
        Self::over(Store::Host)
    }

    /// A view over in-memory rows.
    pub(crate) fn in_memory(rows: BTreeMap<String, Vec<u8>>) -> Self {
        Self::over(Store::Memory(rows))
    }

    fn over(store: Store) -> Self {
        Self {
            store,
            cache: BTreeMap::new(),
            calls: StoreCalls::default(),
        }
    }

    /// The in-memory rows, without the writes not yet flushed.
    ///
    /// # Panics
    /// On a view over the host.
    pub(crate) fn into_rows(self) -> BTreeMap<String, Vec<u8>> {
        match self.store {
            Store::Memory(rows) => rows,
            Store::Host => panic!("kiln-sdk: a host view has no in-memory rows"),
        }
    }

    /// The store calls made so far.
    pub(crate) fn calls(&self) -> StoreCalls {
        self.calls
    }

    /// Write every pending change to the store, in key order.
    pub(crate) fn flush(&mut self) {
        for (key, slot) in &mut self.cache {
            if !slot.dirty {
                continue;
            }
            match &slot.value {
                Some(value) => {
                    self.calls.puts += 1;
                    self.store.put(key, value);
                }
                None => {
                    self.calls.deletes += 1;
                    self.store.delete(key);
                }
            }
            slot.dirty = false;
        }
    }

    /// The value stored under `key`, decoded from JSON; `Ok(None)` when there
    /// is none.
    ///
    /// # Errors
    /// When the stored bytes do not decode as a `T`; the message names the
    /// key and the type.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, String> {
        match self.get_bytes(key) {
            None => Ok(None),
            Some(bytes) => decode(key, bytes).map(Some),
        }
    }

    /// The bytes stored under `key`, if any.
    pub fn get_bytes(&mut self, key: &str) -> Option<&[u8]> {
        if !self.cache.contains_key(key) {
            self.calls.gets += 1;
            let value = self.store.get(key);
            self.cache.insert(
                key.to_owned(),
                Slot {
                    value,
                    dirty: false,
                },
            );
        }
        self.cache.get(key).and_then(|slot| slot.value.as_deref())
    }

    /// Store `value` as JSON under `key`, replacing any value.
    ///
    /// # Errors
    /// When serde cannot serialize `value` as JSON (e.g. a map whose keys
    /// are not strings).
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|error| {
            format!(
                "cannot serialize the view row `{key}` ({}) as JSON: {error}",
                type_name::<T>()
            )
        })?;
        self.put_bytes(key, bytes);
        Ok(())
    }

    /// Store `value` under `key` as is, replacing any value.
    pub fn put_bytes(&mut self, key: &str, value: impl Into<Vec<u8>>) {
        self.set(key, Some(value.into()));
    }

    /// Remove `key`; removing a missing key is not an error.
    pub fn delete(&mut self, key: &str) {
        self.set(key, None);
    }

    fn set(&mut self, key: &str, value: Option<Vec<u8>>) {
        match self.cache.get_mut(key) {
            Some(slot) if slot.value == value => {}
            Some(slot) => {
                slot.value = value;
                slot.dirty = true;
            }
            None => {
                self.cache
                    .insert(key.to_owned(), Slot { value, dirty: true });
            }
        }
    }

    /// Up to `limit` rows whose key starts with `prefix` and sorts after
    /// `after` (all of them when `None`), in key order, decoded from JSON.
    /// Pass the last key of one page as `after` to get the next.
    ///
    /// # Errors
    /// When a row does not decode as a `T`; the message names its key.
    pub fn scan<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, T)>, String> {
        self.scan_bytes(prefix, after, limit)
            .into_iter()
            .map(|(key, bytes)| decode(&key, &bytes).map(|value| (key, value)))
            .collect()
    }

    /// [`View::scan`] without decoding: the rows' bytes as stored.
    pub fn scan_bytes(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Vec<(String, Vec<u8>)> {
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        if wanted == 0 {
            return rows;
        }
        let mut cursor = after.map(str::to_owned);
        loop {
            self.calls.scans += 1;
            let stored = self.store.scan(prefix, cursor.as_deref(), limit);
            // The store's answer covers the keys up to its last one when it is
            // a full page, and every key when it is not.
            let exhausted = stored.len() < wanted;
            let upper = if exhausted {
                None
            } else {
                stored.last().map(|(key, _)| key.clone())
            };
            let pending = self
                .cache
                .range::<str, _>((start(prefix, cursor.as_deref()), Bound::Unbounded))
                .take_while(|(key, _)| {
                    key.starts_with(prefix) && upper.as_ref().is_none_or(|upper| *key <= upper)
                })
                .filter(|(_, slot)| slot.dirty);
            for (key, value) in merge(stored, pending) {
                rows.push((key, value));
                if rows.len() == wanted {
                    return rows;
                }
            }
            if upper.is_none() {
                return rows;
            }
            cursor = upper;
        }
    }
}

/// Merge the store's rows with the pending changes (both in key order); a
/// pending change wins over the store's row of the same key, and a pending
/// delete removes it.
fn merge<'a>(
    stored: Vec<(String, Vec<u8>)>,
    pending: impl Iterator<Item = (&'a String, &'a Slot)>,
) -> Vec<(String, Vec<u8>)> {
    let mut merged = Vec::with_capacity(stored.len());
    let mut stored = stored.into_iter().peekable();
    let mut pending = pending.peekable();
    loop {
        let take_pending = match (stored.peek(), pending.peek()) {
            (None, None) => return merged,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((stored_key, _)), Some((pending_key, _))) => {
                if stored_key == *pending_key {
                    // Superseded by the pending change.
                    stored.next();
                    true
                } else {
                    *pending_key < stored_key
                }
            }
        };
        if take_pending {
            if let Some((key, slot)) = pending.next()
                && let Some(value) = &slot.value
            {
                merged.push((key.clone(), value.clone()));
            }
        } else if let Some(row) = stored.next() {
            merged.push(row);
        }
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|error| {
        format!(
            "the view row `{key}` does not decode as {}: {error}; row: {}",
            type_name::<T>(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde_json::{Value, json};

    use super::*;

    fn view(rows: &[(&str, &str)]) -> View {
        View::in_memory(
            rows.iter()
                .map(|(key, value)| ((*key).to_owned(), value.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn keys(rows: &[(String, Vec<u8>)]) -> Vec<&str> {
        rows.iter().map(|(key, _)| key.as_str()).collect()
    }

    #[test]
    fn reads_go_through_the_cache() {
        let mut view = view(&[("a", "1")]);
        assert_eq!(view.get::<u32>("a").unwrap(), Some(1));
        assert_eq!(view.get::<u32>("a").unwrap(), Some(1));
        assert_eq!(view.get::<u32>("b").unwrap(), None);
        assert_eq!(view.get::<u32>("b").unwrap(), None);
        assert_eq!(view.calls().gets, 2);
    }

    #[test]
    fn writes_are_held_until_the_flush_and_written_once() {
        let mut view = view(&[("a", "1")]);
        for n in 2..10 {
            view.put("a", &n).unwrap();
            view.put("b", &n).unwrap();
        }
        view.delete("c");
        assert_eq!(view.get::<u32>("a").unwrap(), Some(9));
        assert_eq!(view.calls(), StoreCalls::default());
        view.flush();
        assert_eq!(
            view.calls(),
            StoreCalls {
                gets: 0,
                puts: 2,
                deletes: 1,
                scans: 0
            }
        );
        let rows = view.into_rows();
        assert_eq!(rows.get("a").unwrap(), b"9");
        assert_eq!(rows.get("b").unwrap(), b"9");
        assert!(!rows.contains_key("c"));
    }

    #[test]
    fn writing_the_stored_value_is_no_change() {
        let mut view = view(&[("a", "1")]);
        assert_eq!(view.get::<u32>("a").unwrap(), Some(1));
        view.put("a", &1).unwrap();
        view.delete("missing");
        assert_eq!(view.get_bytes("missing"), None);
        view.delete("missing");
        view.flush();
        // "missing" was deleted before it was read: that write is kept.
        assert_eq!(view.calls().puts, 0);
        assert_eq!(view.calls().deletes, 1);
    }

    #[test]
    fn undecodable_rows_are_errors() {
        let mut view = view(&[("a", r#"{"x": 1}"#)]);
        let error = view.get::<u32>("a").unwrap_err();
        assert!(
            error.contains("view row `a` does not decode as u32"),
            "{error}"
        );
        let error = view.scan::<u32>("", None, 10).unwrap_err();
        assert!(error.contains("view row `a`"), "{error}");
        assert_eq!(view.get::<Value>("a").unwrap(), Some(json!({"x": 1})));
    }

    #[test]
    fn scan_pages_by_prefix() {
        let mut view = view(&[
            ("a", "0"),
            ("p1", "1"),
            ("p2", "2"),
            ("p3", "3"),
            ("q", "4"),
        ]);
        assert_eq!(keys(&view.scan_bytes("p", None, 10)), ["p1", "p2", "p3"]);
        assert_eq!(keys(&view.scan_bytes("p", None, 2)), ["p1", "p2"]);
        assert_eq!(keys(&view.scan_bytes("p", Some("p2"), 2)), ["p3"]);
        assert_eq!(keys(&view.scan_bytes("p", Some("a"), 2)), ["p1", "p2"]);
        assert_eq!(keys(&view.scan_bytes("", Some("p3"), 5)), ["q"]);
        assert!(view.scan_bytes("p", None, 0).is_empty());
        let rows: Vec<(String, u32)> = view.scan("p", Some("p1"), 10).unwrap();
        assert_eq!(rows, [("p2".to_owned(), 2), ("p3".to_owned(), 3)]);
    }

    #[test]
    fn scan_sees_pending_writes_and_deletes() {
        let mut view = view(&[
            ("p1", "1"),
            ("p2", "2"),
            ("p3", "3"),
            ("p4", "4"),
            ("p5", "5"),
        ]);
        view.delete("p1");
        view.delete("p2");
        view.put("p3", &30).unwrap();
        view.put("p35", &35).unwrap();
        view.put("p9", &9).unwrap();
        view.put("q", &0).unwrap();
        // Read but unchanged: the store's row is used.
        assert_eq!(view.get::<u32>("p4").unwrap(), Some(4));
        let rows: Vec<(String, u32)> = view.scan("p", None, 2).unwrap();
        assert_eq!(rows, [("p3".to_owned(), 30), ("p35".to_owned(), 35)]);
        let rows: Vec<(String, u32)> = view.scan("p", Some("p35"), 2).unwrap();
        assert_eq!(rows, [("p4".to_owned(), 4), ("p5".to_owned(), 5)]);
        let rows: Vec<(String, u32)> = view.scan("p", Some("p5"), 2).unwrap();
        assert_eq!(rows, [("p9".to_owned(), 9)]);
        let all: Vec<(String, u32)> = view.scan("p", None, 100).unwrap();
        assert_eq!(all.len(), 5);
        // A page of deleted rows makes the scan read on.
        let mut view = view_with_deleted_page();
        assert_eq!(keys(&view.scan_bytes("k", None, 2)), ["k5"]);
        assert!(view.calls().scans >= 3);
    }

    fn view_with_deleted_page() -> View {
        let mut view = view(&[
            ("k1", "1"),
            ("k2", "2"),
            ("k3", "3"),
            ("k4", "4"),
            ("k5", "5"),
        ]);
        for key in ["k1", "k2", "k3", "k4"] {
            view.delete(key);
        }
        view
    }
}
