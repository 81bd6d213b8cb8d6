//! Watching the plugin directory for new and changed `*.wasm` files, by
//! polling.
//!
//! [`PluginDirWatcher::scan_once`] lists the directory and returns the files
//! to deploy. A file is:
//!
//! - **read** only when its (length, modification time) has changed since
//!   the last scan and has then stayed the same for two consecutive scans, so
//!   a file still being copied in is not read half-written;
//! - **reported** when its content hash differs from the last one recorded
//!   for that path (a `touch`, or a rewrite with the same bytes, is not
//!   reported);
//! - **forgotten** when it disappears (the plugin stays deployed; a file that
//!   comes back is new).
//!
//! Files not ending in `.wasm`, and directories, are ignored. The plugin name
//! is the file stem, unchecked: the host validates it on deploy. A file that
//! cannot be read, or a directory that cannot be listed, is logged (once per
//! distinct error) and retried at the next scan, the watcher's state kept.
//!
//! The first scan records what is there without reporting it, since the host
//! loads the directory itself at start (unless the watcher is made with
//! `report_existing`). To miss nothing between the two, run the first scan
//! before loading the directory, then [`spawn`](PluginDirWatcher::spawn) the
//! watcher:
//!
//! ```no_run
//! # async fn start(dir: std::path::PathBuf, tx: tokio::sync::mpsc::Sender<kiln::plugin_watch::PluginFileChange>) {
//! use kiln::plugin_watch::PluginDirWatcher;
//! let mut watcher = PluginDirWatcher::new(dir, false);
//! let watcher = tokio::task::spawn_blocking(move || {
//!     watcher.scan_once();
//!     watcher
//! })
//! .await
//! .expect("scan");
//! // ... registry.load_dir(...) ...
//! watcher.spawn(std::time::Duration::from_secs(2), tx);
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use crate::runtime::plugin::content_hash;

/// A `*.wasm` file of the plugin directory that is new or has new content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFileChange {
    /// The file stem: the plugin name, not yet validated.
    pub name: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`, as [`content_hash`] gives it.
    pub hash: String,
}

/// What a scan sees of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// What the watcher knows of one file.
#[derive(Debug)]
struct Tracked {
    /// The stamp seen at the last scan.
    stamp: Stamp,
    /// The stamp the content was last read at, if it has been read since the
    /// file last changed.
    read_at: Option<Stamp>,
    /// The content hash last recorded or reported.
    hash: Option<String>,
    /// The last read failure logged, so a lasting one is logged once.
    last_error: Option<String>,
}

/// One listing of the directory.
#[derive(Debug, Default)]
struct Listing {
    /// The `*.wasm` files and their stamps.
    seen: HashMap<PathBuf, Stamp>,
    /// `*.wasm` entries that could not be examined: neither seen nor gone.
    unsure: HashSet<PathBuf>,
}

/// Polls one directory for new and changed `*.wasm` files.
#[derive(Debug)]
pub struct PluginDirWatcher {
    dir: PathBuf,
    files: HashMap<PathBuf, Tracked>,
    /// Whether the next scan is the first and records without reporting.
    baseline_pending: bool,
    /// The last failure to list the directory, so a lasting one is logged once.
    dir_error: Option<String>,
}

impl PluginDirWatcher {
    /// A watcher of `dir`. With `report_existing` false the first scan only
    /// records the files there; with it true they are reported like new ones
    /// (once stable).
    pub fn new(dir: impl Into<PathBuf>, report_existing: bool) -> Self {
        Self {
            dir: dir.into(),
            files: HashMap::new(),
            baseline_pending: !report_existing,
            dir_error: None,
        }
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// List the directory once and return the files to deploy, sorted by
    /// path. Blocking file I/O: call it off the async threads.
    pub fn scan_once(&mut self) -> Vec<PluginFileChange> {
        let baseline = std::mem::take(&mut self.baseline_pending);
        let Some(Listing { seen, unsure }) = self.list() else {
            // Not listed this time: change nothing, retry at the next scan.
            return Vec::new();
        };
        self.files
            .retain(|path, _| seen.contains_key(path) || unsure.contains(path));

        let mut paths: Vec<&PathBuf> = seen.keys().collect();
        paths.sort();
        let mut changes = Vec::new();
        for path in paths {
            let stamp = seen[path];
            let tracked = match self.files.get_mut(path) {
                Some(tracked) if tracked.stamp != stamp => {
                    // Changed since the last scan: wait until it stays put.
                    tracked.stamp = stamp;
                    continue;
                }
                // Stable for two scans, and not read at this stamp yet.
                Some(tracked) if tracked.read_at != Some(stamp) => tracked,
                Some(_) => continue,
                None => {
                    let tracked = self.files.entry(path.clone()).or_insert(Tracked {
                        stamp,
                        read_at: None,
                        hash: None,
                        last_error: None,
                    });
                    if !baseline {
                        // New: read it once it has kept this stamp a scan.
                        continue;
                    }
                    // Recorded at once, as the host loads it at start.
                    tracked
                }
            };
            if let Some(change) = read_file(path, stamp, tracked, baseline) {
                changes.push(change);
            }
        }
        changes
    }

    /// Scan every `interval` on a task of its own, sending each change to
    /// `tx`, until `tx`'s receiver is dropped. The first tick is immediate.
    pub fn spawn(mut self, interval: Duration, tx: Sender<PluginFileChange>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if tx.is_closed() {
                    return;
                }
                let scanned = tokio::task::spawn_blocking(move || {
                    let changes = self.scan_once();
                    (self, changes)
                })
                .await;
                let changes;
                (self, changes) = match scanned {
                    Ok(done) => done,
                    Err(e) => {
                        tracing::error!(error = %e, "plugin directory scan panicked; no longer watching");
                        return;
                    }
                };
                for change in changes {
                    tracing::info!(plugin = %change.name, file = %change.path.display(), hash = %change.hash, "plugin file changed");
                    if tx.send(change).await.is_err() {
                        return;
                    }
                }
            }
        })
    }

    /// The `*.wasm` files of the directory and their stamps, or `None` if
    /// the directory could not be listed in full.
    fn list(&mut self) -> Option<Listing> {
        let mut listing = Listing::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.log_dir_error(e);
                return None;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.log_dir_error(e);
                    return None;
                }
            };
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            // Follows symbolic links, as loading the directory does.
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    listing.seen.insert(path, Stamp::of(&meta));
                }
                Ok(_) => {}
                // Gone since the listing, or a dangling link: as if absent.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot stat plugin file; retrying at the next scan");
                    listing.unsure.insert(path);
                }
            }
        }
        self.dir_error = None;
        Some(listing)
    }

    fn log_dir_error(&mut self, e: std::io::Error) {
        let message = e.to_string();
        if self.dir_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(dir = %self.dir.display(), error = %message, "cannot list the plugin directory; retrying at the next scan");
            self.dir_error = Some(message);
        }
    }
}

/// Read a file whose stamp is stable, record its hash, and return it if it
/// is to be reported.
fn read_file(
    path: &Path,
    stamp: Stamp,
    tracked: &mut Tracked,
    baseline: bool,
) -> Option<PluginFileChange> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            let message = e.to_string();
            if tracked.last_error.as_deref() != Some(message.as_str()) {
                tracing::warn!(file = %path.display(), error = %message, "cannot read plugin file; retrying at the next scan");
                tracked.last_error = Some(message);
            }
            return None;
        }
    };
    tracked.last_error = None;
    // Written to while being read: wait for it to settle again.
    match fs::metadata(path) {
        Ok(meta) if Stamp::of(&meta) == stamp && meta.len() == bytes.len() as u64 => {}
        Ok(meta) => {
            tracked.stamp = Stamp::of(&meta);
            return None;
        }
        Err(_) => return None,
    }
    tracked.read_at = Some(stamp);
    let hash = content_hash(&bytes);
    if tracked.hash.as_deref() == Some(hash.as_str()) {
        return None;
    }
    tracked.hash = Some(hash.clone());
    if baseline {
        return None;
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(PluginFileChange {
        name,
        path: path.to_path_buf(),
        bytes,
        hash,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::fs::File;
    use std::io::Write;
    use std::time::UNIX_EPOCH;

    use super::*;

    /// Write `bytes` to `dir/name` with modification time `secs`, so that
    /// tests do not depend on the file system's clock granularity.
    fn put(dir: &Path, name: &str, bytes: &[u8], secs: u64) -> PathBuf {
        let path = dir.join(name);
        let mut file = File::create(&path).unwrap();
        file.write_all(bytes).unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
        path
    }

    fn names(changes: &[PluginFileChange]) -> Vec<&str> {
        changes.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn files_present_at_the_first_scan_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "alpha.wasm", b"alpha v1", 1_000);
        let mut watcher = PluginDirWatcher::new(dir.path(), false);
        for _ in 0..3 {
            assert!(watcher.scan_once().is_empty());
        }
    }

    #[test]
    fn existing_files_can_be_reported_once_stable() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "alpha.wasm", b"alpha v1", 1_000);
        let mut watcher = PluginDirWatcher::new(dir.path(), true);
        assert!(watcher.scan_once().is_empty());
        assert_eq!(names(&watcher.scan_once()), ["alpha"]);
        assert!(watcher.scan_once().is_empty());
    }

    #[test]
    fn a_new_file_is_reported_once_it_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let mut watcher = PluginDirWatcher::new(dir.path(), false);
        assert!(watcher.scan_once().is_empty());

        let path = put(dir.path(), "beta.wasm", b"beta, first ha", 1_000);
        assert!(watcher.scan_once().is_empty(), "seen once: not stable yet");
        // Still being copied in: its length changes, so it is not read.
        put(
            dir.path(),
            "beta.wasm",
            b"beta, first half and the rest",
            1_001,
        );
        assert!(watcher.scan_once().is_empty(), "changed: not stable yet");

        let changes = watcher.scan_once();
        assert_eq!(
            changes,
            [PluginFileChange {
                name: "beta".into(),
                path,
                bytes: b"beta, first half and the rest".to_vec(),
                hash: content_hash(b"beta, first half and the rest"),
            }]
        );
        assert!(changes[0].hash.starts_with("sha256:"));
        assert!(watcher.scan_once().is_empty(), "reported once");
    }

    #[test]
    fn a_rewrite_is_reported_only_when_the_bytes_differ() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "gamma.wasm", b"gamma v1", 1_000);
        let mut watcher = PluginDirWatcher::new(dir.path(), false);
        assert!(watcher.scan_once().is_empty());

        // Same bytes, new modification time (a touch, or a copy of the same
        // file): read, but not reported.
        put(dir.path(), "gamma.wasm", b"gamma v1", 2_000);
        assert!(watcher.scan_once().is_empty());
        assert!(watcher.scan_once().is_empty());

        // Different bytes of the same length.
        put(dir.path(), "gamma.wasm", b"gamma v2", 3_000);
        assert!(watcher.scan_once().is_empty());
        let changes = watcher.scan_once();
        assert_eq!(names(&changes), ["gamma"]);
        assert_eq!(changes[0].bytes, b"gamma v2");
        assert!(watcher.scan_once().is_empty());

        // Back to the first version: a change again.
        put(dir.path(), "gamma.wasm", b"gamma v1", 4_000);
        assert!(watcher.scan_once().is_empty());
        assert_eq!(watcher.scan_once()[0].bytes, b"gamma v1");
    }

    #[test]
    fn other_files_and_directories_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut watcher = PluginDirWatcher::new(dir.path(), false);
        assert!(watcher.scan_once().is_empty());
        put(dir.path(), "notes.txt", b"text", 1_000);
        put(dir.path(), "delta.wasm.part", b"partial", 1_000);
        put(dir.path(), "wasm", b"no extension", 1_000);
        fs::create_dir(dir.path().join("epsilon.wasm")).unwrap();
        put(dir.path(), "zeta.wasm", b"zeta", 1_000);
        assert!(watcher.scan_once().is_empty());
        assert_eq!(names(&watcher.scan_once()), ["zeta"]);
        assert!(watcher.scan_once().is_empty());
    }

    #[test]
    fn a_removed_file_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = put(dir.path(), "eta.wasm", b"eta", 1_000);
        let mut watcher = PluginDirWatcher::new(dir.path(), false);
        assert!(watcher.scan_once().is_empty());
        fs::remove_file(&path).unwrap();
        assert!(watcher.scan_once().is_empty(), "removal is not reported");
        // The same bytes back again are a new file.
        put(dir.path(), "eta.wasm", b"eta", 1_000);
        assert!(watcher.scan_once().is_empty());
        assert_eq!(names(&watcher.scan_once()), ["eta"]);
    }

    #[test]
    fn several_changes_in_one_scan_come_sorted_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut watcher = PluginDirWatcher::new(dir.path(), false);
        assert!(watcher.scan_once().is_empty());
        put(dir.path(), "b.wasm", b"b", 1_000);
        put(dir.path(), "a.wasm", b"a", 1_000);
        assert!(watcher.scan_once().is_empty());
        assert_eq!(names(&watcher.scan_once()), ["a", "b"]);
    }

    #[test]
    fn a_missing_directory_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        let mut watcher = PluginDirWatcher::new(&plugins, false);
        assert!(watcher.scan_once().is_empty());
        fs::create_dir(&plugins).unwrap();
        put(&plugins, "theta.wasm", b"theta", 1_000);
        assert!(watcher.scan_once().is_empty());
        assert_eq!(names(&watcher.scan_once()), ["theta"]);
    }

    #[tokio::test]
    async fn the_spawned_task_sends_changes_and_stops_with_the_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut watcher = PluginDirWatcher::new(dir.path(), false);
        assert!(watcher.scan_once().is_empty());
        put(dir.path(), "iota.wasm", b"iota", 1_000);
        let task = watcher.spawn(Duration::from_millis(10), tx);
        let change = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(change.name, "iota");
        assert_eq!(change.bytes, b"iota");
        drop(rx);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
}
