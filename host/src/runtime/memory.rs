//! Giving back the memory a compile used.
//!
//! Cranelift compiles a component on several threads, each allocating from
//! its own glibc malloc arena. Freed, that memory stays in the arenas and in
//! the process's resident set: a 12 MB JavaScript component left about
//! 300 MiB behind (see docs/benchmarks.md). `malloc_trim` returns the free
//! pages of every arena to the kernel; it takes a few milliseconds and runs
//! once per compile, and once more after a deploy, when the buffers of the
//! upload are freed too.

/// Allocations this large or larger are mapped on their own and returned to
/// the kernel when freed (an upload's body, a compiled component's bytes).
pub const MMAP_THRESHOLD_BYTES: usize = 4 * 1024 * 1024;

/// Fix glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`]. Left to itself,
/// glibc raises the threshold to the size of the largest block freed (up to
/// 32 MiB) and the heap's trim threshold to twice that, so after a 12 MB
/// upload up to 64 MiB of free heap stayed resident for good. The requests'
/// own allocations are far smaller and not affected. Called once, when the
/// runtime is built.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set_mmap_threshold();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "mallopt is a glibc function without preconditions"
)]
fn set_mmap_threshold() {
    let threshold = libc::c_int::try_from(MMAP_THRESHOLD_BYTES).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` only sets a parameter of glibc's allocator under its
    // lock; it takes no pointer and may be called at any time.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) };
    if ok != 1 {
        tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused; large freed blocks may stay resident");
    }
    // Fixing the mmap threshold also stops glibc from raising the trim
    // threshold with it, which leaves the default 128 KiB: the heap's top
    // was then given back and taken again all the time under load (server
    // CPU per command +15 %, measured in docs/benchmarks.md). Twice the mmap
    // threshold, glibc's own rule; `release_free_heap` still gives back the
    // rest after compiles and deploys.
    let trim = threshold.saturating_mul(2);
    // SAFETY: as above.
    let ok = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, trim) };
    if ok != 1 {
        tracing::debug!("mallopt(M_TRIM_THRESHOLD) refused");
    }
}

/// How long after a deploy the heap is trimmed: long enough for the
/// request that carried the component (its body buffers) to have ended.
pub const TRIM_AFTER_DEPLOY: std::time::Duration = std::time::Duration::from_secs(1);

/// Trim the heap once [`TRIM_AFTER_DEPLOY`] has passed, off the async
/// threads; deploys close together share one trim. Call it from inside a
/// tokio runtime.
pub fn release_free_heap_soon() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SCHEDULED: AtomicBool = AtomicBool::new(false);
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(TRIM_AFTER_DEPLOY).await;
        SCHEDULED.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(release_free_heap).await;
    });
}

/// Return the free pages of the heap to the kernel (glibc only; elsewhere
/// a no-op).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "malloc_trim is a glibc function without preconditions"
)]
fn trim() {
    // SAFETY: `malloc_trim` only walks glibc's own arenas under their locks
    // and releases free pages; it takes no pointer and may be called from
    // any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The resident set of this process in bytes (`VmRSS` of
/// `/proc/self/status`), where the system has it.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
