//! An on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes tens of milliseconds for a small
//! Rust plugin and seconds for a large one; loading the compiled artifact
//! back takes a fraction of a millisecond. [`CompileCache`] keeps one
//! `.cwasm` file per (component bytes, engine configuration) in a directory:
//!
//! ```text
//! <dir>/<sha256 of the wasm, hex>-<engine compatibility hash, 16 hex>.cwasm
//! ```
//!
//! The second part comes from [`Engine::precompile_compatibility_hash`], which
//! covers the target, the compiler flags, the tunables (fuel, epochs, ...),
//! the wasm features and the wasmtime version, so engines configured
//! differently never share a file.
//!
//! Only files this module wrote are ever loaded: a file is written to a fresh
//! temporary name in the same directory and renamed into place, so a cache
//! file is complete when it has its final name, and an existing file is never
//! written into. A file wasmtime refuses (truncated, corrupt, from another
//! engine) is deleted and replaced by a fresh compile. Failing to write the
//! cache is logged and otherwise ignored: the cache only ever saves time.
//!
//! The directory must be writable by this host only: wasmtime checks the
//! header, the engine compatibility and the structure of a compiled artifact,
//! not the integrity of the machine code in it. [`CompileCache::open`]
//! creates it `0700` and checks it: a directory another user can write to
//! (group or other write permission, or another owner) is refused with a
//! warning, and a private directory of this user under the system's
//! temporary directory is used instead (or none, if that one is not safe
//! either).

use std::fs::{self, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Extension of the cache files.
const EXTENSION: &str = "cwasm";
/// Bytes of the engine compatibility hash kept in a file name (16 hex digits).
const COMPAT_HASH_BYTES: usize = 8;

/// Distinguishes temporary files written by this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether [`CompileCache::load_or_compile`] found a usable compiled file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache; nothing was compiled.
    Hit,
    /// Compiled (the file was missing or refused); the cache was rewritten
    /// if it could be.
    Miss,
}

/// A directory of compiled components, keyed by content and engine.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Use `dir` as the cache, creating it (mode `0700`, and its parents)
    /// if needed. A directory that another user could write to is not
    /// used: a private one is, with a warning (see the module's docs).
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        match check_private(&dir) {
            Ok(()) => Ok(Self { dir }),
            Err(reason) => {
                let fallback = private_fallback_dir();
                tracing::warn!(
                    dir = %dir.display(),
                    %reason,
                    fallback = %fallback.display(),
                    "the compile cache directory is writable by others; its compiled code is not trusted, using a private directory instead"
                );
                create_private_dir(&fallback)?;
                check_private(&fallback).map_err(|reason| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("no private compile cache directory: {reason}"),
                    )
                })?;
                Ok(Self { dir: fallback })
            }
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file the compiled form of `bytes` for `engine` is kept in.
    pub fn path_for(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        let content = hex::encode(Sha256::digest(bytes));
        let compat = compatibility_hex(engine);
        self.dir.join(format!("{content}-{compat}.{EXTENSION}"))
    }

    /// The component of `bytes` for `engine`: loaded from the cache when a
    /// compiled file is there and wasmtime accepts it, else compiled and
    /// written to the cache. Blocking and, on a miss, CPU-heavy: never call
    /// it on a request or dispatch thread.
    ///
    /// The only error is a failure to compile `bytes`.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome), wasmtime::Error> {
        let path = self.path_for(engine, bytes);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => match load_cached(engine, &path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %format!("{e:#}"),
                        "compiled plugin in the cache refused; compiling afresh"
                    );
                    remove_quietly(&path);
                }
            },
            Ok(_) => {
                tracing::warn!(path = %path.display(), "compile cache entry is not a file; compiling without the cache");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stat the compile cache entry; compiling afresh");
            }
        }
        // Compiled straight to the file's bytes, then loaded from the file:
        // the code is then a mapping of the file (clean pages the kernel
        // may drop and read again) rather than a second, anonymous copy.
        let compiled = engine.precompile_component(bytes)?;
        match write_atomically(&path, &compiled) {
            Ok(()) => {
                drop(compiled);
                match load_cached(engine, &path) {
                    Ok(component) => return Ok((component, CacheOutcome::Miss)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "the compiled plugin just written cannot be loaded; compiling without the cache");
                        remove_quietly(&path);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not write the compile cache");
                return Ok((load_fresh(engine, &compiled)?, CacheOutcome::Miss));
            }
        }
        Ok((Component::new(engine, bytes)?, CacheOutcome::Miss))
    }
}

/// Load what `Engine::precompile_component` of this engine just returned.
#[allow(
    unsafe_code,
    reason = "deserializing a compiled component is unsafe; these bytes come from this engine's compiler, in memory"
)]
fn load_fresh(engine: &Engine, compiled: &[u8]) -> Result<Component, wasmtime::Error> {
    // SAFETY: `compiled` is the output of `engine.precompile_component`,
    // produced in this process a moment ago and never written anywhere
    // another party could change it.
    unsafe { Component::deserialize(engine, compiled) }
}

/// Load a compiled component this module wrote.
#[allow(
    unsafe_code,
    reason = "deserializing a compiled component is unsafe; only this cache's own files are loaded"
)]
fn load_cached(engine: &Engine, path: &Path) -> Result<Component, wasmtime::Error> {
    // SAFETY: `path` is a file of the cache directory, named by the sha256 of
    // the component bytes and the engine's compatibility hash, and only
    // `write_atomically` puts files there: it writes the bytes of
    // `Component::serialize` to a fresh temporary file (`create_new`), syncs
    // it and renames it into place. So a file with a cache name is a complete
    // artifact wasmtime produced for these bytes, and wasmtime itself refuses
    // one made by an incompatible engine. The file is mapped, not copied, so
    // it must not change while the component lives: this module never writes
    // into an existing file, and deleting or replacing one by rename leaves
    // the mapped inode intact. The directory must not be writable by anyone
    // but this host (see the module documentation).
    unsafe { Component::deserialize_file(engine, path) }
}

/// Create `dir` and its missing parents; the directories created get mode
/// `0700` (an existing one keeps its mode: [`check_private`] judges it).
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Whether only this user can write to `dir`: owned by this process's
/// user, without write permission for the group or others. The reason
/// otherwise.
#[cfg(unix)]
fn check_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!("its mode {mode:o} lets the group or others write"));
    }
    // /proc/self belongs to the process's effective user.
    if let Ok(me) = fs::metadata("/proc/self")
        && me.uid() != meta.uid()
    {
        return Err(format!(
            "it belongs to user {}, not to this process's user {}",
            meta.uid(),
            me.uid()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_dir: &Path) -> Result<(), String> {
    Ok(())
}

/// A directory of this user's under the system's temporary directory.
fn private_fallback_dir() -> PathBuf {
    #[cfg(unix)]
    let user = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self").map_or(0, |m| m.uid())
    };
    #[cfg(not(unix))]
    let user = 0;
    std::env::temp_dir().join(format!("kiln-compile-cache-{user}"))
}

/// Write `bytes` to `path` so that `path` is either absent, the old file, or
/// the complete new file: write a temporary file beside it, sync, rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "cache path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = path.with_file_name(format!("{name}.tmp-{}-{counter}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        // Without this a crash could leave a renamed file whose data never
        // reached the disk.
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        remove_quietly(&temp);
    }
    written
}

/// Delete a file; a file already gone is fine, other failures are logged.
fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not delete a compile cache file");
    }
}

/// The engine's compatibility hash, as hex. Fed through SHA-256 rather than
/// `DefaultHasher`, whose algorithm may change between Rust releases.
fn compatibility_hex(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    hex::encode(&digest[..COMPAT_HASH_BYTES])
}

/// A [`Hasher`] that feeds SHA-256.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

#[cfg(all(test, feature = "examples"))]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use wasmtime::Config;

    use super::*;

    fn engine(fuel: bool) -> Engine {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.consume_fuel(fuel);
        Engine::new(&config).unwrap()
    }

    fn bank_account() -> Vec<u8> {
        fs::read(kiln_plugin_artifacts::BANK_ACCOUNT).unwrap()
    }

    fn exports(engine: &Engine, component: &Component) -> Vec<String> {
        component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Cache files of `dir`, leftover temporary files included.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn miss_then_hit_and_the_loaded_component_works() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path().join("nested/cache")).unwrap();
        let engine = engine(false);
        let bytes = bank_account();

        let (first, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        let path = cache.path_for(&engine, &bytes);
        assert!(path.is_file());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&hex::encode(Sha256::digest(&bytes))) && name.ends_with(".cwasm"),
            "{name}"
        );
        assert_eq!(files(cache.dir()), vec![name], "no temporary file left");

        let (second, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
        let names = exports(&engine, &second);
        assert!(names.iter().any(|n| n == "apply"), "{names:?}");
        assert_eq!(names, exports(&engine, &first));
    }

    #[test]
    fn a_corrupt_or_truncated_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        let engine = engine(false);
        let bytes = bank_account();
        cache.load_or_compile(&engine, &bytes).unwrap();
        let path = cache.path_for(&engine, &bytes);
        let good = fs::read(&path).unwrap();

        let garbage = vec![0x5a; good.len()];
        let truncated = good[..good.len() / 2].to_vec();
        for bad in [garbage, truncated, Vec::new()] {
            fs::write(&path, &bad).unwrap();
            let (component, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
            assert_eq!(outcome, CacheOutcome::Miss);
            assert!(exports(&engine, &component).iter().any(|n| n == "apply"));
            assert_eq!(fs::read(&path).unwrap(), good, "the file was rewritten");
            let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
            assert_eq!(outcome, CacheOutcome::Hit);
        }
    }

    #[test]
    fn another_engine_configuration_does_not_load_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        let plain = engine(false);
        let fueled = engine(true);
        let bytes = bank_account();

        // Engines configured alike share files; unlike ones do not.
        assert_eq!(
            cache.path_for(&plain, &bytes),
            cache.path_for(&engine(false), &bytes)
        );
        let plain_path = cache.path_for(&plain, &bytes);
        let fueled_path = cache.path_for(&fueled, &bytes);
        assert_ne!(plain_path, fueled_path);

        assert_eq!(
            cache.load_or_compile(&plain, &bytes).unwrap().1,
            CacheOutcome::Miss
        );
        assert_eq!(
            cache.load_or_compile(&fueled, &bytes).unwrap().1,
            CacheOutcome::Miss
        );
        assert_eq!(
            cache.load_or_compile(&plain, &bytes).unwrap().1,
            CacheOutcome::Hit
        );
        assert_eq!(
            cache.load_or_compile(&fueled, &bytes).unwrap().1,
            CacheOutcome::Hit
        );

        // Even under the other engine's name, wasmtime refuses the artifact:
        // it is replaced, not used.
        fs::copy(&plain_path, &fueled_path).unwrap();
        let (_, outcome) = cache.load_or_compile(&fueled, &bytes).unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        assert_ne!(
            fs::read(&fueled_path).unwrap(),
            fs::read(&plain_path).unwrap()
        );
        assert_eq!(
            cache.load_or_compile(&fueled, &bytes).unwrap().1,
            CacheOutcome::Hit
        );
    }

    #[test]
    fn a_cache_that_cannot_be_written_still_compiles() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let cache = CompileCache::open(&cache_dir).unwrap();
        // Replace the directory by a file: every write fails.
        fs::remove_dir(&cache_dir).unwrap();
        fs::write(&cache_dir, b"not a directory").unwrap();
        let engine = engine(false);
        let bytes = bank_account();
        for _ in 0..2 {
            let (component, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
            assert_eq!(outcome, CacheOutcome::Miss);
            assert!(exports(&engine, &component).iter().any(|n| n == "apply"));
        }
    }

    #[test]
    fn bytes_that_are_not_a_component_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        assert!(
            cache
                .load_or_compile(&engine(false), b"\0asm\x01\0\0\0")
                .is_err()
        );
        assert!(files(cache.dir()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn a_new_directory_is_private_and_one_others_can_write_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a").join("compiled");
        let cache = CompileCache::open(&fresh).unwrap();
        assert_eq!(cache.dir(), fresh);
        let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "created private: {mode:o}");

        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let cache = CompileCache::open(&shared).unwrap();
        assert_ne!(cache.dir(), shared, "a world-writable directory is refused");
        let mode = fs::metadata(cache.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o022, 0, "the fallback is private: {mode:o}");
        // What it compiles goes to the private directory, never the shared one.
        let engine = engine(false);
        cache.load_or_compile(&engine, &bank_account()).unwrap();
        assert!(files(&shared).is_empty());

        let group = dir.path().join("group");
        fs::create_dir(&group).unwrap();
        fs::set_permissions(&group, fs::Permissions::from_mode(0o770)).unwrap();
        assert!(check_private(&group).unwrap_err().contains("770"));
        let mine = dir.path().join("mine");
        fs::create_dir(&mine).unwrap();
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_private(&mine), Ok(()));
    }
}
