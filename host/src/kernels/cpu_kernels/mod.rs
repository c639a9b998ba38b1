//! CPU kernels, with backwards of our own, for what a training step spends its CPU time in:
//! convolution, batch norm (with the ReLU and residual add after it), the heads' linear
//! layers and cross-entropy.
//!
//! burn-flex's convolution copies every activation to NHWC and back, and computes the input
//! gradient as a transposed convolution with the same copies; burn's generic batch norm
//! transposes for each statistic and runs a dozen elementwise passes. On a 2-core machine those
//! copies cost more than the arithmetic (docs/PERFORMANCE.md). These kernels keep NCHW end to
//! end: the convolution gives each thread one wide GEMM per group of images (`conv.rs`; the
//! 3x3 block convolutions of 64 channels and more take Winograd's F(2x2, 3x3), 16 GEMMs of
//! 2.25x fewer multiply-adds, `winograd.rs`; those of 32 channels or fewer, and the stems, a
//! direct convolution with its tile of outputs in SIMD registers, `direct.rs`), batch
//! norm walks each channel plane in place and applies its epilogue in the output pass
//! (`batch_norm.rs`), a linear layer is one GEMM each way with contiguous gradients
//! (`linear.rs`), and cross-entropy makes two passes over the logits forward and one back
//! (`cross_entropy.rs`). Every GEMM goes through `matmul.rs`; outputs are written in parallel
//! (`par_new`) so no serial pass zeroes them first.
//!
//! They are reached through [`super`]'s dispatch (`conv2d`, `batch_norm_train`, `linear`,
//! `cross_entropy`), which sends f32 tensors on burn-flex here unless the kernel policy says
//! `SSLHOST_CPU_KERNELS=burn`; shapes or dtypes the kernels do not take go to burn's ops.

mod backend;
mod batch_norm;
mod conv;
mod cross_entropy;
mod direct;
mod direct_wide;
mod linear;
mod matmul;
mod update;
mod winograd;

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::policy::CpuKernelSet;

pub use backend::{CpuKernels, UpdateKernels};

/// The CPU kernel set of this thread's policy (`SSLHOST_CPU_KERNELS`).
fn kernel_set() -> CpuKernelSet {
    super::policy::current().cpu
}

/// The batch as one run of consecutive images `[first, end)` per thread (fewer when the batch
/// is smaller than the pool). The kernels reduce over the batch run by run and add the runs
/// in order, so their sums are the same bits on every call.
fn split_batch(batch: usize) -> Vec<(usize, usize)> {
    let runs = rayon::current_num_threads().clamp(1, batch.max(1));
    (0..runs)
        .map(|r| (r * batch / runs, (r + 1) * batch / runs))
        .collect()
}

/// The runs' partial sums (each `len` values, one per run of [`split_batch`]) added in run
/// order: the same bits on every call.
fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for part in partials {
        total.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    total
}

/// `buf` as `len` values: a scratch buffer a thread reuses, grown when needed (what it held
/// before stays, so callers overwrite or clear what they read).
fn resize(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

/// A new buffer of `len` values written piece by piece in parallel: `fill(state, i, piece)`
/// gets the `i`-th run of `piece_len` values (the last may be shorter), zeroed by the same
/// thread just before. Zeroing the whole buffer first (`vec![0.0; len]`) was a serial pass
/// over every output of the kernels, the other core idle meanwhile. `init` makes each task's
/// scratch state. Kernels that write every value take [`par_new_written`] instead.
fn par_new<S>(
    len: usize,
    piece_len: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let zeroed = |state: &mut S, i: usize, piece: &mut [MaybeUninit<f32>]| {
        piece.fill(MaybeUninit::new(0.0));
        // SAFETY: every element of `piece` was initialised on the line above, and
        // `MaybeUninit<f32>` has the layout of `f32`.
        let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
        fill(state, i, piece);
    };
    // SAFETY: `zeroed` initialises every value of each piece before `fill` sees it.
    unsafe { par_new_written(len, piece_len, init, zeroed) }
}

/// [`par_new`] without the zeroing, for kernels that overwrite their whole output: the
/// zeroing pass was 5–8% of a small-ResNet step (a `memset` of every activation and gradient
/// these kernels make), and a write without it moves the same cache lines once instead of
/// twice.
///
/// # Safety
/// `fill` must write every element of each piece it is given.
unsafe fn par_new_written<S>(
    len: usize,
    piece_len: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(piece_len.max(1))
        .enumerate()
        .for_each_init(init, |state, (i, piece)| fill(state, i, piece));
    // SAFETY: the pieces cover `0..len`, and the caller's `fill` wrote every value of each.
    unsafe { out.set_len(len) };
    out
}

/// The best of five timings of `f` after one warm-up call, in milliseconds, for the kernels'
/// timing tests.
#[cfg(test)]
fn best_ms(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Deterministic, evenly spread values in `[lo, hi)` for the kernels' unit tests.
#[cfg(test)]
fn test_values(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    let hash = |i: usize| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000;
    (0..n)
        .map(|i| lo + (hi - lo) * hash(i) as f32 / 1000.0)
        .collect()
}

/// A 3x3, stride-1, padding-1 convolution's shape, for the kernels' unit tests.
#[cfg(test)]
fn same_3x3(batch: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> conv::ConvShape {
    conv::ConvShape {
        batch,
        c_in,
        h,
        w,
        c_out,
        k: 3,
        stride: 1,
        pad: 1,
    }
}

/// Asserts `got` equals `want` to 1e-5 of `want`'s largest magnitude, for the kernels' unit
/// tests (two summation orders of the same f32 products).
#[cfg(test)]
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * scale, "{what}[{i}]: {a} vs {b}");
    }
}
