//! Process-wide allocator settings for training workloads.
//!
//! Every op allocates its output; activations of a conv net are megabytes each. With glibc's
//! defaults such blocks are mmapped and unmapped on every allocation, and each step pays for
//! zeroing fresh pages again (page faults were 10–20% of a cnn7 training step). Raising the
//! mmap and trim thresholds keeps freed blocks in the heap for reuse by the next step.

/// Keep large freed blocks in the process for reuse. Call once at start-up, before the heavy
/// work (the binary and the benchmarks do). A no-op where the C library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
