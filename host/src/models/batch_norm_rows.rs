//! Training-mode batch norm whose reductions run along contiguous rows, with a hand-written
//! backward: the GPU alternative to burn's `batch_norm_train`, chosen with
//! `SSLHOST_GPU_BATCH_NORM=rows`.
//!
//! burn's default reduces each statistic over `x` transposed to `[C, N·H·W]`: a copy of the
//! activation, then a reduction with one output per channel. On CUDA at batch 256 that is
//! 64–512 long rows for a whole GPU (cubecl's `SharedSumKernel`, about 0.4 ms each: 45 ms of
//! a BYOL ResNet-18 step, and the copies 19 ms more, in the H100 profile of
//! docs/PERFORMANCE.md). Here `x` is viewed as `[N, C, H·W]` (no copy), summed over its last
//! axis (N·C rows, one per image and channel), then over N.
//!
//! The backward is written out rather than left to autodiff, which would keep the centred
//! input and build the gradient through the mean and the variance in several activation-sized
//! steps. Written out it is two row reductions (`Σ dy` and `Σ dy·x̂`, with `x̂` recomputed
//! from the saved input inside the reduction's read) and one elementwise pass:
//! `dx = γ/σ · (dy − Σdy/m − x̂ · Σdy·x̂/m)` with `m = N·H·W`. Only `x` (already kept by the
//! convolution before it) and four `[C]` vectors are saved. All of it is backend tensor ops,
//! so on CUDA burn's fusion fuses the elementwise parts into the reductions around them.
//!
//! A half input (half activations, see [`crate::models::precision`]) stays half where it is
//! stored: the op reads it, computes in f32, writes its output in the input's type, and keeps
//! the half input for the backward, whose input gradient leaves in that type too. The
//! statistics and the `gamma` and `beta` gradients are f32.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::module::BatchNormTrainOutput;
use burn::tensor::{DType, FloatDType, Shape, Tensor};

/// Batch norm with the batch's statistics: `x` `[N, C, ..]` (f32 or a half type), `gamma`,
/// `beta` `[C]` (f32) → the output (same shape and type as `x`), and the batch mean and biased
/// variance `[C]` (f32), detached.
pub fn batch_norm_train_rows<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BatchNormTrainOutput<D> {
    let (output, mean, variance) = <Dispatch as RowsBatchNorm>::rows_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    BatchNormTrainOutput {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}

thread_local! {
    static ROWS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether this thread's batch norms that do not take the CPU kernels use
/// [`batch_norm_train_rows`]: set by [`set_rows`], else `SSLHOST_GPU_BATCH_NORM=rows`. The
/// default stays burn's own op until a GPU run has measured the two (`scripts/gpu_session.sh
/// ab` runs both).
pub fn rows_chosen() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    ROWS.with(std::cell::Cell::get).unwrap_or_else(|| {
        *FROM_ENV.get_or_init(|| std::env::var("SSLHOST_GPU_BATCH_NORM").is_ok_and(|v| v == "rows"))
    })
}

/// Sets [`rows_chosen`] for this thread (`None`: back to the environment's choice).
pub fn set_rows(on: Option<bool>) {
    ROWS.with(|c| c.set(on));
}

/// The row-wise batch norm as a backend extension: the forward as the backend's own ops, and
/// for autodiff backends the written-out backward.
#[backend_extension(Flex, Cube: cfg(any(feature = "cuda", feature = "cubecl-cpu")), Autodiff)]
pub trait RowsBatchNorm: Backend {
    /// `x` `[N, C, ..]`, `gamma`, `beta` `[C]` → (output, mean `[C]`, biased variance `[C]`).
    fn rows_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let f = forward::<Self>(x, gamma, beta, epsilon);
        (f.output, f.mean, f.variance)
    }
}

impl RowsBatchNorm for Flex {}

#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
impl RowsBatchNorm for burn::backend::Cube {}

impl<B: Backend, C: CheckpointStrategy> RowsBatchNorm for Autodiff<B, C> {
    fn rows_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // The statistics leave as constants: callers only feed them to running averages.
        let constant = <FloatTensor<Self>>::new;
        let run = |x: FloatTensor<Self>, gamma: FloatTensor<B>, beta: FloatTensor<Self>| {
            forward::<B>(x.into_primitive(), gamma, beta.into_primitive(), epsilon)
        };
        let nodes = [x.node(), gamma.node(), beta.node()];
        match RowsBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma = gamma.into_primitive();
                let f = run(x, gamma.clone(), beta);
                let state = RowsState {
                    x: x_state,
                    gamma,
                    mean: f.mean_rows,
                    inv_std: f.inv_std_rows,
                };
                let output = prep.finish(state, f.output);
                (output, constant(f.mean), constant(f.variance))
            }
            OpsKind::UnTracked(prep) => {
                let f = run(x, gamma.into_primitive(), beta);
                (
                    prep.finish(f.output),
                    constant(f.mean),
                    constant(f.variance),
                )
            }
        }
    }
}

/// What the forward computes, and the two statistics the backward reuses.
struct Forward<B: Backend> {
    /// `[N, C, ..]`.
    output: FloatTensor<B>,
    /// `[C]`.
    mean: FloatTensor<B>,
    /// `[C]`, biased.
    variance: FloatTensor<B>,
    /// The mean as `[1, C, 1]`.
    mean_rows: FloatTensor<B>,
    /// `1 / sqrt(variance + epsilon)` as `[1, C, 1]`.
    inv_std_rows: FloatTensor<B>,
}

/// `x` `[N, C, ..]` as `[N, C, H·W]`, with `N·H·W`, the count each statistic averages over.
fn rows<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, Vec<usize>, f64) {
    let dims: Vec<usize> = x.shape().iter().copied().collect();
    let (n, c) = (dims[0], dims[1]);
    let plane = dims[2..].iter().product::<usize>();
    let x = B::float_reshape(x, Shape::new([n, c, plane]));
    (x, dims, (n * plane) as f64)
}

/// `t` in f32 (a no-op where it is): the arithmetic of a half input, fused into its reads.
fn f32_of<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    if t.dtype() == DType::F32 {
        t
    } else {
        B::float_cast(t, FloatDType::F32)
    }
}

/// `[N, C, P]` → `[1, C, 1]`: the long reduction first, over contiguous rows.
fn channel_sum<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    B::float_sum_dim(B::float_sum_dim(t, 2), 0)
}

/// A `[C]` vector as `[1, C, 1]`, to broadcast over `[N, C, P]`.
fn per_channel<B: Backend>(v: FloatTensor<B>) -> FloatTensor<B> {
    let c = v.shape().num_elements();
    B::float_reshape(v, Shape::new([1, c, 1]))
}

fn forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> Forward<B> {
    let dtype = FloatDType::from(x.dtype());
    let (x, dims, count) = rows::<B>(f32_of::<B>(x));
    let c = dims[1];
    let mean_rows = B::float_div_scalar(channel_sum::<B>(x.clone()), count.into());
    let centered = B::float_sub(x, mean_rows.clone());
    let squares = B::float_mul(centered.clone(), centered.clone());
    let var_rows = B::float_div_scalar(channel_sum::<B>(squares), count.into());
    let inv_std_rows = B::float_recip(B::float_sqrt(B::float_add_scalar(
        var_rows.clone(),
        epsilon.into(),
    )));
    let scale = B::float_mul(per_channel::<B>(gamma), inv_std_rows.clone());
    let output = B::float_add(B::float_mul(centered, scale), per_channel::<B>(beta));
    Forward {
        output: B::float_cast(B::float_reshape(output, Shape::from(dims)), dtype),
        mean: B::float_reshape(mean_rows.clone(), Shape::new([c])),
        variance: B::float_reshape(var_rows, Shape::new([c])),
        mean_rows,
        inv_std_rows,
    }
}

/// The backward step: the input, `gamma` and `beta` gradients.
#[derive(Debug)]
struct RowsBackward;

/// What [`RowsBackward`] keeps from the forward.
#[derive(Debug, Clone)]
struct RowsState<B: Backend> {
    /// The input's checkpoint.
    x: NodeId,
    /// `[C]`.
    gamma: FloatTensor<B>,
    /// `[1, C, 1]`.
    mean: FloatTensor<B>,
    /// `[1, C, 1]`.
    inv_std: FloatTensor<B>,
}

impl<B: Backend> Backward<B, 3> for RowsBackward {
    type State = RowsState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let state = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(state.x);
        let dtype = FloatDType::from(x.dtype());
        let (x, dims, count) = rows::<B>(f32_of::<B>(x));
        let (dy, _, _) = rows::<B>(f32_of::<B>(dy));
        let c = dims[1];
        let x_hat = B::float_mul(B::float_sub(x, state.mean), state.inv_std.clone());
        let dbeta = channel_sum::<B>(dy.clone());
        let dgamma = channel_sum::<B>(B::float_mul(dy.clone(), x_hat.clone()));
        if let Some(node) = node_x {
            // γ/σ · (dy − Σdy/m − x̂ · Σdy·x̂/m), with the 1/m taken into γ/σ.
            let k = B::float_div_scalar(
                B::float_mul(per_channel::<B>(state.gamma), state.inv_std),
                count.into(),
            );
            let inner = B::float_sub(
                B::float_sub(B::float_mul_scalar(dy, count.into()), dbeta.clone()),
                B::float_mul(x_hat, dgamma.clone()),
            );
            let dx = B::float_cast(B::float_mul(inner, k), dtype);
            grads.register::<B>(node.id, B::float_reshape(dx, Shape::from(dims)));
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, B::float_reshape(dgamma, Shape::new([c])));
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, B::float_reshape(dbeta, Shape::new([c])));
        }
    }
}
