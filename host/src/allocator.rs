//! How the process asks glibc's allocator to treat the large buffers of a training step.
//!
//! A CPU step allocates and frees tens of megabytes of activations, gradients and scratch. With
//! glibc's defaults, freed memory at the top of the heap is handed back to the kernel (above a
//! 128 KiB trim threshold that only slowly adapts) and large blocks are `mmap`ed afresh, so the
//! next step faults the same pages back in and the kernel zeroes each one: about 14 000 page
//! faults a step on the small-ResNet BYOL bench. Keeping freed memory in the process leaves
//! none in the steady state (a 10- and a 20-step bench fault the same 61 500 pages, all at
//! start-up) and took 5–8% off the step (docs/PERFORMANCE.md); peak memory is unchanged, and
//! the process simply holds on to its peak until it exits.

/// Keeps freed memory for reuse instead of returning it to the kernel after every step.
/// Call before the first large allocation; elsewhere than glibc this does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Blocks up to this size come from the heap, not from a fresh `mmap` each time
        /// (32 MiB is the largest glibc accepts; a MoCo queue is just above it).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        /// Free memory at the top of the heap is returned only above this much.
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; both are valid values for these
        // options. A rejected value (return 0) leaves glibc's default, which is still correct.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
