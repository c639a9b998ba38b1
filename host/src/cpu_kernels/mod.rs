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
//! [`conv2d`], [`batch_norm_train`], [`linear`] and [`cross_entropy`] are what the models and
//! the tensor API call. On CUDA, and when the environment sets `SSLHOST_CPU_KERNELS=burn` (to
//! compare against burn's own path), they are burn's own ops; shapes or dtypes the kernels do
//! not take go to burn's too.

mod backend;
mod batch_norm;
mod conv;
mod cross_entropy;
mod direct;
mod direct_wide;
mod linear;
mod matmul;
mod winograd;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use burn::backend::Dispatch;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::BatchNormTrainOutput;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

pub use backend::CpuKernels;

/// `SSLHOST_CPU_KERNELS`, read once, for A/B runs: `burn` (burn-flex's own ops), `im2col` (our
/// kernels with im2col + GEMM only), `no-direct` (ours without the direct convolutions); unset,
/// each of ours where it pays.
fn kernels_setting() -> &'static str {
    static SETTING: OnceLock<String> = OnceLock::new();
    SETTING.get_or_init(|| std::env::var("SSLHOST_CPU_KERNELS").unwrap_or_default())
}

/// Whether `x` takes these kernels: f32 on the CPU, unless `SSLHOST_CPU_KERNELS=burn`.
fn ours<const D: usize>(x: &Tensor<D>) -> bool {
    ours_on(x.dtype(), &x.device())
}

/// Whether tensors of `dtype` on `device` take these kernels.
fn ours_on(dtype: DType, device: &Device) -> bool {
    dtype == DType::F32 && *device == Device::flex() && kernels_setting() != "burn"
}

/// `[N, C, H, W]` with weight `[C_out, C, k, k]` → `[N, C_out, H', W']`: no bias, square
/// kernel, the same stride and zero padding on both axes.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    if ours(&x) {
        let out = <Dispatch as CpuKernels>::gemm_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            stride,
            padding,
        );
        Tensor::from_dispatch(out)
    } else if crate::gpu_kernels::active(&x.device()) {
        crate::gpu_kernels::conv2d(x, weight, stride, padding)
    } else {
        burn::tensor::module::conv2d(x, weight, None, backend::burn_options(stride, padding))
    }
}

/// What a batch norm applies to its output in the same pass.
// Built and consumed within one call, never stored: boxing the tensor would only add an
// allocation per layer.
#[allow(clippy::large_enum_variant)]
pub enum NormEpilogue<const D: usize> {
    /// The normalised output as it is.
    None,
    /// `relu(bn(x))`.
    Relu,
    /// `relu(bn(x) + residual)`: the end of a ResNet block.
    AddRelu(Tensor<D>),
}

impl<const D: usize> NormEpilogue<D> {
    /// The epilogue as separate tensor ops, for a batch norm computed elsewhere.
    pub fn apply(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            NormEpilogue::None => x,
            NormEpilogue::Relu => relu(x),
            NormEpilogue::AddRelu(residual) => relu(x.add(residual)),
        }
    }
}

/// Which batch norm f32 training tensors on `device` take: `"cpu"`, or the GPU variant's name
/// (`"burn"`, `"rows"`, `"nhwc"`, `"cudnn"`: see
/// [`crate::models::batch_norm_rows::GpuBatchNorm`]).
pub fn batch_norm_kernel(device: &Device) -> &'static str {
    if ours_on(DType::F32, device) {
        "cpu"
    } else {
        crate::models::batch_norm_rows::chosen().name()
    }
}

/// Batch norm with the batch's statistics, then its epilogue: `x` `[N, C, ..]`, `gamma`,
/// `beta` `[C]` → the output, and the batch mean and biased variance `[C]`, detached.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    epilogue: NormEpilogue<D>,
) -> BatchNormTrainOutput<D> {
    if D == 4 && crate::gpu_kernels::active(&x.device()) {
        return crate::gpu_kernels::batch_norm_train(x, gamma, beta, epsilon, epilogue);
    }
    if !ours(&x) {
        let out = crate::models::batch_norm_rows::train_chosen(x, gamma, beta, epsilon);
        let output = epilogue.apply(out.output);
        return BatchNormTrainOutput { output, ..out };
    }
    let (x, gamma, beta) = (
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
    );
    let (output, mean, variance) = match epilogue {
        NormEpilogue::None => {
            <Dispatch as CpuKernels>::fused_batch_norm_train(x, gamma, beta, false, epsilon)
        }
        NormEpilogue::Relu => {
            <Dispatch as CpuKernels>::fused_batch_norm_train(x, gamma, beta, true, epsilon)
        }
        NormEpilogue::AddRelu(residual) => {
            <Dispatch as CpuKernels>::fused_batch_norm_add_relu_train(
                x,
                gamma,
                beta,
                residual.into_dispatch(),
                epsilon,
            )
        }
    };
    BatchNormTrainOutput {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}

/// A linear layer's product without bias: `x` `[N, in]`, `weight` `[out, in]` (PyTorch's
/// layout) → `x · weightᵀ` `[N, out]`.
pub fn linear(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    if ours(&x) {
        let out = <Dispatch as CpuKernels>::gemm_linear(x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(out)
    } else {
        x.matmul(weight.transpose())
    }
}

/// Per-row cross-entropy of `logits` `[N, C]` against class indices `targets` (`N` of them,
/// each below `C`): `logsumexp(row) − row[target]`, `[N]`.
pub fn cross_entropy(logits: Tensor<2>, targets: &[usize]) -> Tensor<1> {
    let device = logits.device();
    let [rows, classes] = logits.dims();
    debug_assert_eq!(rows, targets.len());
    // The kernel takes the class indices as f32, exact below 2^24.
    if ours(&logits) && classes <= 1 << 24 {
        let indices: Vec<f32> = targets.iter().map(|&t| t as f32).collect();
        let indices = Tensor::<1>::from_data(TensorData::new(indices, [rows]), &device);
        let out = <Dispatch as CpuKernels>::fused_cross_entropy(
            logits.into_dispatch(),
            indices.into_dispatch(),
        );
        return Tensor::from_dispatch(out);
    }
    let indices: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let indices = Tensor::<2, Int>::from_data(TensorData::new(indices, [rows, 1]), &device);
    log_softmax(logits, 1)
        .gather(1, indices)
        .neg()
        .reshape([rows])
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
