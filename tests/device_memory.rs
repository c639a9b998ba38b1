//! The device allocator as `sslhost bench` reports it, on cubecl's CPU runtime (which keeps
//! its memory in the same pools as CUDA): the peak is a high-water mark that a new variant
//! restarts, and the report names what is held and on which pages. One test in its own
//! process, so no other test's tensors are in the pool it reads
//! (`cargo test --profile ci --features cubecl-cpu --test device_memory`, as `.ci/run`).
#![cfg(feature = "cubecl-cpu")]

use burn::tensor::Tensor;
use sslhost::profiling::{MIB, device_memory_report, restart_device_peak, sample_device_memory};

#[test]
fn the_peak_is_kept_until_a_restart_returns_the_empty_pages() {
    let device = sslhost::device::cubecl_cpu().expect("built with cubecl-cpu");
    let mib = |bytes: u64| bytes as f64 / MIB;
    restart_device_peak(&device);
    let start = sample_device_memory(&device).expect("cubecl reports its pool");

    // 16 MiB of f32, written, so its page is backed.
    let big = Tensor::<2>::ones([1024, 4096], &device);
    let with_big = sample_device_memory(&device).unwrap();
    assert!(
        mib(with_big) >= mib(start) + 16.0,
        "{} MiB reserved with a 16 MiB tensor, from {}",
        mib(with_big),
        mib(start)
    );
    let report = device_memory_report(&device).unwrap();
    let in_use = report["in_use_mb"].as_f64().unwrap();
    let reserved = report["reserved_mb"].as_f64().unwrap();
    assert!((16.0..reserved + 1e-9).contains(&in_use), "{report}");
    assert!((reserved - mib(with_big)).abs() < 1e-9, "{report}");
    let pools = report["pools"].as_array().unwrap();
    assert!(
        pools.iter().any(|p| p["page_mb"].as_f64().unwrap() >= 16.0
            && p["pages"].as_u64().unwrap() >= 1
            && p["largest_alloc_mb"].as_f64().unwrap() >= 16.0),
        "a page holds the tensor: {report}"
    );

    // Freed, the page stays in the pool and the peak stays where it was.
    drop(big);
    let freed = device_memory_report(&device).unwrap();
    assert_eq!(freed["in_use_mb"].as_f64(), Some(0.0), "{freed}");
    assert!(
        (freed["reserved_mb"].as_f64().unwrap() - reserved).abs() < 1e-9,
        "{freed}"
    );
    assert_eq!(sample_device_memory(&device), Some(with_big));

    // A restart gives the empty pages back, and the peak starts again from what is left.
    restart_device_peak(&device);
    let restarted = sample_device_memory(&device).unwrap();
    assert!(
        mib(restarted) <= mib(with_big) - 16.0,
        "{} MiB after the restart, {} before",
        mib(restarted),
        mib(with_big)
    );
    // The next allocation raises it again (on a page the size of the largest allocation the
    // pool has served: cubecl sizes its pages to the workload, not to each tensor).
    let next = Tensor::<2>::ones([64, 1024], &device);
    let with_next = sample_device_memory(&device).unwrap();
    assert!(
        mib(with_next) >= mib(restarted) + 0.25,
        "{} MiB, {} before",
        mib(with_next),
        mib(restarted)
    );
    drop(next);
}
