//! Training-mode batch norm as tensor ops whose reductions run along contiguous rows: the
//! GPU alternative to burn's `batch_norm_train`, chosen with `SSLHOST_GPU_BATCH_NORM=rows`.
//!
//! burn's default reduces each statistic over `x` transposed to `[C, N·H·W]`: a copy of the
//! activation, then a reduction with one output per channel. On CUDA at batch 256 that is
//! 64–512 long rows for a whole GPU (cubecl's `SharedSumKernel`, about 0.4 ms each: 45 ms of
//! a BYOL ResNet-18 step, and the copies 19 ms more, in the H100 profile of
//! docs/PERFORMANCE.md). Here `x` is viewed as `[N, C, H·W]` (no copy), summed over its last
//! axis (N·C rows, one per image and channel), then over N. Autodiff differentiates the ops.

use burn::tensor::Tensor;
use burn::tensor::module::BatchNormTrainOutput;

/// Batch norm with the batch's statistics: `x` `[N, C, ..]`, `gamma`, `beta` `[C]` → the
/// output (same shape as `x`), and the batch mean and biased variance `[C]`, detached.
pub fn batch_norm_train_rows<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BatchNormTrainOutput<D> {
    let dims = x.dims();
    let (n, c) = (dims[0], dims[1]);
    let per_image = dims[2..].iter().product::<usize>();
    let count = (n * per_image) as f64;
    // [N, C, H·W] → [1, C, 1]: the long reduction first, over contiguous rows.
    let channel_mean = |t: Tensor<3>| t.sum_dim(2).sum_dim(0).div_scalar(count);
    let x = x.reshape([n, c, per_image]);
    let mean = channel_mean(x.clone());
    let centered = x - mean.clone();
    let variance = channel_mean(centered.clone() * centered.clone());
    let scale = gamma.reshape([1, c, 1]) * variance.clone().add_scalar(epsilon).sqrt().recip();
    let output = centered * scale + beta.reshape([1, c, 1]);
    BatchNormTrainOutput {
        output: output.reshape(dims),
        mean: mean.reshape([c]).detach(),
        variance: variance.reshape([c]).detach(),
    }
}

/// Whether batch norms that do not take the CPU kernels use [`batch_norm_train_rows`]:
/// `SSLHOST_GPU_BATCH_NORM=rows`. The default stays burn's own op until a GPU run has
/// measured the two (`scripts/gpu_session.sh ab` runs both).
pub fn rows_chosen() -> bool {
    static ROWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| std::env::var("SSLHOST_GPU_BATCH_NORM").is_ok_and(|v| v == "rows"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tensor};

    fn close(a: Tensor<1>, b: Tensor<1>, what: &str) {
        let a = crate::tensor::float_values(a).unwrap();
        let b = crate::tensor::float_values(b).unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().map(|v| v.abs()).fold(1e-3f32, f32::max);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: rows {x}, burn {y}"
            );
        }
    }

    /// Output, statistics and the gradients of `x`, `gamma` and `beta` match burn's op.
    #[test]
    fn rows_match_burns_batch_norm() {
        let device = Device::flex().autodiff();
        let x0 = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(0.7, 2.0), &device);
        let g0 = Tensor::<1>::random([5], Distribution::Uniform(0.5, 1.5), &device);
        let b0 = Tensor::<1>::random([5], Distribution::Normal(0.0, 1.0), &device);
        // A weighting of the output, so the gradients are not the trivial ones of a sum.
        let w = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(0.0, 1.0), &device);
        let run = |rows: bool| {
            let (x, g, b) = (
                x0.clone().require_grad(),
                g0.clone().require_grad(),
                b0.clone().require_grad(),
            );
            let out = if rows {
                batch_norm_train_rows(x.clone(), g.clone(), b.clone(), 1e-5)
            } else {
                burn::tensor::module::batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5)
            };
            let y = out.output.clone().flatten::<1>(0, 3);
            let grads = (out.output * w.clone()).sum().backward();
            let dx = x.grad(&grads).unwrap().flatten::<1>(0, 3);
            let dg = g.grad(&grads).unwrap();
            let db = b.grad(&grads).unwrap();
            [y, out.mean, out.variance, dx, dg, db]
        };
        let names = ["output", "mean", "variance", "dx", "dgamma", "dbeta"];
        for ((a, b), name) in run(true).into_iter().zip(run(false)).zip(names) {
            close(a, b, name);
        }
    }
}
