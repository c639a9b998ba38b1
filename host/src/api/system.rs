//! The process as scripts see it: peak memory and the time spent inside host functions
//! (what `sslhost bench` reports next to the step time), measured by `crate::profiling`.

use rhai::plugin::*;

/// Process and timing facts for scripts and benchmarks.
#[export_module]
pub mod system_api {
    use rhai::Dynamic;

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
            crate::profiling::peak_rss_mb()
        } else {
            crate::profiling::sample_device_memory(&device)
                .map(|b| b as f64 / crate::profiling::MIB)
        };
        value.map_or(Dynamic::UNIT, Dynamic::from_float)
    }

    /// What the device's allocator holds now, as a map, on a GPU (`()` on the CPU, where
    /// `peak_memory_mb()` is the process's): `reserved_mb` (the pool's pages), `in_use_mb`
    /// (the live tensors), `allocations`, and `pools`, one map for each pool that carves
    /// pages (`page_mb`, `pages`, `largest_alloc_mb`). Between steps, `in_use_mb` is what a
    /// run keeps (weights, optimiser state, queues) and the rest of `reserved_mb` is what its
    /// steps needed on top.
    ///
    /// ```rhai
    /// let memory = device_memory();
    /// if type_of(memory) == "map" {
    ///     print(`reserved ${memory.reserved_mb} MiB, in use ${memory.in_use_mb} MiB`);
    /// }
    /// ```
    #[rhai_fn(return_raw)]
    pub fn device_memory() -> Result<Dynamic, Box<rhai::EvalAltResult>> {
        let device = session::device();
        match crate::profiling::device_memory_report(&device) {
            Some(report) => rhai::serde::to_dynamic(report),
            None => Ok(Dynamic::UNIT),
        }
    }

    /// Turns on (or off) the accounting of time spent inside host functions, which
    /// `host_time_ms()` reads. `sslhost bench` turns it on; it costs two clock reads per call.
    ///
    /// ```rhai
    /// host_timing(true);
    /// ```
    pub fn host_timing(on: bool) {
        crate::profiling::set_host_timing(on);
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
        crate::profiling::host_nanos() as f64 / 1e6
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
        crate::profiling::release_nanos() as f64 / 1e6
    }
}
