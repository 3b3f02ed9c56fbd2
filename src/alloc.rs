//! The process's malloc policy: freed tensor memory is kept for reuse.
//!
//! libtorch allocates every activation with `malloc`. glibc serves blocks
//! above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps
//! them on free, so each VGG16 activation of a batch of 8 at 224 px (up to
//! 100 MiB) was faulted in page by page, again for every batch: a one-seed
//! leave-one-subject-out cv on 2 cores spent 61 s of its 5 min in the kernel
//! (22.8 million page faults; 5 s and 1.4 million with this policy, and the
//! cache pass 174.5 → 153.3 s). Peak resident memory rose from 1.78 to
//! 1.99 GB there: freed blocks stay in the heap up to `KEEP_FREE`.

/// Free memory at the top of the heap kept rather than returned to the system.
const KEEP_FREE: i32 = 1 << 30;

/// Serves every allocation from the heap (no per-block `mmap`) and keeps up
/// to `KEEP_FREE` of freed memory; call once, first thing in `main`. A no-op
/// outside glibc. glibc still maps a block that the heap cannot hold: one
/// over 64 MiB made on a thread other than the main one (whose arenas are
/// capped at that size), or any when the heap cannot grow. The passes that
/// make the large activations run on the main thread.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, under glibc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Bytes glibc currently holds in per-block mmaps.
    fn mapped() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    fn a_large_block_comes_from_the_heap_not_its_own_mapping() {
        super::keep_freed_memory();
        let before = mapped();
        // 40 MiB: above glibc's largest mmap threshold (32 MiB), so without the policy it is always mapped,
        // and below the 64 MiB a test thread's arena can hold.
        let block = vec![1u8; 40 << 20];
        let during = mapped();
        assert_eq!(block.iter().map(|&b| b as usize).sum::<usize>(), 40 << 20);
        // Other tests only free mappings made before the policy, so the count cannot grow by the block.
        assert!(during < before + (40 << 20), "the 40 MiB block was mapped on its own ({before} → {during} bytes mapped)");
    }
}
