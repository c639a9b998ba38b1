//! Training-mode batch norm whose reductions run along contiguous rows, with a hand-written
//! backward: the GPU alternatives to burn's `batch_norm_train` in burn's own ops, chosen by the
//! kernel policy's GPU set (`SSLHOST_GPU_BATCH_NORM=rows` or `nhwc`).
//!
//! burn's default reduces each statistic over `x` transposed to `[C, N·H·W]`: a copy of the
//! activation, then a reduction with one output per channel. On CUDA at batch 256 that is
//! 64–512 long rows for a whole GPU (cubecl's `SharedSumKernel`, about 0.4 ms each: 45 ms of
//! a BYOL ResNet-18 step, and the copies 19 ms more, in the H100 profile of
//! docs/PERFORMANCE.md). Here `x` is viewed as `[N, C, H·W]`, or channels last as
//! `[N, H·W, C]` ([`Layout`]), summed over its long axis (N·C outputs, one per image and
//! channel), then over N. Which view costs no copy depends on how `x` is stored: cubecl's
//! convolutions compute in NHWC and hand back a permuted view, so on the GPU code path the
//! channels-last view is the free one (a kernel census on the cubecl CPU runtime: 79 copy
//! kernels a ResNet step instead of 158 with burn's op or the NCHW view).
//!
//! The backward is written out rather than left to autodiff, which would keep the centred
//! input and build the gradient through the mean and the variance in several activation-sized
//! steps. Written out it is two row reductions (`Σ dy` and `Σ dy·x̂`, with `x̂` recomputed
//! from the saved input inside the reduction's read) and one elementwise pass:
//! `dx = γ/σ · (dy − Σdy/m − x̂ · Σdy·x̂/m)` with `m = N·H·W`. Only `x` (already kept by the
//! convolution before it) and three per-channel vectors are saved. All of it is backend tensor ops,
//! so on CUDA burn's fusion fuses the elementwise parts into the reductions around them.
//!
//! A half input (half activations, see [`crate::kernels::precision`]) stays half where it is
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
/// `channels_last` views `x` as `[N, H·W, C]` instead of `[N, C, H·W]` (see [`Layout`]).
pub fn batch_norm_train_rows<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    channels_last: bool,
) -> BatchNormTrainOutput<D> {
    let (output, mean, variance) = <Dispatch as RowsBatchNorm>::rows_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        channels_last,
    );
    BatchNormTrainOutput {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}

/// The row-wise batch norm as a backend extension: the forward as the backend's own ops, and
/// for autodiff backends the written-out backward.
#[backend_extension(Flex, Cube: cfg(any(feature = "cuda", feature = "cubecl-cpu")), Autodiff)]
pub trait RowsBatchNorm: Backend {
    /// `x` `[N, C, ..]`, `gamma`, `beta` `[C]` → (output, mean `[C]`, biased variance `[C]`),
    /// `x` viewed channels last or not (see [`Layout`]).
    fn rows_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        channels_last: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let f = forward::<Self>(x, gamma, beta, epsilon, Layout { channels_last });
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
        channels_last: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // The statistics leave as constants: callers only feed them to running averages.
        let constant = <FloatTensor<Self>>::new;
        let layout = Layout { channels_last };
        let run = |x: FloatTensor<Self>, gamma: FloatTensor<B>, beta: FloatTensor<Self>| {
            forward::<B>(
                x.into_primitive(),
                gamma,
                beta.into_primitive(),
                epsilon,
                layout,
            )
        };
        let nodes = [x.node(), gamma.node(), beta.node()];
        match RowsBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma = gamma.into_primitive();
                let f = run(x, gamma.clone(), beta);
                let state = RowsState {
                    x: x_state,
                    layout,
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
    /// The mean, shaped to broadcast over the layout's view.
    mean_rows: FloatTensor<B>,
    /// `1 / sqrt(variance + epsilon)`, shaped to broadcast over the view.
    inv_std_rows: FloatTensor<B>,
}

/// How the row-wise batch norm views `x` `[N, C, ..]` (`P` = the product of the spatial sizes):
/// as `[N, C, P]`, whose rows are contiguous in NCHW storage, or channels last as `[N, P, C]`,
/// contiguous in NHWC storage. Either way it reduces the long axis first (`P`: N·C outputs),
/// then `N`. A view that does not match the storage costs a copy of `x`.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// `[N, P, C]` rather than `[N, C, P]`.
    pub channels_last: bool,
}

impl Layout {
    /// The axis of the view that holds the channels.
    fn channel_axis(self) -> usize {
        if self.channels_last { 2 } else { 1 }
    }

    /// `x` in this view, its dims, and `N·P`, the count each statistic averages over.
    fn view<B: Backend>(self, x: FloatTensor<B>) -> (FloatTensor<B>, Vec<usize>, f64) {
        let dims: Vec<usize> = x.shape().iter().copied().collect();
        let (n, c) = (dims[0], dims[1]);
        let plane = dims[2..].iter().product::<usize>();
        let x = if self.channels_last {
            // [N, C, ..] → [N, .., C] → [N, P, C].
            let mut axes: Vec<usize> = (0..dims.len()).collect();
            axes.remove(1);
            axes.push(1);
            B::float_reshape(B::float_permute(x, &axes), Shape::new([n, plane, c]))
        } else {
            B::float_reshape(x, Shape::new([n, c, plane]))
        };
        (x, dims, (n * plane) as f64)
    }

    /// A tensor in this view back to `dims` `[N, C, ..]`.
    fn unview<B: Backend>(self, t: FloatTensor<B>, dims: &[usize]) -> FloatTensor<B> {
        if self.channels_last {
            // [N, P, C] → [N, .., C] → [N, C, ..].
            let mut last: Vec<usize> = vec![dims[0]];
            last.extend_from_slice(&dims[2..]);
            last.push(dims[1]);
            let rank = dims.len();
            let mut axes = vec![0, rank - 1];
            axes.extend(1..rank - 1);
            B::float_permute(B::float_reshape(t, Shape::from(last)), &axes)
        } else {
            B::float_reshape(t, Shape::from(dims.to_vec()))
        }
    }

    /// The view → one value a channel, shaped to broadcast over the view: the long axis
    /// first (`P`, over rows contiguous in the matching storage), then `N`.
    fn channel_sum<B: Backend>(self, t: FloatTensor<B>) -> FloatTensor<B> {
        let long = if self.channels_last { 1 } else { 2 };
        B::float_sum_dim(B::float_sum_dim(t, long), 0)
    }

    /// A `[C]` vector shaped to broadcast over the view.
    fn per_channel<B: Backend>(self, v: FloatTensor<B>) -> FloatTensor<B> {
        let mut shape = [1, 1, 1];
        shape[self.channel_axis()] = v.shape().num_elements();
        B::float_reshape(v, Shape::new(shape))
    }
}

/// `t` in f32 (a no-op where it is): the arithmetic of a half input, fused into its reads.
fn f32_of<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    if t.dtype() == DType::F32 {
        t
    } else {
        B::float_cast(t, FloatDType::F32)
    }
}

fn forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
    layout: Layout,
) -> Forward<B> {
    let dtype = FloatDType::from(x.dtype());
    let (x, dims, count) = layout.view::<B>(f32_of::<B>(x));
    let c = dims[1];
    let mean_rows = B::float_div_scalar(layout.channel_sum::<B>(x.clone()), count.into());
    let centered = B::float_sub(x, mean_rows.clone());
    let squares = B::float_mul(centered.clone(), centered.clone());
    let var_rows = B::float_div_scalar(layout.channel_sum::<B>(squares), count.into());
    let inv_std_rows = B::float_recip(B::float_sqrt(B::float_add_scalar(
        var_rows.clone(),
        epsilon.into(),
    )));
    let scale = B::float_mul(layout.per_channel::<B>(gamma), inv_std_rows.clone());
    let output = B::float_add(B::float_mul(centered, scale), layout.per_channel::<B>(beta));
    Forward {
        output: B::float_cast(layout.unview::<B>(output, &dims), dtype),
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
    /// How the forward viewed it.
    layout: Layout,
    /// `[C]`.
    gamma: FloatTensor<B>,
    /// Shaped to broadcast over the view.
    mean: FloatTensor<B>,
    /// Shaped to broadcast over the view.
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
        let layout = state.layout;
        let (x, dims, count) = layout.view::<B>(f32_of::<B>(x));
        let (dy, _, _) = layout.view::<B>(f32_of::<B>(dy));
        let c = dims[1];
        let x_hat = B::float_mul(B::float_sub(x, state.mean), state.inv_std.clone());
        let dbeta = layout.channel_sum::<B>(dy.clone());
        let dgamma = layout.channel_sum::<B>(B::float_mul(dy.clone(), x_hat.clone()));
        if let Some(node) = node_x {
            // γ/σ · (dy − Σdy/m − x̂ · Σdy·x̂/m), with the 1/m taken into γ/σ.
            let k = B::float_div_scalar(
                B::float_mul(layout.per_channel::<B>(state.gamma), state.inv_std),
                count.into(),
            );
            let inner = B::float_sub(
                B::float_sub(B::float_mul_scalar(dy, count.into()), dbeta.clone()),
                B::float_mul(x_hat, dgamma.clone()),
            );
            let dx = B::float_cast(B::float_mul(inner, k), dtype);
            grads.register::<B>(node.id, layout.unview::<B>(dx, &dims));
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, B::float_reshape(dgamma, Shape::new([c])));
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, B::float_reshape(dbeta, Shape::new([c])));
        }
    }
}
