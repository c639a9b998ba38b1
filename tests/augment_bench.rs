//! Throughput of the BYOL two-view augmentation on the CPU (ignored by default):
//!
//! ```sh
//! cargo test --release --test augment_bench -- --ignored --nocapture
//! ```
//!
//! Set `AUG_BENCH_BATCH`, `AUG_BENCH_SIZE` (input side), `AUG_BENCH_OUT` (crop size, 32) or
//! `AUG_BENCH_STEPS` to change the workload, `AUG_BENCH_ONLY=<op>` to time one op.
//!
//! glibc's malloc serves the multi-megabyte tensors of a batch with fresh `mmap`s once its
//! dynamic threshold settles low, and every fresh page then faults: on this workload that
//! doubles the time. `MALLOC_MMAP_THRESHOLD_=134217728 MALLOC_TRIM_THRESHOLD_=1073741824` (or a
//! different global allocator) keeps the buffers in the heap.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use sslhost::augment::{Augment, ColorJitter, GaussianBlur, RandomResizedCrop, Transform};
use sslhost::tensor::HostRng;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn view(blur: f64, solarize: f64, size: usize) -> Vec<Augment> {
    vec![
        Augment::RandomResizedCrop(RandomResizedCrop::new(size)),
        Augment::HorizontalFlip { p: 0.5 },
        Augment::ColorJitter(ColorJitter::new(0.4, 0.4, 0.2, 0.1).with_p(0.8)),
        Augment::Grayscale { p: 0.2 },
        Augment::GaussianBlur(GaussianBlur::new(blur)),
        Augment::Solarize {
            p: solarize,
            threshold: 0.5,
        },
        Augment::Normalize {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.247, 0.243, 0.261],
        },
    ]
}

fn sync(t: Tensor<4>) -> f32 {
    t.sum().into_scalar::<f32>()
}

/// Median and minimum of the per-call times of `f`, in milliseconds (the machine may be
/// shared, so the minimum is the cleaner number).
fn time(steps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm-up
    let mut ms: Vec<f64> = (0..steps)
        .map(|_| {
            let start = Instant::now();
            f();
            1e3 * start.elapsed().as_secs_f64()
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0])
}

#[test]
#[ignore]
fn byol_two_views_throughput() {
    let device = sslhost::device::cpu();
    let batch = env("AUG_BENCH_BATCH", 256);
    let side = env("AUG_BENCH_SIZE", 32);
    let steps = env("AUG_BENCH_STEPS", 20);
    let out = env("AUG_BENCH_OUT", 32);
    let mut rng = HostRng::new(0);
    let x = Tensor::<4>::from_data(
        TensorData::new(
            rng.uniform_vec(batch * 3 * side * side, 0.0, 1.0),
            [batch, 3, side, side],
        ),
        &device,
    );
    let v1 = Transform::new(view(1.0, 0.0, out)).unwrap();
    let v2 = Transform::new(view(0.1, 0.2, out)).unwrap();
    let (median, min) = time(steps, || {
        sync(v1.apply(x.clone(), &mut rng).unwrap());
        sync(v2.apply(x.clone(), &mut rng).unwrap());
    });
    eprintln!(
        "BYOL two views, batch {batch}, {side}px -> {out}px: {median:.1} ms per batch (min {min:.1}), \
         {:.0} images/s ({:.0} views/s) at the median",
        batch as f64 / median * 1e3,
        2.0 * batch as f64 / median * 1e3,
    );

    // Each op alone, applied with p = 1 to the whole batch, to see where the time goes.
    let ops: Vec<(&str, Augment)> = vec![
        (
            "crop",
            Augment::RandomResizedCrop(RandomResizedCrop::new(out)),
        ),
        ("hflip", Augment::HorizontalFlip { p: 0.5 }),
        (
            "color_jitter",
            Augment::ColorJitter(ColorJitter::new(0.4, 0.4, 0.2, 0.1)),
        ),
        (
            "jitter b",
            Augment::ColorJitter(ColorJitter::new(0.4, 0.0, 0.0, 0.0)),
        ),
        (
            "jitter c",
            Augment::ColorJitter(ColorJitter::new(0.0, 0.4, 0.0, 0.0)),
        ),
        (
            "jitter s",
            Augment::ColorJitter(ColorJitter::new(0.0, 0.0, 0.4, 0.0)),
        ),
        (
            "jitter h",
            Augment::ColorJitter(ColorJitter::new(0.0, 0.0, 0.0, 0.1)),
        ),
        ("grayscale", Augment::Grayscale { p: 1.0 }),
        (
            "gaussian_blur",
            Augment::GaussianBlur(GaussianBlur::new(1.0)),
        ),
        (
            "solarize",
            Augment::Solarize {
                p: 1.0,
                threshold: 0.5,
            },
        ),
        (
            "normalize",
            Augment::Normalize {
                mean: vec![0.5],
                std: vec![0.25],
            },
        ),
    ];
    let only = std::env::var("AUG_BENCH_ONLY").ok();
    for (name, op) in ops {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let t = Transform::new(vec![op]).unwrap();
        let (median, min) = time(steps, || {
            sync(t.apply(x.clone(), &mut rng).unwrap());
        });
        eprintln!("  {name:>14}: {median:.2} ms per batch (min {min:.2})");
    }
}
