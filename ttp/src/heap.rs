//! Keeping the daemon's heap from holding on to memory it no longer uses.
//!
//! glibc's malloc keeps freed memory mapped for reuse, and two of its habits make that
//! expensive for a long-lived daemon that embeds Arti (measured, BENCHMARKS.md):
//!
//! - its mmap threshold is dynamic: once a large block (Arti's consensus text, the
//!   kernel's BTF the eBPF loader parses) is freed, glibc raises the threshold up to
//!   32 MiB, and from then on blocks of that size are carved out of the arenas, where
//!   their pages stay after `free`. A fixed threshold keeps large blocks in their own
//!   mappings, returned whole when freed;
//! - free pages in the middle of an arena are only returned by `malloc_trim`: after a
//!   cold bootstrap one arena kept 34 MB it never used again. The daemon trims after
//!   bootstrap and then periodically, so a burst of streams or a directory refresh leaves
//!   nothing behind for long.
//!
//! Not used: another allocator. mimalloc as the global allocator held far more with
//! 1,000 streams (55 MB anonymous against 15), and `MALLOC_ARENA_MAX` gave back 0.6 MB.

use std::time::Duration;

/// Blocks from this size up get their own mapping (glibc's initial threshold, kept
/// fixed instead of growing to 32 MiB).
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// How often the daemon returns free heap pages: rarely enough to cost nothing (a trim
/// walks the arenas; a page given back costs a fault when used again), often enough that
/// a burst's memory is not held for long.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Fixes malloc's mmap threshold. Call before the first thread starts (mallopt is not
/// meant to race with allocations in other threads).
pub fn configure() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes malloc's parameters; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the heap's free pages to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_EVERY`], for the daemon's life. Observation-free: it never ends on
/// its own, and its end (the runtime's) is no fault.
pub async fn keep_trimmed() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        trim();
    }
}
