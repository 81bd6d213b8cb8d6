//! The heap a compile frees goes back to the kernel. In a process of its
//! own: it reads the process's resident size, which tests running beside it
//! in the library's test binary would move.

use kiln::runtime::memory::{release_free_heap, resident_bytes};

const MIB: u64 = 1024 * 1024;

/// Memory freed between blocks still in use, on several threads, as a
/// compile leaves it: resident until trimmed.
#[test]
fn trimming_returns_freed_heap_between_live_blocks() {
    if resident_bytes().is_none() {
        return; // no /proc here
    }
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let mut kept = Vec::new();
                let mut freed = Vec::new();
                for _ in 0..512 {
                    freed.push(vec![1u8; 64 * 1024]);
                    kept.push(vec![2u8; 32]);
                }
                drop(freed);
                kept
            })
        })
        .collect();
    let kept: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let untrimmed = resident_bytes().expect("readable");
    release_free_heap();
    let trimmed = resident_bytes().expect("readable");
    drop(kept);
    // 128 MiB were freed between live blocks.
    assert!(
        trimmed + 32 * MIB < untrimmed,
        "resident {} MiB before trimming, {} MiB after",
        untrimmed / MIB,
        trimmed / MIB
    );
}
