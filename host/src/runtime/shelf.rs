//! Compiled plugin code shared by content hash.
//!
//! A component deployed under several names (or redeployed, or rolled back
//! to while its bytes are still loaded) is compiled and kept once: every
//! [`Plugin`](super::Plugin) with the same bytes holds the same
//! [`SharedCode`]. The shelf keeps only weak references, so the code is
//! freed when the last plugin using it is replaced or removed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::plugin::SharedCode;

/// Compiled code by `sha256:<hex>` of the component bytes.
#[derive(Default)]
pub struct Shelf {
    by_hash: Mutex<HashMap<String, Weak<SharedCode>>>,
    /// Components built (compiled, or loaded from the compile cache) since
    /// start: what sharing saves shows here.
    built: AtomicU64,
}

impl Shelf {
    /// The code of `hash`, if a loaded plugin still holds it.
    pub fn get(&self, hash: &str) -> Option<Arc<SharedCode>> {
        self.map().get(hash).and_then(Weak::upgrade)
    }

    /// Keep `code` as the code of `hash`; when another build of the same
    /// bytes got there first (two uploads at once), that one is kept and
    /// returned, so there is still one copy.
    pub fn insert(&self, hash: &str, code: SharedCode) -> Arc<SharedCode> {
        self.built.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map();
        if let Some(existing) = map.get(hash).and_then(Weak::upgrade) {
            return existing;
        }
        // Forget the entries of code no plugin holds any more.
        map.retain(|_, weak| weak.strong_count() > 0);
        let code = Arc::new(code);
        map.insert(hash.to_string(), Arc::downgrade(&code));
        code
    }

    /// Components built since start.
    pub fn built(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }

    /// Distinct components loaded now.
    pub fn loaded(&self) -> usize {
        self.map().values().filter(|w| w.strong_count() > 0).count()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<SharedCode>>> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Limits;
    use crate::runtime::Runtime;

    #[test]
    fn the_same_bytes_under_two_names_are_compiled_once_and_freed_with_the_last() {
        let runtime = Runtime::new(Limits::default(), false).expect("runtime");
        let bytes = std::fs::read(kiln_plugin_artifacts::BANK_ACCOUNT).expect("fixture");
        let first = runtime.compile("first", &bytes).expect("compiles");
        let second = runtime.compile("second", &bytes).expect("shared");
        assert_eq!(runtime.components_built(), 1);
        assert!(first.shares_code_with(&second));
        assert_eq!((&*first.name, &*second.name), ("first", "second"));
        assert_eq!(first.hash, second.hash);
        assert_eq!(runtime.components_loaded(), 1);
        // Other bytes are other code.
        let other = std::fs::read(kiln_plugin_artifacts::WORKFLOW_EXECUTION).expect("fixture");
        let third = runtime.compile("third", &other).expect("compiles");
        assert!(!third.shares_code_with(&first));
        assert_eq!(runtime.components_loaded(), 2);
        // Once no plugin holds the code, it is freed, and built again if
        // deployed again.
        drop((first, second));
        assert_eq!(runtime.components_loaded(), 1);
        let again = runtime.compile("again", &bytes).expect("compiles");
        assert_eq!(runtime.components_built(), 3);
        drop((again, third));
        assert_eq!(runtime.components_loaded(), 0);
    }
}
