//! The CPU convolution kernels layer by layer: the forward pass and the forward + backward
//! (both gradients) of each convolution shape of a CIFAR ResNet (the stem, each stage's 3x3
//! block convolution, and the strided 3x3 and 1x1 shortcut that open a stage), timed on their
//! own, so that a
//! kernel choice (`SSLHOST_CPU_KERNELS`) is measured where it acts and not through a whole
//! step's noise. Run it once per kernel setting and compare:
//!
//!     cargo run --release --example conv_layers                     # the defaults
//!     SSLHOST_CPU_KERNELS=no-direct cargo run --release --example conv_layers
//!     SSLHOST_CPU_KERNELS=im2col cargo run --release --example conv_layers -- 128 16,32,64,128
//!
//! Arguments: batch (default 128, the two views of a batch of 64), the stage widths (default
//! 16,32,64,128), the image side (default 32) and the stem's stride (default 1). The CPU
//! preset of the recipes is `128 16,32,64,128 28 2`. Each row is the best of 5 after a
//! warm-up, in milliseconds.

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use sslhost::kernels;

/// The best of `reps` timings of `f`, in milliseconds, after one warm-up call.
fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let widths: Vec<usize> = args
        .next()
        .map(|s| s.split(',').filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 32, 64, 128]);
    let mut positive = |default: usize| {
        args.next()
            .and_then(|s| s.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(default)
    };
    let (image, stem_stride) = (positive(32), positive(1));
    // As the binary does: freed memory stays in the process (no page faults a call).
    sslhost::allocator::keep_freed_memory();
    let device = sslhost::device::cpu();
    println!(
        "batch {batch}, SSLHOST_CPU_KERNELS={}, {} threads",
        std::env::var("SSLHOST_CPU_KERNELS").unwrap_or_default(),
        rayon::current_num_threads()
    );
    println!("| layer | forward ms | forward + backward ms | GFLOP/s (f+b) |");
    println!("|---|---:|---:|---:|");
    // (c_in, c_out, input side, kernel, stride): the CIFAR stem; each stage's 3x3 block
    // convolution at its map size; from the second stage on, the strided 3x3 and the 1x1
    // shortcut that halve the map.
    // A 3x3 with padding 1 at `stride` maps a side to `(side − 1) / stride + 1`.
    let after = |side: usize, stride: usize| (side - 1) / stride + 1;
    let mut layers = vec![(3, widths[0], image, 3, stem_stride)];
    let mut side = after(image, stem_stride);
    for (i, &w) in widths.iter().enumerate() {
        if i > 0 {
            layers.push((widths[i - 1], w, side, 3, 2));
            layers.push((widths[i - 1], w, side, 1, 2));
            side = after(side, 2);
        }
        layers.push((w, w, side, 3, 1));
    }
    for (c_in, c_out, side, k, stride) in layers {
        let pad = k / 2;
        let out_side = (side + 2 * pad - k) / stride + 1;
        let x = Tensor::<4>::random(
            [batch, c_in, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let w = Tensor::<4>::random([c_out, c_in, k, k], Distribution::Normal(0.0, 0.1), &device);
        let forward = best_ms(5, || {
            let _ = kernels::conv2d(x.clone(), w.clone(), stride, pad).into_data();
        });
        let both = best_ms(5, || {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let grads = kernels::conv2d(x.clone(), w.clone(), stride, pad)
                .sum()
                .backward();
            let _ = (x.grad(&grads), w.grad(&grads).map(|g| g.into_data()));
        });
        // Three products of 2·batch·out_side²·c_in·c_out·k² FLOPs each: forward, dx, dw.
        let flops = 3.0 * 2.0 * (batch * out_side * out_side * c_in * c_out * k * k) as f64;
        println!(
            "| {c_in}→{c_out}, {k}x{k} stride {stride}, {side}x{side} | {forward:.2} | {both:.2} | {:.0} |",
            flops / both / 1e6
        );
    }
}
