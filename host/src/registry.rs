//! The plugins this host has loaded, by name.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use crate::runtime::{LoadError, Plugin, PluginKind};

/// Longest plugin name accepted.
pub const PLUGIN_NAME_CHARS_MAX: usize = 64;

/// Loaded plugins. A new version replaces the old one atomically: work that
/// already holds the old `Arc<Plugin>` finishes with it.
#[derive(Default)]
pub struct Registry {
    plugins: RwLock<HashMap<String, Arc<Plugin>>>,
    /// Versions being compiled, by plugin name (the current version, if
    /// any, serves meanwhile).
    compiling: Mutex<HashMap<String, Compiling>>,
    /// Names undeployed (`DELETE /plugins/{name}`) and not deployed since,
    /// with the kind they had: a removed name keeps its kind, and answers
    /// say it was removed rather than unknown.
    removed: RwLock<HashMap<String, PluginKind>>,
}

/// A plugin version being compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiling {
    /// `sha256:<hex>` of the component bytes.
    pub hash: String,
    pub size: usize,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Marks a version as compiling until dropped.
pub struct CompilingGuard<'a> {
    registry: &'a Registry,
    name: String,
    hash: String,
}

impl Drop for CompilingGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.compiling_map();
        // A newer compile of the same name may have replaced the marker.
        if map.get(&self.name).is_some_and(|c| c.hash == self.hash) {
            map.remove(&self.name);
        }
    }
}

/// Why a plugin file or upload was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Handling: 400 `invalid_request`.
    #[error(
        "invalid plugin name {0:?}: use 1 to 64 lowercase letters, digits and underscores, starting with a letter"
    )]
    BadName(String),
    /// Handling: 400 or 422, per [`LoadError`].
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Handling: log it; the directory could not be read.
    #[error("cannot read plugin directory {path}: {message}")]
    Io { path: String, message: String },
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.read().get(name).cloned()
    }

    /// All plugins, sorted by name.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make `plugin` the current version of its name (no longer removed).
    pub fn insert(&self, plugin: Plugin) -> Arc<Plugin> {
        let plugin = Arc::new(plugin);
        let mut map = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        map.insert(plugin.name.to_string(), plugin.clone());
        self.removed_map().remove(&*plugin.name);
        plugin
    }

    /// Unload `name`, remembered as a removed `kind`; the version that was
    /// loaded, if any.
    pub fn remove(&self, name: &str, kind: PluginKind) -> Option<Arc<Plugin>> {
        let mut map = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        self.removed_map().insert(name.to_string(), kind);
        map.remove(name)
    }

    /// The kind `name` had, when it was removed and not deployed since.
    pub fn removed(&self, name: &str) -> Option<PluginKind> {
        self.removed_map().get(name).copied()
    }

    /// The kind a new version of `name` must have: the loaded version's, or
    /// the removed one's.
    pub fn kind_of(&self, name: &str) -> Option<PluginKind> {
        self.get(name)
            .map(|p| p.kind)
            .or_else(|| self.removed(name))
    }

    fn removed_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, PluginKind>> {
        self.removed.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Show `name` as compiling the version `hash` until the guard drops.
    pub fn begin_compiling(&self, name: &str, hash: &str, size: usize) -> CompilingGuard<'_> {
        self.queue_compiling(name, hash, size);
        CompilingGuard {
            registry: self,
            name: name.to_string(),
            hash: hash.to_string(),
        }
    }

    /// Show `name` as compiling the version `hash` from now on, until
    /// [`Registry::finish_compiling`]: a compile queued behind others.
    pub fn queue_compiling(&self, name: &str, hash: &str, size: usize) {
        self.compiling_map().insert(
            name.to_string(),
            Compiling {
                hash: hash.to_string(),
                size,
                since: chrono::Utc::now(),
            },
        );
    }

    /// Stop showing `name` as compiling `hash` (a newer version's marker
    /// stays).
    pub fn finish_compiling(&self, name: &str, hash: &str) {
        let mut map = self.compiling_map();
        if map.get(name).is_some_and(|c| c.hash == hash) {
            map.remove(name);
        }
    }

    /// Versions being compiled, by plugin name, sorted.
    pub fn compiling(&self) -> Vec<(String, Compiling)> {
        let mut all: Vec<_> = self
            .compiling_map()
            .iter()
            .map(|(name, c)| (name.clone(), c.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn compiling_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Compiling>> {
        self.compiling.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Plugin>>> {
        self.plugins.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `*.wasm` files of `dir` (not recursive), sorted, with the plugin
/// name each stands for (its file stem).
pub fn wasm_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, RegistryError> {
    let io = |e: std::io::Error| RegistryError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Plugin names become stream categories and URL segments: keep them simple.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= PLUGIN_NAME_CHARS_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compiling_version_shows_until_its_guard_drops() {
        let registry = Registry::default();
        let first = registry.begin_compiling("big", "sha256:aa", 10);
        assert_eq!(registry.compiling().len(), 1);
        assert_eq!(registry.compiling()[0].1.hash, "sha256:aa");
        // A newer upload of the same name replaces the marker; the older
        // compile finishing does not remove the newer one's.
        let second = registry.begin_compiling("big", "sha256:bb", 20);
        drop(first);
        assert_eq!(registry.compiling()[0].1.hash, "sha256:bb");
        drop(second);
        assert!(registry.compiling().is_empty());
        // Queued compiles show until finished, and only their own marker goes.
        registry.queue_compiling("later", "sha256:cc", 30);
        registry.finish_compiling("later", "sha256:dd");
        assert_eq!(registry.compiling().len(), 1);
        registry.finish_compiling("later", "sha256:cc");
        assert!(registry.compiling().is_empty());
    }

    #[test]
    fn a_removed_name_keeps_its_kind_until_deployed_again() {
        let registry = Registry::default();
        assert!(registry.remove("audit", PluginKind::Projection).is_none());
        assert_eq!(registry.removed("audit"), Some(PluginKind::Projection));
        assert_eq!(registry.kind_of("audit"), Some(PluginKind::Projection));
        assert_eq!(registry.kind_of("other"), None);
        assert!(registry.get("audit").is_none());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("bank_account").is_ok());
        assert!(validate_name("a1").is_ok());
        for bad in ["", "Bank", "1abc", "bank-account", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
