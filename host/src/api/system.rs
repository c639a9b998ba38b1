//! The process as scripts see it: peak memory and the time spent inside host functions
//! (what `sslhost bench` reports next to the step time), and the allocator that counts the
//! freeing of tensors as host time.

use rhai::plugin::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest `bytes_reserved` of the device's memory pool seen by `peak_memory_mb`.
static DEVICE_PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes per MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// The process's peak resident set size in MiB (`VmHWM` of `/proc/self/status`), if the
/// system reports it (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_hwm_kb(&status).map(|kb| kb as f64 / 1024.0)
}

/// The `VmHWM:  1234 kB` line of a `/proc/<pid>/status` text, in kB.
fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let value = words.next()?.parse::<u64>().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// The device memory the allocator holds now, in bytes, if the backend reports it (CUDA);
/// the largest value seen so far is kept.
pub fn sample_device_memory(device: &burn::tensor::Device) -> Option<u64> {
    let usage = device.memory_pool_usage()?;
    let peak = DEVICE_PEAK_BYTES.fetch_max(usage.bytes_reserved, Ordering::Relaxed);
    Some(peak.max(usage.bytes_reserved))
}

/// The system allocator, with the time spent freeing large blocks outside host functions
/// counted as host time while the accounting is on (see [`args::timed_release`]): without
/// it, releasing a tensor when a script variable goes out of scope (milliseconds for a
/// MoCo queue) would count as time of the Rhai layer. The `sslhost` binary installs it.
///
/// [`args::timed_release`]: crate::api::args::timed_release
pub struct ReleaseTimingAllocator;

// SAFETY: every call is forwarded to `System` with the same arguments.
unsafe impl GlobalAlloc for ReleaseTimingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        crate::api::args::timed_release(layout.size(), || unsafe { System.dealloc(ptr, layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Process and timing facts for scripts and benchmarks.
#[export_module]
pub mod system_api {
    use rhai::Dynamic;

    use crate::api::args;
    use crate::session;

    /// Peak memory of the run in MiB. On the CPU: the process's peak resident set size
    /// (`VmHWM`, Linux). On CUDA: the most device memory the allocator has reserved among the
    /// moments this function was called (burn reports the pool's current state, not its
    /// peak, so call it after each step). `()` where neither is known.
    ///
    /// ```rhai
    /// print(`peak memory: ${peak_memory_mb()} MiB`);
    /// ```
    pub fn peak_memory_mb() -> Dynamic {
        let device = session::device();
        let value = if !crate::device::gpu_path(&device) {
            super::peak_rss_mb()
        } else {
            super::sample_device_memory(&device).map(|b| b as f64 / super::MIB)
        };
        value.map_or(Dynamic::UNIT, Dynamic::from_float)
    }

    /// Turns on (or off) the accounting of time spent inside host functions, which
    /// `host_time_ms()` reads. `sslhost bench` turns it on; it costs two clock reads per call.
    ///
    /// ```rhai
    /// host_timing(true);
    /// ```
    pub fn host_timing(on: bool) {
        args::set_host_timing(on);
    }

    /// Milliseconds spent inside host functions (tensor ops, forwards, optimiser steps, ...)
    /// since the accounting was turned on; a step's wall time minus the increase is the time
    /// of the Rhai layer: dispatch, argument conversion and the script's own logic.
    ///
    /// ```rhai
    /// let t0 = timestamp();
    /// let h0 = host_time_ms();
    /// opt.step(loss, 0.1);
    /// let rhai_ms = t0.elapsed * 1000.0 - (host_time_ms() - h0);
    /// ```
    pub fn host_time_ms() -> f64 {
        args::host_nanos() as f64 / 1e6
    }

    /// How many times values have been read back from the device so far: `item()`,
    /// `to_array()`, a loss checked by `opt.step`, labels the host did not make. On a GPU each
    /// read waits for all the work queued before it, so a step that reads once keeps the GPU
    /// busy while the host queues the next. (Small vectors the host made, such as
    /// `arange(0, n)` or a batch's labels, are read from the host's copy and not counted.)
    ///
    /// ```rhai
    /// let before = device_reads();
    /// let loss_value = loss.item();
    /// print(`reads: ${device_reads() - before}`);
    /// ```
    pub fn device_reads() -> i64 {
        crate::tensor::device_reads() as i64
    }

    /// The part of `host_time_ms()` spent freeing tensor memory when script variables went
    /// out of scope (counted only in the `sslhost` binary, whose allocator measures it).
    ///
    /// ```rhai
    /// print(`freeing tensors: ${release_time_ms()} ms`);
    /// ```
    pub fn release_time_ms() -> f64 {
        args::release_nanos() as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kb(status), Some(2048));
        assert_eq!(vm_hwm_kb("Name:\tx\n"), None);
    }

    #[test]
    fn peak_rss_is_known_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().unwrap() > 0.0);
        }
    }
}
