//! What `sslhost bench` measures about the process: time spent inside host functions (the
//! rest of a step's wall time is the Rhai layer's), the time of freeing tensors when script
//! variables go out of scope (through the binary's allocator), and peak memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Whether [`host_time`] measures (`sslhost bench` and `host_timing(true)` turn it on).
static HOST_TIMING: AtomicBool = AtomicBool::new(false);
/// Nanoseconds spent inside host functions while measuring.
static HOST_NANOS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds spent freeing large blocks outside host functions (see [`timed_release`]).
static RELEASE_NANOS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// How many host functions are running on this thread (a host function may call back
    /// into the script, which calls another one: only the outermost is counted).
    static HOST_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Whether this is the thread that turned the accounting on (the script's thread).
    static TIMED_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Turns the accounting of time spent inside host functions on or off; the calling thread
/// is the one whose script is measured.
pub fn set_host_timing(on: bool) {
    TIMED_THREAD.with(|t| t.set(on));
    HOST_TIMING.store(on, Ordering::Relaxed);
}

/// Nanoseconds of [`host_nanos`] spent freeing tensor memory when the script dropped the
/// last handle to it (a variable going out of scope), outside any host function.
pub fn release_nanos() -> u64 {
    RELEASE_NANOS.load(Ordering::Relaxed)
}

/// Frees a block through `free`, counting the time as host time when the accounting is on,
/// the block is large (a tensor's buffer: scripts allocate nothing that size themselves)
/// and the script's thread frees it outside any host function, i.e. when a script
/// variable holding the last handle to a tensor goes out of scope. Called by the
/// allocator, so it allocates nothing.
pub fn timed_release(size: usize, free: impl FnOnce()) {
    /// Smallest block counted: 4 KiB (a script's own values are far smaller).
    const LARGE: usize = 4 << 10;
    let counted = size >= LARGE
        && HOST_TIMING.load(Ordering::Relaxed)
        && TIMED_THREAD.try_with(Cell::get).unwrap_or(false)
        && HOST_DEPTH.try_with(Cell::get).unwrap_or(1) == 0;
    if !counted {
        return free();
    }
    let start = Instant::now();
    free();
    let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    HOST_NANOS.fetch_add(ns, Ordering::Relaxed);
    RELEASE_NANOS.fetch_add(ns, Ordering::Relaxed);
}

/// Nanoseconds spent inside host functions since the accounting was turned on: the rest of
/// a step's wall time is the Rhai layer's (dispatch, argument conversion, script logic).
pub fn host_nanos() -> u64 {
    HOST_NANOS.load(Ordering::Relaxed)
}

/// Runs `f`, adding its wall time to [`host_nanos`] when the accounting is on. Nesting-aware:
/// a host function called while another is running is already inside the outer one's time.
/// Off, it costs one relaxed load.
pub fn host_time<T>(f: impl FnOnce() -> T) -> T {
    if !HOST_TIMING.load(Ordering::Relaxed) {
        return f();
    }
    /// Leaves the nesting level (and adds the time) even if `f` unwinds.
    struct Level(Option<Instant>);
    impl Drop for Level {
        fn drop(&mut self) {
            HOST_DEPTH.with(|d| d.set(d.get() - 1));
            if let Some(start) = self.0 {
                let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                HOST_NANOS.fetch_add(ns, Ordering::Relaxed);
            }
        }
    }
    let outermost = HOST_DEPTH.with(|d| {
        let depth = d.get();
        d.set(depth + 1);
        depth == 0
    });
    let _level = Level(outermost.then(Instant::now));
    f()
}

/// Largest `bytes_reserved` of the device's memory pool seen by `peak_memory_mb`.
static DEVICE_PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes per MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

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
/// the largest value seen since [`restart_device_peak`] (or the start) is kept.
pub fn sample_device_memory(device: &burn::tensor::Device) -> Option<u64> {
    let usage = device.memory_pool_usage()?;
    let peak = DEVICE_PEAK_BYTES.fetch_max(usage.bytes_reserved, Ordering::Relaxed);
    Some(peak.max(usage.bytes_reserved))
}

/// Starts a new span for [`sample_device_memory`]'s peak: the allocator gives back every page
/// nothing holds, and the peak restarts from what it still reserves. The pool only grows
/// while a process runs, so without this the variants `sslhost bench` times one after
/// another would each report the largest of them.
pub fn restart_device_peak(device: &burn::tensor::Device) {
    run_queued_frees(device);
    device.memory_cleanup();
    let reserved = device.memory_pool_usage().map_or(0, |u| u.bytes_reserved);
    DEVICE_PEAK_BYTES.store(reserved, Ordering::Relaxed);
}

/// Waits for the device's queued work, of which the frees of the tensors dropped last are a
/// part: until they have run, the pool counts those tensors as in use and their pages as
/// held. (The pool's own reading drains the queue of operations, not the frees.) A failed
/// stream has nothing more to free. On the CPU it returns at once.
fn run_queued_frees(device: &burn::tensor::Device) {
    let _ = device.sync();
}

/// What the device's allocator holds once the queued work has run (so tensors dropped before
/// the call count as freed), for a bench's JSON: the bytes reserved and in use, and each
/// pool that carves pages (page size, pages held, the largest allocation it served), in MiB.
/// `None` where the backend reports nothing (the CPU). It waits for the device.
pub fn device_memory_report(device: &burn::tensor::Device) -> Option<serde_json::Value> {
    run_queued_frees(device);
    let usage = device.memory_pool_usage()?;
    let pools: Vec<serde_json::Value> = device
        .memory_pool_report()
        .unwrap_or_default()
        .iter()
        .filter(|pool| pool.pages > 0)
        .map(|pool| {
            serde_json::json!({
                "page_mb": pool.page_size as f64 / MIB,
                "pages": pool.pages,
                "largest_alloc_mb": pool.largest_alloc as f64 / MIB,
            })
        })
        .collect();
    Some(serde_json::json!({
        "reserved_mb": usage.bytes_reserved as f64 / MIB,
        "in_use_mb": usage.bytes_in_use as f64 / MIB,
        "allocations": usage.number_allocs,
        "pools": pools,
    }))
}

/// The system allocator, with the time spent freeing large blocks outside host functions
/// counted as host time while the accounting is on (see [`timed_release`]): without
/// it, releasing a tensor when a script variable goes out of scope (milliseconds for a
/// MoCo queue) would count as time of the Rhai layer. The `sslhost` binary installs it.
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
        timed_release(layout.size(), || unsafe { System.dealloc(ptr, layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
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
